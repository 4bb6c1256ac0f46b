"""Replay: fold a run's events into its state, find where it stands, fork it.

Replay never runs actions and never re-evaluates conditions: a run's state at
any event is the last full snapshot at or before it plus the updates recorded
after it, and the next action is the one the log recorded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from .errors import CorruptLog, EventNotFound, FsmtrainError, InvalidInput, RunNotRunnable
from .log import Event, EventLog, decode
from .state import Append, State, dumps, loads

__all__ = ["Position", "active_time", "apply_updates", "decode_updates", "encode_updates", "fold", "fork", "position", "state_at"]


def encode_updates(updates: Mapping[str, Any]) -> dict[str, Any] | None:
    """The log form of a step's updates: ``{"set": {...}, "append": {...}}`` (empty parts left out; None if none)."""
    sets: dict[str, Any] = {}
    appends: dict[str, Any] = {}
    for k, v in updates.items():
        if type(v) is Append:
            appends[k] = list(v.items)
        else:
            sets[k] = v
    out: dict[str, Any] = {}
    if sets:
        out["set"] = sets
    if appends:
        out["append"] = appends
    return out or None


def apply_updates(data: dict[str, Any], logged: Mapping[str, Any]) -> None:
    """Apply one logged update to a plain, mutable state dict (in place)."""
    s = logged.get("set")
    if s:
        data.update(s)
    a = logged.get("append")
    if a:
        for k, items in a.items():
            cur = data.get(k)
            if cur is None:
                data[k] = list(items)
            else:
                cur.extend(items)


def fold(snapshot: Mapping[str, Any], updates: Iterable[str | Mapping[str, Any]]) -> State:
    """The State reached from ``snapshot`` by the logged ``updates`` (JSON text or decoded), in order."""
    data = {k: (list(v) if isinstance(v, list) else v) for k, v in snapshot.items()}
    for u in updates:
        # Decoded updates are round-tripped so that folding never mutates the caller's lists.
        decoded = decode(u, "an event's updates column") if isinstance(u, str) else loads(dumps(u))
        if not isinstance(decoded, dict):
            raise CorruptLog(f"an event's updates column holds a {type(decoded).__name__}, not "
                             '{"set": ..., "append": ...}; the log was edited outside fsmtrain')
        try:
            apply_updates(data, decoded)
        except (AttributeError, TypeError) as e:
            raise CorruptLog(f"an event's updates cannot be applied ({e}); the log was edited outside fsmtrain") from None
    try:
        return State(data)
    except FsmtrainError as e:
        raise CorruptLog(f"the folded state holds a value no writer makes ({e})") from None


def state_at(log: EventLog, run_id: int, seq: int | None = None) -> State:
    """The full state of ``run_id`` after event ``seq`` (default: its last event)."""
    last = log.run(run_id).last_seq
    if seq is None:
        seq = last
    if not 1 <= seq <= last:
        raise EventNotFound(f"run {run_id} has no event {seq} (its events are 1..{last})")
    snap_seq, snap = log.snapshot_before(run_id, seq)
    return fold(snap, log.updates_between(run_id, snap_seq, seq))


@attrs.frozen
class Position:
    """Where a run stands after its last event: what a runner needs to resume it."""

    run_id: int
    machine: str
    fingerprint: str
    seq: int
    step: int
    status: str
    next_action: str | None
    pending_inputs: dict[str, Any]
    waiting_for: list[dict[str, Any]] | None
    attempts: int  # failed attempts (exceptions) of the due action since it last became due
    state: State
    last_step: Event | None  # the last committed step event (None before the first step)
    interrupted: int = 0  # processes that resumed the due action and went away without a trace, in a row
    last_event: Event | None = None


def position(log: EventLog, run_id: int) -> Position:
    """Read the run's position from the log (one backwards scan to its last progress event)."""
    info = log.run(run_id)
    attempts = 0
    pending: dict[str, Any] = {}
    waiting: list[dict[str, Any]] | None = None
    interrupted = 0
    # What follows the last start/step event says what is pending: input given, a gate
    # waiting, how many attempts of the next action raised, and how many processes resumed
    # it and went away without a trace (killed: interruptions are not failed attempts).
    (since,) = log.conn.execute(
        "SELECT max(seq) FROM events WHERE run_id = ? AND kind IN ('start', 'step')", (run_id,)).fetchone()
    if since is None:
        raise CorruptLog(f"run {run_id} has no start event; the log was edited outside fsmtrain")
    tail = list(log.events(run_id, start=since))
    next_action = tail[0].next
    for ev in tail[1:]:
        if ev.kind == "error":  # the action ran and raised: a failed attempt, and the process lived on
            attempts = max(attempts, ev.attempt or 0)
            interrupted = 0
        elif ev.kind == "resume" and not (isinstance(ev.info, dict) and "accepted_loss" in ev.info):
            interrupted += 1  # (a recorded acceptance of a lost tail is no process that went away)
        elif ev.kind == "waiting":
            waiting = ev.info.get("needs") if isinstance(ev.info, dict) else None
            pending = {}
        elif ev.kind in ("input", "retry"):
            if ev.kind == "input":
                pending.update(ev.inputs or {})
            waiting = None
            attempts = interrupted = 0
    status = info.status
    return Position(run_id, info.machine, info.fingerprint, info.last_seq, info.steps, status,
                    next_action, pending, waiting if status == "waiting" else None, attempts,
                    state_at(log, run_id, info.last_seq), tail[0] if tail[0].kind == "step" else None,
                    interrupted, tail[-1])


ACTIVE_KINDS = frozenset({"step", "error", "failed"})
"""Events whose duration (time since the event before) counts as the run's active time."""


def active_time(log: EventLog, run_id: int, upto: int | None = None) -> tuple[float, float]:
    """``(active seconds, time of the last event)`` of ``run_id`` up to event ``upto`` (default: all).

    Active time is the sum, over the run's ``step``, ``error`` and ``failed``
    events, of the time since the event before each.  The gaps before a
    ``resume`` (the process was dead), and while a gate waited for input, are
    not counted, so a time budget survives restarts and pauses.  The runner
    keeps the same sum, in the same order, as it goes.
    """
    sql = "SELECT kind, time FROM events WHERE run_id = ?"
    params: list[Any] = [run_id]
    if upto is not None:
        sql += " AND seq <= ?"
        params.append(upto)
    active = 0.0
    last: float | None = None
    for kind, t in log.conn.execute(sql + " ORDER BY seq", params):
        if last is not None and kind in ACTIVE_KINDS:
            active += t - last
        last = t
    if last is None:
        log.run(run_id)  # raises RunNotFound
        raise EventNotFound(f"run {run_id} has no events up to {upto}")
    return active, last


def decode_updates(logged: Mapping[str, Any] | None) -> dict[str, Any]:
    """The inverse of :func:`encode_updates`: key -> value, or :class:`~fsmtrain.state.Append`."""
    if not logged:
        return {}
    out: dict[str, Any] = dict(logged.get("set", {}))
    out.update({k: Append(tuple(items)) for k, items in logged.get("append", {}).items()})
    return out


def fork(log: EventLog, run_id: int, seq: int | None = None, *, updates: Mapping[str, Any] | None = None,
         tags: Mapping[str, Any] | None = None) -> int:
    """Start a new run from ``run_id`` as it stood after event ``seq``; returns the new run's id.

    ``updates`` (optional) are set on the forked state, e.g. a new learning rate;
    they are recorded in the new run's start event.
    """
    info = log.run(run_id)
    log.check_run(run_id)  # (a damaged parent passes on nothing: its state would start a clean-looking chain)
    seq = info.last_seq if seq is None else seq
    state = state_at(log, run_id, seq)
    row = log.conn.execute(
        "SELECT next FROM events WHERE run_id = ? AND seq <= ? AND kind IN ('start', 'step') "
        "ORDER BY seq DESC LIMIT 1", (run_id, seq)).fetchone()
    next_action = row[0]
    if next_action is None:
        raise RunNotRunnable(f"run {run_id} had finished by event {seq}; there is nothing to continue from there")
    if updates:
        bad = [k for k in updates if not isinstance(k, str)]
        if bad:
            raise InvalidInput(f"fork updates must have str keys, got {bad!r}")
        state = state.apply(dict(updates))
    ev = log.create_run(info.machine, info.fingerprint, snapshot=state._data, next_action=next_action,
                        tags=tags if tags is not None else info.tags, parent=(run_id, seq),
                        info={"forked_from": {"run": run_id, "seq": seq},
                              "updates": dict(updates) if updates else {}})
    return ev.run_id
