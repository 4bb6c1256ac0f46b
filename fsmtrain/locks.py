"""One runner per run: an exclusive, per-run lock that every process driving a run takes first.

The lock is a POSIX record lock (``fcntl.lockf``) on ``<artifacts>/locks/run<ID>.lock``: the kernel
releases it when the holding process dies, so a killed runner never blocks the next one, and a child
process forked meanwhile (a DataLoader's workers, a study's pool) does not inherit it — unlike
``flock``, whose lock lives as long as any forked copy of the file descriptor.  The holder writes who it is
(pid, host, command, since when) into the file, so a process that finds the run taken can say by
whom.  Within one process the lock is shared (re-entrant): a worker that holds it can resume the
run through a Trainer that takes it again.  The log's own one-writer rule (``WriteConflict``)
backs this up for any writer that does not take the lock.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import RunBusy

__all__ = ["RunLock", "holder", "lock_path", "run_lock"]

_HELD: dict[str, tuple[int, int]] = {}  # lock file -> (fd, holders in this process)
_GUARD = threading.Lock()
_RECORD = 320


def lock_path(artifacts: Path, run_id: int) -> Path:
    """Where the lock of ``run_id`` lives."""
    return Path(artifacts) / "locks" / f"run{run_id}.lock"


def holder(path: Path) -> str:
    """Who holds (or last held) the lock at ``path``, as its holder wrote it."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return "another process"
    return text.splitlines()[0][:300] if text else "another process"


class RunLock:
    """The lock of one run.  ``acquire()`` returns False when another process holds it."""

    def __init__(self, artifacts: Path, run_id: int) -> None:
        self.path = lock_path(artifacts, run_id)
        self.run_id = run_id
        self.held = False

    def acquire(self, wait: float = 0.0) -> bool:
        """Take the lock (waiting up to ``wait`` seconds); False if another process has it."""
        if self.held:
            return True
        key = str(self.path)
        with _GUARD:
            if key in _HELD:  # this process holds it already: share it
                fd, n = _HELD[key]
                _HELD[key] = (fd, n + 1)
                self.held = True
                return True
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: the log's one-writer rule still holds
            self.held = True
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK, 0o644)
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # (a lock file is never a symlink, a FIFO or a device)
            os.close(fd)
            raise OSError(f"{self.path} is not a regular file; remove it")
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:  # EAGAIN or EACCES: another process holds it
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(0.05)
        try:  # who holds it, for the message of whoever finds it taken
            me = (f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                  f"{' '.join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:200]}\n")
            # One fixed-size record, written over in place: truncating first would make ext4 flush the file on
            # close (its replace-by-truncate heuristic), a disk write per lock.
            os.pwrite(fd, me.encode("utf-8", "replace")[:_RECORD - 1].ljust(_RECORD - 1) + b"\n", 0)
        except OSError:
            pass
        with _GUARD:
            _HELD[key] = (fd, 1)
        self.held = True
        return True

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        key = str(self.path)
        with _GUARD:
            if key not in _HELD:
                return
            fd, n = _HELD[key]
            if n > 1:
                _HELD[key] = (fd, n - 1)
                return
            del _HELD[key]
        os.close(fd)  # releases the lock (the only descriptor of this file this process keeps open)

    def busy(self, what: str = "") -> RunBusy:
        """The error for a run this process could not lock."""
        return RunBusy(f"run {self.run_id} is being run by another process ({holder(self.path)}); "
                       f"{what or 'nothing was done'}. Wait for it to finish or stop it, then try again")

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:
            pass


@contextlib.contextmanager
def run_lock(artifacts: Path, run_id: int, *, wait: float = 0.0) -> Iterator[bool]:
    """Hold the lock of ``run_id`` for the ``with`` block; yields False if another process has it."""
    lock = RunLock(artifacts, run_id)
    got = lock.acquire(wait)
    try:
        yield got
    finally:
        if got:
            lock.release()
