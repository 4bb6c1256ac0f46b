"""What a log holds, as Python sees it: the event kinds and statuses, the columns of an event, the
rows read back as :class:`Event` and :class:`RunInfo`, a problem :meth:`~fsmtrain.log.EventLog.check` finds, and
the tolerant decoding of a JSON column (a log edited outside fsmtrain can hold anything)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import attrs

from ..errors import (
    CorruptLog,
    RunNotFound,
)
from ..state import loads

__all__ = ["BARRIER_KINDS", "DURABILITY", "ENDED", "EVENT_KINDS", "MAX_ID", "SCHEMA_VERSION", "Event", "Problem",
           "RunInfo", "decode", "status_of"]

SCHEMA_VERSION = 2
"""Version 2 added the event kinds ``retry``, ``stopped`` and ``pruned``; version-1 logs are read as they are
and upgraded (a row in ``fsmtrain_schema``) by their first write."""
EVENT_KINDS = ("start", "step", "resume", "waiting", "input", "error", "failed", "retry", "stopped", "pruned")
ENDED = ("finished", "failed", "stopped", "pruned")
"""Statuses of a run that no runner continues (``failed`` only after a deliberate ``retry``)."""
DURABILITY = ("barrier", "step", "none")
BARRIER_KINDS = frozenset({"input", "retry", "stopped", "pruned", "failed", "waiting"})
"""Event kinds whose commit is a barrier under ``durability="barrier"``: what a person or the outside world gave
or saw (an answer, a retry, a stop, a prune) and the end or pause of a run.  A ``step`` whose ``next`` is null
(the run finished) is one too."""
BARRIER_EVERY = 1000
"""Default: a barrier at least every this many commits of one writer (bounds the WAL between checkpoints)."""
BARRIER_SECONDS = 1.0
"""Default: the first commit after this many seconds without a barrier is one."""
CHECKPOINT_EVERY = 100
"""A barrier runs SQLite's WAL checkpoint when at least this many commits were made since the last one."""
WITNESS_SECONDS = 1.0
"""A barrier writes the witness (spec/log.md, *Integrity*) when this many seconds passed since it last did, or
when it records something from outside or a run's end, or at close."""
MAC = "hmac-sha256"
"""The keyed chain: an event's hash is HMAC-SHA256 under the log's key instead of SHA-256."""
MAX_ID = 2**63 - 1

_EVENT_COLS = ("run_id", "seq", "step", "time", "kind", "action", "attempt", "inputs",
               "updates", "next", "info", "snapshot", "error", "prev_hash", "hash")
_SELECT_EVENT = f"SELECT {', '.join(_EVENT_COLS)} FROM events"
_INSERT = f"INSERT INTO events ({', '.join(_EVENT_COLS)}) VALUES ({', '.join('?' * len(_EVENT_COLS))})"


class Event(NamedTuple):
    """One row of ``events``; JSON columns are decoded (``None`` when absent)."""

    run_id: int
    seq: int
    step: int
    time: float
    kind: str
    action: str | None
    attempt: int | None
    inputs: Any
    updates: Any
    next: str | None
    info: Any
    snapshot: Any
    error: str | None
    prev_hash: str
    hash: str

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Event:
        """An event from a raw ``events`` row (JSON columns decoded)."""
        r = list(row)
        for i in (7, 8, 10, 11):  # inputs, updates, info, snapshot
            if r[i] is not None:
                r[i] = decode(r[i], f"run {r[0]} event {r[1]}: its {_EVENT_COLS[i]} column")
        return cls._make(r)


def decode(text: Any, where: str) -> Any:
    """JSON text read from a log, decoded; :class:`CorruptLog` naming ``where`` when it is not what a writer makes.

    A log that was edited outside fsmtrain can hold anything: text that is not JSON, JSON nested
    100,000 deep, a Ref whose path leaves the artifact folder.  Readers say so instead of crashing.
    """
    if not isinstance(text, str):
        raise CorruptLog(f"{where} holds a {type(text).__name__}, not JSON text; the log was edited outside fsmtrain")
    try:
        return loads(text)
    except RecursionError:
        raise CorruptLog(f"{where} holds JSON nested too deeply to read; the log was edited outside fsmtrain") from None
    except (ValueError, TypeError) as e:
        raise CorruptLog(f"{where} is not valid fsmtrain JSON ({_first_line(e)}); "
                         "the log was edited outside fsmtrain") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


@attrs.frozen
class RunInfo:
    """A run and what its last event says about it."""

    id: int
    machine: str
    fingerprint: str
    created: float
    parent_id: int | None
    parent_seq: int | None
    tags: dict[str, Any]
    last_seq: int
    steps: int
    last_time: float
    last_kind: str
    last_action: str | None
    next: str | None

    @property
    def status(self) -> str:
        """The run's status from its last event: running, waiting, finished, failed, stopped or pruned."""
        return status_of(self.last_kind, self.next)


@attrs.frozen
class Problem:
    """One problem :meth:`EventLog.check` found: its ``code`` (spec/log.md, *Verification*), the run and the
    event it concerns (``None`` where it is not about one), and a sentence for a person."""

    code: str
    message: str
    run: int | None = None
    seq: int | None = None

    def __str__(self) -> str:
        return self.message


def status_of(kind: str, next_action: str | None) -> str:
    """A run's status from its last event: running, waiting, finished, failed, stopped or pruned."""
    if kind in ("failed", "waiting", "stopped", "pruned"):
        return kind
    if kind == "step" and next_action is None:
        return "finished"
    return "running"


def _run_info(row: tuple[Any, ...]) -> RunInfo:
    r = list(row)
    tags = decode(r[6], f"run {r[0]}: its tags column")
    r[6] = tags if isinstance(tags, dict) else {"tags": tags}
    return RunInfo(*r)


def _check_id(run_id: Any, path: Path) -> None:
    if isinstance(run_id, bool) or not isinstance(run_id, int) or not 1 <= run_id <= MAX_ID:
        raise RunNotFound(f"run {run_id!r} does not exist in {path} (run ids are whole numbers from 1 to {MAX_ID})")


def _clamp(n: Any) -> int:
    """A sequence bound as SQLite can take it (beyond the range, nothing matches anyway)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"an event sequence number must be an int, got {type(n).__name__}")
    return max(-MAX_ID, min(n, MAX_ID))
