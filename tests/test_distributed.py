"""One run on two processes (torch.distributed, gloo, torchrun): the log written once, the ranks in agreement,
and resume after killing them — all of them, or one — bit-identical.  Real processes, CPU."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from fsmtrain import EventLog, state_at
from fsmtrain.launch import launch_command
from tests.conftest import ROOT, env, env_of, tagged
from tests.test_crash import events_in, kill_until_done

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available"),
              pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL"),
              pytest.mark.slow]  # (several processes each: a long battery)

DEMO = [sys.executable, "-m", "fsmtrain", "demo", "--nproc", "2", "--epochs", "3", "--patience", "100", "--chunk", "4",
        "--json"]


def ranks(tmp_path, mode: str, tag: str, **extra_env: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    out = tmp_path / f"out-{mode}"
    cmd, e = launch_command(2, "tests.machines.ddp", [str(tmp_path / f"{mode}.db"), str(out), mode], max_restarts=0)
    p = subprocess.run(cmd, env={**e, **env(tag), **extra_env}, cwd=ROOT, capture_output=True, text=True, timeout=600)
    got = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1) if (out / f"rank{r}.json").exists()]
    return p, got


class TestOneRunTwoProcesses:
    def test_the_ranks_agree_on_every_step_and_only_the_log_rank_writes(self, tmp_path, tag):
        """Early stopping fires on the same step on both ranks (their digests are compared each step)."""
        p, got = ranks(tmp_path, "train", tag)
        assert p.returncode == 0, p.stderr[-3000:]
        assert [g["rank"] for g in got] == [0, 1] and [g["writer"] for g in got] == [True, False]
        assert got[0]["state"] == got[1]["state"] and got[0]["weights"] == got[1]["weights"]
        state = json.loads(got[0]["state"])
        assert got[0]["status"] == "finished" and state["epoch"] < 6  # stopped early, on the same step everywhere
        with EventLog(tmp_path / "train.db", readonly=True) as log:
            assert log.verify() == [] and log.run(1).tags["world_size"] == 2
            assert state_at(log, 1).to_json() == got[0]["state"]

    def test_the_log_may_be_held_by_another_rank(self, tmp_path, tag):
        """FSMTRAIN_LOG_RANK=1: rank 1 writes; the run is the same (the log lives where it is, not with rank 0)."""
        p, got = ranks(tmp_path, "train", tag, FSMTRAIN_LOG_RANK="1")
        assert p.returncode == 0, p.stderr[-3000:]
        assert [g["writer"] for g in got] == [False, True]
        (tmp_path / "usual").mkdir()
        p, usual = ranks(tmp_path / "usual", "train", tag)
        assert p.returncode == 0, p.stderr[-3000:]
        assert got[0]["state"] == got[1]["state"] == usual[0]["state"]

    def test_a_rank_that_diverges_is_caught_at_the_next_step(self, tmp_path, tag):
        p, _ = ranks(tmp_path, "diverge", tag)
        assert p.returncode != 0
        assert "RankDiverged: rank(s) 1 of 2 computed a different step than the log's rank 0" in p.stderr
        with EventLog(tmp_path / "diverge.db", readonly=True) as log:
            assert state_at(log, 1)["n"] <= 5  # caught one step after rank 1 went its own way, at n=3


def test_killing_every_process_at_random_moments_resumes_bit_identically(tmp_path, tag):
    want_p = subprocess.run(DEMO + ["--log", str(tmp_path / "ref.db")], cwd=ROOT, capture_output=True, text=True,
                            env=env(tag), timeout=600)
    assert want_p.returncode == 0, want_p.stderr[-3000:]
    want = json.loads(want_p.stdout.splitlines()[-1])
    assert want["world_size"] == 2
    log = tmp_path / "k.db"
    kills, out = kill_until_done(DEMO + ["--log", str(log), "--delay", "0.05"], log, random.Random(3), 4, 0.3,
                                 env=env(tag), group=True)
    assert kills >= 2
    assert json.loads(out.splitlines()[-1]) == want
    with EventLog(log, readonly=True) as lg, EventLog(tmp_path / "ref.db", readonly=True) as ref:
        assert lg.verify() == []
        assert state_at(lg, 1).to_json() == state_at(ref, 1).to_json()


def test_one_rank_killed_alone_restarts_the_group_which_ends_identically(tmp_path, tag):
    """SIGKILL rank 1 only, under torchrun --max-restarts: torchrun restarts both; the run resumes and ends the same."""
    one_rank_killed_alone(tmp_path, tag, DEMO)


def one_rank_killed_alone(tmp_path, tag: str, demo: list[str]) -> None:
    """Run ``demo`` (2 ranks, JSON) once uninterrupted, then again with rank 1 SIGKILLed alone once the log holds a
    few events: torchrun restarts the group, which resumes and ends with the same JSON line."""
    want = json.loads(subprocess.run(demo + ["--log", str(tmp_path / "ref.db")], cwd=ROOT, capture_output=True,
                                     text=True, env=env(tag), timeout=600).stdout.splitlines()[-1])
    log = tmp_path / "one.db"
    p = subprocess.Popen(demo + ["--log", str(log), "--delay", "0.1"], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env(tag), start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while events_in(log) < 4:
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()[1][-3000:]
            time.sleep(0.02)
        rank1 = [pid for pid in tagged(tag) if env_of(pid).get("RANK") == "1"
                 and "torch.distributed.run" not in " ".join(_cmdline(pid))]
        assert len(rank1) == 1
        os.kill(rank1[0], signal.SIGKILL)
        out, err = p.communicate(timeout=600)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
    assert p.returncode == 0, err[-3000:]
    assert json.loads(out.splitlines()[-1]) == want
    with EventLog(log, readonly=True) as lg:
        assert lg.verify() == [] and any(e.kind == "resume" for e in lg.events(1))


def test_a_gate_waits_and_the_worker_continues_the_two_process_run(tmp_path, tag):
    gate_go_and_the_worker(tmp_path, tag)


def gate_go_and_the_worker(tmp_path, tag: str, *extra: str) -> None:
    """The gated demo on 2 processes waits at its gate, a person says go, and the worker relaunches it on 2
    processes, which export the best model and finish."""
    fsm = [sys.executable, "-m", "fsmtrain"]
    p = subprocess.run(fsm + ["demo", "--log", "g.db", "--gate", "--nproc", "2", "--epochs", "2", *extra],
                       cwd=tmp_path, capture_output=True, text=True, env=env(tag), timeout=600)
    assert p.returncode == 0 and "run 1 is waiting at `review`" in p.stdout, p.stderr[-3000:]
    assert subprocess.run(fsm + ["approve", "g.db", "1"], cwd=tmp_path, env=env(tag), capture_output=True).returncode == 0
    p = subprocess.run(fsm + ["worker", "g.db", "--machine", "fsmtrain.train.demo:gated_trainer", "--once"],
                       cwd=tmp_path, capture_output=True, text=True, env=env(tag), timeout=600)
    assert p.returncode == 0 and p.stdout.strip() == "run 1: finished after 3 step(s); on 2 processes", p.stderr
    with EventLog(tmp_path / "g.db", readonly=True) as log:
        s = state_at(log, 1)
        assert s["decision"] == "go" and s["exported"] is not None and log.verify() == []


def _kinds(log) -> dict[str, int]:
    """How many events of each kind the log holds (0 before it exists)."""
    if not log.exists() or log.stat().st_size == 0:
        return {}
    try:
        with EventLog(log, readonly=True) as lg:
            return dict(lg.conn.execute("SELECT kind, count(*) FROM events GROUP BY kind").fetchall())
    except Exception:  # (a log being created)
        return {}


def _rank_pids(tag: str, rank: str, old: set[int]) -> list[int]:
    return [pid for pid in tagged(tag) if env_of(pid).get("RANK") == rank and pid not in old
            and "torch.distributed.run" not in " ".join(_cmdline(pid))]


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [x.decode(errors="replace") for x in f.read().split(b"\0") if x]
    except OSError:
        return []


# (kills, rank to kill: "0" the writer, "1", or "any", kills inside one step)
BATTERY = [(1, "1", False), (2, "1", False), (3, "1", False), (1, "0", False), (2, "any", False),
           (3, "any", False), (3, "1", True), (2, "0", True)]


@pytest.mark.parametrize("case", range(len(BATTERY)))
def test_rank_kills_are_interruptions_and_the_run_ends_identically(tmp_path, tag, case):
    """SIGKILL one rank 1-3 times at observed progress (or 2-3 times inside one step, each after the restarted
    group wrote its `resume` event): torchrun restarts the group (the same command is run again if it ran out of
    restarts), the run ends bit-identical, no kill became an `error` or `failed` event, and `verify` is clean."""
    kills, which, same_step = BATTERY[case]
    rng = random.Random(case)
    ref = tmp_path / "ref.db"
    want_p = subprocess.run(DEMO + ["--log", str(ref)], cwd=ROOT, capture_output=True, text=True, env=env(tag),
                            timeout=600)
    assert want_p.returncode == 0, want_p.stderr[-3000:]
    want = json.loads(want_p.stdout.splitlines()[-1])
    log = tmp_path / "k.db"
    cmd = DEMO + ["--log", str(log), "--delay", "0.2" if same_step else "0.05"]
    done, killed, seen = None, 0, set()
    for _attempt in range(8):  # the same command again, as a person or Slurm would, until the run is done
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(tag),
                             start_new_session=True)
        try:
            while killed < kills and p.poll() is None:
                before = _kinds(log)
                deadline = time.monotonic() + 300
                if same_step and killed:  # the restarted group is back inside the same step: its resume event
                    while p.poll() is None and _kinds(log).get("resume", 0) <= before.get("resume", 0):
                        assert time.monotonic() < deadline, "no resume in 300 s"
                        time.sleep(0.01)
                else:  # a new step committed, then a random moment
                    while p.poll() is None and _kinds(log).get("step", 0) <= before.get("step", 0):
                        assert time.monotonic() < deadline, "no progress in 300 s"
                        time.sleep(0.01)
                    time.sleep(rng.uniform(0, 0.3))
                rank = which if which != "any" else rng.choice("01")
                pids = []
                while p.poll() is None and not pids and time.monotonic() < deadline:
                    pids = _rank_pids(tag, rank, seen)
                    time.sleep(0.01)
                if p.poll() is not None:
                    break
                seen.update(pids)
                os.kill(pids[0], signal.SIGKILL)
                killed += 1
            out, err = p.communicate(timeout=600)
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.communicate()
        if p.returncode == 0:
            done = out
            break
    assert done is not None, err[-3000:]
    assert killed >= max(1, kills - 1), killed  # (a run may end before the last planned kill on a slow machine)
    assert json.loads(done.splitlines()[-1]) == want
    counts = _kinds(log)
    assert counts.get("error", 0) == 0 and counts.get("failed", 0) == 0, counts
    with EventLog(log, readonly=True) as lg, EventLog(ref, readonly=True) as rf:
        assert lg.verify() == []
        assert state_at(lg, 1).to_json() == state_at(rf, 1).to_json()


def test_a_rank_stopped_while_connecting_makes_the_other_exit_within_the_timeout(tmp_path, tag):
    """SIGSTOP rank 1 as it starts: rank 0 gives up joining after FSMTRAIN_DIST_TIMEOUT with one line naming it
    (never hanging), torchrun restarts the group, and the run ends as an uninterrupted one."""
    want = json.loads(subprocess.run(DEMO + ["--log", str(tmp_path / "ref.db")], cwd=ROOT, capture_output=True,
                                     text=True, env=env(tag), timeout=600).stdout.splitlines()[-1])
    log = tmp_path / "hang.db"
    p = subprocess.Popen(DEMO + ["--log", str(log)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env={**env(tag), "FSMTRAIN_DIST_TIMEOUT": "6"}, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        stopped: list[int] = []
        while not stopped:
            assert p.poll() is None and time.monotonic() < deadline, "rank 1 never started"
            stopped = _rank_pids(tag, "1", set())
            time.sleep(0.005)
        os.kill(stopped[0], signal.SIGSTOP)
        rank0 = []
        while not rank0 and time.monotonic() < deadline:
            rank0 = _rank_pids(tag, "0", set())
            time.sleep(0.005)
        while rank0[0] in tagged(tag):  # rank 0 gives up on its own (its timeout), while rank 1 is still stopped
            assert time.monotonic() < deadline and p.poll() is None, "rank 0 hung"
            time.sleep(0.05)
        assert stopped[0] in tagged(tag) or p.poll() is None
        out, err = p.communicate(timeout=600)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
    assert "did not all connect within 6 s" in err, err[-3000:]
    assert p.returncode == 0, err[-3000:]  # torchrun restarted the group, which finished the run
    assert json.loads(out.splitlines()[-1]) == want
    with EventLog(log, readonly=True) as lg:
        assert lg.verify() == []
