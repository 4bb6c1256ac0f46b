"""Schedulers: which trials to stop early, from per-epoch results.

A scheduler names the epochs at which a trial pauses for a decision
(``milestones``) and decides there from the values every trial recorded at that
epoch.  They keep nothing between decisions: the study's state (its trials'
per-epoch results) is all they read, so a resumed study decides as before.

>>> asha = ASHA(grace_period=1, reduction_factor=3, max_t=27)
>>> asha.milestones()
[1, 3, 9]
>>> asha.keeps(0.5, [0.4, 0.9, 0.7], mode="min")   # 2nd of 4: ceil(4 / 3) = 2 go on
True
>>> asha.keeps(0.8, [0.4, 0.5, 0.7], mode="min")
False
>>> ASHA(keep="floor").keeps(0.5, [0.4, 0.9, 0.7], mode="min")   # the paper's count: max(floor(4 / 3), 1) = 1
False
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any, Protocol

from ..errors import InvalidDefinition

__all__ = ["ASHA", "MedianStopping", "NoScheduler", "Scheduler", "make_scheduler"]


class Scheduler(Protocol):
    name: str
    max_t: int | None

    def milestones(self) -> list[int]:
        """Epochs (ascending, below the last) at which a trial pauses for :meth:`keeps`."""
        ...

    def keeps(self, value: float, others: Sequence[float], *, mode: str) -> bool:
        """Whether a trial with ``value`` at a milestone goes on, given the values ``others`` recorded there."""
        ...


def _worse(v: Any) -> bool:
    return not isinstance(v, (int, float)) or not math.isfinite(v)


class NoScheduler:
    """Every trial runs to its end."""

    name = "none"

    def __init__(self, max_t: int | None = None) -> None:
        self.max_t = max_t

    def milestones(self) -> list[int]:
        """None: without a scheduler no trial pauses."""
        return []

    def keeps(self, value: float, others: Sequence[float], *, mode: str) -> bool:
        """Always: without a scheduler no trial is stopped early."""
        return True


COMPARE = ("milestone", "best")


def value_at(values: Sequence[float], at: int, mode: str, compare: str = "milestone") -> float:
    """What a scheduler compares for a trial at epoch ``at``: its value there (``milestone``), or its best
    finite value up to there (``best``); NaN when it has none."""
    if len(values) < at:
        return math.nan
    if compare == "milestone":
        return float(values[at - 1])
    finite = [float(v) for v in values[:at] if not _worse(v)]
    if not finite:
        return math.nan
    return min(finite) if mode == "min" else max(finite)


def _compare(what: str, compare: Any, problems: list[str]) -> None:
    if compare not in COMPARE:
        problems.append(f"compare must be one of {', '.join(COMPARE)}, got {compare!r}")


class ASHA:
    """Asynchronous successive halving: at epochs ``grace_period * reduction_factor**k`` (below ``max_t``),
    a trial goes on only if it is in the top ``1 / reduction_factor`` of the trials that reached that epoch
    so far (itself included): fewer than ``ceil(n / reduction_factor)`` of the ``n`` values are strictly better
    (``keep="ceil"``, the default, which rounds in a trial's favour), or, with ``keep="floor"``, fewer than
    ``max(floor(n / reduction_factor), 1)`` — the count of the ASHA paper (Li et al., 2020) and of Optuna's
    ``SuccessiveHalvingPruner``: the two differ when ``n`` is not a multiple of the factor (4 trials at a rung
    with factor 3: ceil keeps 2, floor keeps 1).  No rung lies at or beyond ``max_t``: a trial that reaches
    the last rung below it runs to ``max_t`` (the rung's end) unless its stop condition ends it first.
    A non-finite value is worst.  Trials are not held back waiting for others (asynchronous), so which
    trials are pruned depends on the order in which they reach a rung: a study killed and resumed may
    prune differently from an uninterrupted one.

    ``compare`` says what is compared at a rung: ``"milestone"`` (the default, as in the ASHA paper and
    Ray Tune) the value at that epoch; ``"best"`` each trial's best value so far, which a noisy
    validation metric makes the fairer choice (one bad epoch at the rung does not prune a good trial).
    """

    name = "asha"

    def __init__(self, *, grace_period: int = 1, reduction_factor: int = 3, max_t: int = 27,
                 compare: str = "milestone", keep: str = "ceil") -> None:
        problems: list[str] = []
        if keep not in ("ceil", "floor"):
            problems.append(f"keep must be 'ceil' or 'floor', got {keep!r}")
        for n, v, lo in (("grace_period", grace_period, 1), ("reduction_factor", reduction_factor, 2), ("max_t", max_t, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                problems.append(f"{n} must be an int >= {lo}, got {v!r}")
        if not problems and grace_period > max_t:
            problems.append(f"grace_period ({grace_period}) must not exceed max_t ({max_t})")
        _compare("ASHA", compare, problems)
        if problems:
            raise InvalidDefinition("ASHA", problems)
        self.grace_period, self.reduction_factor, self.max_t = grace_period, reduction_factor, max_t
        self.compare, self.keep = compare, keep

    def value_at(self, values: Sequence[float], at: int, mode: str) -> float:
        """The value compared at rung ``at``: the one at that epoch, or the best so far (``compare``)."""
        return value_at(values, at, mode, self.compare)

    def milestones(self) -> list[int]:
        """The epochs (ascending, below ``max_t``) at which a trial pauses for :meth:`keeps`."""
        out, t = [], self.grace_period
        while t < self.max_t:
            out.append(t)
            t *= self.reduction_factor
        return out

    def keeps(self, value: float, others: Sequence[float], *, mode: str) -> bool:
        """Whether a trial with ``value`` at a rung goes on, given the ``others`` that reached it (see the class)."""
        if _worse(value):
            return False
        n = len(others) + 1
        better = sum(1 for o in others if not _worse(o) and (o < value if mode == "min" else o > value))
        top = math.ceil(n / self.reduction_factor) if self.keep == "ceil" else max(n // self.reduction_factor, 1)
        return better < top


class MedianStopping:
    """The median stopping rule: at every ``interval`` epochs from ``grace_period``, once ``min_samples``
    other trials reached that epoch, a trial whose value there is worse than their median stops."""

    name = "median"

    def __init__(self, *, grace_period: int = 1, interval: int = 1, min_samples: int = 3, max_t: int = 27,
                 compare: str = "milestone") -> None:
        problems: list[str] = []
        for n, v, lo in (("grace_period", grace_period, 1), ("interval", interval, 1), ("min_samples", min_samples, 1),
                         ("max_t", max_t, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                problems.append(f"{n} must be an int >= {lo}, got {v!r}")
        _compare("MedianStopping", compare, problems)
        if problems:
            raise InvalidDefinition("MedianStopping", problems)
        self.grace_period, self.interval, self.min_samples, self.max_t = grace_period, interval, min_samples, max_t
        self.compare = compare

    def value_at(self, values: Sequence[float], at: int, mode: str) -> float:
        """The value compared at milestone ``at`` (see ``compare``)."""
        return value_at(values, at, mode, self.compare)

    def milestones(self) -> list[int]:
        """The epochs at which a trial pauses for :meth:`keeps`."""
        return list(range(self.grace_period, self.max_t, self.interval))

    def keeps(self, value: float, others: Sequence[float], *, mode: str) -> bool:
        """Whether a trial with ``value`` at a milestone goes on: not worse than the others' median."""
        if _worse(value):
            return False
        finite = [o for o in others if not _worse(o)]
        if len(finite) < self.min_samples:
            return True
        median = statistics.median(finite)
        return not (value > median if mode == "min" else value < median)


def make_scheduler(scheduler: Any, max_t: int | None) -> Any:
    if scheduler is None or scheduler == "none":
        return NoScheduler(max_t)
    if isinstance(scheduler, str):
        raise InvalidDefinition("study", [f"unknown scheduler {scheduler!r}; use None, ASHA(...) or MedianStopping(...)"])
    if not (callable(getattr(scheduler, "milestones", None)) and callable(getattr(scheduler, "keeps", None))):
        raise InvalidDefinition("study", [f"scheduler {scheduler!r} needs milestones() and keeps(value, others, mode=)"])
    return scheduler
