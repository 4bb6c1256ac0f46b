"""Every command answers a user's mistake, a hostile argument or a forged log with one clear line and a non-zero
exit, never a Python traceback, and leaves every file as it was."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fsmtrain import EventLog, Runner
from fsmtrain.log import MAX_ID
from tests.conftest import ROOT, file_digest, finished_counter_log, forge
from tests.machines import gated

HUGE = "99999999999999999999"


def fsm(*args, cwd=ROOT, env=None, **kw):
    """``fsmtrain ARGS`` in a real process; arguments may be bytes (not UTF-8)."""
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "fsmtrain", *[a if isinstance(a, bytes) else str(a) for a in args]],
                          cwd=cwd, capture_output=True, env=full, timeout=120, **kw)


def clean(p, code):
    """The command exited ``code`` with its reason on stderr, and no traceback anywhere."""
    err = p.stderr.decode(errors="replace") if isinstance(p.stderr, bytes) else p.stderr
    out = p.stdout.decode(errors="replace") if isinstance(p.stdout, bytes) else p.stdout
    assert "Traceback" not in err + out and "internal error" not in err, err
    assert p.returncode == code, (p.returncode, err, out)
    return err


def digests(folder: Path) -> dict[str, str]:
    """Everything under ``folder`` (files with their sha256, folders as "dir"): what a refused command must
    leave exactly as it was, adding nothing.  A ``-shm`` file is SQLite's shared memory, which every reader
    of a live log writes to (its read marks): only that it exists counts."""
    return {str(p.relative_to(folder)): "dir" if p.is_dir() else "shm" if p.name.endswith("-shm") else file_digest(p)
            for p in sorted(folder.rglob("*"))}


@pytest.fixture
def waiting(tmp_path):
    path = tmp_path / "w.db"
    with EventLog(path) as log:
        Runner.start(gated(), log=log).run()
    return path


class TestHostileArguments:
    def test_text_that_is_not_utf8_is_refused_and_nothing_is_written(self, waiting):
        before = digests(waiting.parent)
        err = clean(fsm("approve", waiting, "1", "--comment", b"\xff"), 2)
        assert "not valid UTF-8" in err
        err = clean(fsm("approve", waiting, "1", env={"FSMTRAIN_USER": b"\xfe".decode("utf-8", "surrogateescape")}), 2)
        assert "not valid UTF-8" in err
        err = clean(fsm("input", waiting, "1", b"decision=\xff"), 2)
        assert "not valid UTF-8" in err
        assert digests(waiting.parent) == before

    @pytest.mark.parametrize("args", [
        ["replay", "LOG", "--run", HUGE], ["replay", "LOG", "--run", "1", "--at", HUGE], ["replay", "LOG", "--run", "-3"],
        ["input", "LOG", HUGE, "decision=go"], ["approve", "LOG", HUGE], ["reject", "LOG", "0"], ["retry", "LOG", HUGE],
        ["stop", "LOG", HUGE, "--reason", "x"], ["plot", "LOG", "--run", HUGE, "--metric", "m", "-o", "x.svg"],
        ["watch", "LOG", "--run", HUGE], ["study", "LOG", "--id", HUGE], ["whatif", "LOG", "--run", HUGE, "-c", "max_epochs(2)"],
    ])
    def test_ids_sqlite_cannot_hold_are_refused(self, waiting, args):
        before = digests(waiting.parent)
        err = clean(fsm(*[str(waiting) if a == "LOG" else a for a in args], cwd=waiting.parent), 2)
        assert f"is not in the range 1<=x<={MAX_ID}" in err
        assert digests(waiting.parent) == before

    def test_an_id_in_range_that_does_not_exist_is_not_found(self, waiting):
        err = clean(fsm("replay", waiting, "--run", str(MAX_ID)), 1)
        assert f"run {MAX_ID} does not exist" in err

    def test_deeply_nested_and_odd_conditions_are_refused_in_one_line(self, waiting):
        err = clean(fsm("whatif", waiting, "-c", "~" * 1000 + "max_epochs(3)"), 2)
        assert "nests 1002 deep; at most 40" in err
        err = clean(fsm("whatif", waiting, "-c", "max_epochs(1and 2)"), 2)
        assert "SyntaxWarning" not in err and len(err.strip().splitlines()) == 3  # message, expression, caret

    def test_plot_to_a_missing_folder(self, tmp_path):
        finished_counter_log(tmp_path / "c.db", 3)
        err = clean(fsm("plot", tmp_path / "c.db", "--run", "1", "--metric", "history", "-o", "/missing/dir/x.svg"), 2)
        assert "folder /missing/dir does not exist" in err

    @pytest.mark.slow
    def test_a_target_is_checked_before_anything_is_called(self, tmp_path):
        """`os:system`-like targets are refused unrun, and a function taking a log gets a throwaway one."""
        (tmp_path / "targets.py").write_text(
            "import functools, pathlib\n"
            f"touch = functools.partial(pathlib.Path({str(tmp_path / 'called')!r}).touch)\n"
            "from examples.gated_training import trainer\n")
        finished_counter_log(tmp_path / "c.db", 3)
        env = {"PYTHONPATH": f"{ROOT}:{tmp_path}"}
        for args in (["graph", "os:system"], ["graph", "targets:touch"], ["graph", "builtins:print"],
                     ["worker", "c.db", "--machine", "os:system", "--once"],
                     ["worker", "c.db", "--machine", "targets:touch", "--once"],
                     ["worker", "c.db", "--machine", "tests.machines:counter", "--once", "--hook", "os:getcwd"]):
            err = clean(fsm(*args, cwd=tmp_path, env=env), 2)
            assert "not" in err, args
        assert not (tmp_path / "called").exists()
        before = set(os.listdir(tmp_path))
        p = fsm("graph", "targets:trainer", cwd=tmp_path, env=env)
        assert clean(p, 0) == "" and "stateDiagram-v2" in p.stdout.decode()
        assert set(os.listdir(tmp_path)) == before  # no gated_training.db made as a side effect
        err = clean(fsm("graph", "fsmtrain.demo:machine", cwd=tmp_path), 2)
        assert "e.g. fsmtrain.train.demo:machine" in err or "cannot import module 'fsmtrain.demo'" in err


def _forged(tmp_path: Path, column: str, value: str) -> Path:
    path = tmp_path / f"forged-{column}.db"
    finished_counter_log(path, 3)
    forge(path, 1, 3, column, value)
    return path


FORGERIES = {
    "malformed JSON": ("updates", '{"set": {"n": 1'),
    "JSON nested 100,000 deep": ("updates", "[" * 100_000 + "]" * 100_000),
    "a Ref leaving the artifact folder": (
        "updates", json.dumps({"set": {"checkpoint": {"$ref": {"path": "../../etc/passwd", "sha256": "0" * 64,
                                                               "size": 1}}}})),
    "a list where an object belongs": ("updates", "[1, 2, 3]"),
    "an info of the wrong shape": ("info", '"just text"'),
}


class TestForgedLogs:
    @pytest.mark.parametrize("forgery", sorted(FORGERIES))
    def test_readers_and_writers_say_the_log_was_edited(self, tmp_path, forgery):
        column, value = FORGERIES[forgery]
        path = _forged(tmp_path, column, value)
        out = tmp_path / "out"
        out.mkdir()
        before = {k: v for k, v in digests(tmp_path).items() if not k.startswith("out")}
        for args in (["replay", path, "--run", "1"], ["replay", path, "--run", "1", "--at", "5"], ["watch", path],
                     ["plot", path, "--run", "1", "--metric", "history", "-o", out / "x.svg"],
                     ["replay", path, "--run", "1", "--json"]):
            p = fsm(*args)
            err = clean(p, p.returncode)
            assert p.returncode in (0, 1), (args, err)
            if p.returncode:
                assert "edited outside fsmtrain" in err or "no fsmtrain writer makes" in err, (args, err)
        p = fsm("verify", path)
        assert clean(p, 1).startswith("CORRUPT: ") or "edited" in clean(p, 1)
        assert {k: v for k, v in digests(tmp_path).items() if not k.startswith("out")} == before


@pytest.mark.slow
class TestInterrupts:
    def test_ctrl_c_during_approve_says_truthfully_what_was_kept(self, tmp_path):
        """SIGINT at random moments: never a traceback; the message and the log agree on whether it was recorded."""
        rng = random.Random(5)
        outcomes = set()
        for i in range(8):
            path = tmp_path / f"w{i}.db"
            with EventLog(path) as log:
                Runner.start(gated(), log=log).run()
            # The command as its entry point runs it, once the interpreter is up and the entry's Ctrl-C handler is
            # in place (a SIGINT inside Python's own start-up is Python's, not ours): then at a random moment.
            code = ("import signal, sys; from fsmtrain._interrupt import early; signal.signal(signal.SIGINT, early); "
                    "print('ready', flush=True); from fsmtrain._entry import main; "
                    f"sys.argv = ['fsmtrain', 'approve', {str(path)!r}, '1']; main()")
            p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.0, 0.5))
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=60)
            assert "Traceback" not in err + out, err
            with EventLog(path, readonly=True) as log:
                recorded = log.run(1).status == "running"
            if p.returncode == 130:
                assert ("recorded" in err) == recorded, (err, recorded)
                assert err.strip().startswith("interrupted: ")
            else:
                assert p.returncode in (0, 1, -signal.SIGINT) and (p.returncode != 0 or recorded), (p.returncode, err)
            outcomes.add((p.returncode, recorded))
        assert len(outcomes) >= 1

    def test_ctrl_c_during_fit_says_what_was_kept_and_how_to_continue(self, tmp_path):
        script = (
            "import sys\n"
            f"sys.path.insert(0, {str(ROOT)!r})\n"
            "from fsmtrain.train import demo\n"
            "class Slow:\n"
            "    def on_step_end(self, **kw):\n"
            "        print('step', flush=True); __import__('time').sleep(0.2)\n"
            f"demo.trainer({str(tmp_path / 'f.db')!r}, hooks=[Slow()]).fit({{'max_epochs': 30, 'patience': 100}})\n")
        p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "step"
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
        assert p.returncode == 130 and "Traceback" not in err, err
        assert err.strip().splitlines() == [err.strip().splitlines()[0]]
        assert err.strip().startswith("interrupted: run 1 keeps its ") and "run the same code again" in err


class TestRefusalsTouchNothing:
    @pytest.mark.parametrize("command", [["approve"], ["reject"], ["input", "decision=go"], ["retry"],
                                         ["stop", "--reason", "x"]])
    @pytest.mark.parametrize("make", ["empty file", "schema table only", "rollback-journal mode", "random bytes",
                                      "50 bytes with a SQLite header", "a folder"])
    def test_a_refused_write_changes_no_file_and_creates_none(self, tmp_path, command, make):
        path = tmp_path / "x.db"
        if make == "empty file":
            path.write_bytes(b"")
        elif make == "schema table only":
            import sqlite3

            c = sqlite3.connect(path)
            c.execute("CREATE TABLE fsmtrain_schema (version INTEGER PRIMARY KEY, applied REAL, fsmtrain TEXT)")
            c.execute("INSERT INTO fsmtrain_schema VALUES (1, 0, 'x')")
            c.commit()
            c.close()
        elif make == "rollback-journal mode":
            finished_counter_log(path, 2)
            import sqlite3

            c = sqlite3.connect(path)
            c.execute("PRAGMA journal_mode=DELETE")
            c.close()
        elif make == "random bytes":
            path.write_bytes(random.Random(1).randbytes(4096))
        elif make == "50 bytes with a SQLite header":
            path.write_bytes(b"SQLite format 3\x00" + b"\x01" * 34)
        else:
            path.mkdir()
        before = digests(tmp_path)
        p = fsm(command[0], path, "1", *command[1:])
        clean(p, p.returncode)
        assert p.returncode in (1, 2)
        assert digests(tmp_path) == before

    def test_a_refused_answer_leaves_a_live_wal_alone(self, waiting):
        """A writer holds the log open (its WAL full of frames): a refused answer neither checkpoints nor writes."""
        holder = subprocess.Popen([sys.executable, "-c", (
            "import sqlite3, sys, time\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('PRAGMA wal_autocheckpoint=0')\n"
            "c.execute('CREATE TEMP TABLE t(x)')\n"
            "c.execute('BEGIN IMMEDIATE'); c.execute('SELECT count(*) FROM events').fetchone(); c.execute('COMMIT')\n"
            "print('open', flush=True); time.sleep(600)\n"), str(waiting)], stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "open"
            with EventLog(waiting) as log:  # give the WAL some frames, as a live writer would have
                log.append(1, log.run(1).last_seq, kind="waiting", step=1, action="review",
                           info=log.last_event(1).info)
            before = digests(waiting.parent)
            clean(fsm("input", waiting, "1", "decision=maybe"), 2)
            clean(fsm("retry", waiting, "1"), 1)
            assert digests(waiting.parent) == before
        finally:
            holder.kill()
            holder.wait()


class TestReadersLeaveNothingBehind:
    def test_read_only_commands_leave_no_wal_files(self, tmp_path):
        path = finished_counter_log(tmp_path / "c.db", 3)
        before = set(os.listdir(tmp_path))
        for args in (["replay", path], ["replay", path, "--run", "1"], ["verify", path], ["watch", path],
                     ["whatif", path, "-c", "max_epochs(1)", "--counter", "n"], ["doctor", "--log", path]):
            p = fsm(*args)
            clean(p, p.returncode)
            assert set(os.listdir(tmp_path)) == before, args
        junk = tmp_path / "junk.db"
        junk.write_bytes(b"SQLite format 3\x00" + b"\x00" * 34)
        clean(fsm("replay", junk), 1)
        assert not (tmp_path / "junk.db-wal").exists() and not (tmp_path / "junk.db-shm").exists()


def test_ctrl_c_after_the_command_said_what_it_did_is_ignored_not_a_silent_death():
    """Once a command has returned (its line printed), Ctrl-C is ignored: during the interpreter's shutdown Python's
    default handler would kill the process with no message (`input` died so, exit -2, after its answer was saved)."""
    code = ("import signal, sys\n"
            "from fsmtrain._entry import main\n"
            "sys.argv = ['fsmtrain', '--version']\n"
            "try:\n"
            "    main()\n"
            "except SystemExit:\n"
            "    pass\n"
            "print(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0 and p.stdout.strip().splitlines()[-1] == "True", p.stderr
