"""Improvement-based termination conditions over one metric's history (no torch).

Its one job is the conditions that fire when a metric stops getting better:
:func:`early_stopping` (PyTorch Lightning's and Keras' rules), :func:`plateau`
(``ReduceLROnPlateau``'s rule) and :func:`slope` (the fitted rate of
improvement over a window).  Import them from :mod:`fsmtrain.stopping`.
"""

from __future__ import annotations

import math
from typing import Any

from .conditions import Condition
from .errors import ConditionError
from .state import State
from .stopping_base import MetricCondition, Setting, _common, _fmt, _isfinite, _name, _Params, _Rule

__all__ = ["early_stopping", "plateau", "slope"]



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
    __slots__ = ("best", "best_i", "bad", "cool", "cooldown", "delta", "last_fired", "lo", "patience", "relative")

    def __init__(self, patience: int, delta: float, mode: str, cooldown: int, relative: bool = False) -> None:
        super().__init__()
        self.patience, self.delta, self.cooldown = patience, delta, cooldown
        self.relative = relative
        self.lo = mode == "min"
        self.best = math.inf if self.lo else -math.inf
        self.best_i = 0
        self.bad = 0
        self.cool = 0
        self.last_fired = False

    def push(self, v: Any) -> None:
        self.n += 1
        if self.relative:  # torch's own formula (negative values included)
            better = v < self.best * (1 - self.delta) if self.lo else v > self.best * (1 + self.delta)
        else:
            better = v < self.best - self.delta if self.lo else v > self.best + self.delta
        if better:
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
            cooldown: int = 0, threshold: float | None = None, threshold_mode: str = "abs") -> Condition:
    """Fires at an evaluation ending more than ``patience`` evaluations without improvement.

    The rule of ``torch.optim.lr_scheduler.ReduceLROnPlateau``, exactly: a value improves on the best when it is
    better by more than ``threshold``, absolute (``threshold_mode="abs"``: ``best - threshold`` for ``min``) or
    relative (``"rel"``: ``best * (1 - threshold)`` for ``min``, ``best * (1 + threshold)`` for ``max``, torch's
    formula, negative values included); after firing, the count restarts, and the next ``cooldown`` evaluations
    are ignored.  ``min_delta`` is the absolute threshold's older name.  torch's defaults are
    ``plateau(metric, patience=10, threshold=1e-4, threshold_mode="rel")``; this function's are an absolute
    threshold of 0.  Use it to decide an LR change (a transition to an action that lowers the LR) as well as to
    stop.
    """
    p = _Params("plateau")
    _common(p, metric, mode)
    p.number("patience", patience, minimum=0, integer=True)
    p.number("min_delta", min_delta, minimum=0, settable=False)
    if threshold is not None:
        p.number("threshold", threshold, minimum=0, settable=False)
        if min_delta:
            p.problems.append("give threshold= or min_delta= (its older name), not both")
    if threshold_mode not in ("abs", "rel"):
        p.problems.append(f"threshold_mode must be 'abs' or 'rel', got {threshold_mode!r}")
    p.number("cooldown", cooldown, minimum=0, integer=True, settable=False)
    p.done()
    delta = float(min_delta if threshold is None else threshold)
    extra = {k: v for k, v, d in (("threshold" if threshold is not None else "min_delta", delta, 0),
                                  ("threshold_mode", threshold_mode, "abs"), ("mode", mode, "min"),
                                  ("cooldown", cooldown, 0)) if v != d}
    name = _name("plateau", metric, patience=patience, **extra)
    relative = threshold_mode == "rel"
    return MetricCondition(name, metric, (patience,),
                           lambda patience: _Plateau(patience, delta, mode, cooldown, relative), mode=mode)


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

