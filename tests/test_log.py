import json
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from fsmtrain import EventLog, Runner
from fsmtrain.errors import NotALog, ReadOnlyLog, RunNotFound, SchemaVersionError
from fsmtrain.log import SCHEMA_VERSION
from tests.conftest import ROOT, file_digest, finished_counter_log, tamper
from tests.machines import counter


@pytest.fixture
def finished_log(log_path):
    return finished_counter_log(log_path, 3)


class TestAppendOnly:
    @pytest.mark.parametrize("sql", [
        "UPDATE events SET kind = 'step' WHERE seq = 2",
        "DELETE FROM events WHERE seq = 3",
        "UPDATE runs SET machine = 'x'",
        "DELETE FROM runs",
        "UPDATE fsmtrain_schema SET version = 9",
        "DELETE FROM fsmtrain_schema",
    ])
    def test_the_database_refuses_update_and_delete(self, finished_log, sql):
        """Plain sqlite3, no fsmtrain code: the triggers reject the edit and nothing changes."""
        digest = file_digest(finished_log)
        conn = sqlite3.connect(finished_log)
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(sql)
        conn.close()
        assert file_digest(finished_log) == digest

    def test_a_sequence_gap_is_refused_by_the_database(self, finished_log):
        conn = sqlite3.connect(finished_log)
        row = conn.execute("SELECT * FROM events WHERE run_id = 1 ORDER BY seq DESC LIMIT 1").fetchone()
        with pytest.raises(sqlite3.DatabaseError, match="gapless"):
            conn.execute("INSERT INTO events (run_id, seq, step, time, kind, prev_hash, hash) "
                         "VALUES (1, ?, 0, 0, 'step', '', '')", (row[1] + 2,))

    def test_verify_finds_an_edit_made_after_dropping_the_triggers(self, finished_log):
        with EventLog(finished_log, readonly=True) as log:
            assert log.verify() == []
        tamper(finished_log, "DROP TRIGGER events_no_update",
               """UPDATE events SET updates = '{"set":{"n":99}}' WHERE run_id = 1 AND seq = 3""")
        with EventLog(finished_log, readonly=True) as log:
            problems = log.verify()
        assert problems == ["trigger events_no_update is missing: the log is no longer protected against edits",
                            "run 1 event 3: hash does not match its contents (the event was edited)"]

    def test_verify_finds_a_deleted_event(self, finished_log):
        tamper(finished_log, "DROP TRIGGER events_no_delete", "DELETE FROM events WHERE run_id = 1 AND seq = 2")
        with EventLog(finished_log, readonly=True) as log:
            problems = log.verify()
        assert "run 1: event 2 is missing (next is 3)" in problems
        assert any("chain is broken" in p for p in problems)


class TestOpening:
    def test_a_file_that_is_not_sqlite(self, tmp_path):
        p = tmp_path / "notes.txt"
        p.write_text("hello")
        for ro in (True, False):
            with pytest.raises(NotALog, match="not a SQLite database"):
                EventLog(p, readonly=ro)
        assert p.read_text() == "hello"

    def test_an_empty_file_is_not_a_log_when_reading(self, tmp_path):
        p = tmp_path / "empty.db"
        p.touch()
        with pytest.raises(NotALog, match="empty file"):
            EventLog(p, readonly=True)
        assert p.stat().st_size == 0

    def test_a_missing_file_when_reading(self, tmp_path):
        with pytest.raises(NotALog, match="does not exist"):
            EventLog(tmp_path / "nope.db", readonly=True)
        assert not (tmp_path / "nope.db").exists()

    def test_sqlite_without_our_tables(self, tmp_path):
        p = tmp_path / "other.db"
        tamper(p, "CREATE TABLE t (x)")
        digest = file_digest(p)
        for ro in (True, False):
            with pytest.raises(NotALog, match="not an fsmtrain log"):
                EventLog(p, readonly=ro)
        assert file_digest(p) == digest

    def test_sqlite_internal_tables_do_not_make_it_foreign(self, finished_log):
        """ANALYZE adds sqlite_stat1; the log still opens for reading and writing."""
        tamper(finished_log, "ANALYZE")
        with EventLog(finished_log) as log:
            assert log.run(1).status == "finished"

    def test_a_newer_schema_version_is_refused(self, finished_log):
        tamper(finished_log, ("INSERT INTO fsmtrain_schema VALUES (?, 0, 'future')", (SCHEMA_VERSION + 1,)))
        digest = file_digest(finished_log)
        for ro in (True, False):
            with pytest.raises(SchemaVersionError, match="upgrade fsmtrain"):
                EventLog(finished_log, readonly=ro)
        assert file_digest(finished_log) == digest

    def test_read_only_logs_refuse_writes(self, finished_log):
        with EventLog(finished_log, readonly=True) as log, pytest.raises(ReadOnlyLog):
            log.append(1, 1, kind="step", step=1)

    def test_unknown_run(self, finished_log):
        with EventLog(finished_log, readonly=True) as log, pytest.raises(RunNotFound, match="run 7 does not exist"):
            log.run(7)

    def test_a_new_log_is_created_by_its_first_write_and_not_before(self, log_path):
        with EventLog(log_path) as log:
            assert log.runs() == [] and not log_path.exists()
        assert not log_path.exists()

    @pytest.mark.parametrize(("kwargs", "synchronous", "autocheckpoint"), [
        ({}, 1, 0),  # durability="barrier": NORMAL commits, checkpoints only at barriers
        ({"durability": "step"}, 2, 1000), ({"durability": "none"}, 0, 1000),
        ({"synchronous": "FULL"}, 2, 1000), ({"synchronous": "normal"}, 1, 0)])
    def test_pragmas(self, log_path, kwargs, synchronous, autocheckpoint):
        with EventLog(log_path, **kwargs) as log:
            log.create_run("m", "f" * 64, snapshot={}, next_action="a")  # the writing connection opens here
            assert log.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert log.conn.execute("PRAGMA synchronous").fetchone()[0] == synchronous
            assert log.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == autocheckpoint

    @pytest.mark.parametrize(("kwargs", "message"), [
        ({"synchronous": "OFF"}, "FULL' or 'NORMAL"), ({"durability": "fsync"}, "durability must be one of"),
        ({"durability": "none", "synchronous": "FULL"}, "not both"), ({"barrier_every": 0}, "barrier_every"),
        ({"barrier_every": 1.5}, "barrier_every"), ({"barrier_seconds": float("nan")}, "barrier_seconds"),
        ({"barrier_seconds": -1}, "barrier_seconds"), ({"barrier_seconds": True}, "barrier_seconds")])
    def test_bad_durability_settings_are_refused(self, log_path, kwargs, message):
        with pytest.raises(ValueError, match=message):
            EventLog(log_path, **kwargs)
        assert not log_path.exists()


class TestSnapshots:
    def test_a_full_snapshot_every_k_steps_and_at_the_end(self, log_path):
        with EventLog(log_path) as log:
            r = Runner.start(counter(10), log=log, snapshot_every=4)
            r.run()
            snaps = [e.step for e in log.events(r.run_id) if e.kind in ("start", "step") and
                     log.conn.execute("SELECT snapshot IS NOT NULL FROM events WHERE run_id=? AND seq=?",
                                      (r.run_id, e.seq)).fetchone()[0]]
            assert snaps == [0, 4, 8, 11]


WRITER = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {root!r})
    from fsmtrain import EventLog, Runner
    from tests.machines import counter
    with EventLog(sys.argv[1]) as log:
        r = Runner.start(counter(int(sys.argv[2])), log=log)
        r.run()
        print(json.dumps({{"run_id": r.run_id, "n": r.state["n"]}}))
""")


class TestConcurrency:
    def test_many_processes_append_to_different_runs_of_one_file(self, log_path):
        """Six processes each drive their own 150-step run in one log: all succeed, all intact."""
        script = WRITER.format(root=str(ROOT))
        procs = [subprocess.Popen([sys.executable, "-c", script, str(log_path), "150"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(6)]
        results = []
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
            results.append(json.loads(out))
        assert sorted(r["run_id"] for r in results) == [1, 2, 3, 4, 5, 6]
        with EventLog(log_path, readonly=True) as log:
            assert log.verify() == []
            assert all(r.status == "finished" and r.steps == 151 for r in log.runs())


RACER = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {root!r})
    from fsmtrain import EventLog, Runner
    from fsmtrain.errors import WriteConflict
    from tests.machines import counter
    log_path, me, other = sys.argv[1], sys.argv[2], sys.argv[3]
    with EventLog(log_path) as log:
        r = Runner.resume(counter(40), log, 1, lock=False)  # the log alone must keep them apart
        open(me, "w").close()
        while not os.path.exists(other):  # both have read the same position before either writes
            time.sleep(0.001)
        try:
            r.run()
            print("finished")
        except WriteConflict as e:
            print("conflict")
""")


def test_two_processes_driving_one_run_get_exactly_one_conflict(log_path, tmp_path):
    """Both resume the same position; the first to append wins, the other is refused; history intact."""
    with EventLog(log_path) as log:
        Runner.start(counter(40), log=log).run(max_steps=3)
    script = RACER.format(root=str(ROOT))
    a, b = tmp_path / "a.ready", tmp_path / "b.ready"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(log_path), str(x), str(y)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for x, y in ((a, b), (b, a))]
    outcomes = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outcomes.append(out.strip())
    assert sorted(outcomes) == ["conflict", "finished"]
    with EventLog(log_path, readonly=True) as log:
        assert log.verify() == []
        assert log.run(1).status == "finished"
        steps = [e.step for e in log.events(1) if e.kind == "step"]
        assert steps == list(range(1, 42))
        from fsmtrain import state_at
        assert state_at(log, 1)["n"] == 40
