"""Failing well: kills, full disks, read-only storage and locked logs never lose a run, and name their cause."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fsmtrain import EventLog, Runner, state_at
from fsmtrain.errors import NotALog, ReadOnlyLog, RunBusy, RunFailed, RunNotFound, StorageError
from fsmtrain.log import LogBusy
from fsmtrain.train import Resources, Trainer
from fsmtrain.train import demo as demo_module
from tests.conftest import ROOT, file_digest, fill, finished_counter_log, remount_read_only
from tests.machines import counter
from tests.machines.training import tiny_build, tiny_machine

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

FAILING: list[bool] = []


def failing_build(state) -> Resources:
    """The tiny model, whose loss raises while FAILING holds True: an action that fails on every attempt."""
    r = tiny_build(state)

    def loss(out, y):
        if FAILING and FAILING[-1]:
            raise RuntimeError("loss exploded")
        return torch.nn.functional.cross_entropy(out, y)

    r.loss_fn = loss
    return r


def count(log_path, kind, run_id=1):
    """How many events of ``kind`` the run has now (0 while the log is still being created)."""
    try:
        with EventLog(log_path, readonly=True) as log:
            return sum(e.kind == kind for e in log.events(run_id))
    except (NotALog, RunNotFound):
        return 0


def wait_for(predicate, what, proc=None, limit=120.0):
    """Poll until ``predicate()``; fail (never hang) if the process died first or nothing happened in time."""
    deadline = time.monotonic() + limit
    while not predicate():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the process ended before {what}: {err[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {limit:.0f} s")
        time.sleep(0.01)


DEMO = [sys.executable, "-m", "fsmtrain", "demo", "--epochs", "3", "--patience", "100", "--json"]


class TestKilledIsNotFailed:
    @pytest.mark.slow
    def test_killed_right_after_every_resume_the_demo_still_finishes_identically(self, tmp_path):
        """Five SIGKILLs inside the same step (each just after its process resumed) do not fail the run."""
        ref = subprocess.run(DEMO + ["--log", str(tmp_path / "ref.db")], cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
        assert ref.returncode == 0, ref.stderr
        log = tmp_path / "killed.db"
        cmd = DEMO + ["--log", str(log), "--delay", "0.5"]
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: log.exists() and count(log, "step") >= 3, "first epoch", p)  # next: a slow training chunk
        p.kill()
        p.communicate()
        for k in range(5):  # each process dies inside the step it resumed: no step commits in between
            p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            wait_for(lambda k=k: count(log, "resume") >= k + 1, "resume event", p)
            p.kill()
            p.communicate()
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout.splitlines()[-1]) == json.loads(ref.stdout.splitlines()[-1])
        with EventLog(log, readonly=True) as lg:
            resumes = [e.info["interrupted"] for e in lg.events(1) if e.kind == "resume"]
            assert resumes[:6] == [0, 1, 2, 3, 4, 5] and not any(e.kind in ("error", "failed") for e in lg.events(1))
            assert lg.verify() == []
        shown = subprocess.run([sys.executable, "-m", "fsmtrain", "replay", str(log), "--run", "1"], cwd=ROOT,
                               capture_output=True, text=True)
        assert f"resumed after {len(resumes)} interruptions" in shown.stdout.splitlines()[0]

    def test_fit_refuses_a_failed_run_naming_it_and_retry_continues_it(self, tmp_path):
        path = tmp_path / "runs.db"
        FAILING.append(False)
        trainer = Trainer(tiny_machine(3), failing_build, log=path, max_attempts=2)
        runner = trainer.start({"lr": 0.01})
        runner.run(max_steps=3)  # one epoch, then every attempt fails
        FAILING[-1] = True
        with pytest.raises(Exception, match="loss exploded"):
            runner.run()
        runner.close()
        assert trainer.log.run(1).status == "failed"
        digest = file_digest(path)
        with pytest.raises(RunFailed, match=r"run 1 \(this config's newest\) failed at `train_epoch`: RuntimeError: "
                                            r"loss exploded\. Continue it .*trainer\.retry\(1\).*fsmtrain retry .*new=True"):
            trainer.fit({"lr": 0.01})
        assert file_digest(path) == digest and [r.id for r in trainer.log.runs()] == [1]  # nothing new started
        FAILING[-1] = False
        runner = trainer.retry(1, comment="fixed the loss", by="ann")
        assert runner.status == "finished" and runner.state["epoch"] == 3
        with EventLog(path, readonly=True) as log:
            retry = next(e for e in log.events(1) if e.kind == "retry")
            assert retry.info["by"] == "ann" and retry.info["comment"] == "fixed the loss"
        FAILING.pop()
        clean = Trainer(tiny_machine(3), tiny_build, log=tmp_path / "clean.db").fit({"lr": 0.01})
        assert runner.state["weights_sha256"] == clean.state["weights_sha256"]  # the retry lost nothing

    def test_the_retry_and_stop_commands_record_who_and_why(self, tmp_path):
        path = tmp_path / "runs.db"
        with EventLog(path) as log:
            Runner.start(counter(3), log=log).run(max_steps=1)
        env = {**os.environ, "FSMTRAIN_USER": "bea", "PYTHONPATH": str(ROOT)}
        fsm = [sys.executable, "-m", "fsmtrain"]
        p = subprocess.run(fsm + ["retry", str(path), "1"], capture_output=True, text=True, env=env)
        assert p.returncode == 1 and "run 1 is running, not failed" in p.stderr
        p = subprocess.run(fsm + ["stop", str(path), "1", "--reason", "not needed"], capture_output=True, text=True,
                           env=env)
        assert p.returncode == 0 and p.stdout.startswith("run 1 stopped by bea after 1 step(s): not needed"), p.stderr
        with EventLog(path, readonly=True) as log:
            assert log.run(1).status == "stopped" and log.last_event(1).info["reason"] == "not needed"
        p = subprocess.run(fsm + ["stop", str(path), "1", "--reason", "again"], capture_output=True, text=True, env=env)
        assert p.returncode == 1 and "run 1 is stopped already" in p.stderr

    def test_a_run_that_ended_keeps_the_files_its_state_names_and_loses_the_rest(self, tmp_path):
        path = tmp_path / "runs.db"
        FAILING.append(False)
        try:
            trainer = Trainer(tiny_machine(4), failing_build, log=path, max_attempts=1)
            runner = trainer.start({"lr": 0.01})
            runner.run(max_steps=6)  # two epochs, two checkpoints
            stray = path.with_name("runs.db.artifacts") / "run1" / "e00009-000000000000.pt"
            stray.write_bytes(b"written by a step that never committed")
            FAILING[-1] = True
            with pytest.raises(Exception, match="loss exploded"):
                runner.run()
        finally:
            FAILING.pop()
        kept = {r.path for r in (state_at(trainer.log, 1)["checkpoints"])}
        folder = path.with_name("runs.db.artifacts") / "run1"
        assert {f"run1/{p.name}" for p in folder.iterdir()} == kept and len(kept) == 2


class TestTheEnvironment:
    def test_a_full_disk_during_training_stops_resumably_and_says_so(self, tmp_path, small_disk):
        disk = small_disk("3m")
        path = disk / "runs.db"
        trainer = Trainer(tiny_machine(4), tiny_build, log=path)
        runner = trainer.start({"lr": 0.01})
        runner.run(max_steps=3)
        runner.close()
        filler = fill(disk)
        with pytest.raises(StorageError, match="the disk is full") as got:
            trainer.fit({"lr": 0.01}, on_interrupt="raise")
        assert "cannot rollback" not in str(got.value)
        with EventLog(path, readonly=True) as log:
            assert log.run(1).status == "running" and log.verify() == []
            assert not any(e.kind in ("error", "failed") for e in log.events(1))
        assert not [p for p in (disk / "runs.db.artifacts" / "run1").iterdir() if p.name.endswith(".tmp")]
        filler.unlink()
        trainer.close()
        done = Trainer(tiny_machine(4), tiny_build, log=path).fit({"lr": 0.01})
        clean = Trainer(tiny_machine(4), tiny_build, log=tmp_path / "clean.db").fit({"lr": 0.01})
        assert done.state["weights_sha256"] == clean.state["weights_sha256"]

    def test_a_full_disk_at_a_commit_names_the_disk_not_a_failed_rollback(self, small_disk):
        disk = small_disk("1m")
        with EventLog(disk / "runs.db") as log:
            ev = log.create_run("m", "f" * 64, snapshot={"n": 0}, next_action="a")
            filler = fill(disk)
            with pytest.raises(StorageError, match=r"cannot write to .*runs\.db: the disk is full \(SQLite: database "
                                                   r"or disk is full\); nothing of this write was committed"):
                for i in range(10_000):  # until the WAL cannot grow
                    ev = log.append(1, ev.seq, kind="step", step=i + 1, updates={"set": {"blob": "x" * 4000}},
                                    next_action="a")
            seq = ev.seq
            filler.unlink()
            assert log.run(1).last_seq == seq and log.verify() == []
            log.append(1, seq, kind="step", step=seq, next_action="a")  # writable again

    def test_a_log_on_read_only_storage_is_read_and_never_written(self, tmp_path, small_disk):
        disk = small_disk("8m")
        path = disk / "runs.db"
        finished_counter_log(path, 3)
        with Trainer(tiny_machine(1), tiny_build, log=disk / "train.db") as trainer:
            trainer.fit({"lr": 0.01})
        remount_read_only(disk)
        fsm = [sys.executable, "-m", "fsmtrain"]
        for args in (["replay", path], ["replay", path, "--run", "1"], ["verify", path], ["watch", path],
                     ["whatif", disk / "train.db", "-c", "max_epochs(1)"],
                     ["plot", disk / "train.db", "--run", "1", "--metric", "val_loss", "-o", tmp_path / "c.svg"],
                     ["doctor", "--log", path]):
            p = subprocess.run(fsm + [str(a) for a in args], capture_output=True, text=True, cwd=ROOT)
            assert p.returncode == 0, (args, p.stderr)
        built = []

        def build(state):
            built.append(1)
            return tiny_build(state)

        with pytest.raises(ReadOnlyLog, match="read-only storage or permissions.*nothing was done"):
            Trainer(tiny_machine(2), build, log=disk / "train.db").fit({"lr": 0.01})
        assert built == []  # refused before any work
        p = subprocess.run(fsm + ["approve", str(path), "1"], capture_output=True, text=True, cwd=ROOT)
        assert p.returncode == 1 and "read-only storage" in p.stderr and "Traceback" not in p.stderr

    def test_a_locked_log_is_reported_quickly(self, log_path):
        finished_counter_log(log_path, 2)
        holder = subprocess.Popen([sys.executable, "-c", (
            "import sqlite3, sys, time\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('PRAGMA locking_mode=EXCLUSIVE'); c.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True); time.sleep(600)\n"), str(log_path)], stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "locked"
            with pytest.raises(LogBusy, match="is locked by another process"):
                EventLog(log_path, readonly=True, timeout=1.0)
            p = subprocess.run([sys.executable, "-m", "fsmtrain", "replay", str(log_path)], capture_output=True,
                               text=True, cwd=ROOT, timeout=120)
            assert p.returncode == 1 and "is locked by another process" in p.stderr and "Traceback" not in p.stderr
        finally:
            holder.kill()
            holder.wait()


class TestOneRunnerPerRun:
    def test_a_second_process_on_a_running_run_writes_nothing_and_names_the_first(self, tmp_path):
        log = tmp_path / "runs.db"
        cmd = [sys.executable, "-m", "fsmtrain", "demo", "--log", str(log), "--epochs", "40", "--patience", "100",
               "--delay", "0.5"]
        first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: log.exists() and count(log, "step") >= 1, "first step", first)
            with EventLog(log, readonly=True) as lg:
                before = lg.run(1).last_seq
            second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
            assert second.returncode == 1, second.stderr
            assert f"run 1 is being run by another process (pid {first.pid} on " in second.stderr
            with EventLog(log, readonly=True) as lg:  # the loser wrote nothing: only the first one's steps
                assert not any(e.kind == "resume" for e in lg.events(1)) and lg.run(1).last_seq >= before
            with pytest.raises(RunBusy, match=f"pid {first.pid}"):
                demo_module.trainer(log).resume(1)
        finally:
            first.kill()
            first.communicate()
        assert demo_module.trainer(log).fit(on_interrupt="raise").status == "finished"  # the lock died with it


def test_on_a_full_disk_readers_read_and_writers_say_the_disk_is_full_leaving_nothing(tmp_path, small_disk):
    """A log copied onto a full disk: replay and verify read it (they write nothing, so a full disk is no reason
    to fail); approve says the disk is full; demo with a new log says so too; none leaves a file behind."""
    import shutil

    from tests.machines import gated

    src = tmp_path / "g.db"
    with EventLog(src) as log:
        Runner.start(gated(), log=log).run()
    disk = small_disk("4m")
    shutil.copy(src, disk / "g.db")
    fill(disk)
    before = {p.name: file_digest(p) for p in disk.iterdir() if p.is_file() and p.name != "filler"}

    def fsm(*args):
        return subprocess.run([sys.executable, "-m", "fsmtrain", *args], cwd=disk, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)

    for args in (["replay", "g.db"], ["replay", "g.db", "--run", "1"], ["verify", "g.db"]):
        p = fsm(*args)
        assert p.returncode == 0, (args, p.stderr)
    for args in (["approve", "g.db", "1"], ["demo", "--log", "new.db", "--epochs", "1"]):
        p = fsm(*args)
        assert p.returncode == 1 and "the disk is full" in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)
    assert {p.name: file_digest(p) for p in disk.iterdir() if p.is_file() and p.name != "filler"} == before
