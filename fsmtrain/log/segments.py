"""A home's event segments: the events of one run, ``first`` to ``last``, as canonical rows (spec/home.md).

A segment is JSON lines: a header ``{"segment": {...}}``, the run's row ``{"run": {...}}`` in the segment that
starts at event 1, then one ``{"event": {...}}`` per event with every column as stored — the row format of
``spec/conformance/``.  :func:`decode` checks a segment against what it must continue (the previous event's hash)
and recomputes every hash, so a segment altered, cut short or from another run is refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import CorruptLog
from .hashing import _row_hash, run_hash
from .records import _EVENT_COLS

__all__ = ["FORMAT", "Segment", "decode", "encode", "segment_key"]

FORMAT = 1
_RUN_COLS = ("id", "machine", "fingerprint", "created", "parent_id", "parent_seq", "tags")
_NAME = re.compile(r"^(\d{12})\.jsonl$")


def segment_key(run_id: int, first: int) -> str:
    """The object name of run ``run_id``'s segment that starts at event ``first``."""
    return f"runs/{run_id}/events/{first:012d}.jsonl"


def first_of(name: str) -> int | None:
    """The first event of a segment from its object name (``None``: not a segment's name)."""
    m = _NAME.match(name)
    return int(m.group(1)) if m else None


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)


def encode(run_id: int, rows: Sequence[tuple[Any, ...]], run_row: tuple[Any, ...] | None, claim: str) -> bytes:
    """The segment holding ``rows`` (raw ``events`` rows in column order, consecutive) of ``run_id``; ``run_row``
    (the ``runs`` row) when it starts at event 1; ``claim``: the name of the writer's claim."""
    first, last = rows[0][1], rows[-1][1]
    lines = [_canon({"segment": {"format": FORMAT, "run": run_id, "first": first, "last": last, "claim": claim}})]
    if run_row is not None:
        lines.append(_canon({"run": dict(zip(_RUN_COLS, run_row, strict=True))}))
    lines.extend(_canon({"event": dict(zip(_EVENT_COLS, row, strict=True))}) for row in rows)
    return ("\n".join(lines) + "\n").encode("utf-8")


class Segment:
    """A decoded segment: its header, the run row (or ``None``) and the event rows, in column order."""

    def __init__(self, header: dict[str, Any], run_row: tuple[Any, ...] | None, rows: list[tuple[Any, ...]]) -> None:
        self.header = header
        self.run_row = run_row
        self.rows = rows
        self.first: int = header["first"]
        self.last: int = header["last"]
        self.claim: str = str(header.get("claim", ""))

    @property
    def head(self) -> tuple[int, str]:
        return self.rows[-1][1], self.rows[-1][-1]


def decode(data: bytes, where: str, run_id: int, first: int) -> Segment:
    """Parse segment ``where`` of ``run_id`` that its name says starts at ``first`` (its own hashes are checked
    by :func:`verify`)."""
    def bad(why: str) -> CorruptLog:
        return CorruptLog(f"the home's segment {where} is damaged: {why}; nothing was taken from it")

    try:
        lines = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise bad(f"not JSON lines ({e})") from None
    if not lines or not isinstance(lines[0], dict) or not isinstance(lines[0].get("segment"), dict):
        raise bad("no segment header")
    header = lines[0]["segment"]
    if header.get("format") != FORMAT:
        raise bad(f"format {header.get('format')!r}, this fsmtrain reads {FORMAT}")
    if header.get("run") != run_id or header.get("first") != first or type(header.get("last")) is not int:
        raise bad(f"its header ({header}) does not match its name (run {run_id}, from event {first})")
    run_row = None
    body = lines[1:]
    if body and isinstance(body[0], dict) and "run" in body[0]:
        r = body.pop(0)["run"]
        if not isinstance(r, dict) or set(r) != set(_RUN_COLS):
            raise bad("a run row without the runs table's columns")
        run_row = tuple(r[c] for c in _RUN_COLS)
    rows = []
    for line in body:
        ev = line.get("event") if isinstance(line, dict) else None
        if not isinstance(ev, dict) or set(ev) != set(_EVENT_COLS):
            raise bad("a line that is not an event row")
        rows.append(tuple(ev[c] for c in _EVENT_COLS))
    if not rows or [r[1] for r in rows] != list(range(first, header["last"] + 1)) \
            or any(r[0] != run_id for r in rows):
        raise bad(f"its events are not run {run_id}'s events {first} to {header['last']}")
    if (run_row is None) != (first != 1):
        raise bad("the run's row belongs in its first segment, and only there")
    return Segment(header, run_row, rows)


def verify(run_id: int, rows: Iterable[tuple[Any, ...]], prev: str, key: bytes | None, where: str) -> str:
    """Check that ``rows`` continue the chain after ``prev`` (every hash recomputed, with ``key`` for a keyed
    run); returns the hash of the last one."""
    for row in rows:
        seq = row[1]
        if row[13] != prev:
            raise CorruptLog(f"the home's copy of run {run_id} does not continue at event {seq} ({where}): its "
                             "previous hash is not the one before it; nothing was taken from it")
        try:
            h = _row_hash(row, key)
        except (TypeError, ValueError) as e:
            raise CorruptLog(f"the home's event {seq} of run {run_id} ({where}) holds values no writer makes "
                             f"({e}); nothing was taken from it") from None
        if h != row[14]:
            raise CorruptLog(f"the home's event {seq} of run {run_id} ({where}) does not match its hash (altered, "
                             "or hashed with another key); nothing was taken from it")
        prev = h
    return prev


def first_prev(run_row: tuple[Any, ...]) -> str:
    """The hash a run's first event continues: the run's own hash."""
    return run_hash(*run_row)
