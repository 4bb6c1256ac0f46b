"""The lifecycle hook bus.

A hook is any object with ``on_<event>`` methods; it subscribes to the events
whose methods it defines.  Every method takes keyword-only arguments plus
``**future_kwargs``, so new fields never break user hooks.

Events: ``run_start``, ``run_resume``, ``step_start``, ``step_end``,
``step_failed``, ``waiting``, ``input``, ``restore``, ``run_end`` (and any other
name a layer emits).  Hooks run after the step's commit, so a failing
hook never corrupts the log.  A hook whose ``fatal`` attribute is true stops
the run with :class:`~fsmtrain.errors.HookFailed`; any other failure is a
:class:`HookWarning` and is kept in ``HookBus.failures``.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from .errors import HookFailed

__all__ = ["EVENTS", "Hook", "HookBus", "HookWarning", "Notify"]

EVENTS = ("run_start", "run_resume", "step_start", "step_end", "step_failed", "waiting", "input", "restore",
          "run_end")


class HookWarning(UserWarning):
    """A non-fatal hook raised; the run goes on."""


class Hook:
    """Optional base class documenting the hook methods; override the ones you need."""

    fatal: bool = False

    def on_run_start(self, *, run_id: int | None, state: Any, **future_kwargs: Any) -> None:
        """A run was created (its start event is committed)."""

    def on_run_resume(self, *, run_id: int | None, state: Any, next_action: str | None, **future_kwargs: Any) -> None:
        """A runner was rebuilt from the log."""

    def on_step_start(self, *, run_id: int | None, step: int, action: str, state: Any, inputs: dict[str, Any],
                      **future_kwargs: Any) -> None:
        """An action is about to run (nothing is committed yet)."""

    def on_step_end(self, *, run_id: int | None, step: int, action: str, state: Any, updates: dict[str, Any],
                    next_action: str | None, **future_kwargs: Any) -> None:
        """A step was committed; ``state`` is the new state."""

    def on_step_failed(self, *, run_id: int | None, step: int, action: str, error: BaseException, attempt: int,
                       will_retry: bool, **future_kwargs: Any) -> None:
        """An attempt of an action raised."""

    def on_waiting(self, *, run_id: int | None, action: str, needs: list[dict[str, Any]], state: Any,
                   **future_kwargs: Any) -> None:
        """The run waits for input at ``action``; ``needs`` are its input declarations."""

    def on_input(self, *, run_id: int | None, action: str, inputs: dict[str, Any], **future_kwargs: Any) -> None:
        """Input was received for a waiting run."""

    def on_restore(self, *, run_id: int | None, state: Any, note: dict[str, Any], **future_kwargs: Any) -> None:
        """The runner's ``restore`` brought the resources back to the last committed step."""

    def on_run_end(self, *, run_id: int | None, state: Any, status: str, **future_kwargs: Any) -> None:
        """The run finished or failed."""


class HookBus:
    """Dispatches lifecycle events to the hooks that subscribe to them."""

    def __init__(self, hooks: Iterable[Any] = ()) -> None:
        self.hooks = list(hooks)
        self.failures: list[tuple[str, Any, BaseException]] = []
        self._subs: dict[str, list[Any]] = {}
        for h in self.hooks:
            self.add(h, _rebuild=False)

    def add(self, hook: Any, *, _rebuild: bool = True) -> None:
        if _rebuild:
            self.hooks.append(hook)
        for attr in dir(type(hook)):
            if not attr.startswith("on_"):
                continue
            method = getattr(type(hook), attr)
            if method is getattr(Hook, attr, None):
                continue  # not overridden: not subscribed
            self._subs.setdefault(attr[3:], []).append(hook)

    def __bool__(self) -> bool:
        return bool(self._subs)

    def wants(self, event: str) -> bool:
        return event in self._subs

    def emit(self, event: str, **kwargs: Any) -> None:
        for hook in self._subs.get(event, ()):
            try:
                getattr(hook, "on_" + event)(**kwargs)
            except Exception as e:
                self.failures.append((event, hook, e))
                name = type(hook).__name__
                if getattr(hook, "fatal", False):
                    raise HookFailed(f"hook {name}.on_{event} failed: {type(e).__name__}: {e}") from e
                warnings.warn(f"hook {name}.on_{event} failed: {type(e).__name__}: {e}", HookWarning, stacklevel=2)


class Notify(Hook):
    """Tell a person when a run waits at a gate, and when its input arrives.

    Appends one line per event to ``path`` (a file a chat bot, ``tail -f`` or a
    mail filter can follow) and/or calls ``call(message)`` (send it anywhere)::

        Trainer(machine, build, log="runs.db", hooks=[Notify("gates.txt", log="runs.db")])
        fsmtrain worker runs.db --machine mypkg:trainer --once --hook mypkg:notify

    ``log`` (optional) is only used to print ready-to-run commands.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, call: Callable[[str], Any] | None = None,
                 log: str | os.PathLike[str] | None = None) -> None:
        if path is None and call is None:
            raise ValueError("Notify needs a path to append to, a function to call, or both")
        self.path, self.call, self.log = path, call, log

    def _say(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        if self.call is not None:
            self.call(line)

    def on_waiting(self, *, run_id: int | None, action: str, needs: list[dict[str, Any]], state: Any,
                   **future_kwargs: Any) -> None:
        wanted = ", ".join(n["name"] + (f" ({' | '.join(map(str, n['choices']))})" if n.get("choices") else "")
                           for n in needs if n.get("required", True))
        best = state.get("best") if hasattr(state, "get") else None
        where = ""
        if isinstance(best, dict) and best.get("value") is not None:
            where = f"; best {best.get('metric')} {best['value']:.4g} at epoch {best.get('epoch')}"
        log = self.log or "LOG"
        self._say(f"run {run_id} waits at `{action}` for {wanted}{where}. "
                  f"Answer: fsmtrain approve {log} {run_id} / fsmtrain reject {log} {run_id}")

    def on_input(self, *, run_id: int | None, action: str, inputs: dict[str, Any], **future_kwargs: Any) -> None:
        given = ", ".join(f"{k}={v!r}" for k, v in sorted(inputs.items()))
        self._say(f"run {run_id} got its input for `{action}` ({given}) and goes on")
