"""The lifecycle hook bus.

A hook is any object with ``on_<event>`` methods; it subscribes to the events
whose methods it defines.  Every method takes keyword-only arguments plus
``**future_kwargs``, so new fields never break user hooks.

Events: ``run_start``, ``run_resume``, ``step_start``, ``step_end``,
``step_failed``, ``waiting``, ``input``, ``restore``, ``run_end`` (and any other
name a layer emits).  Hooks run after the step's commit, so a failing
hook never corrupts the log.  A hook whose ``external`` attribute is true has
effects outside the process (a message to a person, a file others read): its
calls are held until the commits they report are behind a barrier (durable
against a power loss, see ``EventLog(durability=...)``), then delivered in order;
the others run at once.  A hook whose ``fatal`` attribute is true stops
the run with :class:`~fsmtrain.errors.HookFailed`; any other failure is a
:class:`HookWarning` and is kept in ``HookBus.failures``.
"""

from __future__ import annotations

import math
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from .errors import HookFailed

__all__ = ["EVENTS", "CsvMetrics", "Hook", "HookBus", "HookWarning", "JsonlMetrics", "Notify", "Progress", "step_metrics"]

EVENTS = ("run_start", "run_resume", "step_start", "step_end", "step_failed", "waiting", "input", "restore",
          "run_end")


class HookWarning(UserWarning):
    """A non-fatal hook raised; the run goes on."""


class Hook:
    """Optional base class documenting the hook methods; override the ones you need."""

    fatal: bool = False
    external: bool = False
    """Its effects leave the process: its calls wait until what they report is durable (a barrier)."""

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
    """Dispatches lifecycle events to the hooks that subscribe to them.

    ``durable`` (set by the runner that owns the bus) says whether everything committed so far is
    behind a barrier; until it is, the calls of ``external`` hooks are held (in order).
    """

    def __init__(self, hooks: Iterable[Any] = ()) -> None:
        self.hooks = list(hooks)
        self.failures: list[tuple[str, Any, BaseException]] = []
        self._subs: dict[str, list[Any]] = {}
        self._external: set[int] = set()
        self.held: list[tuple[str, Any, dict[str, Any]]] = []
        self.durable: Callable[[], bool] | None = None
        for h in self.hooks:
            self.add(h, _rebuild=False)

    def add(self, hook: Any, *, _rebuild: bool = True) -> None:
        """Subscribe ``hook`` (an object with ``on_<event>`` methods) to the events it has methods for."""
        if _rebuild:
            self.hooks.append(hook)
        if getattr(hook, "external", False):
            self._external.add(id(hook))
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
        """Whether any hook subscribed to ``event`` (so a caller can skip building its arguments)."""
        return event in self._subs

    def emit(self, event: str, **kwargs: Any) -> None:
        """Deliver ``event`` with these keyword arguments to every subscribed hook, in order."""
        for hook in self._subs.get(event, ()):
            if self._external and id(hook) in self._external \
                    and (self.held or (self.durable is not None and not self.durable())):
                self.held.append((event, hook, kwargs))
                self.release()  # (delivers, in order, if what was held is durable by now)
                continue
            self._call(event, hook, kwargs)

    def release(self) -> None:
        """Deliver the held calls of external hooks if everything committed is durable now."""
        if not self.held or (self.durable is not None and not self.durable()):
            return
        held, self.held = self.held, []
        for i, (event, hook, kwargs) in enumerate(held):
            try:
                self._call(event, hook, kwargs)
            except BaseException:
                self.held = held[i + 1:] + self.held
                raise

    def _call(self, event: str, hook: Any, kwargs: dict[str, Any]) -> None:
        try:
            getattr(hook, "on_" + event)(**kwargs)
        except Exception as e:
            self.failures.append((event, hook, e))
            name = type(hook).__name__
            if getattr(hook, "fatal", False):
                raise HookFailed(f"hook {name}.on_{event} failed: {type(e).__name__}: {e}") from e
            warnings.warn(f"hook {name}.on_{event} failed: {type(e).__name__}: {e}", HookWarning, stacklevel=3)


class Notify(Hook):
    """Tell a person when a run waits at a gate, and when its input arrives.

    Appends one line per event to ``path`` (a file a chat bot, ``tail -f`` or a
    mail filter can follow) and/or calls ``call(message)`` (send it anywhere)::

        Trainer(machine, build, log="runs.db", hooks=[Notify("gates.txt", log="runs.db")])
        fsmtrain worker runs.db --machine mypkg:trainer --once --hook mypkg:notify

    ``log`` (optional) is only used to print ready-to-run commands.
    """

    external = True  # a person reads it: only what a power loss cannot take back

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


def step_metrics(updates: dict[str, Any]) -> dict[str, list[float]]:
    """The numbers a step appended to its state's lists: ``{"val_loss": [0.31]}`` (bools and other items left out)."""
    from .state import Append

    out: dict[str, list[float]] = {}
    for k, v in updates.items():
        if type(v) is Append and v.items and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v.items):
            out[k] = [float(x) for x in v.items]
    return out


class _MetricsFile(Hook):
    """Shared by the metric writers: one record per committed step that appended numbers, never twice.

    A step's hooks are delivered again (``replayed=True``) after a crash between its commit and its
    hooks; the writer skips any step it already wrote for that run (it reads its file's last step
    per run the first time it sees the run).
    """

    external = True  # others read the file: it never shows a step the log could lose

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._last: dict[Any, int] = {}
        self._fh: Any = None  # kept open between records (flushed after each): a record costs one write

    def _file(self) -> Any:
        if self._fh is None or self._fh.closed:
            self._fh = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115 - closed at run end
        return self._fh

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def on_run_end(self, *, run_id: int | None, state: Any, status: str, **future_kwargs: Any) -> None:
        self.close()

    def _seen(self, run_id: Any) -> int:
        if run_id not in self._last:
            self._last[run_id] = self._scan(run_id)
        return self._last[run_id]

    def _scan(self, run_id: Any) -> int:
        raise NotImplementedError

    def _write(self, run_id: Any, step: int, epoch: Any, action: str, metrics: dict[str, list[float]]) -> None:
        raise NotImplementedError

    def on_step_end(self, *, run_id: int | None, step: int, action: str, state: Any, updates: dict[str, Any],
                    **future_kwargs: Any) -> None:
        metrics = step_metrics(updates)
        if not metrics or step <= self._seen(run_id):
            return
        epoch = state.get("epoch") if hasattr(state, "get") else None
        self._write(run_id, step, epoch, action, metrics)
        self._last[run_id] = step


class JsonlMetrics(_MetricsFile):
    """Appends one JSON line per step that appended metrics: ``{"run", "step", "epoch", "action", "time",
    "metrics": {"val_loss": [0.31], ...}}`` (NaN and infinities as Python's json writes them)."""

    def _scan(self, run_id: Any) -> int:
        import json

        last = 0
        if os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        rec = json.loads(line)
                        if rec.get("run") == run_id:
                            last = max(last, rec.get("step", 0))
        return last

    def _write(self, run_id: Any, step: int, epoch: Any, action: str, metrics: dict[str, list[float]]) -> None:
        import json

        rec = {"run": run_id, "step": step, "epoch": epoch, "action": action, "time": time.time(), "metrics": metrics}
        f = self._file()
        f.write(json.dumps(rec, allow_nan=True) + "\n")
        f.flush()


class CsvMetrics(_MetricsFile):
    """Appends one CSV row per metric value: ``run,step,epoch,action,metric,value`` (a header when new)."""

    HEADER = ["run", "step", "epoch", "action", "metric", "value"]

    def _scan(self, run_id: Any) -> int:
        import csv

        last = 0
        if os.path.exists(self.path):
            with open(self.path, newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    if row.get("run") == str(run_id):
                        last = max(last, int(row["step"]))
        return last

    def _write(self, run_id: Any, step: int, epoch: Any, action: str, metrics: dict[str, list[float]]) -> None:
        import csv

        f = self._file()
        w = csv.writer(f)
        if f.tell() == 0:
            w.writerow(self.HEADER)
        for k, values in metrics.items():
            for v in values:
                w.writerow([run_id, step, "" if epoch is None else epoch, action, k, repr(v)])
        f.flush()


_BUDGET = re.compile(r"\b(max_steps|max_epochs|time_budget)\((?:setting\('((?:[^'\\]|\\.)*)'\)|([0-9.eE+]+))")


def budgets_of(machine: Any) -> list[tuple[str, Any]]:
    """The budgets a machine's stop conditions name: ``[("max_steps" | "max_epochs" | "time_budget", n or the
    setting's key)]``, from the conditions of its transitions (by name: a budget inside ``|`` and ``&`` too)."""
    out: list[tuple[str, Any]] = []
    for t in getattr(machine, "transitions", ()):
        for func, key, number in _BUDGET.findall(str(getattr(getattr(t, "condition", None), "name", ""))):
            item = (func, key if key else float(number))
            if item not in out:
                out.append(item)
    return out


class Progress(Hook):
    """Progress of a run against its budget: a one-line bar on a terminal, plain lines elsewhere.

    The budget is the run's stop condition's ``max_steps``, ``max_epochs`` or ``time_budget`` (a number, or a
    setting read from the state) when it names one — the one closest to firing when it names several —, else
    ``state["max_epochs"]``, else none (then no total is shown).  On a terminal (or with ``force=True``):
    ``step 120/200 [############........] 60% eta 0:41  val_loss 0.193 ...``, redrawn at most every ``every``
    seconds and always at the end.  When the stream is not a terminal (a background job writing to a file, a
    CI log): a line when an epoch completes and, within long epochs, for a committed chunk at most every
    ``plain_every`` seconds, each flushed at once (``epoch 3/30  train_loss 0.41  val_loss 0.193  (0:12)``),
    and a line when a run resumes.
    """

    def __init__(self, stream: Any = None, *, force: bool = False, width: int = 20, every: float = 0.1,
                 plain_every: float = 5.0) -> None:
        import sys

        self.plain_every = plain_every
        self._budgets: list[tuple[str, Any]] = []
        self._said = time.monotonic()
        self.every = every  # seconds between redraws at most (the last state is drawn at the end)
        self._drawn = -math.inf  # (monotonic time starts anywhere: at boot on Linux)
        self._pending = ""
        self.stream = stream if stream is not None else sys.stderr
        self.bar = force or bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = True
        self.width = width
        self._t0: float | None = None
        self._e0: int | None = None
        self._s0 = 0
        self._latest: dict[str, float] = {}
        self._line_epoch: int | None = None  # plain mode: the epoch whose line is due
        self._line_state: Any = None

    def on_run_start(self, *, run_id: int | None, state: Any, **future_kwargs: Any) -> None:
        self._budgets = budgets_of(future_kwargs.get("machine"))

    def on_run_resume(self, *, run_id: int | None, state: Any, next_action: str | None, **future_kwargs: Any) -> None:
        self._budgets = budgets_of(future_kwargs.get("machine"))
        if not self.bar and next_action is not None:
            epoch = state.get("epoch") if hasattr(state, "get") else None
            at = f" at epoch {epoch}" if isinstance(epoch, int) else ""
            self._say(f"run {run_id} resumed{at}, next `{next_action}`")

    def on_step_end(self, *, run_id: int | None, state: Any, updates: dict[str, Any], replayed: bool = False,
                    **future_kwargs: Any) -> None:
        if replayed:
            return
        for k, v in step_metrics(updates).items():
            self._latest[k] = v[-1]
        epoch = state.get("epoch") if hasattr(state, "get") else None
        if not isinstance(epoch, int):
            return
        now = time.monotonic()
        if self._t0 is None:
            self._t0, self._e0 = now, epoch
            steps = state.get("steps") if hasattr(state, "get") else None
            self._s0 = steps if isinstance(steps, int) else 0
        if not self.bar:
            if self._line_epoch is not None and epoch != self._line_epoch:
                self._plain(self._line_epoch, self._line_state, now)  # that epoch is complete
                self._line_epoch = None
            elif now - self._said >= self.plain_every:  # a long epoch: its chunks, now and then
                self._plain(epoch, state, now, within=True)
            self._line_epoch, self._line_state = epoch, state
            return
        if now - self._drawn < self.every:
            self._pending = f"{epoch}"  # something new to draw at the end
            return
        self._drawn = now
        self._pending = ""
        self.stream.write("\r" + self._head(epoch, state, now, bar=True) + "  " + self._metrics())
        self.stream.flush()

    def _budget(self, state: Any, epoch: int) -> tuple[str, float, float] | None:
        """(what, done, total) of the budget closest to being spent (see the class)."""
        get = state.get if hasattr(state, "get") else (lambda k, d=None: d)
        found = []
        for func, n in self._budgets:
            total = get(n) if isinstance(n, str) else n
            if not _positive(total):
                continue
            done = {"max_steps": get("steps"), "max_epochs": epoch,
                    "time_budget": getattr(state, "elapsed", None)}[func]
            if _positive(done) or done == 0:
                found.append((func, float(done), float(total)))
        if not found:
            total = get("max_epochs")
            return ("max_epochs", float(epoch), float(total)) if _positive(total) else None
        return max(found, key=lambda b: b[1] / b[2])

    def _head(self, epoch: int, state: Any, now: float, *, bar: bool) -> str:
        spe, steps = (state.get("steps_per_epoch"), state.get("steps")) if hasattr(state, "get") else (None, None)
        within = steps - epoch * spe if isinstance(spe, int) and spe > 0 and isinstance(steps, int) else 0
        mid = 0 < within < (spe or 0)  # training below the epoch: inside the next one
        budget = self._budget(state, epoch)
        line = f"epoch {epoch + 1 if mid else epoch}"
        if budget is not None and budget[0] == "max_epochs":
            line += f"/{budget[2]:.0f}"
        if mid:
            line += f" step {within}/{spe}"
        if budget is not None and budget[0] == "max_steps":
            line += f" · step {budget[1]:.0f}/{budget[2]:.0f}"
        elif budget is not None and budget[0] == "time_budget":
            line += f" · {_clock(budget[1])}/{_clock(budget[2])}"
        if bar and budget is not None:
            what, done_n, total = budget
            done = min(done_n / total, 1.0)
            filled = int(done * self.width)
            line += f" [{'#' * filled}{'.' * (self.width - filled)}] {done * 100:3.0f}%"
            if what == "time_budget":
                left = max(total - done_n, 0.0)
                line += f" eta {_clock(left)}"
            elif self._t0 is not None:
                start = self._e0 if what == "max_epochs" else self._s0
                ran = done_n - (start or 0)
                if ran > 0:
                    line += f" eta {_clock((now - self._t0) / ran * max(total - done_n, 0))}"
        return line

    def _metrics(self) -> str:
        return "  ".join(f"{k} {v:.4g}" for k, v in sorted(self._latest.items()))

    def _plain(self, epoch: int, state: Any, now: float, *, within: bool = False) -> None:
        spent = now - (self._t0 or now)
        self._say(f"{self._head(epoch, state, now, bar=False)}  {self._metrics()}  ({_clock(spent)})")

    def _say(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()
        self._said = time.monotonic()

    def _flush_plain(self) -> None:
        if not self.bar and self._line_epoch is not None:
            self._plain(self._line_epoch, self._line_state, time.monotonic())
            self._line_epoch = None

    def on_run_end(self, *, run_id: int | None, state: Any, status: str, **future_kwargs: Any) -> None:
        if not self.bar:
            self._flush_plain()
            self._say(f"run {run_id} {status}")
            return
        if self._pending:  # the last epochs were not drawn yet
            self._drawn = -math.inf
            self.on_step_end(run_id=run_id, state=state, updates={})
        self.stream.write(f"\n{status}\n")
        self.stream.flush()

    def on_waiting(self, *, run_id: int | None, action: str, needs: list[dict[str, Any]], state: Any,
                   **future_kwargs: Any) -> None:
        if not self.bar:
            self._flush_plain()
            self._say(f"run {run_id} waiting at `{action}`")
            return
        self.stream.write(f"\nwaiting at `{action}`\n")
        self.stream.flush()


def _positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 and x == x and x != float("inf")


def _clock(seconds: float) -> str:
    seconds = max(0.0, seconds)
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"
