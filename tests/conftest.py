from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # so `tests.machines` imports in-process and in subprocesses


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run the long batteries (tests marked slow): random SIGKILLs, power-loss images, "
                          "distributed kills, the command-line fuzzer, the browser, the benchmarks' quick runs")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without ``--run-slow`` the tests marked ``slow`` are deselected (``python -m pytest`` is the quick suite)."""
    for item in items:  # the browser tests (headless Chromium) are a long battery too
        if "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    if config.getoption("--run-slow"):
        return
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if item.get_closest_marker("slow") is None]


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


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Any]:
    """``small_disk(size)``: a folder on a tmpfs of its own (``"2m"``...), for a real full disk and, remounted
    with ``remount_read_only``, real read-only storage.  Needs the right to mount (root); skipped otherwise."""
    mounts: list[Path] = []

    def make(size: str = "4m") -> Path:
        d = tmp_path / f"disk{len(mounts)}"
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(d)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}); these tests need root")
        mounts.append(d)
        return d

    yield make
    for d in reversed(mounts):
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def remount_read_only(folder: Path) -> None:
    """Make a ``small_disk`` read-only (as a read-only volume or snapshot would be)."""
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True, capture_output=True)


def fill(folder: Path) -> Path:
    """Fill the disk holding ``folder`` up to the last byte; returns the filler file (delete it to free the space)."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (b"\0" * 65536, b"\0" * 512, b"\0"):
            try:
                while True:
                    f.write(chunk)
            except OSError:
                pass
    return filler


def forge(path: Path, run_id: int, seq: int, column: str, value: Any) -> None:
    """Edit one event as someone who knows the format would: drop the triggers, change the column, recompute
    the run's hash chain with the public formula, put the triggers back.  ``verify``'s chain check passes."""
    from fsmtrain.log import _EVENT_COLS, _SCHEMA_TRIGGERS, event_hash

    conn = sqlite3.connect(path)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")]
        for n in names:
            conn.execute(f"DROP TRIGGER {n}")
        conn.execute(f"UPDATE events SET {column} = ? WHERE run_id = ? AND seq = ?", (value, run_id, seq))
        rows = conn.execute(f"SELECT {', '.join(_EVENT_COLS)} FROM events WHERE run_id = ? ORDER BY seq",
                            (run_id,)).fetchall()
        prev = rows[0][13]
        for r in rows:
            h = event_hash(prev, *r[:13])
            conn.execute("UPDATE events SET prev_hash = ?, hash = ? WHERE run_id = ? AND seq = ?", (prev, h, r[0], r[1]))
            prev = h
        for sql in _SCHEMA_TRIGGERS:
            conn.execute(sql)
        conn.commit()
    finally:
        conn.close()


# -- processes a test starts (torchrun's ranks...) are tagged: none may outlive it ---------------------------
def env(tag: str = "") -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "FSMTRAIN_TEST_TAG": tag or uuid.uuid4().hex}


def tagged(tag: str) -> list[int]:
    """Live processes started by this test (its tag in their environment): none may outlive it."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                if f"FSMTRAIN_TEST_TAG={tag}".encode() in f.read().split(b"\0"):
                    with open(f"/proc/{d}/stat") as s:
                        if s.read().rsplit(")", 1)[1].split()[0] != "Z":
                            found.append(int(d))
        except OSError:
            pass
    return found


@pytest.fixture
def tag():
    """A tag for this test's processes; at the end, none may be left (they would be killed, and the test fails)."""
    t = uuid.uuid4().hex
    yield t
    deadline = time.monotonic() + 30
    while tagged(t) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = tagged(t)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes outlived the test: {left}"


def env_of(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            pairs = [x.split(b"=", 1) for x in f.read().split(b"\0") if b"=" in x]
    except OSError:
        return {}
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}
