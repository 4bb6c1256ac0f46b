"""A hyperparameter study is itself a resumable fsmtrain run.

Its machine is ``propose → collect → (done? finish : propose)``:

- **propose** asks the sampler for new trials while fewer than ``max_concurrent``
  are active and ``n_trials`` are not all proposed; each trial is a *child run*
  in the same log (parent: the study run), an ordinary training run of the
  target's machine, started from its initial state, ``config`` and the trial's
  parameters; then it submits each active trial that has no task yet to the
  executor: resume the child run until the scheduler's next milestone epoch (or
  its end);
- **collect** waits for a task to complete, records what the trial reached, and
  asks the scheduler whether each trial paused at a milestone goes on (a pruned
  trial's run gets a ``pruned`` event);
- **finish** names the best trial.

Two commits per round: a step redone after a crash finds the child runs and the
``pruned`` events it made and makes nothing twice.

The study state holds the space, the proposed trials and an append-only list
of trial updates; the executor's futures are resources, not state.  Killed at
any moment and started again, the study resumes its run: trials recorded as
running are launched again and their child runs resume from their checkpoints,
a trial whose child run had finished is read back from the log, never run again.

This module holds the study's machine and bookkeeping; the trial segments run
through :mod:`fsmtrain.tune.execution`, and :mod:`fsmtrain.tune.trials` reads the
trials (and the trial table) back from the study state.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from ..actions import Action
from ..conditions import Condition, default
from ..errors import InvalidDefinition
from ..log import ENDED, EventLog
from ..machine import Machine
from ..runner import Runner
from ..state import State, append, dumps, loads
from .execution import LOCK_WAIT as LOCK_WAIT
from .execution import (
    InlineExecutor,
    _copy_event,
    _import,
    _kill_pool,
    _pool_context,
    _target_string,
    run_segment,
    run_segment_detached,
    worker_init,
)
from .execution import exit_with_parent as exit_with_parent
from .samplers import make_sampler
from .schedulers import make_scheduler
from .space import Space, as_space
from .trials import Trial, _best, _Folder, _value_at, table, trials_of

__all__ = ["InlineExecutor", "Study", "Trial", "run_segment", "run_segment_detached", "table", "trials_of"]

ACTIVE = ("pending", "running", "paused")


# -- live resources of a study run -------------------------------------------------------------------
@attrs.define
class _Live:
    executor: cf.Executor
    log_path: str
    target: str
    futures: dict[int, cf.Future[dict[str, Any]]] = attrs.field(factory=dict)
    owned: bool = False
    runner: Runner | None = None  # the study's own runner, once it exists
    machine: Machine | None = None  # the trials' machine (built once)
    description: dict[str, Any] | None = None
    children_of: int | None = None

    @property
    def study_id(self) -> int:
        assert self.runner is not None and self.runner.run_id is not None
        return self.runner.run_id

    def seq(self) -> int:
        """The study run's last committed event: a trial's parent pointer."""
        assert self.runner is not None
        return self.runner.seq

    def describe(self, machine: Machine) -> dict[str, Any]:
        if self.description is None:
            self.description = machine.describe()
        return self.description


class Study:
    """Search ``space`` for the trial target's best ``metric``, as a resumable run in ``log``.

    ``trial`` names a function ``log -> Trainer`` (or a Machine) as ``"module:attr"``, importable by the
    executor's processes.  Each trial starts from the target machine's initial state, updated with
    ``config`` and the trial's parameters (and ``max_epochs`` = the scheduler's ``max_t`` when given).
    ``executor`` is any ``concurrent.futures.Executor`` (default: a process pool of ``max_concurrent``
    spawned processes); ``retries`` re-runs a failed trial (as a new child run) up to that many times.
    With ``artifacts=PATH`` (a folder every worker reaches), trials are *detached*: a task gets its
    trial's events, advances it in a scratch log on the worker, checkpoints under ``PATH``, and returns
    the new events, which the study process writes to its log (for workers on other machines).
    ``home`` (default: ``$FSMTRAIN_HOME``): the log's home (spec/home.md): the study and its trials ship to
    it, and the same study command on another machine continues from it.
    """

    def __init__(self, log: EventLog | str | os.PathLike[str], trial: Any, space: Space | Mapping[str, Any], *,
                 n_trials: int, max_concurrent: int = 2, metric: str = "val_loss", mode: str = "min",
                 sampler: Any = "random", scheduler: Any = None, seed: int = 0,
                 config: Mapping[str, Any] | None = None, retries: int = 0, name: str = "study",
                 executor: cf.Executor | None = None, hooks: Iterable[Any] = (),
                 stop: Condition | None = None, artifacts: str | os.PathLike[str] | None = None,
                 home: str | os.PathLike[str] | None = None) -> None:
        problems = []
        for n, v, lo in (("n_trials", n_trials, 1), ("max_concurrent", max_concurrent, 1), ("retries", retries, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                problems.append(f"{n} must be an int >= {lo}, got {v!r}")
        if mode not in ("min", "max"):
            problems.append(f"mode must be 'min' or 'max', got {mode!r}")
        if not isinstance(metric, str) or not metric:
            problems.append(f"metric must be a state key, got {metric!r}")
        if problems:
            raise InvalidDefinition("study", problems)
        self.space = as_space(space)
        self.target = _target_string(trial)
        self.sampler = make_sampler(sampler, seed)
        self.uses_history = getattr(self.sampler, "uses_history", True)
        self._children: dict[tuple[int, int], int] | None = None  # (trial, attempt) -> child run, this process
        if getattr(self.sampler, "name", None) == "optuna":
            self.sampler.direction = "minimize" if mode == "min" else "maximize"
        self.scheduler = make_scheduler(scheduler, getattr(scheduler, "max_t", None))
        if isinstance(log, EventLog) and home is not None:
            raise ValueError("give the home to the EventLog (EventLog(path, home=...)) when you pass one")
        if home is None and not isinstance(log, EventLog):
            home = os.environ.get("FSMTRAIN_HOME") or None
        self.log = log if isinstance(log, EventLog) else EventLog(log, home=home)
        self.home = None if self.log.home is None else self.log.home.url
        """The study log's home (spec/home.md), which its trials' processes ship to as well."""
        self.n_trials, self.max_concurrent, self.metric, self.mode = n_trials, max_concurrent, metric, mode
        self.seed, self.retries, self.name = seed, retries, name
        self.config = dict(config or {})
        self.executor = executor
        self.artifacts = None if artifacts is None else str(Path(artifacts).resolve())
        self.hooks = list(hooks)
        self.extra_stop = stop
        self.machine = self._machine()
        clash = sorted(set(self.space) & set(self.config))
        if clash:
            raise InvalidDefinition("study", [f"{', '.join(clash)} are both searched and fixed in config"])

    # -- the settings that identify a study (to resume the right run) ----------------------------------
    def settings(self) -> dict[str, Any]:
        """What identifies the study (a rerun with the same settings resumes it): space, target, sizes..."""
        return {"space": self.space.to_json(), "target": self.target, "n_trials": self.n_trials,
                "max_concurrent": self.max_concurrent, "metric": self.metric, "mode": self.mode, "seed": self.seed,
                "sampler": getattr(self.sampler, "name", type(self.sampler).__name__),
                "scheduler": getattr(self.scheduler, "name", type(self.scheduler).__name__),
                "milestones": self.scheduler.milestones(), "max_t": self.scheduler.max_t,
                "config": self.config, "retries": self.retries, "artifacts": self.artifacts,
                **({"compare": self.scheduler.compare} if getattr(self.scheduler, "compare", "milestone") != "milestone"
                   else {}),
                **({"keep": self.scheduler.keep} if getattr(self.scheduler, "keep", "ceil") != "ceil" else {})}

    def _key(self) -> str:
        return hashlib.sha256(dumps(self.settings()).encode()).hexdigest()[:16]

    # -- running -----------------------------------------------------------------------------------------
    def run(self, *, on_interrupt: str = "exit") -> Runner:
        """Start the study, or resume its unfinished run with the same settings; run it to its end.

        Ctrl-C stops the trials at once (they resume from their last commit next time), prints one
        line saying so, and exits with status 130 (``on_interrupt="raise"`` re-raises instead).
        """
        if on_interrupt not in ("exit", "raise"):
            raise ValueError(f"on_interrupt must be 'exit' or 'raise', got {on_interrupt!r}")
        key = self._key()
        mine = [r for r in self.log.runs(machine=self.machine.name) if r.tags.get("study") == key]
        if mine and mine[-1].status in ENDED:
            return Runner.resume(self.machine, self.log, mine[-1].id)
        live = self._live()
        runner: Runner | None = None
        interrupted = False
        try:
            if mine and mine[-1].status in ("running", "waiting"):
                runner = Runner.resume(self.machine, self.log, mine[-1].id, hooks=self.hooks, resources=live)
            else:
                runner = Runner.start(self.machine, log=self.log, state=self.settings() | {"space": self.space.to_json()},
                                      tags={"study": key, "name": self.name}, hooks=self.hooks, resources=live)
            live.runner = runner
            with runner:
                runner.run()
            return runner
        except KeyboardInterrupt:
            interrupted = True
            if on_interrupt == "raise":
                raise
            import sys

            where = f"study run {runner.run_id}" if runner is not None else "the study"
            print(f"\ninterrupted: {where} keeps what it committed in {self.log.path}; its trials resume from their "
                  "last commits when you run it again", file=sys.stderr, flush=True)
            raise SystemExit(130) from None
        finally:
            if live.owned:
                if interrupted:
                    _kill_pool(live.executor)
                live.executor.shutdown(wait=not interrupted, cancel_futures=True)

    def _live(self) -> _Live:
        path = str(Path(self.log.path).resolve())
        if self.executor is not None:
            return _Live(self.executor, path, self.target)
        if self.max_concurrent == 1:  # one trial at a time: in this process, no process to start
            return _Live(InlineExecutor(), path, self.target, owned=True)
        threads = max(1, (os.cpu_count() or 1) // self.max_concurrent)
        pool = cf.ProcessPoolExecutor(max_workers=self.max_concurrent, mp_context=_pool_context(),
                                      initializer=worker_init, initargs=(os.getpid(), threads))
        return _Live(pool, path, self.target, owned=True)

    # -- the machine -----------------------------------------------------------------------------------------
    def _machine(self) -> Machine:
        study = self
        fold = _Folder()  # trials_of, folding only what each step appended
        milestones = self.scheduler.milestones()
        max_t = self.scheduler.max_t

        def next_stop(epochs: int) -> int | None:
            later: list[int | None] = [m for m in milestones if m > epochs]
            return later[0] if later else max_t

        def propose(state: State, resources: _Live) -> dict[str, Any]:
            trials = fold(state)
            active = sum(t.status in ACTIVE for t in trials)
            new: list[dict[str, Any]] = []
            history = [{"params": t.params, "value": t.best(study.mode)[0]} for t in trials
                       if t.status in ("completed", "pruned", "stopped", "failed")] if study.uses_history else []
            index = len(trials)
            while index < study.n_trials and active + len(new) < study.max_concurrent:
                params = study.sampler.propose(study.space, index, history)
                if params is None:  # the sampler has nothing left (a finished grid)
                    break
                run_id = study._child(resources, state, index, params, attempt=1)
                new.append({"index": index, "run_id": run_id, "params": params})
                index += 1
            exhausted = index < study.n_trials and not new and active == 0
            return {"trials": append(*new)} | ({"n_trials": index} if exhausted else {})

        def launch(state: State, resources: _Live) -> dict[str, Any]:
            changed = []
            for t in fold(state):
                if t.status in ACTIVE and t.index not in resources.futures:
                    if study.artifacts is None:
                        resources.futures[t.index] = resources.executor.submit(
                            run_segment, resources.log_path, resources.target, t.run_id, next_stop(t.epochs),
                            study.metric, home=study.home)
                    else:  # (the events travel to another machine: a damaged run is refused here)
                        study.log.check_run(t.run_id)
                        resources.futures[t.index] = resources.executor.submit(
                            run_segment_detached, resources.target, study.artifacts, t.run_id,
                            list(study.log.events(t.run_id)), next_stop(t.epochs), study.metric)
                    if t.status != "running":
                        changed.append({"index": t.index, "status": "running"})
            running = sorted(resources.futures)
            return {"running": running} | ({"updates": append(*changed)} if changed else {})

        def collect(state: State, resources: _Live) -> dict[str, Any]:
            if not resources.futures:
                return {}
            done, _ = cf.wait(list(resources.futures.values()), return_when=cf.FIRST_COMPLETED)
            trials = {t.index: t for t in fold(state)}
            updates: list[dict[str, Any]] = []
            for index, fut in sorted(resources.futures.items()):
                if fut not in done:
                    continue
                del resources.futures[index]
                t = trials[index]
                try:
                    out = fut.result()
                    if out.get("events"):  # a detached trial's new events: the study writes them
                        study.log.check_run(t.run_id)
                        last = study.log.run(t.run_id).last_seq
                        for ev in out["events"]:
                            if ev.seq > last:  # (a retried step finds some already written)
                                _copy_event(study.log, t.run_id, ev)
                except Exception as e:  # the task itself broke (the trial's own errors come back as "failed")
                    out = {"status": "failed", "error": f"{type(e).__name__}: {e}", "values": t.values,
                           "epochs": t.epochs}
                u: dict[str, Any] = {"index": index, "status": out["status"], "epochs": out["epochs"],
                                     "values": out["values"]}
                if out["status"] == "failed":
                    u["error"] = out.get("error", "")[-2000:]
                    if t.attempts <= study.retries:  # again, as a new child run from the start
                        u.update(status="pending", attempts=t.attempts + 1, values=[], epochs=0,
                                 run_id=study._child(resources, state, index, t.params, attempt=t.attempts + 1))
                updates.append(u)
            return {"updates": append(*updates), "running": sorted(resources.futures)}

        def prune(state: State, resources: _Live) -> dict[str, Any]:
            trials = fold(state)
            decisions = []
            value_at = getattr(study.scheduler, "value_at", _value_at)
            for t in trials:
                if t.status != "paused" or t.epochs not in milestones:
                    continue
                at = t.epochs
                value = value_at(t.values, at, study.mode)
                others = [value_at(o.values, at, study.mode) for o in trials if o.index != t.index and len(o.values) >= at]
                keep = study.scheduler.keeps(value, others, mode=study.mode)
                status = "pending" if keep else study._prune_run(resources, t, at, value, len(others))
                decisions.append({"index": t.index, "status": status})
            best = _best(trials, study.mode)
            return ({"updates": append(*decisions)} if decisions else {}) | {"best": best}

        def finish(state: State) -> dict[str, Any]:
            trials = fold(state)
            counts: dict[str, int] = {}
            for t in trials:
                counts[t.status] = counts.get(t.status, 0) + 1
            return {"best": _best(trials, study.mode), "summary": counts}

        def propose_and_launch(state: State, resources: _Live) -> dict[str, Any]:
            # One step (one commit) for both: a crash between the launch and the commit redoes the step, which
            # finds the child runs it made (by their tags) and launches them again (each resumes from its log).
            proposed = propose(state, resources)
            launched = launch(state.apply(proposed), resources)
            return proposed | launched

        def collect_and_prune(state: State, resources: _Live) -> dict[str, Any]:
            collected = collect(state, resources)
            decided = prune(state.apply(collected), resources)
            both = [*(collected["updates"].items if "updates" in collected else ()),
                    *(decided["updates"].items if "updates" in decided else ())]
            return {k: v for k, v in collected.items() if k != "updates"} | {"best": decided["best"]} | (
                {"updates": append(*both)} if both else {})

        acts = [
            # a launch of detached trials (another machine, through `artifacts`) is work the outside world does:
            # its commit is a barrier
            Action(propose_and_launch, name="propose", reads=["trials", "updates", "n_trials"],
                   writes=["trials", "n_trials", "running", "updates"], barrier=self.artifacts is not None),
            Action(collect_and_prune, name="collect", reads=["trials", "updates"],
                   writes=["updates", "running", "best"]),  # (and pruned events)
            Action(finish, name="finish", reads=["trials", "updates"], writes=["best", "summary"]),
        ]

        def all_done(s: State) -> tuple[bool, str]:
            trials = fold(s)
            active = sum(t.status in ACTIVE for t in trials)
            done = len(trials) >= s["n_trials"] and active == 0
            return done, f"{len(trials)} of {s['n_trials']} trials proposed, {active} active"

        done = Condition(all_done, keys=["trials", "updates", "n_trials"], name="all_trials_done")
        stop = done if self.extra_stop is None else done | self.extra_stop
        return Machine(f"study:{self.name}", acts,
                       [("propose", "collect"), ("collect", "finish", stop), ("collect", "propose", default)],
                       entry="propose", terminal=["finish"],
                       initial={"trials": [], "updates": [], "running": [], "best": None, "summary": None})

    def _prune_run(self, live: _Live, trial: Trial, at: int, value: float, compared: int) -> str:
        """Record on a pruned trial's run that the study ended it (once: a redone prune step finds it done); the
        trial's status: "pruned", or "stopped" where a person stopped the run first."""
        from ..errors import RunNotRunnable
        from ..runner import stop

        rule = getattr(self.scheduler, "name", type(self.scheduler).__name__)
        reason = (f"pruned by {rule} at epoch {at}: {self.metric} {value:.6g} against {compared} other trial(s) there "
                  f"({'lower' if self.mode == 'min' else 'higher'} is better)")
        details = {"rule": rule, "rung": at, "value": value, "compared": compared, "study": live.study_id,
                   "trial": trial.index, "metric": self.metric}
        try:
            stop(self.log, trial.run_id, reason=reason, by=f"study {live.study_id}", kind="pruned", details=details)
        except RunNotRunnable:  # pruned already (this step is being redone), or a person stopped it first
            return "stopped" if self.log.run(trial.run_id).status == "stopped" else "pruned"
        return "pruned"

    def _child(self, live: _Live, state: State, index: int, params: Mapping[str, Any], *, attempt: int) -> int:
        """The child run of trial ``index`` (attempt ``attempt``): found by its tags if it exists (so a
        re-executed step creates nothing twice), else created with a parent pointer to the study."""
        runner_log = self.log
        study_id = live.study_id
        if self._children is None or live.children_of != study_id:  # once per process: the children so far
            self._children = {}
            for (rid, tags) in runner_log.conn.execute("SELECT id, tags FROM runs WHERE parent_id = ?", (study_id,)):
                t = loads(tags)
                self._children[(t.get("trial"), t.get("attempt"))] = rid
            live.children_of = study_id
        known = self._children.get((index, attempt))
        if known is not None:
            return known
        if live.machine is None:
            from ..worker import as_target

            live.machine = as_target(_import(self.target), runner_log).machine
        machine = live.machine
        extra = {"max_epochs": self.scheduler.max_t} if self.scheduler.max_t else {}
        initial = machine.initial.apply({**self.config, **extra, **dict(params)})
        parent_seq = live.seq()
        ev = runner_log.create_run(machine.name, machine.fingerprint, snapshot=initial._data, next_action=machine.entry,
                                   tags={"study": study_id, "trial": index, "attempt": attempt},
                                   parent=(study_id, parent_seq), info={"machine": live.describe(machine)})
        self._children[(index, attempt)] = ev.run_id
        return ev.run_id


_Callable = Callable[..., Any]
