"""The worker: resume every run that can make progress, until its next halt.

``fsmtrain worker LOG --machine MODULE:ATTR --once`` is the whole scheduler a
human-gated workflow needs: run it from cron (or ``--every 10m``) and each run
that is not finished, not failed and not waiting for a person goes on until it
finishes, fails, or reaches its next gate.  Code comes only from the target the
operator names, never from the log.

Two processes never drive the same run at once: a worker holds the run's lock
(:mod:`fsmtrain.locks`: a record lock on ``<log>.artifacts/locks/run<ID>.lock``, which
the kernel releases when the process dies, so a killed worker blocks nobody)
while it runs that run, and reads the run's position only once it holds it;
``Runner.start``/``resume`` and so ``Trainer.fit`` and ``fsmtrain demo`` take the
same lock.  The log's one-writer rule (``WriteConflict``) backs this up.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import attrs

from . import locks
from .errors import ActionFailed, FsmtrainError, HomeConflict, InvalidInput, LostTail
from .log import EventLog
from .machine import Machine
from .runner import Runner

__all__ = ["Report", "Target", "Worker", "parse_duration", "run_lock"]


class Target(Protocol):
    """What a worker runs: a machine's name, and a way to resume one of its runs (with extra hooks)."""

    machine: Machine

    def resume(self, run_id: int, *, hooks: Iterable[Any] = ()) -> Runner:
        """A runner for ``run_id``, resumed (with ``hooks`` added)."""
        ...


@attrs.define
class _MachineTarget:
    """A bare Machine as a target: runs are resumed with ``Runner.resume`` (no resources)."""

    machine: Machine
    log: EventLog

    def resume(self, run_id: int, *, hooks: Iterable[Any] = ()) -> Runner:
        return Runner.resume(self.machine, self.log, run_id, hooks=hooks)


def as_target(obj: Any, log: EventLog) -> Target:
    """A Machine, or a Python function ``log -> Target`` (e.g. ``lambda log: Trainer(machine, build, log=log)``).

    The type is checked before anything is called: a builtin such as ``os.system`` is refused, not run.
    """
    import inspect

    if isinstance(obj, Machine):
        return _MachineTarget(obj, log)
    if callable(obj) and not hasattr(obj, "resume"):
        if not (inspect.isfunction(obj) or inspect.ismethod(obj)):
            raise InvalidInput(f"a worker target must be a Machine, or a Python function taking the EventLog and "
                               f"returning a Trainer (or anything with .machine and .resume); got "
                               f"{type(obj).__name__} {getattr(obj, '__qualname__', '')}, which is not run")
        params = inspect.signature(obj).parameters.values()
        required = [p for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if len(required) > 1:
            raise InvalidInput(f"a worker target function must take the EventLog (one argument); "
                               f"{obj.__qualname__} needs {len(required)}")
        takes_log = bool(required) or any(p.name == "log" for p in params)
        obj = obj(log) if takes_log else obj()  # a function of no argument may build the Machine
        if isinstance(obj, Machine):
            return _MachineTarget(obj, log)
    if isinstance(getattr(obj, "machine", None), Machine) and callable(getattr(obj, "resume", None)):
        return obj  # type: ignore[no-any-return]
    raise InvalidInput(f"a worker target must be a Machine, or a function taking the EventLog and returning an "
                       f"object with .machine and .resume(run_id) (such as a Trainer); got {type(obj).__name__}")


@attrs.frozen
class Report:
    """What a worker did with one run."""

    run_id: int
    outcome: str  # finished, waiting, failed, stopped (asked to stop), busy (another worker has it), error
    steps: int = 0
    action: str | None = None  # where it halted (the gate it waits at, the action that failed...)
    detail: str = ""

    def line(self) -> str:
        """The report as one line for a person."""
        where = f" at `{self.action}`" if self.action and self.outcome in ("waiting", "failed", "stopped") else ""
        text = f"run {self.run_id}: {self.outcome}{where} after {self.steps} step(s)"
        return text + (f"; {self.detail}" if self.detail else "")


def run_lock(log: EventLog, run_id: int, *, wait: float = 0.0) -> contextlib.AbstractContextManager[bool]:
    """Hold the lock of ``run_id`` for the ``with`` block; yields False if another process has it
    (after trying for ``wait`` seconds).  See :mod:`fsmtrain.locks`."""
    return locks.run_lock(log.artifacts, run_id, wait=wait)


class Worker:
    """Resumes the runnable runs of one target's machine in a log.

    ``run_once()`` does one pass; ``serve(every)`` passes again every ``every``
    seconds until ``stop()`` (a signal handler may call it): the run in progress
    then stops after its current step, resumable.
    """

    def __init__(self, log: EventLog, target: Any, *, hooks: Iterable[Any] = (), max_runs: int | None = None,
                 echo: Callable[[str], None] | None = None, target_name: str | None = None) -> None:
        if max_runs is not None and (isinstance(max_runs, bool) or not isinstance(max_runs, int) or max_runs < 1):
            raise InvalidInput(f"max_runs must be an int >= 1, got {max_runs!r}")
        self.log = log
        self.target = as_target(target, log)
        self.hooks = list(hooks)
        self.max_runs = max_runs
        self.echo = echo or (lambda line: None)
        self.target_name = target_name  # MODULE:ATTR: how the processes of a distributed run find the target
        self._stopping = False

    @property
    def machine(self) -> Machine:
        """The machine whose runs this worker continues."""
        return self.target.machine

    def stop(self) -> None:
        """Ask the worker to stop after the current step (safe to call from a signal handler)."""
        self._stopping = True

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called (the current pass ends after its current step)."""
        return self._stopping

    def runnable(self) -> list[int]:
        """Runs of this machine that can make progress: running, or waiting with input given (oldest first)."""
        return [r.id for r in self.log.runs(machine=self.machine.name) if r.status == "running"]

    def run_once(self) -> list[Report]:
        """One pass: each runnable run (at most ``max_runs``) is resumed until it halts."""
        reports: list[Report] = []
        for run_id in self.runnable():
            if self._stopping or (self.max_runs is not None and len(reports) >= self.max_runs):
                break
            report = self.run_one(run_id)
            if report is not None:
                reports.append(report)
                self.echo(report.line())
        return reports

    def run_one(self, run_id: int) -> Report | None:
        """Resume ``run_id`` until it halts; None if it turned out to have nothing to do."""
        world = self.log.run(run_id).tags.get("world_size")
        if isinstance(world, int) and not isinstance(world, bool) and world > 1:
            return self._run_distributed(run_id, world)
        try:  # a damaged run is refused before its lock file is touched (a refusal changes no file)
            self.log.check_run(run_id)
        except FsmtrainError as e:
            return Report(run_id, "error", 0, None, f"{type(e).__name__}: {e}")
        with run_lock(self.log, run_id) as mine:
            if not mine:
                return Report(run_id, "busy", detail="another worker is running it")
            if self.log.run(run_id).status != "running":  # finished by another worker meanwhile
                return None
            steps = 0
            runner: Runner | None = None
            try:
                runner = self.target.resume(run_id, hooks=self.hooks)
                for _ in runner.iterate():
                    steps += 1
                    if self._stopping and runner.status == "running":  # (a step that ended the run is reported so)
                        return Report(run_id, "stopped", steps, runner.next_action,
                                      "asked to stop; the run resumes from here next time")
            except ActionFailed as e:
                return Report(run_id, "failed", steps, runner.next_action if runner else None, str(e).splitlines()[0])
            except (HomeConflict, LostTail):
                raise  # (another writer holds the log's home; a log that lost a tail: no pass helps, stop)
            except FsmtrainError as e:
                return Report(run_id, "error", steps, None, f"{type(e).__name__}: {e}")
            halt = runner.last_halt
            assert halt is not None
            if halt.reason == "waiting":
                needs = ", ".join(_need(d) for d in (self.log.last_event(run_id).info or {}).get("needs", []))
                return Report(run_id, "waiting", steps, halt.action, f"needs {needs}")
            return Report(run_id, halt.reason, steps, halt.action)

    def _run_distributed(self, run_id: int, world: int) -> Report:
        """A run recorded on ``world`` processes resumes on as many: through torchrun, each process importing the
        target by name (the log's rank takes the run's lock, so two workers still never drive it at once)."""
        import subprocess

        before = self.log.run(run_id)
        if self.target_name is None:
            return Report(run_id, "error", detail=f"it was recorded on {world} processes: the worker needs its target "
                                                  "as MODULE:ATTR to start them (fsmtrain worker --machine)")
        from .launch import launch_command

        cmd, env = launch_command(world, "fsmtrain.train.distributed",
                                  ["resume", str(self.log.path), str(run_id), self.target_name])
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        after = self.log.run(run_id)
        steps = after.steps - before.steps
        if p.returncode != 0:
            tail = (p.stderr.strip().splitlines() or ["?"])[-1]
            if after.status == "failed":
                return Report(run_id, "failed", steps, after.last_action, tail)
            return Report(run_id, "error", steps, None, f"its {world} processes exited with {p.returncode}: {tail}")
        if after.status == "waiting":
            needs = ", ".join(_need(d) for d in (self.log.last_event(run_id).info or {}).get("needs", []))
            return Report(run_id, "waiting", steps, after.last_action, f"needs {needs}; on {world} processes")
        return Report(run_id, after.status if after.status in ("finished", "stopped", "pruned") else "stopped", steps,
                      after.next, f"on {world} processes")

    def serve(self, every: float, *, sleep: Callable[[float], None] = time.sleep) -> list[Report]:
        """Pass, pause ``every`` seconds, pass again... until :meth:`stop`; returns every report."""
        reports: list[Report] = []
        while not self._stopping:
            reports += self.run_once()
            deadline = time.monotonic() + every
            while not self._stopping and time.monotonic() < deadline:
                sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        return reports


def _need(spec: dict[str, Any]) -> str:
    if spec.get("choices"):
        return f"{spec['name']} ({' | '.join(map(str, spec['choices']))})"
    return f"{spec['name']} ({spec.get('type', 'str')}{'' if spec.get('required', True) else ', optional'})"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
MIN_DURATION = 0.01
MAX_DURATION = 365 * 86400.0
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(text: str) -> float:
    """``"10m"`` -> 600.0; units ms, s, m, h, d (none: seconds)."""
    m = _DURATION.match(text)
    if not m:
        raise InvalidInput(f"cannot read {text!r} as a duration; write e.g. 30s, 10m, 1h")
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds < MIN_DURATION:
        raise InvalidInput(f"the duration must be at least 10ms (a worker polling faster only burns CPU), got {text!r}")
    if seconds > MAX_DURATION:
        raise InvalidInput(f"the duration {text!r} is longer than a year; give at most 365d")
    return seconds
