"""What verify and writers can promise about a log's integrity: the witness file outside the log (lost tails,
lost runs, older copies, rewritten history), the keyed chain (forgeries by someone without the key), and
writers that check a run before they write to it."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest

from fsmtrain import EventLog, Runner, give_input
from fsmtrain.errors import CorruptLog, LogKeyError
from fsmtrain.log import key_id
from fsmtrain.log.witness import Witness
from fsmtrain.replay import fork
from fsmtrain.runner import retry, stop
from fsmtrain.state import dumps, loads
from tests.conftest import ROOT, file_digest, forge
from tests.machines import counter, gated

KEY = "a-secret-of-at-least-16-bytes"


def cli(*args, env=None):
    base = {k: v for k, v in os.environ.items() if not k.startswith("FSMTRAIN_LOG_KEY")}
    return subprocess.run([sys.executable, "-m", "fsmtrain", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**base, "PYTHONPATH": str(ROOT), **(env or {})})


def waiting(path, **kw):
    with EventLog(path, **kw) as log:
        r = Runner.start(gated(), log=log)
        assert r.run().reason == "waiting"
        return r.run_id


def digests(path):
    return {p: file_digest(p) for p in (path, path.with_name(path.name + "-wal")) if p.exists()}


def codes(log):
    return sorted((p.code, p.run, p.seq) for p in log.check())


@pytest.fixture(autouse=True)
def no_key(monkeypatch):
    monkeypatch.delenv("FSMTRAIN_LOG_KEY", raising=False)
    monkeypatch.delenv("FSMTRAIN_LOG_KEY_FILE", raising=False)


class TestWitness:
    def test_barriers_tell_the_witness_the_heads_and_never_more_than_the_log_holds(self, tmp_path):
        path = tmp_path / "w.db"
        rid = waiting(path)
        with EventLog(path, readonly=True) as log:
            last = log.last_event(rid)
            witness = Witness(log.artifacts, log._identity())
            heads = witness.heads()
        assert heads == {rid: (last.seq, last.hash)}  # (waiting is a barrier, and so is close)
        for run, seq, h in witness.entries():
            with EventLog(path, readonly=True) as log:
                assert next(e for e in log.events(run) if e.seq == seq).hash == h

    def test_a_deleted_wal_that_lost_an_answer_is_found_and_a_second_answer_refused(self, tmp_path):
        """The answer is in the WAL only (another process holds the log open); the -wal file is deleted."""
        path = tmp_path / "g.db"
        rid = waiting(path)
        holder = EventLog(path, readonly=True)
        holder.conn.execute("SELECT count(*) FROM events").fetchone()  # (keeps the WAL from being checkpointed)
        with EventLog(path) as log:
            answer = give_input(log, rid, {"decision": "go"}, by="ann")
        shutil.copyfile(path, tmp_path / "db-without-wal")  # what the file holds without its WAL
        holder.close()
        os.replace(tmp_path / "db-without-wal", path)
        for suffix in ("-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        with EventLog(path, readonly=True) as log:
            assert log.run(rid).status == "waiting"  # the answer is gone from the log...
            assert codes(log) == [("witness", rid, answer.seq)]  # ...but not from the witness
            assert f"ends at event {answer.seq - 1} but the witness saw event {answer.seq}" in log.verify()[0]
        before = digests(path)
        with EventLog(path) as log, pytest.raises(CorruptLog, match="witness saw"):
            give_input(log, rid, {"decision": "no-go"}, by="mallory")
        assert digests(path) == before
        p = cli("approve", path, rid)
        assert p.returncode == 3 and "witness saw" in p.stderr and "fsmtrain recover" in p.stderr \
            and "Traceback" not in p.stderr
        p = cli("verify", path)
        assert p.returncode == 1 and "witness saw" in p.stderr
        assert digests(path) == before

    def test_a_lost_run_and_an_older_copy_are_found(self, tmp_path):
        path = tmp_path / "c.db"
        with EventLog(path) as log:
            Runner.start(counter(3), log=log).run()
        shutil.copyfile(path, tmp_path / "old")
        with EventLog(path) as log:
            Runner.start(counter(3), log=log).run()
            r = Runner.start(counter(9), log=log)
            r.run(max_steps=2)
            r.close()
        with EventLog(path, readonly=True) as log:
            assert codes(log) == []
            seen = log.run(3).last_seq
        os.replace(tmp_path / "old", path)
        with EventLog(path, readonly=True) as log:
            found = log.verify()
            assert codes(log) == [("witness", 2, 5), ("witness", 3, seen)]
        assert "run 2 is missing, but the witness saw its event 5" in found[0]
        p = cli("verify", path)
        assert p.returncode == 1 and "run 3 is missing" in p.stderr

    def test_history_rewritten_with_the_public_formula_is_found_and_writers_refuse(self, tmp_path):
        """A forged answer (`by` someone else) with the chain recomputed: verify's chain check alone passes."""
        path = tmp_path / "g.db"
        rid = waiting(path)
        with EventLog(path) as log:
            seq = give_input(log, rid, {"decision": "go"}, by="ann").seq
        forge(path, rid, seq, "info", '{"at":1.0,"by":"someone-else"}')
        with EventLog(path, readonly=True) as log:
            assert codes(log) == [("witness", rid, seq)]
        before = digests(path)
        with EventLog(path) as log, pytest.raises(CorruptLog, match="rewritten"):
            Runner.resume(gated(), log, rid)
        with EventLog(path) as log, pytest.raises(CorruptLog, match="rewritten"):
            fork(log, rid)
        p = cli("worker", path, "--machine", "tests.machines:gated", "--once")
        assert p.returncode != 0 and "rewritten" in p.stderr + p.stdout and "Traceback" not in p.stderr
        assert digests(path) == before


    def test_a_log_made_anew_at_the_same_path_is_not_compared_with_the_one_before(self, tmp_path):
        path = tmp_path / "c.db"
        with EventLog(path) as log:
            Runner.start(counter(9), log=log).run()
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        with EventLog(path) as log:  # (the artifacts folder, and the old witness in it, are kept)
            r = Runner.start(counter(3), log=log)
            r.run(max_steps=1)
            r.close()
            Runner.resume(counter(3), log, r.run_id).run()
            assert log.verify() == []
        lines = [json.loads(x) for x in (tmp_path / "c.db.artifacts" / "witness.jsonl").read_text().splitlines()]
        heads = [x for x in lines if "log" in x]
        assert len({x["log"] for x in heads}) == 2 and max(x["seq"] for x in heads) > 6  # (the old run went further)
        assert [x["made"] for x in lines if "made" in x] == [heads[0]["log"], heads[-1]["log"]]  # (each log, made)

    @pytest.mark.parametrize("edit", ["tail", "run", "rewritten"])
    def test_editing_the_logs_identity_does_not_switch_the_witness_off(self, tmp_path, edit):
        """Issue 27: changing fsmtrain_schema.applied (the identity the witness lines name) used to hide a lost tail,
        a deleted run and a rewritten history from verify and from writers."""
        path = tmp_path / "g.db"
        rid = waiting(path)
        triggers = [r[0] for r in sqlite3.connect(path).execute("SELECT sql FROM sqlite_master WHERE type = 'trigger'")]
        with sqlite3.connect(path) as c:
            for (name,) in c.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
                c.execute(f"DROP TRIGGER {name}")
            c.execute("UPDATE fsmtrain_schema SET applied = applied + 1")
            if edit == "tail":
                c.execute("DELETE FROM events WHERE run_id = ? AND seq = (SELECT max(seq) FROM events WHERE run_id = ?)",
                          (rid, rid))
            elif edit == "run":
                c.execute("DELETE FROM events WHERE run_id = ?", (rid,))
                c.execute("DELETE FROM runs WHERE id = ?", (rid,))
            for sql in triggers:
                c.execute(sql)
        if edit == "rewritten":
            forge(path, rid, 2, "updates", '{"set":{"n":99}}')
        p = cli("verify", path)
        assert p.returncode == 1 and "witness" in p.stderr, p.stdout + p.stderr
        assert "made at" in p.stderr  # (the identity change itself is named)
        if edit != "run":
            p = cli("stop", path, rid, "--reason", "x")
            assert p.returncode != 0 and "Traceback" not in p.stderr
        p = cli("recover", path, "--accept-loss", "--comment", "this is the log now")
        assert p.returncode == 0, p.stderr
        assert cli("verify", path).returncode == 0

    def test_a_throwaway_log_neither_writes_nor_reads_a_witness(self, tmp_path):
        with EventLog(tmp_path / "t.db", durability="none") as log:
            Runner.start(counter(3), log=log).run()
        assert not (tmp_path / "t.db.artifacts" / "witness.jsonl").exists()


class TestWritersCheckFirst:
    @pytest.mark.parametrize("damage", ["edited value", "dropped trigger", "changed table"])
    def test_every_writer_refuses_a_damaged_run_and_changes_nothing(self, tmp_path, damage):
        path = tmp_path / "g.db"
        rid = waiting(path)
        conn = sqlite3.connect(path)
        if damage == "edited value":
            conn.execute("DROP TRIGGER events_no_update")
            conn.execute("UPDATE events SET updates = replace(updates, '1', '7') WHERE run_id = ? AND seq = 2", (rid,))
            conn.execute("CREATE TRIGGER events_no_update BEFORE UPDATE ON events BEGIN SELECT RAISE(ABORT, "
                         "'fsmtrain log is append-only: UPDATE on events is refused'); END")
        elif damage == "dropped trigger":
            conn.execute("DROP TRIGGER events_no_delete")
        else:
            conn.execute("ALTER TABLE events ADD COLUMN note TEXT")
        conn.commit()
        conn.close()
        before = digests(path)
        with EventLog(path) as log:
            for write in (lambda: give_input(log, rid, {"decision": "go"}), lambda: Runner.resume(gated(), log, rid),
                          lambda: stop(log, rid, reason="x"), lambda: retry(log, rid)):
                with pytest.raises((CorruptLog, Exception)) as e:
                    write()
                if not isinstance(e.value, CorruptLog):  # (retry: refused as not failed, before any check)
                    assert "not failed" in str(e.value)
        assert digests(path) == before
        p = cli("approve", path, rid)
        assert p.returncode == 1 and "damaged" in p.stderr and "Traceback" not in p.stderr
        assert digests(path) == before

    def test_an_intact_run_is_checked_cheaply_once(self, tmp_path):
        path = tmp_path / "c.db"
        with EventLog(path) as log:
            r = Runner.start(counter(300), log=log)
            r.run()
            log.check_run(r.run_id)
            assert log._checked[r.run_id] == log.run(r.run_id).last_seq


class TestKey:
    def test_a_keyed_run_is_checked_with_the_key_and_forgeries_without_it_are_found(self, tmp_path):
        path = tmp_path / "k.db"
        rid = waiting(path, key=KEY)
        with EventLog(path, key=KEY) as log:
            seq = give_input(log, rid, {"decision": "go"}, by="ann").seq
            Runner.resume(gated(), log, rid).run()
            assert log.verify() == []
        with EventLog(path, readonly=True) as log:
            assert log.verify() == [] and log.unchecked == [rid]  # the hashes need the key to be checked
        shutil.rmtree(tmp_path / "k.db.artifacts")  # (the witness is gone too: only the key can tell)
        forge(path, rid, seq, "info", '{"at":1.0,"by":"someone-else"}')
        with EventLog(path, readonly=True, key=KEY) as log:
            found = codes(log)
        assert found and all(c == "hash" for c, _, _ in found) and ("hash", rid, seq) in found
        with EventLog(path, readonly=True) as log:
            assert log.verify() == []  # without the key (and without the witness) the forgery cannot be seen
        p = cli("verify", path, env={"FSMTRAIN_LOG_KEY": KEY})
        assert p.returncode == 1 and "hash does not match" in p.stderr
        p = cli("verify", path)
        assert p.returncode == 0 and "give the key" in p.stdout

    def test_with_a_key_a_run_made_without_it_is_reported(self, tmp_path):
        path = tmp_path / "k.db"
        waiting(path)
        rid = waiting(path, key=KEY)
        with EventLog(path, readonly=True, key=KEY) as log:
            assert codes(log) == [("unkeyed", 1, None)] and rid == 2

    def test_a_chain_recomputed_without_the_marker_is_not_authenticated(self, tmp_path):
        path = tmp_path / "k.db"
        rid = waiting(path, key=KEY)
        with EventLog(path, readonly=True) as log:
            info = log.conn.execute("SELECT info FROM events WHERE run_id = ? AND seq = 1", (rid,)).fetchone()[0]
        shutil.rmtree(tmp_path / "k.db.artifacts")
        doc = loads(info)
        assert doc.pop("chain")["key"] == key_id(KEY.encode())
        forge(path, rid, 1, "info", dumps(doc))
        with EventLog(path, readonly=True, key=KEY) as log:
            assert codes(log) == [("unkeyed", rid, None)]

    def test_writing_to_a_keyed_run_needs_its_key(self, tmp_path):
        path = tmp_path / "k.db"
        rid = waiting(path, key=KEY)
        before = digests(path)
        with EventLog(path) as log, pytest.raises(LogKeyError, match="FSMTRAIN_LOG_KEY"):
            give_input(log, rid, {"decision": "go"})
        with EventLog(path, key="another-secret-16-bytes") as log, pytest.raises(LogKeyError, match="another key"):
            give_input(log, rid, {"decision": "go"})
        assert digests(path) == before
        p = cli("approve", path, rid)
        assert p.returncode == 1 and "FSMTRAIN_LOG_KEY" in p.stderr and "Traceback" not in p.stderr
        p = cli("approve", path, rid, env={"FSMTRAIN_LOG_KEY": KEY})
        assert p.returncode == 0, p.stderr
        keyfile = tmp_path / "key"
        keyfile.write_text(KEY + "\n")
        p = cli("verify", path, env={"FSMTRAIN_LOG_KEY_FILE": str(keyfile)})
        assert p.returncode == 0 and "give the key" not in p.stdout, p.stdout

    @pytest.mark.parametrize("env", [{"FSMTRAIN_LOG_KEY": "short"}, {"FSMTRAIN_LOG_KEY_FILE": "/nonexistent/key"}])
    def test_a_bad_key_setting_is_a_clear_error(self, tmp_path, env):
        path = tmp_path / "k.db"
        waiting(path)
        before = digests(path)
        p = cli("approve", path, 1, env=env)
        assert p.returncode in (1, 2) and "Traceback" not in p.stderr
        assert "FSMTRAIN_LOG_KEY" in p.stderr
        assert digests(path) == before
        with pytest.raises(ValueError, match="at least 16 bytes"):
            EventLog(path, key="short")


def test_detached_trials_with_their_checkpoints_beside_the_log_are_not_taken_for_a_damaged_log(tmp_path):
    """The scratch copy of a detached trial (another machine's view) shares the log's artifacts folder, and its
    witness: a throwaway log reads no witness, so nothing is refused; the study's log verifies."""
    from fsmtrain.tune import IntRange, LogUniform, Study, table

    space = {"lr": LogUniform(0.01, 0.5), "hidden": IntRange(4, 16)}
    with EventLog(tmp_path / "s.db") as log:
        runner = Study(log, "tests.machines.trials:trainer", space, n_trials=2, max_concurrent=1, seed=3,
                       config={"max_epochs": 2}, artifacts=tmp_path / "s.db.artifacts").run()
        assert [r["status"] for r in table(runner.state)] == ["completed", "completed"]
        assert log.verify() == []


def test_the_witness_reads_only_what_was_added_and_sees_every_writer(tmp_path):
    one, two = Witness(tmp_path, "L"), Witness(tmp_path, "L")
    one.record([(1, 1, "a"), (2, 1, "x")], sync=False)
    assert one.heads() == {1: (1, "a"), 2: (1, "x")}
    two.record([(1, 2, "b")], sync=True)  # another writer (another process, in life)
    assert one.heads() == {1: (2, "b"), 2: (1, "x")}
    with open(one.path, "ab") as f:  # a line being written: read once it is whole
        f.write(b'{"log":"L","run":2,"seq":5,"hash":"y"')
    assert one.heads()[2] == (1, "x")
    with open(one.path, "ab") as f:
        f.write(b'}\n{"log":"other","run":2,"seq":9,"hash":"z"}\n')
    assert one.heads() == {1: (2, "b"), 2: (5, "y")}  # (another log's line is not this log's)
    one.close()
    two.close()
    one.path.unlink()  # replaced: read afresh
    Witness(tmp_path, "L").record([(3, 1, "c")], sync=True)
    assert Witness(tmp_path, "L").heads() == {3: (1, "c")}


def test_a_json_object_with_a_key_twice_is_reported(log_path):
    """An event whose updates hold one key twice (readers would keep the last; no writer makes it), with the chain
    recomputed so that every hash matches: verify reports it under code `json`, naming the key."""
    with EventLog(log_path) as log:
        Runner.start(counter(3), log=log).run()
    forge(log_path, 1, 2, "updates", '{"set":{"n":1,"n":5}}')
    with EventLog(log_path, readonly=True) as log:
        problems = [(p.code, p.run, p.seq) for p in log.check()]
        assert ("json", 1, 2) in problems
        assert any("holds the key 'n' twice" in m for m in log.verify())
