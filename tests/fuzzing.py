"""A fuzzer of the command line: every subcommand x hostile log files x hostile arguments.

Each case copies one hostile log (or a valid one, as a control) into a fresh folder, runs one
command in-process (``click.testing.CliRunner``), and checks what a user is promised:

- no traceback, and no "internal error" (our catch-all for bugs);
- a refusal exits non-zero, leaves every file byte-identical and creates none
  (a ``-shm`` file is SQLite's shared memory: only that it exists counts);
- a command that only reads never changes or creates a file, whatever it exits with.

Used by ``tests/test_fuzz.py`` (a short run in CI) and ``benchmarks/fuzz.py`` (>= 10,000 cases, counts).
"""

from __future__ import annotations

import collections
import hashlib
import os
import random
import shutil
import signal
import sqlite3
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from hypothesis import strategies as st

from fsmtrain import EventLog, Runner
from fsmtrain.cli import main
from tests.machines import counter, gated

READERS = {"replay", "verify", "whatif", "study", "watch", "plot", "graph", "doctor"}
WRITERS = {"input", "approve", "reject", "retry", "stop", "worker", "demo"}

HUGE_IDS = ["99999999999999999999", "9223372036854775808", "-1", "0", "-99999999999999999999", "1.5", "nan", "inf",
            "1e3", "0x10", "١٢", "²", " 1", "1 ", "", "\udcff", "one", "+1", "00001"]
TEXTS = ["", " ", "x" * 5000, "\x1b]0;PWNED\x07", "\x00", "a\nb", "<script>alert(1)</script>", "\udcff\udcfe",
         "é🙂", "=", "a=b=c", "--json", "-", "NaN", "Infinity", "-inf", "1e309", "%s%n", "' OR 1=1 --", "\u202e"]
EXPRESSIONS = ["max_epochs(3)", "~" * 500 + "max_epochs(1)", "max_epochs(1and 2)", "(" * 300 + ")" * 300,
               "early_stopping(val_loss, patience=-1)", "slope(val_loss, window=99999999999999999999, below=0)",
               "max_epochs(n=1e309)", "__import__('os')", "max_epochs(3) + 1", "target(val_acc, value=nan)",
               "plateau(val_loss, patience=2) & min_epochs(5)", "max_epochs", "", "\udcff", "early_stopping('\x1b[2J')"]
TARGETS = ["os:system", "builtins:print", "", ":", "a:b", "nonexistent_module_xyz:x", "tests.machines:counter",
           "tests.machines:gated", "fsmtrain.train.demo:gated_trainer", "os.path:join", "\udcff:x", "tests.machines:FAIL_FILE",
           "fsmtrain.demo:machine", "tests.machines:tick"]
DURATIONS = ["0", "-1s", "1e309s", "nan", "10x", "", "0.0001ms", "99999999999999999999d"]
PORTS = ["-1", "65536", "99999999999999999999", "http", "", "1.5", "\udcff"]
HOSTS = ["0.0.0.0", "evil.example", "\udcff", "", "::"]


# -- hostile log files --------------------------------------------------------------------------------
def _valid(path: Path) -> None:
    """A valid log: a finished counter run, a waiting gated run and a failed-free stopped run."""
    with EventLog(path) as log:
        Runner.start(counter(3), log=log).run()
        Runner.start(gated(), log=log).run()
        r = Runner.start(counter(5), log=log)
        r.run(max_steps=2)
        r.close()
    from fsmtrain.runner import stop

    with EventLog(path) as log:
        stop(log, 3, reason="fuzz fixture")


def _journal(path: Path) -> None:
    _valid(path)
    c = sqlite3.connect(path)
    c.execute("PRAGMA journal_mode=DELETE")
    c.close()


def _foreign(path: Path) -> None:
    c = sqlite3.connect(path)
    c.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    c.execute("INSERT INTO customers VALUES (1, 'ada')")
    c.commit()
    c.close()


def _future(path: Path) -> None:
    _valid(path)
    c = sqlite3.connect(path)
    c.execute("DROP TRIGGER fsmtrain_schema_no_update")
    c.execute("INSERT INTO fsmtrain_schema VALUES (99, 0, '99.0')")
    c.commit()
    c.close()


def _with_wal(path: Path, damage: str) -> None:
    """A log whose latest commits are still in its WAL (copied while a writer held it open), then damaged."""
    src = path.with_name("src-" + path.name)
    _valid(src)
    c = sqlite3.connect(src, isolation_level=None)
    c.execute("PRAGMA wal_autocheckpoint=0")
    with EventLog(src) as log:
        log.append(2, log.run(2).last_seq, kind="waiting", step=1, action="review", info=log.last_event(2).info)
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(f"{src}{suffix}"):
                shutil.copy(f"{src}{suffix}", f"{path}{suffix}")
    c.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{src}{suffix}").unlink(missing_ok=True)
    shutil.rmtree(f"{src}.artifacts", ignore_errors=True)
    wal = Path(f"{path}-wal")
    if damage == "missing -wal":
        wal.unlink(missing_ok=True)
    elif damage == "corrupt -wal" and wal.exists():
        data = bytearray(wal.read_bytes())
        for i in range(0, len(data), 97):
            data[i] ^= 0x5A
        wal.write_bytes(bytes(data))


def _truncated(path: Path, rng: random.Random) -> None:
    _valid(path)
    data = path.read_bytes()
    path.write_bytes(data[: rng.randrange(1, len(data))])


KINDS = ["valid", "empty", "random bytes", "truncated", "foreign SQLite", "future schema", "rollback-journal mode",
         "missing -wal", "corrupt -wal", "a folder", "50-byte header", "missing file",
         "a FIFO", "a device", "a FIFO key file", "symlinked -wal", "foreign -wal", "symlinked witness",
         "symlinked lock"]


def make_log(kind: str, folder: Path, seed: int) -> Path:
    """Create the hostile log ``kind`` as ``folder/log.db`` (and its sidecar files)."""
    rng = random.Random(seed)
    path = folder / "log.db"
    if kind == "valid":
        _valid(path)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "random bytes":
        path.write_bytes(rng.randbytes(rng.choice([1, 15, 16, 100, 512, 4096, 9000])))
    elif kind == "truncated":
        _truncated(path, rng)
    elif kind == "foreign SQLite":
        _foreign(path)
    elif kind == "future schema":
        _future(path)
    elif kind == "rollback-journal mode":
        _journal(path)
    elif kind in ("missing -wal", "corrupt -wal"):
        _with_wal(path, kind)
    elif kind == "a folder":
        path.mkdir()
    elif kind == "50-byte header":
        path.write_bytes(b"SQLite format 3\x00" + rng.randbytes(34))
    elif kind == "a FIFO":
        os.mkfifo(path)
    elif kind == "a device":
        os.symlink("/dev/zero", path)  # (a character device, through a symlink as a user would make it)
    elif kind == "a FIFO key file":  # (the key file is named by $FSMTRAIN_LOG_KEY_FILE: see run_case)
        _valid(path)
        os.mkfifo(folder / "key.fifo")
    elif kind == "symlinked -wal":  # a live log's WAL replaced by a symlink to a file that must stay untouched
        _with_wal(path, "")
        wal = Path(f"{path}-wal")
        os.replace(wal, folder / "elsewhere.wal")
        os.symlink("elsewhere.wal", wal)  # (relative: a copy of the folder links within itself)
    elif kind == "foreign -wal":  # another database's WAL beside the log
        _valid(path)
        other = folder / "other.db"
        c = sqlite3.connect(other, isolation_level=None)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA wal_autocheckpoint=0")
        c.execute("CREATE TABLE t (x)")
        c.execute("INSERT INTO t VALUES (1)")
        shutil.copy(f"{other}-wal", f"{path}-wal")
        c.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{other}{suffix}").unlink(missing_ok=True)
    elif kind in ("symlinked witness", "symlinked lock"):  # written through, they would change "target.txt"
        _valid(path)
        target = folder / "target.txt"
        target.write_text("must stay as it is\n")
        art = Path(f"{path}.artifacts")
        art.mkdir(exist_ok=True)
        name = art / ("witness.jsonl" if kind == "symlinked witness" else "locks/run1.lock")
        name.parent.mkdir(exist_ok=True)
        name.unlink(missing_ok=True)
        os.symlink(os.path.relpath(target, name.parent), name)
    elif kind != "missing file":
        raise ValueError(kind)
    return path


# -- commands -------------------------------------------------------------------------------------------
def _maybe(draw: Any, values: list[str], p: float = 0.5) -> list[str]:
    return [draw(st.sampled_from(values))] if draw(st.floats(0, 1)) < p else []


@st.composite
def commands(draw: Any, log: str, out: str) -> list[str]:
    """One command line naming ``log`` (hostile arguments mixed with plausible ones)."""
    ids = HUGE_IDS + ["1", "2", "3", "7"]
    name = draw(st.sampled_from(sorted(READERS | WRITERS | {"ui"})))
    text = st.sampled_from(TEXTS)
    if name == "replay":
        args = [log] + (["--run", draw(st.sampled_from(ids))] if draw(st.booleans()) else [])
        args += ["--at", draw(st.sampled_from(ids))] if draw(st.booleans()) else []
        return ["replay", *args, *_maybe(draw, ["--json"])]
    if name == "verify":
        return ["verify", log, *_maybe(draw, ["--json"])]
    if name == "whatif":
        args = ["whatif", log, "-c", draw(st.sampled_from(EXPRESSIONS))]
        args += ["--run", draw(st.sampled_from(ids))] if draw(st.booleans()) else []
        args += ["--metric", draw(text)] if draw(st.booleans()) else []
        args += ["--counter", draw(st.sampled_from(["epoch", "n", *TEXTS]))] if draw(st.booleans()) else []
        return args + _maybe(draw, ["--json", "--summary", "--mode=max", "--mode=sideways", "--import=os.path"])
    if name == "study":
        return ["study", log, *(["--id", draw(st.sampled_from(ids))] if draw(st.booleans()) else []),
                *_maybe(draw, ["--json"])]
    if name == "watch":
        return ["watch", log, *(["--run", draw(st.sampled_from(ids))] if draw(st.booleans()) else []),
                *(["--interval", draw(st.sampled_from(["0.05", "-1", "nan", "inf", "0"]))] if draw(st.booleans()) else [])]
    if name == "plot":
        metric = draw(st.sampled_from(["history", "n", *TEXTS]))
        target = draw(st.sampled_from([f"{out}/c.svg", f"{out}/c.png", f"{out}/c.txt", "/missing/dir/c.svg", out]))
        return ["plot", log, "--run", draw(st.sampled_from(ids)), "--metric", metric, "-o", target]
    if name == "graph":
        return ["graph", draw(st.sampled_from(TARGETS)), *_maybe(draw, ["--format=dot", "--format=mermaid",
                                                                        "--format=pdf"])]
    if name == "doctor":
        return ["doctor", "--log", log]
    if name == "input":
        pairs = draw(st.lists(st.sampled_from(["decision=go", "decision=maybe", "decision=", "=go", "decision",
                                               "lr=nan", "comment=" + "\x1b[2J", "decision=\udcff", "decision=go=1",
                                               "decision=no-go"]), min_size=1, max_size=3))
        return ["input", log, draw(st.sampled_from(ids)), *pairs, *(["--comment", draw(text)]
                                                                      if draw(st.booleans()) else [])]
    if name in ("approve", "reject", "retry"):
        return [name, log, draw(st.sampled_from(ids)), *(["--comment", draw(text)] if draw(st.booleans()) else [])]
    if name == "stop":
        return ["stop", log, draw(st.sampled_from(ids)), "--reason", draw(text)]
    if name == "worker":
        mode = draw(st.sampled_from([["--once"], ["--every", draw(st.sampled_from(DURATIONS))], [],
                                     ["--once", "--every", "1s"]]))
        return ["worker", log, "--machine", draw(st.sampled_from(TARGETS)), *mode,
                *(["--max-runs", draw(st.sampled_from(ids))] if draw(st.booleans()) else []),
                *(["--hook", draw(st.sampled_from(TARGETS))] if draw(st.booleans()) else [])]
    if name == "demo":  # only arguments that must be refused before any training
        bad = draw(st.sampled_from([["--epochs", v] for v in ("0", "-1", "x", "\udcff")] +
                                   [["--lr", v] for v in ("0", "-1", "nan", "inf")] +
                                   [["--patience", "0"], ["--seed", "-1"], ["--delay", "-1"], ["--data", "/missing.csv"],
                                    ["--epochs", "1", "--lr", "nan"]]))
        return ["demo", "--log", log, *bad]
    return ["ui", log, "--port", draw(st.sampled_from(PORTS)), *(["--host", draw(st.sampled_from(HOSTS))]
                                                                  if draw(st.booleans()) else [])]


# -- running and judging one case -------------------------------------------------------------------------------
def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (never following a symlink, never opening a FIFO or a device): a file by its
    sha256, a symlink by its target, anything else by its type; a ``-shm`` only by existing (readers write it)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root) / name
            rel = str(p.relative_to(folder))
            st_ = os.lstat(p)
            if stat.S_ISLNK(st_.st_mode):
                out[rel] = "-> " + os.readlink(p)
            elif stat.S_ISDIR(st_.st_mode):
                out[rel] = "dir"
            elif not stat.S_ISREG(st_.st_mode):
                out[rel] = f"special {stat.S_IFMT(st_.st_mode)}"
            else:
                out[rel] = "shm" if name.endswith("-shm") else hashlib.sha256(p.read_bytes()).hexdigest()
    return dict(sorted(out.items()))


class Hang(Exception):
    """A case ran past its limit: a hang (a FIFO read, an unbounded wait)."""


def _alarm(signum: int, frame: Any) -> None:
    raise Hang()


HANG_S = 300
"""A case that runs this long is a hang (every case here is meant to answer in well under a second)."""


class Verdict(collections.namedtuple("Verdict", "command kind exit_code problem")):
    """What one case did; ``problem`` is None when every promise held."""


def run_case(args: list[str], kind: str, folder: Path) -> Verdict:
    """Run ``fsmtrain ARGS`` in-process on the files in ``folder`` and judge it."""
    before = snapshot(folder)
    env = {"FSMTRAIN_LOG_KEY_FILE": str(folder / "key.fifo")} if (folder / "key.fifo").exists() else {}
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_S)
    try:
        result = CliRunner().invoke(main, args, catch_exceptions=True, env=env)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    after = snapshot(folder)
    code = result.exit_code
    problem = None
    text = result.output or ""
    if isinstance(result.exception, Hang):
        problem = f"hung for {HANG_S} s"
    elif result.exception is not None and not isinstance(result.exception, SystemExit):
        problem = f"raised {type(result.exception).__name__}: {result.exception}"
    elif "Traceback" in text or "internal error" in text:
        problem = f"printed: {text[-500:]}"
    elif code != 0 and after != before:
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        problem = f"exit {code} but changed or created {changed}"
    elif args[0] in READERS and after != before:
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k) and not k.startswith("out"))
        if changed:
            problem = f"a reader changed or created {changed}"
    return Verdict(args[0], kind, code, problem)


@contextmanager
def library(read_only: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """A folder holding one copy of each hostile log, to copy from (built once: it takes a second)."""
    with tempfile.TemporaryDirectory(prefix="fsmtrain-fuzz-") as tmp:
        base = Path(tmp)
        for i, kind in enumerate(KINDS):
            d = base / kind.replace(" ", "_")
            d.mkdir()
            make_log(kind, d, seed=i)
        yield base


def case_folder(base: Path, kind: str, into: Path) -> Path:
    """A fresh copy of the hostile log ``kind`` in ``into``; returns the log path (which may not exist)."""
    if into.exists():
        shutil.rmtree(into)
    shutil.copytree(base / kind.replace(" ", "_"), into, symlinks=True, copy_function=_copy)
    (into / "out").mkdir()
    return into / "log.db"


def _copy(src: str, dst: str) -> None:
    """copy2, except that a FIFO is made anew (opening one to copy it would wait for a writer)."""
    if stat.S_ISFIFO(os.lstat(src).st_mode):
        os.mkfifo(dst)
    else:
        shutil.copy2(src, dst)


def can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None and \
        subprocess.run(["mount", "--version"], capture_output=True).returncode == 0
