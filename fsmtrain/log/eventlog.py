"""The :class:`EventLog`: one object for a log file, built from its layers (opening, the witness, writing,
reading, checking), each in a module of its own."""

from __future__ import annotations

from .integrity import _Checking
from .reading import _Reading

__all__ = ["EventLog"]


class EventLog(_Checking, _Reading):
    """An fsmtrain event log file.

    ``EventLog(path)`` opens a log to write to, creating the file when it does not exist
    (``create=False`` refuses a missing or empty file instead); ``readonly=True`` opens an existing
    log without ever writing to it.

    ``durability`` says what survives a power loss or an OS crash (a killed process never loses
    a commit, in any mode; see spec/log.md):

    - ``"barrier"`` (default): commits are ordinary (SQLite ``synchronous=NORMAL``); a **barrier**
      — one commit with ``synchronous=FULL``, which makes every earlier commit durable too — is
      taken for the events in :data:`BARRIER_KINDS`, at a run's end, for a commit passed
      ``barrier=True`` (an action declared ``barrier=True``), on :meth:`barrier`, at
      :meth:`close`, and at the first commit after ``barrier_every`` commits or ``barrier_seconds``
      seconds without one.  SQLite's own WAL checkpoints run at barriers, never on a step's
      commit.  After a power loss the log is a consistent prefix that ends at or after the last
      barrier.
    - ``"step"``: every commit is a barrier (one fsync per commit).
    - ``"none"``: never synced (``synchronous=OFF``): for throwaway logs; a power loss may
      lose or damage it.

    ``synchronous="FULL"`` / ``"NORMAL"`` (the older spelling) mean ``"step"`` / ``"barrier"``.

    At barriers a writer appends the heads of the runs it wrote to the **witness** file
    (``<artifacts>/witness.jsonl``), so that :meth:`verify` and writers notice a log that lost what it
    once held.  ``key`` (default: ``$FSMTRAIN_LOG_KEY``, or the file ``$FSMTRAIN_LOG_KEY_FILE`` names)
    makes the chains of the runs it creates HMAC-SHA256 under that secret: forging their events then needs
    the key, and writing to them too (spec/log.md, *Integrity*).

    Nothing is written, and no file is created, before the first write: a writer reads through a
    read-only connection until it appends (a log that does not exist yet reads as an empty one), so
    a command that refuses (bad input, a run not waiting) leaves every file byte-for-byte as it was
    and creates none, and a log on read-only storage still opens for reading.
    """

    def __enter__(self) -> EventLog:  # noqa: PYI034
        return self

