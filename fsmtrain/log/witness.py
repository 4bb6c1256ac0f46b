"""The witness: an append-only file outside the log that remembers how far each run got.

At every durability barrier a writer appends the heads of the runs it wrote since the last one — ``(run,
seq, hash)`` — to ``<artifacts>/witness.jsonl``, after the barrier made them durable in the log.  So the
witness never claims more than the log held durably, and a log that holds less than its witness saw lost
something: a tail or a whole run (a deleted ``-wal`` file, an older copy restored over it, a truncation).
A head whose event now has another hash means history was rewritten.  See spec/log.md, *Integrity*.

Each line names the log it is about (``log``: an identity fixed when the log file was made, kept by its copies),
so a log deleted and made anew at the same path is not compared with the heads of the one before.  Lines are
one ``write`` each on a file opened ``O_APPEND`` (whole lines from several processes never interleave on a local
disk); a line a crash cut short is ignored.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["NAME", "Witness"]

NAME = "witness.jsonl"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # (the witness is never a symlink to elsewhere)


class Witness:
    """The witness file of the log whose artifacts folder is ``folder``.

    A writer keeps one open (its file descriptor is held until :meth:`close`, so a barrier costs one
    ``write``, plus an ``fsync`` when asked for one).
    """

    def __init__(self, folder: str | os.PathLike[str], log: str) -> None:
        self.path = Path(folder) / NAME
        self.log = log
        self._fd: int | None = None
        self.unsynced = False
        """Lines were written since the file was last synced."""

    def record(self, heads: Iterable[tuple[int, int, str]], *, sync: bool,
               accepted: dict[str, Any] | None = None) -> None:
        """Append these heads (one line each, one write); ``sync``: fsync the file (and, when this made it, its
        folder).  ``accepted``: the heads are where a person accepted that the log lost what the witness saw
        beyond them (who, when, which events): they replace the heads seen before instead of adding to them.
        Raises OSError as the file system does."""
        extra = {} if accepted is None else {"accepted": accepted}
        self._append("".join(json.dumps({"log": self.log, "run": r, "seq": s, "hash": h, **extra},
                                        separators=(",", ":")) + "\n" for r, s, h in heads), sync)

    def record_made(self, note: dict[str, Any] | None = None) -> None:
        """Say (synced) that the log at this path is now the one whose identity is ``self.log``: fsmtrain made it
        here (or a person accepted it in place of the one before, ``note``).  Heads about other identities no
        longer apply, and a log at this path that claims another identity is not the one the witness knows."""
        self._append(json.dumps({"made": self.log, **({"note": note} if note else {})}, separators=(",", ":"))
                     + "\n", True)

    def bound(self) -> str | None:
        """The identity of the log this witness knows at its path: the last one made here (or, for a witness
        older than those lines, the last one that recorded heads); ``None`` for an empty witness."""
        seen = self._seen()
        return seen.bound if seen is not None else None

    def _append(self, text: str, sync: bool) -> None:
        if text:
            made = False
            if self._fd is None:
                made = not self.path.exists()
                if made:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | _NOFOLLOW | os.O_NONBLOCK,
                             0o644)
                if not stat.S_ISREG(os.fstat(fd).st_mode):  # (never a FIFO, a device, or a symlink's target)
                    os.close(fd)
                    raise OSError(f"{self.path} is not a regular file")
                self._fd = fd
            data = text.encode()
            os.write(self._fd, data)
            self.unsynced = True
            st = os.fstat(self._fd)  # what this process wrote, known without reading it back (if nobody else
            cached = _CACHE.get(str(self.path))  # wrote between: the file is then exactly as long as expected)
            if cached is not None and cached[0] == st.st_ino and cached[1] + len(data) == st.st_size:
                cached[2].merge(_parse(data))
                _CACHE[str(self.path)] = (st.st_ino, st.st_size, cached[2])
            if made:
                dfd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        if sync:
            self.sync()

    def sync(self) -> None:
        """fsync what was written (nothing to do when it is synced already)."""
        if self.unsynced and self._fd is not None:
            os.fsync(self._fd)
            self.unsynced = False

    def close(self) -> None:
        if self._fd is not None:
            try:
                self.sync()
            finally:
                os.close(self._fd)
                self._fd = None

    def entries(self) -> Iterator[tuple[int, int, str]]:
        """Every ``(run, seq, hash)`` the file holds about this log, in order (none when there is no file or it
        cannot be read; lines that are not whole records are skipped: a crash can cut the last one short)."""
        try:
            if not stat.S_ISREG(os.lstat(self.path).st_mode):
                return
            with os.fdopen(os.open(self.path, os.O_RDONLY | _NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as f:
                data = f.read()
        except OSError:
            return
        for line in _parse(data):
            if line[0] == "head" and line[1] == self.log:
                yield line[2], line[3], line[4]

    def heads(self, log: str | None = None) -> dict[int, tuple[int, str]]:
        """The furthest event the witness saw of each run of the log with identity ``log`` (default: this one):
        ``{run: (seq, hash)}``.  The file only grows, so what was read before is kept and only the lines added
        since are read (all of it again when the file was replaced or shortened)."""
        seen = self._seen()
        return dict(seen.heads.get(self.log if log is None else log, {})) if seen is not None else {}

    def _seen(self) -> _Seen | None:
        try:
            st = os.lstat(self.path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):  # a symlink, a FIFO...: not a witness this library wrote
            return None
        cached = _CACHE.get(str(self.path))
        if cached is not None and cached[0] == st.st_ino and cached[1] == st.st_size:  # (nothing new)
            return cached[2]
        try:
            with os.fdopen(os.open(self.path, os.O_RDONLY | _NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as f:
                ino = os.fstat(f.fileno()).st_ino
                cached = _CACHE.get(str(self.path))
                if cached is None or cached[0] != ino:
                    cached = _CACHE[str(self.path)] = (ino, 0, _Seen())
                _, offset, seen = cached
                f.seek(offset)
                data = f.read()
        except OSError:
            return None
        if len(data) == 0 and offset and os.path.getsize(self.path) < offset:  # (shortened: read it all again)
            _CACHE.pop(str(self.path), None)
            return self._seen()
        end = data.rfind(b"\n") + 1  # (a line still being written is read next time)
        seen.merge(_parse(data[:end]))
        _CACHE[str(self.path)] = (ino, offset + end, seen)
        return seen


class _Seen:
    """What a witness file says: the heads of each log identity, and the identity it knows at its path."""

    def __init__(self) -> None:
        self.heads: dict[str, dict[int, tuple[int, str]]] = {}
        self.made: str | None = None
        self.last: str | None = None

    @property
    def bound(self) -> str | None:
        return self.made if self.made is not None else self.last

    def merge(self, lines: Iterable[tuple[Any, ...]]) -> None:
        for line in lines:
            if line[0] == "made":
                self.made = line[1]
                continue
            _, log, run, seq, h, accepted = line
            self.last = log
            heads = self.heads.setdefault(log, {})
            if accepted and seq == 0:  # (a whole run whose loss was accepted)
                heads.pop(run, None)
            elif accepted or run not in heads or seq >= heads[run][0]:
                heads[run] = (seq, h)


def _parse(data: bytes) -> Iterator[tuple[Any, ...]]:
    """``("head", log, run, seq, hash, accepted)`` and ``("made", log)`` for each whole line (others skipped)."""
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            if isinstance(d, dict) and isinstance(d.get("made"), str):
                yield "made", d["made"]
                continue
            log, run, seq, h = d["log"], d["run"], d["seq"], d["hash"]
        except (ValueError, TypeError, KeyError, RecursionError):
            continue
        if isinstance(log, str) and type(run) is int and type(seq) is int and isinstance(h, str):
            yield "head", log, run, seq, h, isinstance(d.get("accepted"), dict)


_CACHE: dict[str, tuple[int, int, _Seen]] = {}

