"""Reading a log: runs with their status, events, snapshots and the raw updates the fold reads."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..errors import (
    CorruptLog,
    EventNotFound,
    RunNotFound,
)
from .opening import _Opening
from .records import _SELECT_EVENT, MAX_ID, Event, RunInfo, _check_id, _clamp, _run_info, decode


class _Reading(_Opening):
    """The queries (a layer of :class:`~fsmtrain.log.EventLog`)."""

    _RUNS_SQL = """
        SELECT r.id, r.machine, r.fingerprint, r.created, r.parent_id, r.parent_seq, r.tags,
               e.seq, e.step, e.time, e.kind, e.action, e.next
        FROM runs r JOIN events e
          ON e.run_id = r.id AND e.seq = (SELECT max(seq) FROM events WHERE run_id = r.id)
    """

    def runs(self, *, machine: str | None = None, parent_id: int | None = None) -> list[RunInfo]:
        """Every run with its status, oldest first."""
        sql, params = self._RUNS_SQL, list[Any]()
        where = []
        if machine is not None:
            where.append("r.machine = ?")
            params.append(machine)
        if parent_id is not None:
            where.append("r.parent_id = ?")
            params.append(parent_id)
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [_run_info(r) for r in self.conn.execute(sql + " ORDER BY r.id", params)]

    def run(self, run_id: int) -> RunInfo:
        _check_id(run_id, self.path)
        row = self.conn.execute(self._RUNS_SQL + " WHERE r.id = ?", (run_id,)).fetchone()
        if row is None:
            n = self.conn.execute("SELECT count(*) FROM runs").fetchone()[0]
            raise RunNotFound(f"run {run_id} does not exist in {self.path} ({n} run(s) in the log; "
                              "list them with `fsmtrain replay LOG`)")
        return _run_info(row)

    def events(self, run_id: int, *, start: int = 1, end: int | None = None) -> Iterator[Event]:
        """The run's events with ``start <= seq <= end``, in order."""
        _check_id(run_id, self.path)
        start, end = _clamp(start), None if end is None else _clamp(end)
        sql = _SELECT_EVENT + " WHERE run_id = ? AND seq >= ?"
        params: list[Any] = [run_id, start]
        if end is not None:
            sql += " AND seq <= ?"
            params.append(end)
        for row in self.conn.execute(sql + " ORDER BY seq", params):
            yield Event.from_row(row)

    def event(self, run_id: int, seq: int) -> Event:
        _check_id(run_id, self.path)
        if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= MAX_ID:
            last = self.run(run_id).last_seq
            raise EventNotFound(f"run {run_id} has no event {seq} (its events are 1..{last})")
        row = self.conn.execute(_SELECT_EVENT + " WHERE run_id = ? AND seq = ?", (run_id, seq)).fetchone()
        if row is None:
            last = self.run(run_id).last_seq
            raise EventNotFound(f"run {run_id} has no event {seq} (its events are 1..{last})")
        return Event.from_row(row)

    def last_event(self, run_id: int) -> Event:
        _check_id(run_id, self.path)
        row = self.conn.execute(_SELECT_EVENT + " WHERE run_id = ? ORDER BY seq DESC LIMIT 1", (run_id,)).fetchone()
        if row is None:
            self.run(run_id)  # raises RunNotFound
        return Event.from_row(row)

    def snapshot_before(self, run_id: int, seq: int) -> tuple[int, dict[str, Any]]:
        """The newest full snapshot at or before ``seq``: ``(its seq, state dict)``."""
        _check_id(run_id, self.path)
        row = self.conn.execute(
            "SELECT seq, snapshot FROM events WHERE run_id = ? AND seq <= ? AND snapshot IS NOT NULL "
            "ORDER BY seq DESC LIMIT 1", (run_id, _clamp(seq))).fetchone()
        if row is None:
            self.run(run_id)
            raise EventNotFound(f"run {run_id} has no snapshot at or before event {seq}")
        snap = decode(row[1], f"run {run_id} event {row[0]}: its snapshot column")
        if not isinstance(snap, dict):
            raise CorruptLog(f"run {run_id} event {row[0]}: its snapshot is a {type(snap).__name__}, not a JSON object; "
                             "the log was edited outside fsmtrain")
        return row[0], snap

    def updates_between(self, run_id: int, after: int, upto: int | None = None) -> Iterator[str]:
        """Raw JSON text of the updates of events ``after < seq <= upto``, in order (the fold's hot path)."""
        _check_id(run_id, self.path)
        sql = "SELECT updates FROM events WHERE run_id = ? AND seq > ? AND updates IS NOT NULL"
        params: list[Any] = [run_id, _clamp(after)]
        if upto is not None:
            sql += " AND seq <= ?"
            params.append(_clamp(upto))
        for (text,) in self.conn.execute(sql + " ORDER BY seq", params):
            yield text

    def snapshot_weight(self, run_id: int, per_event: int) -> tuple[int, int]:
        """The length of the run's newest snapshot (characters of its JSON) and the weight of the events after
        it: the characters of their updates plus ``per_event`` for each (what a runner weighs snapshots by)."""
        _check_id(run_id, self.path)
        row = self.conn.execute("SELECT seq, length(snapshot) FROM events WHERE run_id = ? AND snapshot IS NOT NULL "
                                "ORDER BY seq DESC LIMIT 1", (run_id,)).fetchone()
        if row is None:
            return 0, 0
        n, chars = self.conn.execute("SELECT count(*), coalesce(sum(length(updates)), 0) FROM events "
                                     "WHERE run_id = ? AND seq > ?", (run_id, row[0])).fetchone()
        return int(row[1] or 0), int(chars) + per_event * int(n)
