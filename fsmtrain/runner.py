"""The runner: executes a machine one action at a time, writing each step to the log.

``Runner.start`` begins a run, ``Runner.resume`` continues one from the log,
``step`` runs one action, ``run``/``iterate`` run until a halt: a terminal action
ran, an action needs input it was not given (the run is then *waiting*), or an
explicit ``halt_before``/``halt_after``.  See ``spec/engine.md``.  What a runner
knows of its run and records (position, lock, waiting and failed events) is in
:mod:`fsmtrain.runcore`; how processes of a distributed run stay in lockstep, in
:mod:`fsmtrain.lockstep`; answering a run from outside (``give_input``, ``decide``,
``retry``, ``stop``...), in :mod:`fsmtrain.answers`, re-exported here.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

from .actions import Action, validate_inputs
from .answers import _who, decide, give_input, give_text_input, retry, stop, summary
from .errors import (
    FsmtrainError,
    InvalidInput,
    MachineMismatch,
    PeerLost,
    RestoreFailed,
    RunNotRunnable,
    StorageError,
    UnknownAction,
    WriteConflict,
    environmental,
)
from .locks import RunLock
from .lockstep import Sync, step_digest
from .log import ENDED, Event, EventLog
from .machine import Machine
from .replay import active_time, decode_updates, encode_updates, position, state_at
from .runcore import EVENT_WEIGHT, Halt, RunCore
from .state import Encoded, State, dumps

__all__ = ["Halt", "Redo", "Restore", "Runner", "StepResult", "Sync", "decide", "give_input", "give_text_input", "retry",
           "stop", "summary"]


Restore = Callable[["Runner"], "Mapping[str, Any] | None"]
"""``restore(runner)``: bring ``runner.resources`` to the run's last committed step; may return a note to log."""
Late = Callable[[State, Action, bool, bool], "Mapping[str, Any] | None"]
"""``late(state, action, terminal, after)``: see :attr:`Runner.late`."""


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


class Runner(RunCore):
    """Drives one run of a machine.  Create it with :meth:`start` or :meth:`resume`."""

    def __init__(self, machine: Machine, *, log: EventLog | None, run_id: int | None, state: State,
                 next_action: str | None, hooks: Iterable[Any] = (), resources: Any = None,
                 restore: Restore | None = None, max_attempts: int = 3, snapshot_every: int = 100,
                 max_interruptions: int | None = None, sync: Sync | None = None) -> None:
        super().__init__(machine, log=log, run_id=run_id, state=state, next_action=next_action, hooks=hooks,
                         resources=resources, max_attempts=max_attempts, snapshot_every=snapshot_every,
                         max_interruptions=max_interruptions, sync=sync)
        self.restore = restore
        self._restore_due = False
        self.late: Late | None = None
        """Late updates: ``late(state, action, terminal, after)`` returns updates that the step commits on behalf
        of work finished outside any action (an asynchronous checkpoint made durable).  Asked before the action
        runs (``after=False``: what it must see, applied to the state it is given) and, if that gave nothing, again
        after it (``after=True``).  They are merged under the action's own updates (the action's win) and recorded
        in the step's ``info["late"]``; a redo applies them before re-running the action."""

    # -- construction ---------------------------------------------------------------
    @classmethod
    def start(cls, machine: Machine, *, log: EventLog | None = None, state: Mapping[str, Any] | None = None,
              hooks: Iterable[Any] = (), resources: Any = None, restore: Restore | None = None,
              tags: Mapping[str, Any] | None = None, max_attempts: int = 3, snapshot_every: int = 100,
              max_interruptions: int | None = None, lock: bool = True, sync: Sync | None = None) -> Runner:
        """Begin a new run at the machine's entry; with a ``log``, it is recorded there.

        ``restore`` (optional) is called before an action is retried after it raised
        (see :meth:`resume`).  With ``lock`` (default), the runner holds the run's lock
        (see :mod:`fsmtrain.locks`) from the moment the run exists until it ends or
        :meth:`close` is called, so no worker picks up a run that a process is driving.
        """
        initial = machine.initial.apply(dict(state)) if state else machine.initial
        r = cls(machine, log=log, run_id=None, state=initial, next_action=machine.entry, hooks=hooks,
                resources=resources, restore=restore, max_attempts=max_attempts, snapshot_every=snapshot_every,
                max_interruptions=max_interruptions, sync=sync)
        if log is not None:
            def take(run_id: int) -> None:  # inside the transaction that creates the run
                run_lock = RunLock(log.artifacts, run_id)
                if not run_lock.acquire():
                    raise run_lock.busy("the run was not created")
                r._lock = run_lock

            snapshot = Encoded(dumps(initial._data))
            r._snapshot_size = len(snapshot)
            ev = log.create_run(machine.name, machine.fingerprint, snapshot=snapshot,
                                next_action=machine.entry, tags=tags, info={"machine": machine.describe()},
                                on_id=take if lock else None)
            r.run_id, r._seq, r._hash, r._t = ev.run_id, ev.seq, ev.hash, ev.time
        r.hooks.emit("run_start", run_id=r.run_id, state=initial, machine=machine)
        return r

    @classmethod
    def resume(cls, machine: Machine, log: EventLog, run_id: int, *, hooks: Iterable[Any] = (),
               resources: Any = None, restore: Restore | None = None, allow_changed_machine: bool = False,
               max_attempts: int = 3, snapshot_every: int = 100, max_interruptions: int | None = None,
               lock: bool = True, sync: Sync | None = None, lock_wait: float = 0.0) -> Runner:
        """Continue ``run_id`` from its last committed event.

        The machine must have the name and fingerprint the run was recorded with;
        ``allow_changed_machine=True`` accepts a changed graph (recorded in the log).

        ``restore(runner)``, when given, brings mutable ``resources`` (a model, an
        optimizer...) to the last committed step, typically by loading a checkpoint
        referenced in the state and calling :meth:`redo`.  It is called once, just
        before the first action this runner executes (so resuming a run that then
        waits for input costs nothing), and again before any retry after an action
        raised.  What it returns is recorded in the ``resume`` event's ``info``.

        A process that died while it ran an action (killed, out of memory, preempted)
        is not a failed attempt: it is counted as an *interruption* in the ``resume``
        event, and only ``max_interruptions`` in a row (default: no limit) fail the run.
        With ``lock`` (default), the run's lock is taken before its position is read,
        and :class:`~fsmtrain.errors.RunBusy` names the process that holds it.
        """
        run_lock = None
        if lock and log.run(run_id).status not in ENDED:
            log.check_run(run_id)  # (a damaged run is refused before its lock file is touched; again under the lock)
            run_lock = RunLock(log.artifacts, run_id)
            if not run_lock.acquire(lock_wait):
                raise run_lock.busy()
        try:
            if run_lock is not None:
                log.take(run_id)  # (a log with a home: claim the run there, and pull what the home holds beyond it)
            return cls._resume(machine, log, run_id, hooks=hooks, resources=resources, restore=restore,
                               allow_changed_machine=allow_changed_machine, max_attempts=max_attempts,
                               snapshot_every=snapshot_every, max_interruptions=max_interruptions, run_lock=run_lock,
                               sync=sync)
        except BaseException:
            if run_lock is not None:
                run_lock.release()
            raise

    @classmethod
    def _resume(cls, machine: Machine, log: EventLog, run_id: int, *, hooks: Iterable[Any], resources: Any,
                restore: Restore | None, allow_changed_machine: bool, max_attempts: int, snapshot_every: int,
                max_interruptions: int | None, run_lock: RunLock | None, sync: Sync | None = None) -> Runner:
        if log.run(run_id).status not in ENDED:
            log.check_run(run_id)  # (a damaged run is refused before anything is written)
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
                resources=resources, restore=restore, max_attempts=max_attempts, snapshot_every=snapshot_every,
                max_interruptions=max_interruptions, sync=sync)
        r._lock = run_lock
        r._seq, r._step, r._status = pos.seq, pos.step, pos.status
        r._pending, r._attempts, r._interrupted = dict(pos.pending_inputs), pos.attempts, pos.interrupted
        r._active, r._t = active_time(log, run_id)
        r._snapshot_size, r._since_snapshot = log.snapshot_weight(run_id, EVENT_WEIGHT)
        r._state = pos.state.with_elapsed(r._active)
        r._restore_due = restore is not None and pos.status in ("running", "waiting")
        if pos.status == "running":
            r._resume_info = {"fingerprint": machine.fingerprint, "pid": os.getpid(), "interrupted": pos.interrupted}
            if changed:
                r._resume_info.update(_changes(log, run_id, recorded, machine))
        r.hooks.emit("run_resume", run_id=run_id, state=pos.state, next_action=pos.next_action, machine=machine)
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
        if pos.status in ENDED and run_lock is not None:
            run_lock.release()
        return r

    def position(self) -> dict[str, Any]:
        """Where this runner stands, as plain data: what :meth:`follow` needs to make its twin elsewhere."""
        return {"run_id": self.run_id, "seq": self._seq, "step": self._step, "status": self._status,
                "next": self._next, "pending": dict(self._pending), "attempts": self._attempts,
                "interrupted": self._interrupted, "state": self._state.to_json(), "active": self._active,
                "t": self._t, "restore_due": self._restore_due, "digest": self._digest}

    @classmethod
    def follow(cls, machine: Machine, position: Mapping[str, Any], *, sync: Sync, hooks: Iterable[Any] = (),
               resources: Any = None, restore: Restore | None = None, max_attempts: int = 3) -> Runner:
        """A runner without a log that steps in lockstep with the writer's, from the writer's :meth:`position`
        (a process of a distributed run other than the one holding the log)."""
        from .state import State

        state = State.from_json(position["state"])
        r = cls(machine, log=None, run_id=position["run_id"], state=state, next_action=position["next"], hooks=hooks,
                resources=resources, restore=restore, max_attempts=max_attempts, sync=sync)
        r._seq, r._step, r._status = position["seq"], position["step"], position["status"]
        r._pending, r._attempts = dict(position["pending"]), position["attempts"]
        r._interrupted, r._active, r._t = position["interrupted"], position["active"], position["t"]
        r._state = state.with_elapsed(r._active)
        r._restore_due = bool(position["restore_due"]) and restore is not None
        r._digest = position.get("digest", "")
        return r

    @classmethod
    def latest(cls, machine: Machine, log: EventLog, **kwargs: Any) -> Runner | None:
        """Resume the newest unfinished (running or waiting) run of this machine, or None."""
        for info in reversed(log.runs(machine=machine.name)):
            if info.status in ("running", "waiting"):
                return cls.resume(machine, log, info.id, **kwargs)
        return None

    # -- stepping -------------------------------------------------------------------
    def step(self, inputs: Mapping[str, Any] | None = None) -> StepResult | None:
        """Run the next action once; None when the run waits for input it was not given (or was stopped
        from outside meanwhile: then ``status`` says so)."""
        if self._status in ENDED:
            raise RunNotRunnable(f"run {self.run_id} is {self._status}; there is no next action"
                                 + ("; continue it deliberately with `fsmtrain retry`" if self._status == "failed" else ""))
        if self._lock is not None and not self._lock.held:
            self._relock()
            if self._status in ENDED:
                return None
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
        if self._resume_info is not None and self.max_interruptions is not None \
                and self._interrupted >= self.max_interruptions:
            err = (f"crash loop: `{name}` was interrupted {self._interrupted} times in a row without completing (its "
                   f"process died each time: killed, out of memory, preempted?); max_interruptions="
                   f"{self.max_interruptions}. Fix the cause, then continue it with `fsmtrain retry`")
            self._resume_info = None
            self._append(kind="failed", step=self._step, action=name, attempt=self._attempts, error=err)
            self._failed(name, self._attempts, RuntimeError(err))
        note = self._run_restore(emit=False) if self._restore_due else None
        if note:
            if self._resume_info is None:  # a waiting run: nothing else would record the note
                self._resume_info = {"fingerprint": self.machine.fingerprint, "pid": os.getpid()}
            self._resume_info["restore"] = note
        if self._resume_info is not None:
            self._write_resume_event()
        if note is not None and self.hooks._subs:  # after the resume event that records it
            self.hooks.emit("restore", run_id=self.run_id, state=self._state, note=note)
        if answered and self.hooks._subs:
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
            if self.hooks._subs:
                self.hooks.emit("step_start", run_id=self.run_id, step=self._step + 1, action=name,
                                state=state, inputs=values, attempt=attempt)
            try:
                late = self.late
                extra = late(state, act, name in self.machine.terminal, False) if late is not None else None
                seen = state.apply(extra, elapsed=state.elapsed) if extra else state
                updates = act.execute(seen, values, self.resources)
                if late is not None and not extra:  # (work that finished while the action ran counts too)
                    extra = late(state, act, name in self.machine.terminal, True)
                if extra:
                    updates = {**extra, **updates}
                now = time.time()
                if self.sync is not None:  # every process: the writer's clock; the previous step compared
                    now = self.sync.tick(now, self._digest)
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
                env = environmental(e)
                if env:  # the disk, not the action: stop, write nothing, stay resumable
                    raise StorageError(f"run {self.run_id} stopped while `{name}` ran: {env}. Nothing of this step "
                                       "was committed and the run stays resumable: fix the cause and run it again "
                                       "(the same command continues it)") from e
                lost = self.sync.lost(e) if self.sync is not None else None
                if lost:  # another process died or hung: an interruption, like a kill, never a failed attempt
                    raise PeerLost(f"run {self.run_id} stopped while `{name}` ran: {lost}. Nothing of this step was "
                                   "committed and it is not counted as a failed attempt; torchrun restarts the group, "
                                   "which resumes the run (or run the same command again)") from e
                self._attempts = attempt
                final = attempt >= self.max_attempts
                err = "".join(traceback.format_exception(type(e), e, e.__traceback__))[-8000:]
                self._append(kind="failed" if final else "error", step=self._step, action=name,
                             attempt=attempt, error=err)
                if self.hooks._subs:  # after the commit, like every hook
                    self.hooks.emit("step_failed", run_id=self.run_id, step=self._step + 1, action=name,
                                    error=e, attempt=attempt, will_retry=not final)
                if final:
                    self._failed(name, attempt, e)
                self._restore_due = self.restore is not None
                continue
            break
        step = self._step + 1
        if self.sync is not None:
            self._digest = step_digest(self._digest, step, name, target, cond, reason, updates)
        if self.log is not None:  # the commit (the hot path: one call, no **fields)
            assert self.run_id is not None
            logged = encode_updates(updates)
            text = None if logged is None else Encoded(dumps(logged))
            # A snapshot at most every `snapshot_every` steps (and at the end), and only once the events since the
            # last one outweigh it: snapshots then cost O(1) per step amortised, whatever the state holds, and a
            # resume folds at most about one snapshot's worth of events.
            self._since_snapshot += EVENT_WEIGHT + (len(text) if text is not None else 0)
            snapshot = None
            if (target is None or step % self.snapshot_every == 0) and self._since_snapshot >= self._snapshot_size:
                snapshot = Encoded(dumps(new_state._data))
            try:
                ev = self.log.append(
                    self.run_id, self._seq, kind="step", step=step, action=name, attempt=attempt,
                    inputs=values or None, updates=text, next_action=target,
                    info=self._decision(cond, reason) if not extra and cond is not None else
                    _with_late(cond, reason, extra), prev_hash=self._hash,
                    snapshot=snapshot, time=now, barrier=act.barrier)
            except WriteConflict:
                if self._ended_from_outside():
                    return None
                raise
            self._seq, self._hash = ev.seq, ev.hash
            if snapshot is not None:
                self._snapshot_size, self._since_snapshot = len(snapshot), 0
        self._active, self._t = elapsed, now
        self._state, self._next, self._step = new_state, target, step
        self._pending, self._attempts = {}, 0
        self._status = "running" if target is not None else "finished"
        if target is None:
            self._unlock()
        result = StepResult(name, step, self._seq if self.log else None, values, updates, new_state, target, reason)
        if self.hooks._subs:
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
            if self._status in ENDED:
                return self._stop(self._status, None, n)
            if self._next in before:
                return self._stop("halt_before", self._next, n)
            if max_steps is not None and n >= max_steps:
                return self._stop("max_steps", self._next, n)
            result = self.step(inputs if n == 0 else None)
            if result is None:
                if self._status in ENDED:  # stopped from outside while this step ran
                    return self._stop(self._status, None, n)
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
        """Why the last ``run``/``iterate`` stopped (``None`` before one has)."""
        return self._halt

    # -- bringing resources back --------------------------------------------------------
    def redo(self, after_seq: int, *, events: Iterable[Event] | None = None, state: State | None = None) -> Redo:
        """Re-execute the committed steps after event ``after_seq`` on ``self.resources``; write nothing.

        This is how a restore brings live resources from a checkpoint (taken at
        ``after_seq``) to the last committed step: each step's action runs again
        with the state and inputs it had, in order.  The log stays the truth: the
        recorded updates are applied, never the recomputed ones; a step whose
        recomputed updates differ is listed in ``mismatches`` (the run is not
        deterministic).  Transitions are not re-evaluated.  A runner without the log
        (another process of a distributed run) is given the ``events`` and the
        ``state`` after ``after_seq`` by the one that has it.
        """
        if events is None or state is None:
            if self.log is None or self.run_id is None:
                raise RestoreFailed("redo needs a run recorded in a log")
            state = state_at(self.log, self.run_id, after_seq)
            events = self.log.events(self.run_id, start=after_seq + 1, end=self._seq)
        n, mismatches = 0, []
        for ev in events:
            if ev.kind != "step":
                continue
            act = self.machine.actions.get(ev.action or "")
            if act is None:
                raise UnknownAction(f"run {self.run_id} step {ev.step} ran `{ev.action}`, which machine "
                                    f"`{self.machine.name}` lacks; cannot redo it")
            late = ev.info.get("late") if isinstance(ev.info, dict) else None
            late = dict(late) if isinstance(late, Mapping) and late else None
            try:
                updates = act.execute(state.apply(late) if late else state, ev.inputs or {}, self.resources)
                if late:
                    updates = {**late, **updates}
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

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


def _with_late(cond: str | None, reason: str | None, late: Mapping[str, Any] | None) -> Encoded | None:
    """A step's info: the transition decision (if any) and the late updates merged into it (if any)."""
    info: dict[str, Any] = {"condition": cond, "reason": reason} if cond is not None else {}
    if late:
        info["late"] = dict(late)
    return Encoded(dumps(info)) if info else None


def _clip(text: str, width: int = 200) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
