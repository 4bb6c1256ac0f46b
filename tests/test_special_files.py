"""Special files never hang a command or receive what fsmtrain writes: a FIFO or a device as the log or the key
file is refused before it is opened, and the witness is never written through a symlink."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fsmtrain import EventLog, Runner, give_input
from fsmtrain.errors import LogKeyError, NotALog
from tests.conftest import ROOT, file_digest
from tests.machines import counter, gated

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")


def fsmtrain(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fsmtrain", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


class TestAFifoAsTheLog:
    def test_the_log_class_refuses_it_at_once_for_reading_and_writing(self, tmp_path):
        """EventLog names what the file is and opens nothing (an open would block until a writer came)."""
        fifo = tmp_path / "f.db"
        os.mkfifo(fifo)
        for kwargs in ({}, {"readonly": True}):
            with pytest.raises(NotALog, match="is a FIFO \\(named pipe\\), not a regular file"):
                EventLog(fifo, **kwargs)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["f.db"]

    @pytest.mark.parametrize("args", [
        ["replay", "{log}"], ["verify", "{log}"], ["approve", "{log}", "1"], ["stop", "{log}", "1", "--reason", "x"],
        ["worker", "{log}", "--machine", "fsmtrain.train.demo:trainer", "--once"],
        ["whatif", "{log}", "-c", "max_epochs(3)"],
    ])
    def test_commands_exit_with_one_line_and_create_nothing(self, tmp_path, args):
        fifo = tmp_path / "f.db"
        os.mkfifo(fifo)
        p = fsmtrain(*[a.format(log=fifo) for a in args])
        assert p.returncode != 0 and "Traceback" not in p.stderr
        assert "not a regular file" in p.stderr, p.stderr
        assert sorted(q.name for q in tmp_path.iterdir()) == ["f.db"]

    def test_a_device_is_refused_too(self):
        with pytest.raises(NotALog, match="character device"):
            EventLog("/dev/zero", readonly=True)


class TestTheKeyFile:
    @pytest.mark.parametrize("make", ["fifo", "device", "huge"])
    def test_a_key_file_that_is_not_a_small_regular_file_is_refused(self, tmp_path, make, monkeypatch):
        """A FIFO, /dev/zero or a file of megabytes as FSMTRAIN_LOG_KEY_FILE: a clear LogKeyError, no hang, no
        memory exhausted."""
        key = tmp_path / "key"
        if make == "fifo":
            os.mkfifo(key)
        elif make == "device":
            key = "/dev/zero"
        else:
            key.write_bytes(b"k" * 5_000_000)
        monkeypatch.delenv("FSMTRAIN_LOG_KEY", raising=False)
        monkeypatch.setenv("FSMTRAIN_LOG_KEY_FILE", str(key))
        with pytest.raises(LogKeyError, match="FSMTRAIN_LOG_KEY_FILE"):
            EventLog(tmp_path / "runs.db")

    def test_the_cli_says_it_in_one_line(self, tmp_path):
        fifo = tmp_path / "key"
        os.mkfifo(fifo)
        p = fsmtrain("demo", "--log", str(tmp_path / "runs.db"), "--epochs", "1",
                     env={"FSMTRAIN_LOG_KEY_FILE": str(fifo), "FSMTRAIN_LOG_KEY": ""})
        assert p.returncode != 0 and "Traceback" not in p.stderr and "not a regular file" in p.stderr, p.stderr
        assert not (tmp_path / "runs.db").exists()


def test_the_witness_is_never_written_through_a_symlink(tmp_path):
    """witness.jsonl replaced by a symlink to a file elsewhere: answering a gate and finishing the run leave that
    file as it was (the writer warns that it cannot write the witness)."""
    log_path = tmp_path / "runs.db"
    with EventLog(log_path) as log:
        Runner.start(gated(), log=log).run()
    witness = log_path.with_name("runs.db.artifacts") / "witness.jsonl"
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("not yours\n")
    witness.unlink()
    witness.symlink_to(outside)
    before = file_digest(outside)
    with pytest.warns(UserWarning, match="cannot write the witness"), EventLog(log_path) as log:
        give_input(log, 1, {"decision": "go"})
    assert file_digest(outside) == before and witness.is_symlink()


@pytest.mark.parametrize("wal", ["random", "foreign"])
def test_a_refused_command_beside_a_stray_wal_leaves_no_shm(tmp_path, wal):
    """A -wal beside the log that no writer of it made (random bytes, or another database's WAL): a command that
    refuses (a run that does not exist) exits 1 and leaves the folder exactly as it found it, no -shm added."""
    log_path = tmp_path / "x.db"
    with EventLog(log_path) as log:
        Runner.start(gated(), log=log).run()
    if wal == "random":
        (tmp_path / "x.db-wal").write_bytes(os.urandom(4096))
    else:
        other = tmp_path / "other" / "o.db"
        other.parent.mkdir()
        import sqlite3

        c = sqlite3.connect(other)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA wal_autocheckpoint=0")
        c.execute("CREATE TABLE t (x)")
        c.execute("INSERT INTO t VALUES (1)")
        c.commit()
        (tmp_path / "x.db-wal").write_bytes((other.parent / "o.db-wal").read_bytes())
        c.close()
    before = {p.name: file_digest(p) for p in tmp_path.iterdir() if p.is_file()}
    p = fsmtrain("approve", str(log_path), "2")
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
    assert {q.name: file_digest(q) for q in tmp_path.iterdir() if q.is_file()} == before


def test_a_worker_refusing_a_damaged_run_leaves_its_lock_file_as_it_was(tmp_path):
    """A run whose chain was edited outside fsmtrain: the worker reports it and changes no file, the run's lock
    file included (it used to write its holder record before it checked)."""
    from tests.conftest import tamper

    log_path = tmp_path / "x.db"
    with EventLog(log_path) as log:
        r = Runner.start(counter(10), log=log)
        r.run(max_steps=2)
        r.close()
    tamper(log_path, "DROP TRIGGER events_no_update", "UPDATE events SET step = 99 WHERE run_id = 1 AND seq = 2")
    folder = log_path.with_name("x.db.artifacts")
    before = {str(p): (file_digest(p), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}
    assert any("lock" in k for k in before)
    p = fsmtrain("worker", str(log_path), "--machine", "tests.machines:counter", "--once", cwd=ROOT)
    assert "CorruptLog" in p.stdout + p.stderr and "Traceback" not in p.stderr, p.stdout + p.stderr
    assert {str(q): (file_digest(q), q.stat().st_mtime_ns) for q in folder.rglob("*") if q.is_file()} == before
