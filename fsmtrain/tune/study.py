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
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import importlib
import multiprocessing
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
from .samplers import make_sampler
from .schedulers import make_scheduler
from .space import Space, as_space

__all__ = ["InlineExecutor", "Study", "Trial", "run_segment", "run_segment_detached", "table", "trials_of"]

ACTIVE = ("pending", "running", "paused")


@attrs.define
class Trial:
    """One trial as the study sees it (folded from the study state)."""

    index: int
    run_id: int
    params: dict[str, Any]
    status: str = "pending"  # pending, running, paused, completed, pruned, failed
    epochs: int = 0
    values: list[float] = attrs.field(factory=list)
    error: str | None = None
    attempts: int = 1
    _best: Any = attrs.field(default=None, repr=False, eq=False)

    def best(self, mode: str) -> tuple[float | None, int | None]:
        """The best finite value and its (1-based) epoch."""
        cached = self._best
        if cached is not None and cached[0] is self.values and cached[1] == mode:
            hit: tuple[float | None, int | None] = cached[2]
            return hit
        found = self._find_best(mode)
        self._best = (self.values, mode, found)
        return found

    def _find_best(self, mode: str) -> tuple[float | None, int | None]:
        best, at = None, None
        for i, v in enumerate(self.values):
            if isinstance(v, (int, float)) and v == v and abs(v) != float("inf") and \
                    (best is None or (v < best if mode == "min" else v > best)):
                best, at = v, i + 1
        return best, at


def trials_of(state: State | Mapping[str, Any]) -> list[Trial]:
    """The study's trials: each proposed trial with its updates applied in order."""
    return _fold([], state["trials"], state["updates"], 0, 0)


def _fold(out: list[Trial], trials: Any, updates: Any, n_trials: int, n_updates: int) -> list[Trial]:
    """Apply ``trials[n_trials:]`` and ``updates[n_updates:]`` to ``out`` (in place) and return it."""
    for i in range(n_trials, len(trials)):
        t = trials[i]
        out.append(Trial(t["index"], t["run_id"], dict(t["params"])))
    for i in range(n_updates, len(updates)):
        u = updates[i]
        t = out[u["index"]]
        for k in ("status", "epochs", "error", "attempts", "run_id"):
            if k in u:
                setattr(t, k, u[k])
        if "values" in u:
            t.values = list(u["values"])
    return out


class _Folder:
    """``trials_of`` for one study's successive states, folding only what each step appended.

    Appends share a Seq's storage and never change its first items, so a state whose lists
    are on the same storage and at least as long extends the cached fold.  Every state of
    one run satisfies that; anything else (a hand-made state) is folded from scratch.
    """

    def __init__(self) -> None:
        self._key: tuple[Any, Any] | None = None
        self._lens = (0, 0)
        self._trials: list[Trial] = []

    def __call__(self, state: State) -> list[Trial]:
        trials, updates = state["trials"], state["updates"]
        key = (getattr(trials, "_items", None), getattr(updates, "_items", None))
        n = (len(trials), len(updates))
        if self._key is None or key[0] is not self._key[0] or key[1] is not self._key[1] \
                or n[0] < self._lens[0] or n[1] < self._lens[1] or key[0] is None or key[1] is None:
            self._trials, self._lens = [], (0, 0)
        if n != self._lens:  # (the fold reflects the state's own lists only, so a retried step sees the same)
            self._trials = _fold(self._trials, trials, updates, *self._lens)
        self._key, self._lens = key, n
        return self._trials


# -- the task each trial segment is (runs in an executor's process) ---------------------------------
def run_segment(log_path: str, target: str, run_id: int, until: int | None, metric: str,
                counter: str = "epoch") -> dict[str, Any]:
    """Resume trial run ``run_id`` until ``state[counter] >= until`` at an epoch boundary (or its end).

    Module-level and given only strings and numbers, so any executor can run it
    in another process.  A finished run is read back, not run again.
    """
    from ..replay import state_at
    from ..worker import run_lock

    log, trainer = _opened(log_path, target)  # one connection and target per process, kept across tasks
    info = log.run(run_id)
    if info.status == "finished":
        return _outcome("completed", state_at(log, run_id), metric, counter)
    if info.status in ("stopped", "pruned"):  # ended from outside (a person, or this study before a restart)
        return _outcome(info.status, state_at(log, run_id), metric, counter)
    if info.status == "failed":
        return {"status": "failed", "error": (log.last_event(run_id).error or "").strip()[-2000:], "values": [],
                "epochs": 0}
    # A process of a killed study's pool may still be finishing this trial's segment: wait for it.
    with run_lock(log, run_id, wait=LOCK_WAIT) as mine:
        if not mine:
            raise RuntimeError(f"trial run {run_id} is being run by another process (waited {LOCK_WAIT:.0f} s)")
        info = log.run(run_id)  # what that process left
        if info.status == "finished":
            return _outcome("completed", state_at(log, run_id), metric, counter)
        if info.status in ("stopped", "pruned"):
            return _outcome(info.status, state_at(log, run_id), metric, counter)
        return _advance(trainer, run_id, until, metric, counter)


def _advance(trainer: Any, run_id: int, until: int | None, metric: str, counter: str) -> dict[str, Any]:
    """Resume the trial until the epoch boundary at ``until`` (or its end); what it reached."""
    from ..errors import ActionFailed

    runner = trainer.resume(run_id)
    entry = trainer.machine.entry
    try:
        with runner:
            for _ in runner.iterate():
                if until is not None and runner.next_action == entry and runner.state[counter] >= until:
                    return _outcome("paused", runner.state, metric, counter)
    except ActionFailed as e:
        return {"status": "failed", "error": str(e), "values": list(runner.state.get(metric) or []),
                "epochs": runner.state.get(counter, 0)}
    if runner.status == "failed":
        return {"status": "failed", "error": "the trial run is failed", "values": list(runner.state.get(metric) or []),
                "epochs": runner.state.get(counter, 0)}
    if runner.status == "waiting":
        return _outcome("paused", runner.state, metric, counter) | {"waiting": runner.next_action}
    if runner.status in ("stopped", "pruned"):
        return _outcome(runner.status, runner.state, metric, counter)
    return _outcome("completed", runner.state, metric, counter)


def run_segment_detached(target: str, artifacts: str, run_id: int, events: list[Any], until: int | None,
                         metric: str, counter: str = "epoch") -> dict[str, Any]:
    """:func:`run_segment` for a process that cannot reach the study's log (another machine).

    ``events`` are the trial run's events so far; they are replayed into a scratch
    log here, whose artifacts folder is ``artifacts`` (a path every worker reaches),
    the trial advances there, and the new events come back in the result for the
    study process to append to its log: SQLite stays on the study's host.
    """
    import tempfile

    from ..worker import as_target

    with tempfile.TemporaryDirectory() as scratch:
        log = EventLog(Path(scratch) / "trial.db", durability="none", artifacts=artifacts)  # (a scratch copy)
        try:
            trainer = as_target(_import(target), log)
            first = events[0]
            m = trainer.machine
            log.create_run(m.name, m.fingerprint, snapshot=first.snapshot, next_action=first.next, info=first.info,
                           run_id=run_id, created=first.time)
            for ev in events[1:]:
                _copy_event(log, run_id, ev)
            if log.run(run_id).status == "finished":
                from ..replay import state_at

                return _outcome("completed", state_at(log, run_id), metric, counter) | {"events": []}
            out = _advance(trainer, run_id, until, metric, counter)
            out["events"] = list(log.events(run_id, start=len(events) + 1))
            return out
        finally:
            log.close()


def _copy_event(log: EventLog, run_id: int, ev: Any) -> None:
    log.append(run_id, ev.seq - 1, kind=ev.kind, step=ev.step, action=ev.action, attempt=ev.attempt,
               inputs=ev.inputs, updates=ev.updates, next_action=ev.next, info=ev.info, snapshot=ev.snapshot,
               error=ev.error, time=ev.time)


LOCK_WAIT = 600.0
_OPENED: dict[tuple[str, str], tuple[EventLog, Any]] = {}


def _opened(log_path: str, target: str) -> tuple[EventLog, Any]:
    """This process's connection to the log and its trial target (built once, reused by later tasks)."""
    from ..worker import as_target

    key = (log_path, target)
    if key not in _OPENED:
        log = EventLog(log_path)
        _OPENED[key] = (log, as_target(_import(target), log))
    return _OPENED[key]


def worker_init(parent: int, threads: int) -> None:
    """A pool process starts: exit with the study, leave Ctrl-C to it, use ``threads`` torch threads, and
    forget what a forked process inherited (the parent's log connections and run locks stay the parent's:
    they are never used, closed or released here)."""
    exit_with_parent(parent)
    global _OPENED
    _INHERITED.append(_OPENED)  # kept referenced: closing an inherited SQLite connection could checkpoint
    _OPENED = {}                # the parent's log under its feet
    from .. import locks
    from ..log.files import _OPEN

    _OPEN.clear()
    with locks._GUARD:  # the parent's run locks are the parent's (record locks are not inherited)
        for fd, _ in locks._HELD.values():
            try:
                os.close(fd)
            except OSError:
                pass
        locks._HELD.clear()
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


_INHERITED: list[Any] = []


def exit_with_parent(parent: int, every: float = 0.5) -> None:
    """In a pool process: exit as soon as ``parent`` (the study) has died, so a killed study leaves no orphan.

    A daemon thread polls the parent pid (portable; ``PR_SET_PDEATHSIG`` would fire when the *thread*
    that started the process exits, which a pool may do).  The trial it was running stops uncommitted
    mid-step, exactly as a killed process does; the resumed study continues it.
    """
    import threading
    import time

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(every)

    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the study's to handle (it stops the pool)
    threading.Thread(target=watch, name="fsmtrain-exit-with-parent", daemon=True).start()


def _kill_pool(executor: cf.Executor) -> None:
    """Stop a process pool's workers now (their trials stop uncommitted, as a killed process does)."""
    for proc in list((getattr(executor, "_processes", None) or {}).values()):
        try:
            proc.kill()
        except Exception:
            pass


def _pool_context() -> Any:
    """How the pool starts its processes: ``fork`` on Linux (they start at once with the trial target and torch
    already imported; each uses a share of the cores' torch threads, set first thing), else ``spawn``.

    Forking a process whose torch has started its thread pool could hang a child that runs parallel regions;
    the study's own process only keeps books, and each child is set to its threads before it trains.  Give
    ``executor=ProcessPoolExecutor(mp_context=get_context("spawn"))`` to avoid fork altogether.
    """
    import sys

    if sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods():
        if "torch" in sys.modules:  # the first optimizer imports torch._dynamo (~1-2 s): once, here, not per child
            _warm_torch()
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _warm_torch() -> None:
    import sys
    import warnings

    torch = sys.modules["torch"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


class InlineExecutor(cf.Executor):
    """Runs each task at once, in the calling thread: trials one after another, no other process.

    For debugging a trial, and for objectives so cheap that a process costs more than they do.
    """

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        fut: cf.Future[Any] = cf.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except Exception as e:  # handed to the caller through the future (Ctrl-C and exits propagate)
            fut.set_exception(e)
        return fut

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Close the log connections the tasks opened in this process."""
        while _OPENED:
            _OPENED.popitem()[1][0].close()


def _outcome(status: str, state: State, metric: str, counter: str) -> dict[str, Any]:
    return {"status": status, "epochs": state.get(counter, 0), "values": [float(v) for v in (state.get(metric) or [])]}


def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _target_string(trial: Any) -> str:
    """``module:attr`` for the trial target, checked to be importable by other processes."""
    if isinstance(trial, str):
        if ":" not in trial:
            raise InvalidDefinition("study", [f"trial target {trial!r} must be MODULE:ATTR"])
        try:
            _import(trial)
        except (ImportError, AttributeError) as e:
            raise InvalidDefinition("study", [f"trial target {trial!r} cannot be imported ({e}); the executor's "
                                              "processes import it by name"]) from None
        return trial
    module, qual = getattr(trial, "__module__", None), getattr(trial, "__qualname__", "")
    if not module or module == "__main__" or "<" in qual:
        raise InvalidDefinition("study", [
            f"trial target {trial!r} is not importable by the worker processes (defined in __main__, in a function, "
            "or a lambda); define it at module level in an importable module, or name it as 'module:attr'"])
    return _target_string(f"{module}:{qual}")


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
    """

    def __init__(self, log: EventLog | str | os.PathLike[str], trial: Any, space: Space | Mapping[str, Any], *,
                 n_trials: int, max_concurrent: int = 2, metric: str = "val_loss", mode: str = "min",
                 sampler: Any = "random", scheduler: Any = None, seed: int = 0,
                 config: Mapping[str, Any] | None = None, retries: int = 0, name: str = "study",
                 executor: cf.Executor | None = None, hooks: Iterable[Any] = (),
                 stop: Condition | None = None, artifacts: str | os.PathLike[str] | None = None) -> None:
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
        self.log = log if isinstance(log, EventLog) else EventLog(log)
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
        return {"space": self.space.to_json(), "target": self.target, "n_trials": self.n_trials,
                "max_concurrent": self.max_concurrent, "metric": self.metric, "mode": self.mode, "seed": self.seed,
                "sampler": getattr(self.sampler, "name", type(self.sampler).__name__),
                "scheduler": getattr(self.scheduler, "name", type(self.scheduler).__name__),
                "milestones": self.scheduler.milestones(), "max_t": self.scheduler.max_t,
                "config": self.config, "retries": self.retries, "artifacts": self.artifacts,
                **({"compare": self.scheduler.compare} if getattr(self.scheduler, "compare", "milestone") != "milestone"
                   else {})}

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
                            study.metric)
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


def _value_at(values: list[float], at: int, mode: str) -> float:
    """A trial's value at epoch ``at`` (NaN when it has none): what a scheduler compares by default."""
    return values[at - 1] if len(values) >= at else float("nan")


def _best(trials: list[Trial], mode: str) -> dict[str, Any] | None:
    best: dict[str, Any] | None = None
    top = 0.0
    for t in trials:
        value, epoch = t.best(mode)
        if value is not None and (best is None or (value < top if mode == "min" else value > top)):
            best, top = {"index": t.index, "run_id": t.run_id, "value": value, "epoch": epoch, "params": t.params}, value
    return best


def table(state: State | Mapping[str, Any]) -> list[dict[str, Any]]:
    """The trial table, best result first (then unfinished and failed ones)."""
    mode = state["mode"]
    rows = []
    for t in trials_of(state):
        value, epoch = t.best(mode)
        rows.append({"trial": t.index, "run_id": t.run_id, "params": t.params, "status": t.status,
                     "best": value, "best_epoch": epoch, "epochs": t.epochs, "pruned": t.status == "pruned",
                     "attempts": t.attempts, "error": t.error})
    sign = 1 if mode == "min" else -1
    return sorted(rows, key=lambda r: (r["best"] is None, sign * (r["best"] or 0), r["trial"]))


_Callable = Callable[..., Any]
