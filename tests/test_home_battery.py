"""The home's batteries, with real processes and real kills: node loss (SIGKILL after observed progress in the
home, then the node's disk deleted, the same command on a fresh one) with a directory home and an S3 server;
two writers; a home that goes away mid-run; a gate answered, then the node lost."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fsmtrain import EventLog
from fsmtrain.log.home import Home
from fsmtrain.log.store import open_store
from fsmtrain.replay import state_at
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

DEMO = [sys.executable, "-m", "fsmtrain", "demo", "--patience", "100", "--json"]
MODES = {"demo": ["--epochs", "3", "--delay", "0.25"],
         "chunked": ["--epochs", "2", "--chunk", "5", "--delay", "0.04"],
         "slow": ["--epochs", "5", "--delay", "0.5"]}  # (long enough to be mid-run when two machines start)
TRIALS = int(os.environ.get("HOME_TRIALS", "20"))


def env_for(extra: dict[str, str] | None = None) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FSMTRAIN_", "AWS_"))}
    return {**base, "PYTHONPATH": str(ROOT), **(extra or {})}


@contextlib.contextmanager
def aws(env: dict[str, str]):
    """This process sees the S3 server as the children do (its AWS_* and FSSPEC_S3 variables), for the block."""
    saved = dict(os.environ)
    os.environ.update({k: v for k, v in env.items() if k.startswith(("AWS_", "FSSPEC_S3"))})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def steps_in_home(home: str, env: dict[str, str]) -> int:
    """How many steps of run 1 the home holds (what a kill waits to see grow): the ``step`` of its newest event."""
    with aws(env):
        return _steps_in_home(home)


_STORES: dict[str, object] = {}


def _steps_in_home(home: str) -> int:
    try:
        store = _STORES.get(home) or _STORES.setdefault(home, open_store(home))
        names = store.list("runs/1/events")
        if not names:
            return -1
        last = store.get(f"runs/1/events/{names[-1]}").decode().rstrip("\n").rsplit("\n", 1)[-1]
        return int(json.loads(last)["event"]["step"])
    except Exception:  # (botocore's connection errors are not OSErrors)
        return -1


def reference(tmp_path: Path, mode: str) -> tuple[dict, dict]:
    log = tmp_path / f"ref-{mode}.db"
    p = subprocess.run(DEMO + ["--log", str(log), *MODES[mode]], cwd=ROOT, capture_output=True, text=True,
                       timeout=600, env=env_for())
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.splitlines()[-1]), histories(log)


def histories(log: Path) -> dict:
    with EventLog(log, readonly=True) as lg:
        assert lg.verify() == []
        s = state_at(lg, 1)
        return {k: list(s[k]) for k in ("train_loss", "val_loss", "val_acc")} | {k: s[k] for k in ("epoch", "steps")}


def lose_nodes_until_done(tmp_path: Path, home: str, mode: str, rng: random.Random, env: dict[str, str],
                          jitter: float = 0.6) -> tuple[dict, Path, int]:
    """Run the demo on a fresh 'node' (a new folder) with ``home``; once the home shows progress, SIGKILL it
    after a random delay and delete the node's folder; again until a run ends.  Returns (its JSON, its log, kills)."""
    kills = 0
    for launch in range(30):
        node = tmp_path / f"node{launch}"
        node.mkdir(parents=True)
        log = node / "r.db"
        before = steps_in_home(home, env)
        p = subprocess.Popen(DEMO + ["--log", str(log), "--home", home, *MODES[mode]], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 300
            while p.poll() is None and steps_in_home(home, env) <= before:
                assert time.monotonic() < deadline, "no progress in the home in 300 s"
                time.sleep(0.02)
            time.sleep(rng.uniform(0, jitter))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                kills += 1
            out, err = p.communicate(timeout=120)
        finally:
            if p.poll() is None:
                p.kill()
                p.communicate()
        if p.returncode == 0:
            return json.loads(out.splitlines()[-1]), log, kills
        assert p.returncode == -signal.SIGKILL, err
        LOST.append(lost_at_kill(log, home, env))
        shutil.rmtree(node)  # the node is gone, with its disk
    raise AssertionError("30 launches without an end")


LOST: list[tuple[int, float]] = []
"""Per node loss: (steps, seconds of the run's clock) the dead node had committed that its home lacked."""


def lost_at_kill(log: Path, home: str, env: dict[str, str]) -> tuple[int, float]:
    with EventLog(log, readonly=True) as lg:
        last = lg.last_event(1)
    with aws(env):
        store = _STORES.get(home) or _STORES.setdefault(home, open_store(home))
        names = store.list("runs/1/events")
        text = store.get(f"runs/1/events/{names[-1]}").decode()
    held = json.loads(text.rstrip("\n").rsplit("\n", 1)[-1])["event"]
    return last.step - held["step"], max(0.0, last.time - held["time"])


@pytest.fixture(autouse=True, scope="module")
def report_losses():
    """With HOME_REPORT=FILE, the work each node loss cost is written there (the README's measured bound)."""
    yield
    if os.environ.get("HOME_REPORT") and LOST:
        with open(os.environ["HOME_REPORT"], "a") as f:  # (one line per test process: [[steps, seconds], ...])
            f.write(json.dumps(LOST) + "\n")


def check_node_losses(tmp_path: Path, home_of, mode: str, env: dict[str, str], trials: int) -> None:
    want, want_hist = reference(tmp_path, mode)
    total = 0
    for trial in range(trials):
        home = home_of(trial)
        got, log, kills = lose_nodes_until_done(tmp_path / f"t{trial}", home, mode, random.Random(f"{mode}{trial}"),
                                                env)
        total += kills
        assert {k: got[k] for k in want} == want, (trial, kills)
        assert histories(log) == want_hist
        copy = tmp_path / f"t{trial}" / "pulled.db"
        with aws(env), EventLog(copy) as lg:  # (the home alone holds the whole run, every hash verified)
            Home.open(home).pull_all(lg)
        assert histories(copy) == want_hist
    assert total >= trials, total  # (most trials lose at least one node)


@pytest.mark.parametrize("mode", ["chunked", "demo"])
def test_node_loss_with_a_directory_home_ends_bit_identically(tmp_path, mode):
    check_node_losses(tmp_path, lambda trial: str(tmp_path / f"home{trial}"), mode, env_for(), TRIALS)


@pytest.fixture
def s3():
    from tests.s3server import running_s3_server

    with running_s3_server() as server:
        yield server


@pytest.mark.parametrize("mode", ["chunked", "demo"])
def test_node_loss_with_an_s3_home_ends_bit_identically(tmp_path, s3, mode):
    check_node_losses(tmp_path, lambda trial: f"s3://bucket/{mode}/t{trial}", mode, s3.child_env(env_for()),
                      int(os.environ.get("HOME_TRIALS_S3", "8")))


class Lines:
    """The stderr lines of a running process, read on a thread (to wait for one without a guessed sleep)."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        import threading

        self.thread = threading.Thread(target=lambda: self.lines.extend(iter(stream.readline, "")), daemon=True)
        self.thread.start()

    def wait_for(self, text: str, p: subprocess.Popen, limit: float = 300) -> None:
        deadline = time.monotonic() + limit
        while not any(text in line for line in self.lines):
            assert p.poll() is None, f"exited {p.returncode} before saying {text!r}: {self.lines}"
            assert time.monotonic() < deadline, f"never said {text!r}: {self.lines}"
            time.sleep(0.01)


def local_steps(log: Path) -> int:
    try:
        with EventLog(log, readonly=True) as lg:
            return lg.run(1).steps
    except Exception:
        return -1


def test_a_home_that_goes_away_mid_run_is_said_once_caught_up_and_still_resumes_after_a_node_loss(tmp_path, s3):
    mode = "demo"
    want, want_hist = reference(tmp_path, mode)
    env = s3.child_env(env_for())
    home = "s3://bucket/away"
    node = tmp_path / "a"
    node.mkdir()
    p = subprocess.Popen(DEMO + ["--log", str(node / "r.db"), "--home", home, "--epochs", "3", "--delay", "0.6"],
                         cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = Lines(p.stderr)
    try:
        deadline = time.monotonic() + 300
        while steps_in_home(home, env) < 1:
            assert p.poll() is None and time.monotonic() < deadline, err.lines
            time.sleep(0.01)
        s3.down()  # the server goes away: refused connections
        at = local_steps(node / "r.db")
        err.wait_for("cannot be reached", p)
        while local_steps(node / "r.db") < at + 2:  # training goes on meanwhile
            assert p.poll() is None and time.monotonic() < deadline, err.lines
            time.sleep(0.01)
        held = steps_in_home(home, env)
        s3.up()
        err.wait_for("is back", p)
        assert steps_in_home(home, env) > held  # caught up
        p.kill()  # ...and the node is lost after that
        p.wait()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert sum("cannot be reached" in line for line in err.lines) == 1, err.lines
    shutil.rmtree(node)
    got, log, _ = lose_nodes_until_done(tmp_path / "b", home, mode, random.Random(1), env, jitter=0)
    assert {k: got[k] for k in want} == want
    assert histories(log) == want_hist


@pytest.mark.parametrize("kind", ["dir", "s3"])
def test_two_machines_resuming_one_run_from_one_home_exactly_one_proceeds(tmp_path, kind, request):
    if kind == "s3":
        server = request.getfixturevalue("s3")
        env, home = server.child_env(env_for()), "s3://bucket/two"
    else:
        env, home = env_for(), str(tmp_path / "home")
    slow = MODES["slow"]
    want, want_hist = reference(tmp_path, "slow")
    first = tmp_path / "first"
    first.mkdir()
    p = subprocess.Popen(DEMO + ["--log", str(first / "r.db"), "--home", home, *slow], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while p.poll() is None and steps_in_home(home, env) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    p.kill()
    p.wait()
    procs = []
    for name in ("x", "y"):
        (tmp_path / name).mkdir()
        procs.append(subprocess.Popen(DEMO + ["--log", str(tmp_path / name / "r.db"), "--home", home,
                                              *slow], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = [q.communicate(timeout=600) for q in procs]
    codes = sorted(q.returncode for q in procs)
    assert codes == [0, 4], outs
    winner = 0 if procs[0].returncode == 0 else 1
    loser_err = outs[1 - winner][1]
    assert "belongs to another writer" in loser_err and str(tmp_path / "xy"[winner] / "r.db") in loser_err, loser_err
    assert "Traceback" not in loser_err
    got = json.loads(outs[winner][0].splitlines()[-1])
    assert {k: got[k] for k in want} == want
    copy = tmp_path / "pulled.db"
    q = subprocess.run([sys.executable, "-m", "fsmtrain", "pull", home, str(copy)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert q.returncode == 0, q.stderr
    assert histories(copy) == want_hist  # one history in the home: the winner's


def test_a_gate_answered_then_the_node_lost_keeps_the_answer(tmp_path, s3):
    env = s3.child_env(env_for())
    home = "s3://bucket/gate"
    fsm = [sys.executable, "-m", "fsmtrain"]
    a = tmp_path / "a"
    a.mkdir()
    p = subprocess.run(fsm + ["demo", "--log", str(a / "r.db"), "--home", home, "--gate", "--epochs", "2", "--json"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0 and json.loads(p.stdout.splitlines()[-1])["status"] == "waiting", p.stderr
    p = subprocess.run(fsm + ["approve", str(a / "r.db"), "1", "--home", home, "--comment", "ship it"], cwd=ROOT,
                       env={**env, "FSMTRAIN_USER": "ana"}, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    shutil.rmtree(a)  # the node is lost right after the answer was acknowledged
    b = tmp_path / "b"
    b.mkdir()
    p = subprocess.run(fsm + ["worker", str(b / "r.db"), "--home", home, "--machine",
                              "fsmtrain.train.demo:gated_trainer", "--once"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    with EventLog(b / "r.db", readonly=True) as lg:
        s = state_at(lg, 1)
        assert lg.run(1).status == "finished" and s["decision"] == "go" and s["comment"] == "ship it"
        answer = [e for e in lg.events(1) if e.kind == "input"]
        assert answer and answer[0].info["by"] == "ana"
        assert lg.verify() == []
