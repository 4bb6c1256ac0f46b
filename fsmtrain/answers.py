"""Answering a run from outside the process that drives it: input for a waiting gate (typed, or as text
from a command line or a web form), approve or reject, a deliberate retry of a failed run, a stop; each
validated before anything is written and recorded with who and when; and the summary a person at a gate sees.
"""

from __future__ import annotations

import getpass
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .actions import Input, validate_inputs
from .errors import InvalidInput, RunNotRunnable
from .log import ENDED, Event, EventLog
from .state import State

__all__ = ["APPROVE", "REJECT", "STOP_KINDS", "accept_loss", "decide", "give_input", "give_text_input", "retry", "stop",
           "summary"]


def give_input(log: EventLog, run_id: int, values: Mapping[str, Any], *, by: str | None = None,
               comment: str | None = None) -> Event:
    """Record input for a waiting run, validated against what its gate declared.

    Invalid input, or a run that is not waiting, raises before anything is
    written.  The first valid answer wins: a later one is refused with a message
    naming it.  ``by`` (default: ``$FSMTRAIN_USER``, else the login name) and the
    time are recorded; so is ``comment``, when given.
    """
    info = log.run(run_id)
    if info.status != "waiting":
        first = _answer(log, run_id)
        why = f"run {run_id} is {info.status}, not waiting for input"
        if first is not None:
            why += f"; {first}; the first decision wins"
        raise RunNotRunnable(why)
    log.check_run(run_id)
    last = log.last_event(run_id)
    specs = [Input.from_json(d) for d in last.info["needs"]]
    checked, missing = validate_inputs(specs, dict(values), last.action or "?")
    if missing:
        names = ", ".join(m.name for m in missing)
        raise InvalidInput(f"run {run_id} needs input {names} for `{last.action}`; give every required input")
    note = _note(by, comment, "comment")
    return log.append(run_id, last.seq, kind="input", step=last.step, action=last.action, inputs=checked, info=note)


def retry(log: EventLog, run_id: int, *, by: str | None = None, comment: str | None = None) -> Event:
    """Continue a failed run deliberately: record who retried it and when (a ``retry`` event).

    The run is ``running`` again, from its last committed step, with its attempts
    counted afresh; a worker, ``Trainer.fit`` or ``Runner.resume`` then continues it.
    A run that is not failed is refused, and nothing is written.
    """
    info = log.run(run_id)
    if info.status != "failed":
        raise RunNotRunnable(f"run {run_id} is {info.status}, not failed; only a failed run can be retried")
    log.check_run(run_id)
    last = log.last_event(run_id)
    return log.append(run_id, last.seq, kind="retry", step=last.step, action=last.action,
                      info=_note(by, comment, "comment"))


STOP_KINDS = ("stopped", "pruned")


def stop(log: EventLog, run_id: int, *, reason: str, by: str | None = None, kind: str = "stopped",
         details: Mapping[str, Any] | None = None) -> Event:
    """End a run from outside, for good: a person (``fsmtrain stop``) or a study's scheduler (``kind="pruned"``).

    Records who, when and why (a ``stopped`` or ``pruned`` event, with ``details`` such as
    a scheduler's rung and value).  No worker continues the run afterwards; a process
    driving it stops at its next commit (that step is not recorded).  A run that has
    already ended is refused, and nothing is written.
    """
    if kind not in STOP_KINDS:
        raise InvalidInput(f"kind must be one of {', '.join(STOP_KINDS)}, got {kind!r}")
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInput("give a reason for stopping the run (it is recorded)")
    info = log.run(run_id)
    if info.status in ENDED:
        raise RunNotRunnable(f"run {run_id} is {info.status} already; there is nothing to stop")
    log.check_run(run_id)
    last = log.last_event(run_id)
    note = _note(by, reason, "reason")
    if details:
        note.update({k: v for k, v in details.items() if k not in note})
    return log.append(run_id, last.seq, kind=kind, step=last.step, action=info.next, info=note)


def accept_loss(log: EventLog, run_id: int, *, by: str | None = None, comment: str | None = None) -> Event | None:
    """Record that a person accepts that ``run_id`` lost what the log's witness saw beyond the log's last event
    (an older copy restored, a deleted ``-wal`` file), so that the run continues from what the log holds and
    redoes the rest (``fsmtrain recover --accept-loss``).

    Written to the run as a ``resume`` event whose ``info.accepted_loss`` says who, when, which events and
    why, then to the witness (synced), whose head for the run becomes that event.  Returns the event (``None``
    for a run the log lacks entirely: only the witness records it).  Refuses a run that lost nothing.
    """
    lost = log.lost_tails().get(run_id)
    if lost is None:
        log.run(run_id)
        raise RunNotRunnable(f"run {run_id} in {log.path} lost nothing its witness saw; there is no loss to accept")
    have, saw = lost
    note = {**_note(by, comment, "comment"), "lost": {"from": have + 1, "to": saw}}
    if have == 0:
        log._accept(run_id, 0, "", note)
        return None
    last = log.last_event(run_id)
    action = last.next if last.kind in ("start", "step") else last.action
    ev = log.append(run_id, last.seq, kind="resume", step=last.step, action=action, info={"accepted_loss": note},
                    barrier=True)
    log._accept(run_id, ev.seq, ev.hash, note)
    return ev


def _note(by: str | None, text: str | None, key: str) -> dict[str, Any]:
    """Who and when (and a comment or reason) for an event recording something from outside."""
    if text is not None and not isinstance(text, str):
        raise InvalidInput(f"{key} must be a str, got {type(text).__name__}")
    note: dict[str, Any] = {"by": _who(by), "at": time.time()}
    if text:
        note[key] = _utf8(text, key)
    return note


def _utf8(text: str, what: str) -> str:
    """``text`` if it can be stored (UTF-8 without lone surrogates), else a clear InvalidInput."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidInput(f"{what} holds bytes that are not valid UTF-8 (at character {e.start}); give plain "
                           "UTF-8 text") from None
    return text


def give_text_input(log: EventLog, run_id: int, texts: Mapping[str, str], *, by: str | None = None,
                    comment: str | None = None, blank_is_absent: bool = False) -> Event:
    """:func:`give_input` from text (a command line, a web form): each value is read as the type its gate
    declares (``Input.parse``), then validated as usual.  ``blank_is_absent`` leaves out an empty optional
    field (a form sends every field).  Nothing is written unless everything is valid."""
    info = log.run(run_id)
    last = log.last_event(run_id)
    specs = {d["name"]: Input.from_json(d) for d in (last.info or {}).get("needs", [])} \
        if info.status == "waiting" else {}
    values: dict[str, Any] = {}
    for key, text in texts.items():
        spec = specs.get(key)
        if blank_is_absent and text == "" and spec is not None and not spec.required:
            continue
        if spec is None and info.status == "waiting":
            raise InvalidInput(f"`{last.action}` of run {run_id} has no input named {key!r} "
                               f"(its inputs: {', '.join(specs) or 'none'})")
        values[key] = spec.parse(text, last.action or "?") if spec is not None else text
    return give_input(log, run_id, values, by=by, comment=comment)


APPROVE = ("go", "approve", "approved", "yes", "accept", "ok")
REJECT = ("no-go", "nogo", "reject", "rejected", "no", "deny")


def decide(log: EventLog, run_id: int, approve: bool, *, comment: str | None = None, by: str | None = None,
           inputs: Mapping[str, Any] | None = None) -> Event:
    """Approve or reject a run waiting at a gate with a ``decision`` input: ``fsmtrain approve`` / ``reject``.

    The value given is the gate's own word for it (``go``/``no-go``, ``approve``/
    ``reject``, ``yes``/``no``, or True/False for a bool).  ``comment`` is also
    given as the gate's ``comment`` input when it declares one.
    """
    info = log.run(run_id)
    last = log.last_event(run_id)
    if info.status != "waiting":
        return give_input(log, run_id, {}, by=by)  # raises, naming the first answer if there was one
    specs = {d["name"]: Input.from_json(d) for d in last.info["needs"]}
    gate = specs.get("decision")
    if gate is None:
        raise InvalidInput(f"run {run_id} waits at `{last.action}`, which has no `decision` input (its inputs: "
                           f"{', '.join(specs) or 'none'}); give them with `fsmtrain input LOG {run_id} key=value`")
    words = APPROVE if approve else REJECT
    if gate.type == "bool":
        value: Any = approve
    elif gate.choices is None:
        value = words[0]
    else:
        value = next((c for c in gate.choices if isinstance(c, str) and c.lower() in words), None)
        if value is None:
            raise InvalidInput(f"`{last.action}` takes decision in {list(gate.choices)}, none of which means "
                               f"{'approve' if approve else 'reject'}; give it with "
                               f"`fsmtrain input LOG {run_id} decision=...`")
    values = {**(inputs or {}), "decision": value}
    if comment and "comment" in specs:
        values["comment"] = comment
    return give_input(log, run_id, values, by=by, comment=comment)


def _answer(log: EventLog, run_id: int) -> str | None:
    """How the run's last gate was answered: the first input after its last ``waiting`` event."""
    row = log.conn.execute("SELECT max(seq) FROM events WHERE run_id = ? AND kind = 'waiting'", (run_id,)).fetchone()
    if row is None or row[0] is None:
        return None
    for ev in log.events(run_id, start=row[0] + 1):
        if ev.inputs:
            who = ev.info.get("by") if ev.kind == "input" and isinstance(ev.info, dict) else None
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ev.time))
            given = ", ".join(f"{k}={v!r}" for k, v in sorted(ev.inputs.items()))
            return f"its gate `{ev.action}` was answered with {given}" + (f" by {who}" if who else "") + \
                f" at {when} (event {ev.seq})"
    return None


def summary(state: State) -> dict[str, Any]:
    """What a person deciding at a gate wants to see: the epoch and each metric's count, last, min and max."""
    out: dict[str, Any] = {}
    for k in ("epoch", "steps"):
        if isinstance(state.get(k), int):
            out[k] = state[k]
    metrics: dict[str, Any] = {}
    for k in sorted(state):
        v = state[k]
        if isinstance(v, Sequence) and not isinstance(v, str) and v and len(metrics) < 20 \
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            finite = [x for x in v if math.isfinite(x)]
            metrics[k] = {"n": len(v), "last": v[-1], "min": min(finite, default=None), "max": max(finite, default=None)}
    out["metrics"] = metrics
    return out


def _who(by: str | None) -> str:
    if by is not None and not isinstance(by, str):
        raise InvalidInput(f"by must be a str naming who gives the input, got {type(by).__name__}")
    who = by or os.environ.get("FSMTRAIN_USER") or _user()
    return _utf8(who, "the user name (by, $FSMTRAIN_USER)")



def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"
