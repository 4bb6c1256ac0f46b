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
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["NAME", "Witness"]

NAME = "witness.jsonl"


class Witness:
    """The witness file of the log whose artifacts folder is ``folder``."""

    def __init__(self, folder: str | os.PathLike[str], log: str) -> None:
        self.path = Path(folder) / NAME
        self.log = log

    def record(self, heads: Iterable[tuple[int, int, str]], *, sync: bool) -> None:
        """Append these heads (one line each, one write); ``sync``: fsync the file (and, the first time, its
        folder).  Raises OSError as the file system does."""
        text = "".join(json.dumps({"log": self.log, "run": r, "seq": s, "hash": h}, separators=(",", ":")) + "\n"
                       for r, s, h in heads)
        if not text:
            return
        new = not self.path.exists()
        if new:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, text.encode())
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if new and sync:
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def entries(self) -> Iterator[tuple[int, int, str]]:
        """Every ``(run, seq, hash)`` the file holds about this log, in order (none when there is no file or it
        cannot be read; lines that are not whole records are skipped: a crash can cut the last one short)."""
        try:
            data = self.path.read_bytes()
        except OSError:
            return
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                run, seq, h, log = d["run"], d["seq"], d["hash"], d["log"]
            except (ValueError, TypeError, KeyError, RecursionError):
                continue
            if log == self.log and type(run) is int and type(seq) is int and isinstance(h, str):
                yield run, seq, h

    def heads(self) -> dict[int, tuple[int, str]]:
        """The furthest event the witness saw of each run: ``{run: (seq, hash)}`` (read again only when the file
        changed)."""
        try:
            st = self.path.stat()
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = None
        key = (str(self.path), self.log)
        cached = _CACHE.get(key)
        if cached is not None and stamp is not None and cached[0] == stamp:
            return dict(cached[1])
        out: dict[int, tuple[int, str]] = {}
        for run, seq, h in self.entries():
            if run not in out or seq >= out[run][0]:
                out[run] = (seq, h)
        if stamp is not None:
            _CACHE[key] = (stamp, dict(out))
        return out


_CACHE: dict[tuple[str, str], tuple[tuple[int, int, int], dict[int, tuple[int, str]]]] = {}
