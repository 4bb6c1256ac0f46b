"""A runner's record of its run, under :class:`~fsmtrain.runner.Runner` (which drives it): where the run
stands (its last event, step, status, pending input, attempts, active time), the run's lock and catching up
after it was let go, and the events and hooks of waiting, failing, resuming and halting, appended in order.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, NoReturn

import attrs

from .actions import Input
from .answers import summary
from .errors import ActionFailed, WriteConflict
from .hooks import HookBus
from .locks import RunLock
from .lockstep import Sync
from .log import ENDED, Event, EventLog
from .machine import Machine
from .state import Encoded, State, dumps

__all__ = ["EVENT_WEIGHT", "Halt", "RunCore"]

EVENT_WEIGHT = 100
"""What one event weighs, in characters, beside its updates, when a runner decides whether a snapshot is due: a
snapshot is written once the events since the last one (their updates' JSON plus this much each) outweigh it."""


@attrs.frozen
class Halt:
    """Why ``run`` returned: ``finished``, ``failed``, ``stopped``/``pruned`` (ended from outside), ``waiting``,
    ``halt_before``, ``halt_after`` or ``max_steps``."""

    reason: str
    action: str | None
    state: State
    steps: int


class RunCore:
    """What a runner knows of its run and how it records it; :class:`~fsmtrain.runner.Runner` adds the driving."""

    def __init__(self, machine: Machine, *, log: EventLog | None, run_id: int | None, state: State,
                 next_action: str | None, hooks: Iterable[Any] = (), resources: Any = None,
                 max_attempts: int = 3, snapshot_every: int = 100, max_interruptions: int | None = None,
                 sync: Sync | None = None) -> None:
        for name, value in (("max_attempts", max_attempts), ("snapshot_every", snapshot_every),
                            ("max_interruptions", 1 if max_interruptions is None else max_interruptions)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.machine = machine
        self.log = log
        self.run_id = run_id
        self.resources = resources
        self.max_attempts = max_attempts
        self.max_interruptions = max_interruptions
        self.snapshot_every = snapshot_every
        self._lock: RunLock | None = None
        self._interrupted = 0
        self.sync = sync
        self._digest = ""  # (with sync) a chain of the steps' updates and decisions, compared across processes
        self.hooks = HookBus(hooks)
        if log is not None:  # external hooks wait until what they report is durable
            self.hooks.durable = lambda: log.durable
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
        self._snapshot_size = 0  # characters of the run's newest snapshot
        self._since_snapshot = 0  # weight of the events after it (see EVENT_WEIGHT)
        # Active time (see replay.active_time): the sum of the durations of step, error and
        # failed events, each measured from the event before it.  _t is the last event's time.
        self._t = time.time()
        self._active = 0.0

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

    # -- the run's lock ---------------------------------------------------------------
    def close(self) -> None:
        """Give up the run's lock (also when the run ends or waits); the runner can step again later.
        What external hooks still hold is delivered after a barrier."""
        try:
            if self.hooks.held:
                self.barrier()
        finally:
            self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def _relock(self) -> None:
        """Take the lock again (after a wait or ``close``) and catch up with what others wrote meanwhile:
        input for the gate this run waits at is taken in; a stop ends it; anything else is a conflict."""
        assert self._lock is not None and self.log is not None and self.run_id is not None
        if not self._lock.acquire():
            raise self._lock.busy()
        for ev in self.log.events(self.run_id, start=self._seq + 1):
            if ev.kind == "input" and self._status == "waiting":
                self._pending.update(ev.inputs or {})
                self._status, self._attempts, self._interrupted = "running", 0, 0
            elif ev.kind in ("stopped", "pruned"):
                self._status = ev.kind
            else:
                self._lock.release()
                raise WriteConflict(f"run {self.run_id} moved on in the log (event {ev.seq}: {ev.kind}) since this "
                                    "runner last saw it; resume it afresh to continue from the log")
            self._seq, self._hash, self._t = ev.seq, ev.hash, ev.time
        if self._status in ENDED:
            self._unlock()

    def _ended_from_outside(self) -> bool:
        """After a conflict at a commit: was the run stopped (or pruned) from outside meanwhile?"""
        assert self.log is not None and self.run_id is not None
        last = self.log.last_event(self.run_id)
        if last.kind not in ("stopped", "pruned"):
            return False
        self._status = last.kind
        self._seq, self._hash = last.seq, last.hash
        self._unlock()
        if self.hooks:
            self.hooks.emit("run_end", run_id=self.run_id, state=self._state, status=last.kind)
        return True

    # -- internals ------------------------------------------------------------------
    def _names(self, names: Iterable[str]) -> frozenset[str]:
        out = frozenset([names] if isinstance(names, str) else names)
        for n in out:
            self.machine.action(n)  # raises UnknownAction with the list of actions
        return out

    def _stop(self, reason: str, action: str | None, n: int) -> None:
        self._halt = Halt(reason, action, self._state, n)
        if self.hooks.held:  # the caller gets control back: what external hooks still hold goes out now
            self.barrier()

    def barrier(self) -> None:
        """Make every step committed so far durable now (see ``EventLog.barrier``), and deliver what
        external hooks held until then."""
        if self.log is not None:
            self.log.barrier()
        self.hooks.release()

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
        self._unlock()  # a person answers, then any process (a worker) may continue it
        if self.hooks:
            self.hooks.emit("waiting", run_id=self.run_id, action=name, needs=needs, state=self._state)

    def _failed(self, name: str, attempt: int, cause: BaseException) -> NoReturn:
        """The `failed` event is committed: mark the run failed, tell the hooks, raise."""
        self._status = "failed"
        self._unlock()
        if self.hooks:
            self.hooks.emit("run_end", run_id=self.run_id, state=self._state, status="failed")
        raise ActionFailed(f"action `{name}` of run {self.run_id} failed on attempt {attempt}/{self.max_attempts}; "
                           f"the run is marked failed: {type(cause).__name__}: {cause}") from cause

