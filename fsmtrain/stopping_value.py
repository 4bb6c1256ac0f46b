"""Value-based termination conditions: the latest value of one metric (no torch).

Its one job is the conditions that look only at the newest value (and the best
so far): :func:`target` (a goal reached), :func:`non_finite` (NaN or infinite)
and :func:`diverged` (worse than a threshold or a multiple of the best).
Import them from :mod:`fsmtrain.stopping`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .conditions import Condition
from .stopping_base import MetricCondition, _common, _fmt, _isfinite, _name, _Params, _Rule

__all__ = ["diverged", "non_finite", "target"]


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

