"""Termination conditions over a run's metric history (no torch).

Each is a :class:`~fsmtrain.Condition`: a pure function of the state's metric
lists (``state["val_loss"]`` holds one value per evaluation) that says whether
it fired and why, so it can guard a transition, be swapped per run, and be
evaluated offline against a recorded history (``fsmtrain whatif``).  Nothing is
kept between evaluations: a resumed run sees the same counters as an
uninterrupted one because the counters are recomputed from the history.  A
numeric parameter may be a literal or :func:`setting`, read from the run's
state, so that one machine serves runs with different budgets.

>>> from fsmtrain import State
>>> stop = early_stopping("val_loss", patience=2) | max_epochs(10)
>>> stop.name
'early_stopping(val_loss, patience=2) | max_epochs(10)'
>>> stop.evaluate(State(epoch=4, val_loss=[1.0, 0.5, 0.6, 0.55]))
(True, 'early_stopping(val_loss, patience=2): no improvement for 2 evaluations (best 0.5 at evaluation 2, last 0.55)')

The exact rules are in ``spec/stopping.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from .conditions import Condition, Scanner, all_of, any_of
from .errors import ConditionError, InvalidDefinition
from .state import Seq, State

__all__ = [
    "CONDITIONS",
    "all_of",
    "any_of",
    "diverged",
    "early_stopping",
    "max_epochs",
    "max_steps",
    "min_epochs",
    "non_finite",
    "plateau",
    "register",
    "setting",
    "slope",
    "target",
    "time_budget",
]


@attrs.frozen
class Setting:
    """A condition parameter read from the run's state at ``key``."""

    key: str

    def __str__(self) -> str:
        return f"setting({self.key!r})"


def setting(key: str) -> Setting:
    """Use the run's own ``state[key]`` as a condition parameter: ``max_epochs(setting("max_epochs"))``."""
    if not isinstance(key, str) or not key:
        raise InvalidDefinition("setting", [f"key must be a non-empty str, got {key!r}"])
    return Setting(key)


# -- checking parameters ------------------------------------------------------------------
MAX_COUNT = 10**9
"""The largest count (epochs, evaluations, patience, window) a condition takes."""


class _Params:
    """Collects every problem with a condition's arguments, then raises them together."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.problems: list[str] = []

    def metric(self, value: Any) -> None:
        if not isinstance(value, str) or not value:
            self.problems.append(f"metric must be the name of a state key (str), got {value!r}")

    def number(self, name: str, value: Any, *, minimum: float | None = None, integer: bool = False,
               optional: bool = False, settable: bool = True) -> None:
        if value is None and optional:
            return
        if isinstance(value, Setting) and settable:
            return
        kind = "an int" if integer else "a number"
        ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float))
        if ok and not math.isfinite(value):
            ok = False
        if ok and minimum is not None and value < minimum:
            ok = False
        if ok and integer and value > MAX_COUNT:
            self.problems.append(f"{name} must be at most {MAX_COUNT:,} (more evaluations than any run holds), "
                                 f"got {value:.3g}")
            return
        if not ok:
            bound = "" if minimum is None else f" >= {minimum:g}"
            alt = " or setting('key')" if settable else ""
            none = " or None" if optional else ""
            self.problems.append(f"{name} must be {kind}{bound}{alt}{none}, got {value!r}")

    def mode(self, value: Any) -> None:
        if value not in ("min", "max"):
            self.problems.append(f"mode must be 'min' or 'max', got {value!r}")

    def flag(self, name: str, value: Any) -> None:
        if not isinstance(value, bool):
            self.problems.append(f"{name} must be True or False, got {value!r}")

    def done(self) -> None:
        if self.problems:
            raise InvalidDefinition(self.what, self.problems)


def _keys(*params: Any) -> list[str]:
    return [p.key for p in params if isinstance(p, Setting)]


def _resolve(state: State, p: Any, name: str, what: str) -> Any:
    if not isinstance(p, Setting):
        return p
    v = state[p.key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConditionError(f"condition `{what}`: {name}={p} is {v!r} in this run's state, not a number")
    return v


def _name(func: str, *args: Any, **kwargs: Any) -> str:
    """``func(a, k=v)`` with the non-default keyword arguments, as the expression language reads it."""
    parts = [_literal(a, bare=True) for a in args]
    parts += [f"{k}={_literal(v)}" for k, v in kwargs.items()]
    return f"{func}({', '.join(parts)})"


def _literal(v: Any, *, bare: bool = False) -> str:
    if isinstance(v, str):
        return v if bare and v.isidentifier() else repr(v)
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e16:
        return repr(v)
    return str(v)


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _better(mode: str) -> Callable[[float, float], bool]:
    return (lambda a, b: a < b) if mode == "min" else (lambda a, b: a > b)


def _isfinite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# -- counters -------------------------------------------------------------------------------
class _Quick(Condition):
    """A condition with a cheap ``fired`` test; its reason is only formatted when asked for."""

    __slots__ = ("quick",)

    def __init__(self, fn: Callable[[State], tuple[bool, str]], quick: Callable[[State], bool], *, keys: Any,
                 name: str) -> None:
        self.quick = quick
        super().__init__(fn, keys=keys, name=name)

    def scanner(self) -> Scanner:
        return _QuickScanner(self)


class _QuickScanner(Scanner):
    __slots__ = ("_state",)

    def fires(self, state: State) -> bool:
        self._state = state
        try:
            return self.condition.quick(state)  # type: ignore[attr-defined, no-any-return]
        except Exception:
            return self.condition.evaluate(state)[0]  # raises the usual ConditionError

    def reason(self) -> str:
        return self.condition.evaluate(self._state)[1]


def _counter_condition(func: str, n: Any, counter: str, *, default_counter: str, fires: Callable[[Any, Any], bool],
                       say: Callable[[Any, Any], str]) -> Condition:
    p = _Params(func)
    p.number("n", n, minimum=1, integer=True)
    if not isinstance(counter, str) or not counter:
        p.problems.append(f"counter must be the name of a state key (str), got {counter!r}")
    p.done()
    name = _name(func, n) if counter == default_counter else _name(func, n, counter=counter)

    def fn(state: State) -> tuple[bool, str]:
        limit = _resolve(state, n, "n", name)
        done = state[counter]
        return fires(done, limit), f"{name}: {say(done, limit)}"

    def quick(state: State) -> bool:
        return fires(state[counter], _resolve(state, n, "n", name))

    return _Quick(fn, quick, keys=[counter, *_keys(n)], name=name)


def max_epochs(n: int | Setting, *, counter: str = "epoch") -> Condition:
    """Fires once ``state[counter]`` (epochs completed) reaches ``n``."""
    return _counter_condition("max_epochs", n, counter, default_counter="epoch", fires=lambda d, k: d >= k,
                              say=lambda d, k: f"{counter} {d} reached {k}" if d >= k else f"{counter} {d} of {k}")


def min_epochs(n: int | Setting, *, counter: str = "epoch") -> Condition:
    """Fires once at least ``n`` epochs are done; as a guard, ``min_epochs(5) & early_stopping(...)``."""
    return _counter_condition("min_epochs", n, counter, default_counter="epoch", fires=lambda d, k: d >= k,
                              say=lambda d, k: f"{counter} {d} >= {k}" if d >= k else f"only {d} of {k} {counter}s done")


def max_steps(n: int | Setting, *, counter: str = "steps") -> Condition:
    """Fires once ``state[counter]`` (optimizer steps; ``train_epoch`` counts them) reaches ``n``.

    Conditions are evaluated between actions, so a run stops at the end of the
    epoch in which it reached ``n`` steps.
    """
    return _counter_condition("max_steps", n, counter, default_counter="steps", fires=lambda d, k: d >= k,
                              say=lambda d, k: f"{counter} {d} reached {k}" if d >= k else f"{counter} {d} of {k}")


def time_budget(seconds: float | Setting) -> Condition:
    """Fires once the run's active time reaches ``seconds``.

    Active time is measured from the log's timestamps (the durations of the
    run's steps, not the gaps while it was dead or waiting for input), so the
    budget survives restarts: see ``spec/stopping.md``.
    """
    p = _Params("time_budget")
    p.number("seconds", seconds, minimum=0)
    p.done()
    name = _name("time_budget", seconds)

    def fn(state: State) -> tuple[bool, str]:
        used = state.elapsed
        if used is None:
            raise ConditionError(f"condition `{name}` needs the run's active time, which this state does not carry; "
                                 "evaluate it in a Runner or with whatif, or use state.with_elapsed(seconds)")
        limit = _resolve(state, seconds, "seconds", name)
        fired = used >= limit
        return fired, f"{name}: {used:.1f} s of active time {'>=' if fired else '<'} {_fmt(limit)} s"

    def quick(state: State) -> bool:
        used = state.elapsed
        return fn(state)[0] if used is None else used >= _resolve(state, seconds, "seconds", name)

    return _Quick(fn, quick, keys=_keys(seconds), name=name)


# -- rules over one metric's history ----------------------------------------------------------
class _Rule:
    """The fold behind a metric condition: ``push`` each value in turn, then ask ``fired``/``reason``."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0  # values pushed

    def push(self, v: Any) -> None:
        raise NotImplementedError

    def fired(self) -> bool:
        raise NotImplementedError

    def reason(self) -> str:
        raise NotImplementedError


class MetricCondition(Condition):
    """A condition computed by one pass over ``state[metric]`` (one value per evaluation).

    ``evaluate`` folds the whole history; its :meth:`scanner` folds only the
    values added since the last state it saw when the new history extends the
    old one, which makes evaluating every epoch of a run linear, not quadratic.
    """

    __slots__ = ("make", "metric", "mode", "params", "settable")

    def __init__(self, name: str, metric: str, params: tuple[Any, ...], make: Callable[..., _Rule], *,
                 mode: str = "min") -> None:
        self.metric = metric
        self.mode = mode
        self.params = params
        self.make = make
        self.settable = any(isinstance(p, Setting) for p in params)
        super().__init__(self._fresh, keys=[metric, *_keys(*params)], name=name)

    def _values(self, state: State) -> Sequence[Any]:
        values = state[self.metric]
        if not isinstance(values, Sequence) or isinstance(values, str):
            raise ConditionError(f"condition `{self.name}`: state[{self.metric!r}] is {type(values).__name__}, "
                                 "not a list of values (one per evaluation)")
        return values

    def _resolved(self, state: State) -> tuple[Any, ...]:
        return tuple(_resolve(state, p, "parameter", self.name) for p in self.params)

    def _fresh(self, state: State) -> tuple[bool, str]:
        rule = self.make(*self._resolved(state))
        push = rule.push
        for v in self._values(state):
            push(v)
        return rule.fired(), f"{self.name}: {rule.reason()}"

    def scanner(self) -> Scanner:
        return _MetricScanner(self)


class _MetricScanner(Scanner):
    __slots__ = ("_items", "_params", "_rule")

    def __init__(self, condition: MetricCondition) -> None:
        super().__init__(condition)
        self._rule: _Rule | None = None
        self._items: Any = None
        self._params: tuple[Any, ...] = ()

    def fires(self, state: State) -> bool:
        c: MetricCondition = self.condition  # type: ignore[assignment]
        values = state._data.get(c.metric) if state._allowed is None else None
        if type(values) is Seq:
            # A Seq's first n items never change once written, so a Seq on the same
            # storage that is at least as long extends what was pushed.
            items: Any = values._items
            n = values._n
        else:
            items = values = c._values(state)  # (raises the usual errors)
            n = len(values)
        rule = self._rule
        params = c._resolved(state) if c.settable else c.params
        if rule is None or items is not self._items or n < rule.n or params != self._params:
            rule = self._rule = c.make(*params)
            self._items, self._params = items, params
        k = rule.n
        if n - k == 1:
            rule.push(items[k])
        elif n > k:
            push = rule.push
            for i in range(k, n):
                push(items[i])
        return rule.fired()

    def reason(self) -> str:
        assert self._rule is not None, "reason() before fires()"
        return f"{self.condition.name}: {self._rule.reason()}"


def _common(p: _Params, metric: Any, mode: Any) -> None:
    p.metric(metric)
    p.mode(mode)


class _EarlyStopping(_Rule):
    __slots__ = ("base", "best", "best_i", "code", "delta", "div", "finite", "last", "mode", "patience", "start",
                 "stop", "wait")

    def __init__(self, patience: int, delta: float, mode: str, baseline: float | None, start: int, finite: bool,
                 stop: float | None, div: float | None) -> None:
        super().__init__()
        self.patience, self.delta, self.mode, self.base, self.start = patience, delta, mode, baseline, start
        self.finite, self.stop, self.div = finite, stop, div
        self.best = math.inf if mode == "min" else -math.inf
        self.best_i = 0
        self.wait = 0
        self.code = "none"
        self.last: Any = None

    def push(self, v: Any) -> None:
        self.n += 1
        self.last = v
        if self.n <= self.start:
            self.code = "warmup"
            return
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise ConditionError(f"evaluation {self.n} is {v!r}, not a number")
        lo = self.mode == "min"
        d = self.delta
        if self.finite and not math.isfinite(v):
            self.code = "nonfinite"
        elif self.stop is not None and (v < self.stop if lo else v > self.stop):
            self.code = "threshold"
        elif self.div is not None and (v > self.div if lo else v < self.div):
            self.code = "divergence"
        elif (v + d < self.best) if lo else (v - d > self.best):
            self.best, self.best_i = v, self.n
            b = self.base
            self.wait = 0 if b is None or ((v + d < b) if lo else (v - d > b)) else self.wait + 1
            self.code = "improved"
        else:
            self.wait += 1
            self.code = "stop" if self.wait >= self.patience else "wait"

    def fired(self) -> bool:
        return self.code in ("nonfinite", "threshold", "divergence", "stop")

    def _best(self) -> str:
        return "no best yet" if self.best_i == 0 else f"best {_fmt(self.best)} at evaluation {self.best_i}"

    def reason(self) -> str:
        code, v, n = self.code, self.last, self.n
        lt = "<" if self.mode == "min" else ">"
        gt = ">" if self.mode == "min" else "<"
        if code == "none":
            return "no evaluations yet"
        if code == "warmup":
            return f"evaluation {n} is within start_from_epoch={self.start}, not counted"
        if code == "nonfinite":
            return f"value {v} at evaluation {n} is not finite ({self._best()})"
        if code == "threshold":
            return f"value {_fmt(v)} at evaluation {n} {lt} stopping_threshold {_fmt(self.stop)}"
        if code == "divergence":
            return f"value {_fmt(v)} at evaluation {n} {gt} divergence_threshold {_fmt(self.div)}"
        base = ""
        if self.base is not None and self.wait:
            base = f", baseline {_fmt(self.base)} not beaten"
        if code == "improved":
            return f"improved to {_fmt(v)} at evaluation {n}" + (f" ({self.wait} of {self.patience}{base})" if base else "")
        word = "evaluation" if self.wait == 1 else "evaluations"
        if code == "stop":
            return f"no improvement for {self.wait} {word} ({self._best()}, last {_fmt(v)}{base})"
        return f"{self.wait} of {self.patience} evaluations without improvement ({self._best()}{base})"


def early_stopping(metric: str, patience: int | Setting, *, min_delta: float = 0.0, mode: str = "min",
                   baseline: float | None = None, start_from_epoch: int = 0, check_finite: bool = True,
                   stopping_threshold: float | None = None, divergence_threshold: float | None = None) -> Condition:
    """Fires when ``metric`` has not improved by more than ``min_delta`` for ``patience`` evaluations.

    Each evaluation is checked in this order (as PyTorch Lightning's
    ``EarlyStopping``): a non-finite value fires (``check_finite``); a value
    beyond ``stopping_threshold`` fires; a value beyond ``divergence_threshold``
    fires; a value better than the best by more than ``min_delta`` becomes the
    best and resets the count; otherwise the count grows and fires at
    ``patience``.  As in Keras' ``EarlyStopping``, the first
    ``start_from_epoch`` evaluations are ignored, and with a ``baseline`` an
    improvement resets the count only if it also beats the baseline.  Patience
    counts evaluations recorded, not epochs.
    """
    p = _Params("early_stopping")
    _common(p, metric, mode)
    p.number("patience", patience, minimum=1, integer=True)
    p.number("min_delta", min_delta, minimum=0, settable=False)
    p.number("baseline", baseline, optional=True, settable=False)
    p.number("start_from_epoch", start_from_epoch, minimum=0, integer=True, settable=False)
    p.flag("check_finite", check_finite)
    p.number("stopping_threshold", stopping_threshold, optional=True, settable=False)
    p.number("divergence_threshold", divergence_threshold, optional=True, settable=False)
    if patience == 0 and p.problems and p.problems[-1].startswith("patience"):
        p.problems[-1] += " (patience=1 stops at the first evaluation without improvement, as Keras' patience=0 does)"
    p.done()
    given = {"min_delta": min_delta, "mode": mode, "baseline": baseline, "start_from_epoch": start_from_epoch,
             "check_finite": check_finite, "stopping_threshold": stopping_threshold,
             "divergence_threshold": divergence_threshold}
    defaults = {"min_delta": 0.0, "mode": "min", "baseline": None, "start_from_epoch": 0, "check_finite": True,
                "stopping_threshold": None, "divergence_threshold": None}
    name = _name("early_stopping", metric, patience=patience,
                 **{k: v for k, v in given.items() if v != defaults[k]})

    def make(patience: int) -> _Rule:
        return _EarlyStopping(patience, float(min_delta), mode, baseline, start_from_epoch, check_finite,
                              stopping_threshold, divergence_threshold)

    return MetricCondition(name, metric, (patience,), make, mode=mode)


class _Plateau(_Rule):
    __slots__ = ("best", "best_i", "bad", "cool", "cooldown", "delta", "last_fired", "lo", "patience")

    def __init__(self, patience: int, delta: float, mode: str, cooldown: int) -> None:
        super().__init__()
        self.patience, self.delta, self.cooldown = patience, delta, cooldown
        self.lo = mode == "min"
        self.best = math.inf if self.lo else -math.inf
        self.best_i = 0
        self.bad = 0
        self.cool = 0
        self.last_fired = False

    def push(self, v: Any) -> None:
        self.n += 1
        if (v < self.best - self.delta) if self.lo else (v > self.best + self.delta):
            self.best, self.best_i, self.bad = v, self.n, 0
        else:
            self.bad += 1
        if self.cool > 0:
            self.cool -= 1
            self.bad = 0
        self.last_fired = self.bad > self.patience
        if self.last_fired:
            self.cool, self.bad = self.cooldown, 0

    def fired(self) -> bool:
        return self.last_fired

    def reason(self) -> str:
        best = "no best yet" if self.best_i == 0 else f"best {_fmt(self.best)} at evaluation {self.best_i}"
        if self.last_fired:
            word = "evaluation" if self.patience == 1 else "evaluations"
            return f"more than {self.patience} {word} without improvement at evaluation {self.n} ({best})"
        if self.cool:
            return f"cooling down, {self.cool} evaluation(s) left ({best})"
        return f"{self.bad} evaluation(s) without improvement, fires after more than {self.patience} ({best})"


def plateau(metric: str, patience: int | Setting = 10, *, min_delta: float = 0.0, mode: str = "min",
            cooldown: int = 0) -> Condition:
    """Fires at an evaluation ending more than ``patience`` evaluations without improvement.

    The rule of ``torch.optim.lr_scheduler.ReduceLROnPlateau`` (absolute
    threshold ``min_delta``): after firing, the count restarts, and the next
    ``cooldown`` evaluations are ignored.  Use it to decide an LR change (a
    transition to an action that lowers the LR) as well as to stop.
    """
    p = _Params("plateau")
    _common(p, metric, mode)
    p.number("patience", patience, minimum=0, integer=True)
    p.number("min_delta", min_delta, minimum=0, settable=False)
    p.number("cooldown", cooldown, minimum=0, integer=True, settable=False)
    p.done()
    extra = {k: v for k, v, d in (("min_delta", min_delta, 0), ("mode", mode, "min"), ("cooldown", cooldown, 0))
             if v != d}
    name = _name("plateau", metric, patience=patience, **extra)
    return MetricCondition(name, metric, (patience,),
                           lambda patience: _Plateau(patience, float(min_delta), mode, cooldown), mode=mode)


class _Last(_Rule):
    """Rules that look only at the latest value (and the best so far, for divergence)."""

    __slots__ = ("best", "check", "hit", "last", "lo", "say")

    def __init__(self, mode: str, check: Callable[[Any, float], bool], say: Callable[[Any, float, int], str]) -> None:
        super().__init__()
        self.lo = mode == "min"
        self.best = math.inf if self.lo else -math.inf
        self.last: Any = None
        self.hit = False
        self.check, self.say = check, say

    def push(self, v: Any) -> None:
        self.n += 1
        self.last = v
        if ((v < self.best) if self.lo else (v > self.best)) and math.isfinite(v):  # NaN compares False
            self.best = v
        self.hit = self.check(v, self.best)

    def fired(self) -> bool:
        return self.hit

    def reason(self) -> str:
        return "no evaluations yet" if self.n == 0 else self.say(self.last, self.best, self.n)


def target(metric: str, value: float, *, mode: str = "min") -> Condition:
    """Fires when the latest ``metric`` value reaches ``value`` (``<=`` for mode min, ``>=`` for max)."""
    p = _Params("target")
    _common(p, metric, mode)
    p.number("value", value, settable=False)
    p.done()
    lo = mode == "min"
    name = _name("target", metric, value=value, **({"mode": mode} if not lo else {}))

    def check(v: Any, best: float) -> bool:
        return _isfinite(v) and (v <= value if lo else v >= value)

    def say(v: Any, best: float, n: int) -> str:
        hit = check(v, best)
        op = ("<=" if lo else ">=") if hit else (">" if lo else "<")
        return f"value {_fmt(v)} at evaluation {n} {op} target {_fmt(value)}"

    return MetricCondition(name, metric, (), lambda: _Last(mode, check, say), mode=mode)


def non_finite(metric: str) -> Condition:
    """Fires when the latest ``metric`` value is NaN or infinite."""
    p = _Params("non_finite")
    p.metric(metric)
    p.done()

    def say(v: Any, best: float, n: int) -> str:
        return f"value {v} at evaluation {n} is {'finite' if _isfinite(v) else 'not finite'}"

    return MetricCondition(_name("non_finite", metric), metric, (),
                           lambda: _Last("min", lambda v, b: not _isfinite(v), say))


def diverged(metric: str, *, factor: float | None = None, threshold: float | None = None, mode: str = "min") -> Condition:
    """Fires when the latest value is non-finite, worse than ``threshold``, or worse than ``factor`` × the best.

    For mode min (a loss): ``value > threshold`` or ``value > factor * best``;
    for mode max: ``value < threshold`` or ``value < best / factor``.  The factor
    rule needs a positive best (losses and accuracies are).
    """
    p = _Params("diverged")
    _common(p, metric, mode)
    p.number("factor", factor, minimum=1, optional=True, settable=False)
    p.number("threshold", threshold, optional=True, settable=False)
    if factor is None and threshold is None:
        p.problems.append("give factor=..., threshold=... or both")
    p.done()
    lo = mode == "min"
    extra: dict[str, Any] = {k: v for k, v in (("factor", factor), ("threshold", threshold)) if v is not None}
    name = _name("diverged", metric, **extra, **({"mode": mode} if not lo else {}))

    def fires(v: Any, best: float) -> bool:  # the fast test; why() says the same, in words
        try:
            if not math.isfinite(v):
                return True
        except TypeError:
            return True
        if threshold is not None and (v > threshold if lo else v < threshold):
            return True
        return factor is not None and best > 0 and best != math.inf and (v > factor * best if lo else v < best / factor)

    def why(v: Any, best: float) -> str | None:
        if not _isfinite(v):
            return "is not finite"
        if threshold is not None and (v > threshold if lo else v < threshold):
            return f"{'>' if lo else '<'} threshold {_fmt(threshold)}"
        if factor is not None and _isfinite(best) and best > 0 and (v > factor * best if lo else v < best / factor):
            return f"> {_fmt(factor)} x best {_fmt(best)}" if lo else f"< best {_fmt(best)} / {_fmt(factor)}"
        return None

    def say(v: Any, best: float, n: int) -> str:
        w = why(v, best)
        return f"value {_fmt(v)} at evaluation {n} " + (w if w else f"is within bounds (best {_fmt(best)})")

    return MetricCondition(name, metric, (), lambda: _Last(mode, fires, say), mode=mode)


def slope(metric: str, window: int, *, below: float, mode: str = "min") -> Condition:
    """Fires when the improvement per evaluation, fitted over the last ``window`` values, is below ``below``.

    The least-squares slope of the last ``window`` values, signed so that
    improving is positive (a falling loss in mode min).  Fires only once
    ``window`` values exist; a non-finite value in the window fires too (no
    progress can be measured).
    """
    p = _Params("slope")
    _common(p, metric, mode)
    p.number("window", window, minimum=2, integer=True, settable=False)
    p.number("below", below, settable=False)
    p.done()
    name = _name("slope", metric, window=window, below=below, **({"mode": mode} if mode != "min" else {}))
    xbar = (window - 1) / 2
    sxx = window * (window * window - 1) / 12  # sum((i - xbar) ** 2 for i in range(window)), in closed form

    def fn(state: State) -> tuple[bool, str]:
        values = state[metric]
        if len(values) < window:
            return False, f"{name}: {len(values)} of {window} evaluations so far"
        ys = values[len(values) - window:]
        if not all(_isfinite(y) for y in ys):
            return True, f"{name}: a value in the last {window} evaluations is not finite"
        ybar = sum(ys) / window
        rate = sum((i - xbar) * (y - ybar) for i, y in enumerate(ys)) / sxx
        gain = -rate if mode == "min" else rate
        fired = gain < below
        return fired, f"{name}: improving {_fmt(gain)} per evaluation over the last {window} " \
                      f"({'<' if fired else '>='} {_fmt(below)})"

    return Condition(fn, keys=[metric], name=name)


# -- the registry the expression language reads ---------------------------------------------
CONDITIONS: dict[str, Callable[..., Condition]] = {
    f.__name__: f for f in (max_epochs, min_epochs, max_steps, time_budget, early_stopping, plateau, target,
                            non_finite, diverged, slope)
}
"""Condition factories by name, as ``fsmtrain whatif --condition`` and :func:`fsmtrain.expr.parse` know them."""


def register(factory: Callable[..., Condition] | None = None, *, name: str | None = None) -> Any:
    """Make a condition factory known to the expression language (``@register`` or ``register(f, name=...)``).

    The factory is called with the literal arguments of the expression and must
    return a :class:`~fsmtrain.Condition`.
    """

    def add(f: Callable[..., Condition]) -> Callable[..., Condition]:
        key = name or str(getattr(f, "__name__", ""))
        if not callable(f):
            raise TypeError(f"register needs a callable returning a Condition, got {f!r}")
        if not key.isidentifier():
            raise ValueError(f"condition name {key!r} must be an identifier")
        if key in CONDITIONS and CONDITIONS[key] is not f:
            raise ValueError(f"a condition named {key!r} is already registered ({CONDITIONS[key]!r})")
        CONDITIONS[key] = f
        return f

    return add(factory) if factory is not None else add
