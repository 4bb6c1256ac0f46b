from __future__ import annotations

import hashlib
import sqlite3
import sys
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
