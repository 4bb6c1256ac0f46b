"""The durability policy: which commits are barriers, what a barrier does, and what waits for one.

Each commit's synchronous level is read from SQLite's trace of the writing connection: a barrier is the one
commit preceded by ``PRAGMA synchronous=FULL``.  (The power losses themselves: tests/test_power_loss.py.)
"""

from __future__ import annotations

import os
import time

import pytest

from fsmtrain import EventLog, Hook, Machine, Runner, action, give_input
from fsmtrain.log import BARRIER_KINDS, CHECKPOINT_EVERY
from fsmtrain.runner import retry, stop
from tests.machines import counter, gated


class Traced:
    """Records the SQL the log's writing connection runs, one list per commit (an INSERT or a COMMIT ends one)."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.statements: list[str] = []
        log._open_rw().set_trace_callback(self.statements.append)

    def commits(self) -> list[tuple[str, bool]]:
        """(what was inserted, whether the commit was a barrier) for each commit, in order."""
        out, full, last = [], False, None
        for sql in self.statements:
            if sql == last:
                continue  # (SQLite traces an INSERT again for the trigger it fires)
            last = sql
            s = sql.strip().upper()
            if s.startswith("PRAGMA SYNCHRONOUS=FULL"):
                full = True
            elif s.startswith("INSERT INTO EVENTS"):
                kind = sql.split("VALUES")[1].split(",")[4].strip().strip("'")
                out.append((kind, full))
            elif s.startswith("PRAGMA SYNCHRONOUS=NORMAL"):
                full = False
        return out


def barriers(commits: list[tuple[str, bool]]) -> list[int]:
    return [i for i, (_, full) in enumerate(commits) if full]


@pytest.fixture
def fsyncs(monkeypatch):
    """The fsyncs of the log's own files (not of the witness file beside its checkpoints)."""
    calls = []
    real = os.fsync

    def fsync(fd):
        if not os.readlink(f"/proc/self/fd/{fd}").endswith(("witness.jsonl", ".artifacts")):
            calls.append(fd)
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


class TestWhichCommitsAreBarriers:
    def test_steps_are_ordinary_commits_and_every_nth_commit_and_the_end_are_barriers(self, log_path):
        log = EventLog(log_path, barrier_every=4, barrier_seconds=3600)
        traced = Traced(log)
        r = Runner.start(counter(10), log=log)
        r.run()
        commits = traced.commits()
        assert [k for k, _ in commits] == ["start"] + ["step"] * 11
        # every 4th commit after a barrier is one; the end of the run is one
        assert barriers(commits) == [3, 7, 11]
        assert log.synced == log.commits == 12 and log.durable
        log.close()

    def test_the_first_commit_after_barrier_seconds_is_a_barrier(self, log_path, monkeypatch):
        clock = {"now": 1000.0}
        monkeypatch.setattr(time, "monotonic", lambda: clock["now"])
        log = EventLog(log_path, barrier_seconds=5)
        traced = Traced(log)
        r = Runner.start(counter(20), log=log)
        r.run(max_steps=3)
        clock["now"] += 5.0
        r.run(max_steps=3)
        assert barriers(traced.commits()) == [4]  # (the start, 3 steps, then the first commit after 5 s)
        log.close()

    @pytest.mark.parametrize("kind", sorted(BARRIER_KINDS))
    def test_what_a_person_or_the_world_gave_or_saw_is_a_barrier(self, log_path, kind):
        log = EventLog(log_path, barrier_seconds=3600)
        traced = Traced(log)
        r = Runner.start(gated(), log=log)
        r.run()  # work, then the gate waits: a `waiting` event
        if kind == "input":
            give_input(log, r.run_id, {"decision": "go"})
        elif kind in ("stopped", "pruned"):
            stop(log, r.run_id, reason="enough", kind=kind)
        elif kind in ("failed", "retry"):
            log.append(r.run_id, log.last_event(r.run_id).seq, kind="failed", step=1, action="review", error="boom")
            if kind == "retry":
                retry(log, r.run_id)
        commits = traced.commits()
        assert commits[-1] == (kind, True), commits
        assert commits[:2] == [("start", False), ("step", False)]
        log.close()

    def test_an_action_declared_barrier_commits_as_one(self, log_path):
        @action(reads=["n"], writes=["n"], barrier=True)
        def launch(state):
            return {"n": state["n"] + 1}

        @action(reads=["n"], writes=["n"])
        def plain(state):
            return {"n": state["n"] + 1}

        m = Machine("m", [plain, launch], [("plain", "launch"), ("launch", "plain")], entry="plain", initial={"n": 0})
        log = EventLog(log_path, barrier_seconds=3600)
        traced = Traced(log)
        Runner.start(m, log=log).run(max_steps=4)
        assert traced.commits() == [("start", False), ("step", False), ("step", True), ("step", False), ("step", True)]
        log.close()

    def test_step_mode_makes_every_commit_durable_and_none_mode_never_syncs(self, log_path, tmp_path, fsyncs):
        with EventLog(log_path, durability="step") as log:
            Runner.start(counter(3), log=log).run()
            assert log.conn.execute("PRAGMA synchronous").fetchone()[0] == 2 and log.durable
        with EventLog(tmp_path / "none.db", durability="none") as log:
            Runner.start(counter(3), log=log).run()
            assert log.conn.execute("PRAGMA synchronous").fetchone()[0] == 0
            log.barrier()
        assert fsyncs == []  # (FULL commits sync inside SQLite; barrier() has nothing to do in either mode)


class TestWhatABarrierDoes:
    def test_on_demand_and_at_close_one_fsync_of_the_wal(self, log_path, fsyncs):
        log = EventLog(log_path, barrier_seconds=3600)
        r = Runner.start(counter(50), log=log)
        r.run(max_steps=3)
        assert not log.durable
        r.barrier()
        assert len(fsyncs) == 1 and log.durable
        log.barrier()
        assert len(fsyncs) == 1  # nothing new: nothing to do
        r.run(max_steps=2)
        log.close()
        assert len(fsyncs) == 2

    def test_wal_checkpoints_run_at_barriers_only(self, log_path):
        log = EventLog(log_path, barrier_every=CHECKPOINT_EVERY * 3, barrier_seconds=3600)
        traced = Traced(log)
        assert log.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        Runner.start(counter(CHECKPOINT_EVERY * 4), log=log).run()
        at = [i for i, sql in enumerate(traced.statements) if "wal_checkpoint" in sql]
        fulls = [i for i, sql in enumerate(traced.statements) if sql.upper().startswith("PRAGMA SYNCHRONOUS=FULL")]
        assert len(at) == len(fulls) == 2  # at the periodic barrier and at the end: each followed by a checkpoint
        assert all(any(f < a for f in fulls) for a in at)
        log.close()

    def test_a_log_another_process_wrote_is_not_known_durable_until_a_barrier(self, log_path, fsyncs):
        with EventLog(log_path, barrier_seconds=3600) as log:
            Runner.start(counter(50), log=log).run(max_steps=3)
            log.synced = log.commits = 0  # (as if this process had died before its barrier)
            log._inherited = False
        log = EventLog(log_path)
        assert not log.durable
        log.barrier()
        assert log.durable and len(fsyncs) == 1
        log.close()


class Seen(Hook):
    def __init__(self, log, external):
        self.log, self.external, self.calls = log, external, []

    def on_step_end(self, *, step, **_):
        self.calls.append((step, self.log.durable))

    def on_run_end(self, *, status, **_):
        self.calls.append((status, self.log.durable))


class TestHooksWithExternalEffects:
    def test_are_held_until_a_barrier_then_delivered_in_order(self, log_path):
        log = EventLog(log_path, barrier_every=4, barrier_seconds=3600)
        outside, inside = Seen(log, True), Seen(log, False)
        r = Runner.start(counter(9), log=log, hooks=[outside, inside])
        r.run(max_steps=2)
        # run() handed control back: what was held went out after a barrier
        assert [c[0] for c in outside.calls] == [1, 2] and outside.calls[-1][1]
        r.run()
        assert [c[0] for c in outside.calls] == [*range(1, 11), "finished"]
        assert [c[0] for c in inside.calls] == [c[0] for c in outside.calls]
        assert not all(durable for _, durable in inside.calls)  # in-process hooks: at once, as before

    def test_nothing_external_sees_a_step_before_it_is_durable(self, log_path):
        log = EventLog(log_path, barrier_every=3, barrier_seconds=3600)
        got = []

        class Outside(Hook):
            external = True

            def on_step_end(self, *, step, **_):
                got.append((step, log.synced >= 1 + step))  # step n is commit n + 1 (after the start)

        Runner.start(counter(12), log=log, hooks=[Outside()]).run()
        assert [s for s, _ in got] == list(range(1, 14)) and all(ok for _, ok in got)

    def test_the_builtin_hooks_that_leave_the_process_are_external(self, tmp_path):
        from fsmtrain.hooks import CsvMetrics, JsonlMetrics, Notify, Progress

        assert Notify(tmp_path / "n.txt").external and JsonlMetrics(tmp_path / "m.jsonl").external
        assert CsvMetrics(tmp_path / "m.csv").external and not Progress().external
