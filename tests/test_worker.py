"""The worker: continues runnable runs until their next halt, from cron or a loop, with real processes."""

import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from fsmtrain import EventLog, Runner, decide, state_at
from fsmtrain.errors import InvalidInput, RunBusy
from fsmtrain.worker import Worker, parse_duration, run_lock
from tests.conftest import ROOT, lock_held_elsewhere
from tests.machines.approval import machine
from tests.test_crash import events_in, kill_until_done

ENV = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
TARGET = "tests.machines.approval:machine"


def fsmtrain(*args, cwd, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "fsmtrain", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**ENV, **(env or {})}, **kw)


def start_worker(*args, cwd):
    return subprocess.Popen([sys.executable, "-m", "fsmtrain", "worker", *args], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def approved_runs(path, n, delay=0.0):
    """n runs of the gated machine, each waiting at review, then approved."""
    with EventLog(path) as log:
        for _ in range(n):
            r = Runner.start(machine, log=log, state={"delay": delay})
            assert r.run().reason == "waiting"
            decide(log, r.run_id, True, by="tester")


def history(log, run_id):
    """What a run did, without times and process details: (kind, step, action, inputs, updates, next)."""
    return [(e.kind, e.step, e.action, e.inputs, e.updates, e.next) for e in log.events(run_id) if e.kind != "resume"]


class TestOnePass:
    def test_runnable_runs_are_continued_and_the_rest_left_alone(self, tmp_path):
        from fsmtrain.stopping import max_epochs
        from tests.machines.curves import curve_machine

        path = tmp_path / "w.db"
        with EventLog(path) as log:
            approved = Runner.start(machine, log=log)
            approved.run()
            decide(log, approved.run_id, True)                        # 1: input given -> runnable
            Runner.start(machine, log=log).run()                      # 2: waiting, no input -> left alone
            Runner.start(machine, log=log).run(max_steps=1)           # 3: running (its process died) -> runnable
            Runner.start(curve_machine(max_epochs(2)), log=log, state={"curve": [1.0, 0.5]})  # 4: another machine
            lines = []
            reports = Worker(log, machine, echo=lines.append).run_once()
            assert [(r.run_id, r.outcome) for r in reports] == [(1, "finished"), (3, "waiting")]
            assert lines == ["run 1: finished after 8 step(s)",
                             "run 3: waiting at `review` after 2 step(s); needs decision (go | no-go), "
                             "comment (str, optional), scale (int, optional)"]
            assert [r.status for r in log.runs()] == ["finished", "waiting", "waiting", "running"]
            assert Worker(log, machine).run_once() == []  # nothing left to do

    def test_max_runs_limits_a_pass(self, tmp_path):
        approved_runs(tmp_path / "w.db", 3)
        with EventLog(tmp_path / "w.db") as log:
            assert [r.run_id for r in Worker(log, machine, max_runs=2).run_once()] == [1, 2]
            assert [r.run_id for r in Worker(log, machine, max_runs=2).run_once()] == [3]
        with pytest.raises(InvalidInput, match="max_runs must be an int >= 1"):
            Worker(log, machine, max_runs=0)

    def test_a_run_locked_by_another_worker_is_skipped_as_busy(self, tmp_path):
        approved_runs(tmp_path / "w.db", 1)
        with EventLog(tmp_path / "w.db") as log, lock_held_elsewhere(log.artifacts, 1) as other:
            (report,) = Worker(log, machine).run_once()
            assert report.outcome == "busy" and log.run(1).status == "running"
            with run_lock(log, 1) as again:
                assert not again
            with pytest.raises(RunBusy, match=f"run 1 is being run by another process \\(pid {other.pid} on "):
                Runner.resume(machine, log, 1)
        with EventLog(tmp_path / "w.db") as log, run_lock(log, 1) as mine:
            assert mine  # the holder died: the kernel released its lock

    def test_a_failing_run_is_reported_and_the_others_go_on(self, tmp_path):
        from fsmtrain import Machine, action

        @action()
        def boom(state):
            raise RuntimeError("disk on fire")

        bad = Machine("gated", [boom], [("boom", "boom")], entry="boom")
        with EventLog(tmp_path / "w.db") as log:
            Runner.start(bad, log=log)
            lines = []
            (report,) = Worker(log, bad, echo=lines.append).run_once()
        assert report.outcome == "failed" and "disk on fire" in report.detail

    def test_targets_are_machines_or_functions_of_the_log(self, tmp_path):
        approved_runs(tmp_path / "w.db", 1)
        with EventLog(tmp_path / "w.db") as log:
            from fsmtrain.worker import as_target

            assert as_target(machine, log).machine is machine
            with pytest.raises(InvalidInput, match="a worker target must be a Machine"):
                Worker(log, lambda log: 42)

    def test_durations(self):
        assert [parse_duration(t) for t in ("30s", "10m", "1h", "0.5", "250ms", "2d")] == \
            [30, 600, 3600, 0.5, 0.25, 172800]
        for bad in ("", "ten minutes", "-1s", "0s", "5 weeks"):
            with pytest.raises(InvalidInput):
                parse_duration(bad)


@pytest.mark.slow
class TestRealProcesses:
    def test_demo_gate_approve_worker_exports_the_best_model(self, tmp_path):
        """train -> waiting -> process exits -> approve (another process) -> worker --once -> finished, exported."""
        torch = pytest.importorskip("torch")
        p = fsmtrain("demo", "--log", "g.db", "--gate", "--epochs", "3", cwd=tmp_path)
        assert p.returncode == 0, p.stderr
        assert "run 1 is waiting at `review`" in p.stdout
        assert "fsmtrain worker g.db --machine fsmtrain.train.demo:gated_trainer --once" in p.stdout
        assert "waiting" in fsmtrain("replay", "g.db", cwd=tmp_path).stdout.splitlines()[1]
        p = fsmtrain("approve", "g.db", "1", "--comment", "good enough", cwd=tmp_path, env={"FSMTRAIN_USER": "ann"})
        assert p.returncode == 0, p.stderr
        assert "tags suggest --machine 'fsmtrain.train.demo:gated_trainer'; that text comes from the log" in p.stdout
        p = fsmtrain("worker", "g.db", "--machine", "fsmtrain.train.demo:gated_trainer", "--once", cwd=tmp_path)
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == "run 1: finished after 3 step(s)"
        with EventLog(tmp_path / "g.db", readonly=True) as log:
            state = state_at(log, 1)
            assert log.verify() == [] and log.run(1).status == "finished"
            ev = next(e for e in log.events(1) if e.kind == "input")
        assert (state["decision"], state["comment"], ev.info["by"]) == ("go", "good enough", "ann")
        exported, best = state["exported"], state["best"]
        path = tmp_path / "g.db.artifacts" / exported.path
        assert path.stat().st_size == exported.size
        model = torch.load(path, weights_only=True)
        ckpt = torch.load(tmp_path / "g.db.artifacts" / best["checkpoint"].path, weights_only=True)
        assert model["epoch"] == best["epoch"] and model["value"] == best["value"]
        assert all(torch.equal(model["model"][k], ckpt["model"][k]) for k in ckpt["model"])

    def test_demo_gate_reject_takes_the_no_go_branch(self, tmp_path):
        pytest.importorskip("torch")
        assert fsmtrain("demo", "--log", "g.db", "--gate", "--epochs", "2", cwd=tmp_path).returncode == 0
        assert fsmtrain("reject", "g.db", "1", cwd=tmp_path).returncode == 0
        p = fsmtrain("worker", "g.db", "--machine", "fsmtrain.train.demo:gated_trainer", "--once", cwd=tmp_path)
        assert p.returncode == 0 and p.stdout.strip() == "run 1: finished after 2 step(s)"  # review, finish
        with EventLog(tmp_path / "g.db", readonly=True) as log:
            state = state_at(log, 1)
        assert state["decision"] == "no-go" and state["exported"] is None
        assert not list((tmp_path / "g.db.artifacts" / "run1").glob("model-*"))

    def test_a_worker_killed_at_random_moments_ends_as_an_uninterrupted_one(self, tmp_path):
        """Each kill lands after the worker committed a new step (observed in the log), never on a guessed sleep."""
        approved_runs(tmp_path / "w.db", 2, delay=0.08)
        for suffix in ("", "-wal", "-shm"):
            if (tmp_path / f"w.db{suffix}").exists():
                shutil.copy(tmp_path / f"w.db{suffix}", tmp_path / f"ref.db{suffix}")
        assert fsmtrain("worker", "ref.db", "--machine", TARGET, "--once", cwd=tmp_path).returncode == 0
        cmd = [sys.executable, "-m", "fsmtrain", "worker", str(tmp_path / "w.db"), "--machine", TARGET, "--once"]
        kills, _ = kill_until_done(cmd, tmp_path / "w.db", random.Random(7), 6, 0.15, env=ENV)
        assert kills >= 2
        with EventLog(tmp_path / "w.db", readonly=True) as got, EventLog(tmp_path / "ref.db", readonly=True) as ref:
            assert got.verify() == []
            for run in (1, 2):
                assert got.run(run).status == "finished"
                assert state_at(got, run) == state_at(ref, run)
                assert history(got, run) == history(ref, run)

    def test_two_workers_at_once_run_each_run_exactly_once(self, tmp_path):
        approved_runs(tmp_path / "w.db", 6, delay=0.03)
        procs = [start_worker("w.db", "--machine", TARGET, "--once", cwd=tmp_path) for _ in range(2)]
        outs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        finished = [line for out, _ in outs for line in out.splitlines() if "finished" in line]
        assert sorted(int(line.split()[1].rstrip(":")) for line in finished) == [1, 2, 3, 4, 5, 6]
        with EventLog(tmp_path / "w.db", readonly=True) as log:
            assert log.verify() == []  # gapless, hash chains intact
            for run in log.runs():
                events = list(log.events(run.id))
                # scale 2 (the default): 0 + 1 + 4, then 8, 17, 36, 75, 154
                assert run.status == "finished" and state_at(log, run.id)["total"] == 295
                assert sum(e.kind == "resume" for e in events) == 1  # one worker, once
                assert [e.seq for e in events] == list(range(1, len(events) + 1))

    def test_every_passes_again_and_stops_cleanly_on_sigterm(self, tmp_path):
        path = tmp_path / "w.db"
        with EventLog(path) as log:
            assert Runner.start(machine, log=log).run().reason == "waiting"
        proc = start_worker("w.db", "--machine", TARGET, "--every", "0.2s", cwd=tmp_path)
        try:
            assert proc.stdout.readline().startswith("worker: passing over")  # it runs: now approve
            assert fsmtrain("approve", "w.db", "1", cwd=tmp_path).returncode == 0
            seen = [proc.stdout.readline() for _ in range(1)]
            while "run 1:" not in seen[-1] and seen[-1]:
                seen.append(proc.stdout.readline())
            assert seen[-1].strip() == "run 1: finished after 8 step(s)", seen
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == 0, err
        assert "SIGTERM: stopping after the current step" in err

    def test_sigint_stops_after_the_current_step_and_the_run_resumes_later(self, tmp_path):
        approved_runs(tmp_path / "w.db", 1, delay=0.3)
        before = events_in(tmp_path / "w.db")
        proc = start_worker("w.db", "--machine", TARGET, "--once", cwd=tmp_path)
        try:
            deadline = time.monotonic() + 300
            while events_in(tmp_path / "w.db") <= before:  # the worker committed its first step: interrupt it
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.01)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == 0, err
        assert "run 1: stopped at `" in out and "SIGINT" in err
        with EventLog(tmp_path / "w.db", readonly=True) as log:
            assert log.run(1).status == "running" and log.verify() == []
        p = fsmtrain("worker", "w.db", "--machine", TARGET, "--once", cwd=tmp_path)
        assert p.returncode == 0 and "finished" in p.stdout
        with EventLog(tmp_path / "w.db", readonly=True) as log:
            assert state_at(log, 1)["total"] == 295  # scale 2 (the default): 0+1+4 then 8, 17, 36, 75, 154

    def test_hooks_named_on_the_command_line_notify(self, tmp_path):
        with EventLog(tmp_path / "w.db") as log:
            Runner.start(machine, log=log).run(max_steps=1)
        gates = tmp_path / "gates.txt"
        p = fsmtrain("worker", "w.db", "--machine", TARGET, "--once", "--hook", "tests.machines.approval:notify",
                     cwd=tmp_path, env={"GATES_FILE": str(gates)})
        assert p.returncode == 0, p.stderr
        assert "run 1 waits at `review` for decision (go | no-go)" in gates.read_text()

    @pytest.mark.parametrize(("args", "message"), [
        (["--machine", TARGET], "give exactly one of --once and --every"),
        (["--machine", TARGET, "--once", "--every", "1m"], "give exactly one of --once and --every"),
        (["--machine", "tests.machines.approval:nothing", "--once"], "has no attribute 'nothing'"),
        (["--machine", "no_such_module:x", "--once"], "cannot import module 'no_such_module'"),
        (["--machine", "os:sep", "--once"], "a worker target must be a Machine"),
        (["--machine", TARGET, "--every", "soon"], "cannot read 'soon' as a duration"),
        (["--machine", TARGET, "--once", "--max-runs", "0"], "0 is not in the range 1<=x"),
    ])
    def test_bad_usage_exits_2_with_a_message(self, tmp_path, args, message):
        approved_runs(tmp_path / "w.db", 1)
        p = fsmtrain("worker", "w.db", *args, cwd=tmp_path)
        assert p.returncode == 2, (p.stdout, p.stderr)
        assert message in p.stderr and "Traceback" not in p.stderr

    def test_a_missing_log_is_an_error_not_a_new_file(self, tmp_path):
        p = fsmtrain("worker", "none.db", "--machine", TARGET, "--once", cwd=tmp_path)
        assert p.returncode == 2 and "does not exist" in p.stderr and not (tmp_path / "none.db").exists()


def test_nothing_named_in_the_log_is_ever_imported(tmp_path):
    """A run's `worker` tag is shown to the operator as a suggestion, never imported by approve or the worker."""
    (tmp_path / "evil_mod.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\nx = None\n")
    with EventLog(tmp_path / "w.db") as log:
        Runner.start(machine, log=log, tags={"worker": "evil_mod:x"}).run()
    env = {"PYTHONPATH": f"{ROOT}:{tmp_path}"}
    p = fsmtrain("approve", "w.db", "1", cwd=tmp_path, env=env)
    assert p.returncode == 0 and "tags suggest --machine 'evil_mod:x'; that text comes from the log" in p.stdout
    p = fsmtrain("worker", "w.db", "--machine", TARGET, "--once", cwd=tmp_path, env=env)
    assert p.returncode == 0 and "finished" in p.stdout
    assert not (tmp_path / "imported").exists()
