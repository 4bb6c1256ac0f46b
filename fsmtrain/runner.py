"""The runner: executes a machine one action at a time, writing each step to the log.

``Runner.start`` begins a run, ``Runner.resume`` continues one from the log,
``step`` runs one action, ``run``/``iterate`` run until a halt: a terminal action
ran, an action needs input it was not given (the run is then *waiting*), or an
explicit ``halt_before``/``halt_after``.  See ``spec/engine.md``.
"""

from __future__ import annotations

import getpass
import math
import os
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, NoReturn

import attrs

from .actions import Input, validate_inputs
from .errors import (
    ActionFailed,
    FsmtrainError,
    InvalidInput,
    MachineMismatch,
    RestoreFailed,
    RunNotRunnable,
    UnknownAction,
)
from .hooks import HookBus
from .log import Event, EventLog
from .machine import Machine
from .replay import active_time, decode_updates, encode_updates, position, state_at
from .state import Encoded, State, dumps

__all__ = ["Halt", "Redo", "Restore", "Runner", "StepResult", "decide", "give_input", "give_text_input", "summary"]

Restore = Callable[["Runner"], "Mapping[str, Any] | None"]
"""``restore(runner)``: bring ``runner.resources`` to the run's last committed step; may return a note to log."""


class StepResult(NamedTuple):
    """What one step did."""

    action: str
    step: int
    seq: int | None
    inputs: dict[str, Any]
    updates: dict[str, Any]
    state: State
    next_action: str | None
    reason: str | None


class Redo(NamedTuple):
    """What :meth:`Runner.redo` did: steps re-executed, and those whose updates differed from the log's."""

    steps: int
    mismatches: list[str]


@attrs.frozen
class Halt:
    """Why ``run`` returned: ``finished``, ``waiting``, ``halt_before``, ``halt_after`` or ``max_steps``."""

    reason: str
    action: str | None
    state: State
    steps: int


class Runner:
    """Drives one run of a machine.  Create it with :meth:`start` or :meth:`resume`."""

    def __init__(self, machine: Machine, *, log: EventLog | None, run_id: int | None, state: State,
                 next_action: str | None, hooks: Iterable[Any] = (), resources: Any = None,
                 restore: Restore | None = None, max_attempts: int = 3, snapshot_every: int = 100) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        if snapshot_every < 1:
            raise ValueError(f"snapshot_every must be >= 1, got {snapshot_every}")
        self.machine = machine
        self.log = log
        self.run_id = run_id
        self.resources = resources
        self.restore = restore
        self._restore_due = False
        self.max_attempts = max_attempts
        self.snapshot_every = snapshot_every
        self.hooks = HookBus(hooks)
        self._state = state
        self._next = next_action
        self._seq = 1
        self._hash: str | None = None  # hash of event _seq when this runner knows it (saves a read per append)
        self._step = 0
        self._status = "running" if next_action is not None else "finished"
        self._pending: dict[str, Any] = {}
        self._attempts = 0
        self._resume_info: dict[str, Any] | None = None
        self._halt: Halt | None = None
        self._decisions: dict[tuple[str, str | None], Encoded] = {}
        # Active time (see replay.active_time): the sum of the durations of step, error and
        # failed events, each measured from the event before it.  _t is the last event's time.
        self._t = time.time()
        self._active = 0.0

    # -- construction ---------------------------------------------------------------
    @classmethod
    def start(cls, machine: Machine, *, log: EventLog | None = None, state: Mapping[str, Any] | None = None,
              hooks: Iterable[Any] = (), resources: Any = None, restore: Restore | None = None,
              tags: Mapping[str, Any] | None = None, max_attempts: int = 3, snapshot_every: int = 100) -> Runner:
        """Begin a new run at the machine's entry; with a ``log``, it is recorded there.

        ``restore`` (optional) is called before an action is retried after it raised
        (see :meth:`resume`).
        """
        initial = machine.initial.apply(dict(state)) if state else machine.initial
        r = cls(machine, log=log, run_id=None, state=initial, next_action=machine.entry, hooks=hooks,
                resources=resources, restore=restore, max_attempts=max_attempts, snapshot_every=snapshot_every)
        if log is not None:
            ev = log.create_run(machine.name, machine.fingerprint, snapshot=initial._data,
                                next_action=machine.entry, tags=tags, info={"machine": machine.describe()})
            r.run_id, r._seq, r._hash, r._t = ev.run_id, ev.seq, ev.hash, ev.time
        r.hooks.emit("run_start", run_id=r.run_id, state=initial, machine=machine)
        return r

    @classmethod
    def resume(cls, machine: Machine, log: EventLog, run_id: int, *, hooks: Iterable[Any] = (),
               resources: Any = None, restore: Restore | None = None, allow_changed_machine: bool = False,
               max_attempts: int = 3, snapshot_every: int = 100) -> Runner:
        """Continue ``run_id`` from its last committed event.

        The machine must have the name and fingerprint the run was recorded with;
        ``allow_changed_machine=True`` accepts a changed graph (recorded in the log).

        ``restore(runner)``, when given, brings mutable ``resources`` (a model, an
        optimizer...) to the last committed step, typically by loading a checkpoint
        referenced in the state and calling :meth:`redo`.  It is called once, just
        before the first action this runner executes (so resuming a run that then
        waits for input costs nothing), and again before any retry after an action
        raised.  What it returns is recorded in the ``resume`` event's ``info``.
        """
        pos = position(log, run_id)
        if pos.machine != machine.name:
            raise MachineMismatch(f"run {run_id} was recorded by machine `{pos.machine}`, not `{machine.name}`")
        (last_fp,) = log.conn.execute(
            "SELECT info FROM events WHERE run_id = ? AND kind = 'resume' ORDER BY seq DESC LIMIT 1",
            (run_id,)).fetchone() or (None,)
        recorded = pos.fingerprint
        if last_fp is not None:
            from .state import loads

            recorded = loads(last_fp).get("fingerprint", recorded)
        changed = recorded != machine.fingerprint
        if changed and not allow_changed_machine:
            raise MachineMismatch(
                f"run {run_id} was recorded with machine `{machine.name}` fingerprint {recorded[:12]}, but this "
                f"machine's is {machine.fingerprint[:12]}: its actions or transitions changed. Pass "
                "allow_changed_machine=True to resume with the new graph anyway"
            )
        if pos.next_action is not None and pos.next_action not in machine.actions:
            raise UnknownAction(f"run {run_id} is due to run `{pos.next_action}`, which machine `{machine.name}` lacks")
        r = cls(machine, log=log, run_id=run_id, state=pos.state, next_action=pos.next_action, hooks=hooks,
                resources=resources, restore=restore, max_attempts=max_attempts, snapshot_every=snapshot_every)
        r._seq, r._step, r._status = pos.seq, pos.step, pos.status
        r._pending, r._attempts = dict(pos.pending_inputs), pos.attempts
        r._active, r._t = active_time(log, run_id)
        r._state = pos.state.with_elapsed(r._active)
        r._restore_due = restore is not None and pos.status in ("running", "waiting")
        if pos.status == "running":
            r._resume_info = {"fingerprint": machine.fingerprint, "pid": os.getpid()}
            if changed:
                r._resume_info.update(_changes(log, run_id, recorded, machine))
        r.hooks.emit("run_resume", run_id=run_id, state=pos.state, next_action=pos.next_action)
        last = pos.last_step
        if last is not None and r.hooks:
            # Hooks run after the commit, so a crash between the two skipped them: deliver the
            # last step's hooks again (at least once), marked replayed=True.
            reason = last.info.get("reason") if isinstance(last.info, dict) else None
            r.hooks.emit("step_end", run_id=run_id, step=last.step, action=last.action, state=pos.state,
                         updates=decode_updates(last.updates), next_action=last.next, reason=reason,
                         inputs=last.inputs or {}, replayed=True)
            if last.next is None:
                r.hooks.emit("run_end", run_id=run_id, state=pos.state, status="finished", replayed=True)
        return r

    @classmethod
    def latest(cls, machine: Machine, log: EventLog, **kwargs: Any) -> Runner | None:
        """Resume the newest unfinished (running or waiting) run of this machine, or None."""
        for info in reversed(log.runs(machine=machine.name)):
            if info.status in ("running", "waiting"):
                return cls.resume(machine, log, info.id, **kwargs)
        return None

    # -- properties -----------------------------------------------------------------
    @property
    def state(self) -> State:
        return self._state

    @property
    def next_action(self) -> str | None:
        """The action the next step will run (None once finished)."""
        return self._next

    @property
    def status(self) -> str:
        """running, waiting, finished or failed."""
        return self._status

    @property
    def steps(self) -> int:
        """Steps committed so far in this run."""
        return self._step

    @property
    def seq(self) -> int:
        """Sequence number of the run's last event this runner wrote or read."""
        return self._seq

    # -- stepping -------------------------------------------------------------------
    def step(self, inputs: Mapping[str, Any] | None = None) -> StepResult | None:
        """Run the next action once; None when the run waits for input it was not given."""
        if self._status in ("finished", "failed"):
            raise RunNotRunnable(f"run {self.run_id} is {self._status}; there is no next action")
        name = self._next
        assert name is not None
        act = self.machine.actions[name]
        given = dict(inputs) if inputs else {}
        both = sorted(set(given) & set(self._pending)) if given and self._pending else None
        if both:
            raise InvalidInput(f"input {', '.join(both)} for `{name}` was already given in the log; do not pass it again")
        if act.inputs or given or self._pending:
            values, missing = validate_inputs(act.inputs, {**self._pending, **given}, name)
        else:
            values, missing = {}, []
        if missing:
            self._wait(name, act.inputs, missing)
            return None
        answered = bool(values) and (self._status == "waiting" or bool(self._pending))
        if given and self._status == "waiting":
            # A person answered the gate in this process: record it as any other answer
            # (who and when; the wait before it is not active time).
            self._append(kind="input", step=self._step, action=name, inputs={k: values[k] for k in given},
                         info={"by": _who(None), "at": time.time()})
            self._status = "running"
        note = self._run_restore(emit=False) if self._restore_due else None
        if note:
            if self._resume_info is None:  # a waiting run: nothing else would record the note
                self._resume_info = {"fingerprint": self.machine.fingerprint, "pid": os.getpid()}
            self._resume_info["restore"] = note
        self._write_resume_event()
        if note is not None and self.hooks:  # after the resume event that records it
            self.hooks.emit("restore", run_id=self.run_id, state=self._state, note=note)
        if answered and self.hooks:
            self.hooks.emit("input", run_id=self.run_id, action=name, inputs=values)
        state = self._state
        while True:
            attempt = self._attempts + 1
            if attempt > self.max_attempts:
                err = f"gave up: `{name}` did not complete in {self.max_attempts} attempt(s)"
                self._append(kind="failed", step=self._step, action=name, attempt=attempt - 1, error=err)
                self._failed(name, attempt - 1, RuntimeError(err))
            if self._restore_due:  # a retry: the failed attempt may have left the resources half-changed
                self._run_restore()
                state = self._state
            if self.hooks:
                self.hooks.emit("step_start", run_id=self.run_id, step=self._step + 1, action=name,
                                state=state, inputs=values, attempt=attempt)
            try:
                updates = act.execute(state, values, self.resources)
                now = time.time()
                elapsed = self._active + (now - self._t)
                new_state = state.apply(updates, elapsed=elapsed) if updates else state.with_elapsed(elapsed)
                if name in self.machine.terminal:
                    target: str | None = None
                    cond = reason = None
                else:
                    target, cond, reason = self.machine.next(name, new_state)
            except FsmtrainError:
                raise  # a broken contract (undeclared write, bad value...): nothing is written
            except Exception as e:
                self._attempts = attempt
                final = attempt >= self.max_attempts
                err = "".join(traceback.format_exception(type(e), e, e.__traceback__))[-8000:]
                self._append(kind="failed" if final else "error", step=self._step, action=name,
                             attempt=attempt, error=err)
                if self.hooks:  # after the commit, like every hook
                    self.hooks.emit("step_failed", run_id=self.run_id, step=self._step + 1, action=name,
                                    error=e, attempt=attempt, will_retry=not final)
                if final:
                    self._failed(name, attempt, e)
                self._restore_due = self.restore is not None
                continue
            break
        step = self._step + 1
        if self.log is not None:  # the commit (the hot path: one call, no **fields)
            assert self.run_id is not None
            ev = self.log.append(
                self.run_id, self._seq, kind="step", step=step, action=name, attempt=attempt, inputs=values or None,
                updates=encode_updates(updates), next_action=target,
                info=None if cond is None else self._decision(cond, reason), prev_hash=self._hash,
                snapshot=new_state._data if (target is None or step % self.snapshot_every == 0) else None, time=now)
            self._seq, self._hash = ev.seq, ev.hash
        self._active, self._t = elapsed, now
        self._state, self._next, self._step = new_state, target, step
        self._pending, self._attempts = {}, 0
        self._status = "running" if target is not None else "finished"
        result = StepResult(name, step, self._seq if self.log else None, values, updates, new_state, target, reason)
        if self.hooks:
            self.hooks.emit("step_end", run_id=self.run_id, step=step, action=name, state=new_state,
                            updates=updates, next_action=target, reason=reason, inputs=values)
            if target is None:
                self.hooks.emit("run_end", run_id=self.run_id, state=new_state, status="finished")
        return result

    def iterate(self, *, halt_before: Iterable[str] = (), halt_after: Iterable[str] = (),
                inputs: Mapping[str, Any] | None = None, max_steps: int | None = None) -> Iterator[StepResult]:
        """Yield each step's result until the run halts; ``last_halt`` then says why.

        ``inputs`` go to the first action run.  ``halt_before`` stops before any
        listed action runs, including the one due when the call begins.
        """
        before, after = self._names(halt_before), self._names(halt_after)
        n = 0
        while True:
            if self._status in ("finished", "failed"):
                return self._stop("finished" if self._status == "finished" else "failed", None, n)
            if self._next in before:
                return self._stop("halt_before", self._next, n)
            if max_steps is not None and n >= max_steps:
                return self._stop("max_steps", self._next, n)
            result = self.step(inputs if n == 0 else None)
            if result is None:
                return self._stop("waiting", self._next, n)
            n += 1
            yield result
            if result.action in after:
                return self._stop("halt_after", result.action, n)

    def run(self, *, halt_before: Iterable[str] = (), halt_after: Iterable[str] = (),
            inputs: Mapping[str, Any] | None = None, max_steps: int | None = None) -> Halt:
        """Run until a halt and say why (see :class:`Halt`)."""
        for _ in self.iterate(halt_before=halt_before, halt_after=halt_after, inputs=inputs, max_steps=max_steps):
            pass
        assert self._halt is not None
        return self._halt

    @property
    def last_halt(self) -> Halt | None:
        return self._halt

    # -- bringing resources back --------------------------------------------------------
    def redo(self, after_seq: int) -> Redo:
        """Re-execute the committed steps after event ``after_seq`` on ``self.resources``; write nothing.

        This is how a restore brings live resources from a checkpoint (taken at
        ``after_seq``) to the last committed step: each step's action runs again
        with the state and inputs it had, in order.  The log stays the truth: the
        recorded updates are applied, never the recomputed ones; a step whose
        recomputed updates differ is listed in ``mismatches`` (the run is not
        deterministic).  Transitions are not re-evaluated.
        """
        if self.log is None or self.run_id is None:
            raise RestoreFailed("redo needs a run recorded in a log")
        state = state_at(self.log, self.run_id, after_seq)
        n, mismatches = 0, []
        for ev in self.log.events(self.run_id, start=after_seq + 1, end=self._seq):
            if ev.kind != "step":
                continue
            act = self.machine.actions.get(ev.action or "")
            if act is None:
                raise UnknownAction(f"run {self.run_id} step {ev.step} ran `{ev.action}`, which machine "
                                    f"`{self.machine.name}` lacks; cannot redo it")
            try:
                updates = act.execute(state, ev.inputs or {}, self.resources)
            except FsmtrainError:
                raise
            except Exception as e:
                raise RestoreFailed(f"re-running step {ev.step} (`{ev.action}`) of run {self.run_id} to restore its "
                                    f"resources raised {type(e).__name__}: {e}") from e
            recorded = dumps(ev.updates)
            again = dumps(encode_updates(updates))
            if again != recorded:
                mismatches.append(f"step {ev.step} `{ev.action}`: recorded {_clip(recorded)}, redone {_clip(again)}")
            state = state.apply(decode_updates(ev.updates))
            n += 1
        return Redo(n, mismatches)

    def _run_restore(self, *, emit: bool = True) -> dict[str, Any]:
        assert self.restore is not None
        self._restore_due = False
        try:
            note = self.restore(self)
        except FsmtrainError:
            raise
        except Exception as e:
            raise RestoreFailed(f"restoring the resources of run {self.run_id} failed: {type(e).__name__}: {e}") from e
        out = dict(note) if note else {}
        if emit and self.hooks:
            self.hooks.emit("restore", run_id=self.run_id, state=self._state, note=out)
        return out

    # -- internals ------------------------------------------------------------------
    def _names(self, names: Iterable[str]) -> frozenset[str]:
        out = frozenset([names] if isinstance(names, str) else names)
        for n in out:
            self.machine.action(n)  # raises UnknownAction with the list of actions
        return out

    def _stop(self, reason: str, action: str | None, n: int) -> None:
        self._halt = Halt(reason, action, self._state, n)

    def _append(self, **fields: Any) -> Event | None:
        now = time.time()
        if fields["kind"] in ("error", "failed"):  # a failed attempt's time counts as active time
            self._active += now - self._t
            self._state = self._state.with_elapsed(self._active)
        self._t = now
        if self.log is None:
            return None
        assert self.run_id is not None
        ev = self.log.append(self.run_id, self._seq, prev_hash=self._hash, time=now, **fields)
        self._seq, self._hash = ev.seq, ev.hash
        return ev

    def _decision(self, cond: str, reason: str | None) -> Encoded:
        """The JSON of a transition decision; cached, since most steps repeat a few decisions."""
        key = (cond, reason)
        text = self._decisions.get(key)
        if text is None:
            if len(self._decisions) > 512:
                self._decisions.clear()
            text = self._decisions[key] = Encoded(dumps({"condition": cond, "reason": reason}))
        return text

    def _write_resume_event(self) -> None:
        if self._resume_info is not None:
            info, self._resume_info = self._resume_info, None
            # The resume event records this process's attempt at the due action, so a
            # crash loop is counted even though crashes themselves write nothing.
            self._append(kind="resume", step=self._step, action=self._next, attempt=self._attempts + 1, info=info)

    def _wait(self, name: str, specs: tuple[Input, ...], missing: list[Input]) -> None:
        if self._status == "waiting":
            return
        needs = [s.to_json() for s in specs]
        self._append(kind="waiting", step=self._step, action=name,
                     info={"needs": needs, "missing": [m.name for m in missing], "summary": summary(self._state)})
        self._status = "waiting"
        self._resume_info = None
        if self.hooks:
            self.hooks.emit("waiting", run_id=self.run_id, action=name, needs=needs, state=self._state)

    def _failed(self, name: str, attempt: int, cause: BaseException) -> NoReturn:
        """The `failed` event is committed: mark the run failed, tell the hooks, raise."""
        self._status = "failed"
        if self.hooks:
            self.hooks.emit("run_end", run_id=self.run_id, state=self._state, status="failed")
        raise ActionFailed(f"action `{name}` of run {self.run_id} failed on attempt {attempt}/{self.max_attempts}; "
                           f"the run is marked failed: {type(cause).__name__}: {cause}") from cause


def give_input(log: EventLog, run_id: int, values: Mapping[str, Any], *, by: str | None = None,
               comment: str | None = None) -> Event:
    """Record input for a waiting run, validated against what its gate declared.

    Invalid input, or a run that is not waiting, raises before anything is
    written.  The first valid answer wins: a later one is refused with a message
    naming it.  ``by`` (default: ``$FSMTRAIN_USER``, else the login name) and the
    time are recorded; so is ``comment``, when given.
    """
    info = log.run(run_id)
    last = log.last_event(run_id)
    if info.status != "waiting":
        first = _answer(log, run_id)
        why = f"run {run_id} is {info.status}, not waiting for input"
        if first is not None:
            why += f"; {first}; the first decision wins"
        raise RunNotRunnable(why)
    specs = [Input.from_json(d) for d in last.info["needs"]]
    checked, missing = validate_inputs(specs, dict(values), last.action or "?")
    if missing:
        names = ", ".join(m.name for m in missing)
        raise InvalidInput(f"run {run_id} needs input {names} for `{last.action}`; give every required input")
    if comment is not None and not isinstance(comment, str):
        raise InvalidInput(f"comment must be a str, got {type(comment).__name__}")
    note: dict[str, Any] = {"by": _who(by), "at": time.time()}
    if comment:
        note["comment"] = comment
    return log.append(run_id, last.seq, kind="input", step=last.step, action=last.action, inputs=checked, info=note)


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
    return by or os.environ.get("FSMTRAIN_USER") or _user()


def _changes(log: EventLog, run_id: int, recorded: str, machine: Machine) -> dict[str, Any]:
    """What a resume with a changed machine records: the old fingerprint, the new graph, and the
    transitions whose condition changed (e.g. a swapped stop condition), when the old graph is known."""
    from .state import loads

    out: dict[str, Any] = {"changed_from": recorded, "machine": machine.describe()}
    (text,) = log.conn.execute(
        "SELECT info FROM events WHERE run_id = ? AND (seq = 1 OR (kind = 'resume' AND instr(info, '\"machine\":') > 0)) "
        "ORDER BY seq DESC LIMIT 1", (run_id,)).fetchone() or (None,)
    old = loads(text).get("machine") if text and '"machine":' in text else None
    if old is not None:
        before = {(s, t): c for s, t, c in old["transitions"]}
        after = {(t.source, t.target): t.condition.name for t in machine.transitions}
        out["conditions"] = [{"source": s, "target": t, "was": before.get((s, t)), "now": after.get((s, t))}
                             for (s, t) in sorted(set(before) | set(after)) if before.get((s, t)) != after.get((s, t))]
    return out


def _clip(text: str, width: int = 200) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"
