"""The file a log lives in, before and around SQLite: what is at the path (checked without touching it),
whether it can be written, the ``-wal``/``-shm`` files a reader made, the filesystem it is on, and rolling back
a connection without hiding the error that caused it."""

from __future__ import annotations

import os
import sqlite3
import stat
import warnings
from pathlib import Path

from ..errors import (
    NotALog,
    ReadOnlyLog,
    StorageError,
)

_HEADER = b"SQLite format 3\x00"
_NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "9p", "afs", "lustre", "glusterfs", "ceph", "fuse.s3fs",
               "gpfs", "beegfs", "fuse.gcsfuse", "fuse.glusterfs", "fuse.cephfs", "davfs", "fuse.rclone"}


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is open; a failing ROLLBACK never hides the error that caused it."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass


# Open EventLogs per file in this process: the last one to close may tidy the WAL files up.
_OPEN: dict[str, int] = {}


def _sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _inspect(path: Path, *, readonly: bool, create: bool) -> bool:
    """Check what is at ``path`` before SQLite opens it; True when a new log is to be made there.

    Reads at most the 100-byte header, so a file that is not a log is refused without being
    touched: no WAL or shared-memory file appears beside it.
    """
    try:
        if path.is_dir():
            raise NotALog(f"{path} is a directory, not an fsmtrain log file")
        exists = path.exists()
    except OSError as e:
        raise NotALog(f"cannot look at {path}: {e.strerror or e}") from None
    except ValueError as e:  # e.g. a NUL in the path
        raise NotALog(f"{path!r} is not a usable file name: {e}") from None
    if not exists:
        if readonly or not create:
            raise NotALog(f"{path} does not exist" + ("" if readonly else "; nothing was created"))
        if not path.parent.is_dir():
            raise NotALog(f"cannot create {path}: folder {path.parent} does not exist")
        return True
    try:
        st = path.stat()
    except OSError as e:
        raise NotALog(f"cannot read {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the open, a device would read forever
        raise NotALog(f"{path} is {_kind_of(st.st_mode)}, not a regular file: not an fsmtrain log; nothing was read")
    try:
        size = st.st_size
        with path.open("rb") as f:
            head = f.read(100)
    except OSError as e:
        raise NotALog(f"cannot read {path}: {e.strerror or e}") from None
    if size == 0:
        if readonly or not create:
            raise NotALog(f"{path} is an empty file, not an fsmtrain log")
        return True
    if head[:16] != _HEADER:
        raise NotALog(f"{path} is not a SQLite database (it starts with {head[:8]!r}); not an fsmtrain log")
    if len(head) < 100:
        raise NotALog(f"{path} is a truncated SQLite file ({size} bytes, shorter than its 100-byte header); "
                      "not a usable log")
    page = int.from_bytes(head[16:18], "big")
    page = 65536 if page == 1 else page
    if page < 512 or page & (page - 1) or head[18] not in (1, 2) or head[19] not in (1, 2):
        raise NotALog(f"{path} has a damaged SQLite header; not a usable log")
    if size % page:
        raise NotALog(f"{path} is truncated or damaged: {size} bytes is not a whole number of "
                      f"{page}-byte pages; restore it from a copy")
    return False


def _kind_of(mode: int) -> str:
    """What a file that is not a regular one is, for a message."""
    for test, what in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return what
    return "a special file"


def read_small_regular(path: Path, limit: int, what: str) -> bytes:
    """The bytes of ``path`` if it is a regular file (or a symlink to one) of at most ``limit`` bytes; OSError or
    ValueError naming ``what`` otherwise.  Never blocks on a FIFO, never reads a device without end."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{what} {path} is {_kind_of(st.st_mode)}, not a regular file")
        if st.st_size > limit:
            raise ValueError(f"{what} {path} is {st.st_size} bytes long, more than the {limit} bytes it may hold")
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ValueError(f"{what} {path} holds more than the {limit} bytes it may hold")
    return data


def _why_storage(env: str, path: Path) -> str:
    """``env`` (what :func:`~fsmtrain.errors.environmental` found), said as "the disk is full" when SQLite reported
    an I/O error on a disk that has no room left (it says "disk I/O error" when a full disk stops a WAL)."""
    if "I/O error" in env:
        try:
            st = os.statvfs(path.parent if str(path.parent) else ".")
            if st.f_bavail * st.f_frsize < 64 * 1024:
                return f"the disk is full ({env})"
        except OSError:
            pass
    return env


def _check_writable(path: Path, new: bool) -> None:
    """Refuse to write, before any work, where the file or its folder cannot be written."""
    folder = path.parent if str(path.parent) else Path(".")
    problems = []
    if path.exists() and not os.access(path, os.W_OK):
        problems.append(f"the file {path} is not writable")
    if not os.access(folder, os.W_OK):
        problems.append(f"its folder {folder} is not writable (SQLite keeps its journal there)")
    if problems:
        raise ReadOnlyLog(f"cannot write to {path}: {' and '.join(problems)} (read-only storage or permissions); "
                          "nothing was done. Commands that only read it (replay, verify, ui, whatif, plot, study, "
                          "watch) still work")


def _remove_own_sidecars(path: Path, before: set[str]) -> None:
    """Remove the ``-wal``/``-shm`` files a reader made beside a log, once nobody has the log open.

    A read-only connection to a WAL log creates them and cannot delete them.  They are removed only
    when they did not exist before this object opened the log and an exclusive lock on the shared-memory
    file's "dead man switch" byte (what SQLite itself takes before it deletes them) shows that no other
    connection is open; a ``-wal`` only when it holds nothing.  A ``-shm`` made beside a ``-wal`` that was
    there before (one that holds commits, or a stray one) goes too: it is only an index of the WAL, which
    SQLite rebuilds at the next open.
    """
    made = [s for s in ("-wal", "-shm") if s not in before and _sidecar(path, s).exists()]
    if not made:
        return
    wal, shm = _sidecar(path, "-wal"), _sidecar(path, "-shm")

    def wal_holds_data() -> bool:
        return wal.exists() and wal.stat().st_size > 0

    try:
        if "-wal" in made and wal_holds_data():
            return  # someone wrote meanwhile: theirs to clean up
        if not shm.exists():
            if "-wal" in made:
                wal.unlink(missing_ok=True)
            return
        import fcntl

        fd = os.open(shm, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 128, 0)  # SQLite's DMS byte of the -shm
            except OSError:
                return  # another connection is open
            if "-wal" in made and wal_holds_data():
                return
            for s in made:
                _sidecar(path, s).unlink(missing_ok=True)
        finally:
            os.close(fd)
    except (OSError, ImportError):
        pass


def _filesystem_of(path: Path) -> str | None:
    """The filesystem type of the folder holding ``path``, from /proc/mounts (None where unknown)."""
    try:
        target = str(path.resolve().parent)
        best, fstype = "", None
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and (target == parts[1] or target.startswith(parts[1].rstrip("/") + "/")) \
                        and len(parts[1]) > len(best):
                    best, fstype = parts[1], parts[2]
        return fstype
    except OSError:
        return None


def _refuse_network_fs(path: Path) -> None:
    """A writer refuses a log on a network filesystem, where SQLite's WAL (shared memory, POSIX locks) can
    corrupt it, unless ``$FSMTRAIN_ALLOW_NETWORK_FS=1`` (then it warns)."""
    fstype = _filesystem_of(path)
    if fstype not in _NETWORK_FS:
        return
    if os.environ.get("FSMTRAIN_ALLOW_NETWORK_FS", "").strip() in ("1", "true", "yes"):
        warnings.warn(f"{path} is on a network filesystem ({fstype}): SQLite's WAL mode can corrupt the log there "
                      "(FSMTRAIN_ALLOW_NETWORK_FS is set, so it is written anyway)", stacklevel=4)
        return
    raise StorageError(f"{path} is on a network filesystem ({fstype}), where SQLite can corrupt the log (\"database "
                       "disk image is malformed\"); nothing was written. Keep the log on a local disk and give that "
                       "shared path as its home (--home, or $FSMTRAIN_HOME): the run then continues on any machine "
                       "that reaches it. FSMTRAIN_ALLOW_NETWORK_FS=1 writes there anyway, at that risk")
