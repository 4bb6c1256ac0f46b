"""The shared machinery of the termination conditions: parameters and metric-history folds (no torch).

Its one job is what every condition family in :mod:`fsmtrain.stopping` is built
from: :func:`setting` (a parameter read from the run's state), the checking and
naming of a condition's arguments, and :class:`MetricCondition`, a condition
computed by one pass (a :class:`_Rule` fold) over ``state[metric]``, whose
scanner folds only the values added since the state it last saw.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from .conditions import Condition, Scanner
from .errors import ConditionError, InvalidDefinition
from .state import Seq, State

__all__ = ["MAX_COUNT", "MetricCondition", "Setting", "setting"]


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
