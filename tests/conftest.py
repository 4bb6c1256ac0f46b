from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # so `tests.machines` imports in-process and in subprocesses


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    """Path of a fresh (not yet created) log file."""
    return tmp_path / "runs.db"


def finished_counter_log(path: Path, limit: int) -> Path:
    """A log holding one finished run of the counter machine: ``limit`` ticks, then done."""
    from fsmtrain import EventLog, Runner
    from tests.machines import counter

    with EventLog(path) as log:
        Runner.start(counter(limit), log=log).run()
    return path


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (to prove a command left it byte-for-byte unchanged)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tamper(path: Path, *statements: str | tuple[str, tuple]) -> None:
    """Run SQL on a log with plain sqlite3 (no fsmtrain code), as an outside editor would, and commit."""
    conn = sqlite3.connect(path)
    try:
        for st in statements:
            sql, params = (st, ()) if isinstance(st, str) else st
            conn.execute(sql, params)
        conn.commit()
    finally:
        conn.close()


_HOLDER = """
import sys, time
sys.path.insert(0, {root!r})
from fsmtrain.locks import RunLock
lock = RunLock(__import__("pathlib").Path(sys.argv[1]), int(sys.argv[2]))
print("held" if lock.acquire() else "busy", flush=True)
time.sleep(600)
"""


@contextlib.contextmanager
def lock_held_elsewhere(artifacts: Path, run_id: int) -> Iterator[subprocess.Popen]:
    """Another process takes the lock of ``run_id`` (as a second worker would) and holds it for the block."""
    p = subprocess.Popen([sys.executable, "-c", _HOLDER.format(root=str(ROOT)), str(artifacts), str(run_id)],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "held"
        yield p
    finally:
        p.kill()
        p.wait()
