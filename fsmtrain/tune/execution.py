"""How a study's trials are executed: the segment tasks, the process pool, and the inline executor.

Its one job is running trial segments away from the study's bookkeeping:
:func:`run_segment` (and :func:`run_segment_detached`, for workers that cannot
reach the log) resumes a trial's child run until its next milestone in an
executor's process; the pool's processes are set up by :func:`worker_init` and
exit with the study; :class:`InlineExecutor` runs tasks in the calling thread.
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib
import multiprocessing
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InvalidDefinition
from ..log import EventLog
from ..state import State

__all__ = ["LOCK_WAIT", "InlineExecutor", "exit_with_parent", "run_segment", "run_segment_detached", "worker_init"]


# -- the task each trial segment is (runs in an executor's process) ---------------------------------
def run_segment(log_path: str, target: str, run_id: int, until: int | None, metric: str,
                counter: str = "epoch", home: str | None = None) -> dict[str, Any]:
    """Resume trial run ``run_id`` until ``state[counter] >= until`` at an epoch boundary (or its end).

    Module-level and given only strings and numbers, so any executor can run it
    in another process.  A finished run is read back, not run again.
    """
    from ..replay import state_at
    from ..worker import run_lock

    log, trainer = _opened(log_path, target, home)  # one connection and target per process, kept across tasks
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


def _opened(log_path: str, target: str, home: str | None = None) -> tuple[EventLog, Any]:
    """This process's connection to the log (shipping to ``home``) and its trial target (built once, reused by
    later tasks)."""
    from ..worker import as_target

    key = (log_path, target)
    if key not in _OPENED:
        log = EventLog(log_path, home=home)
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
