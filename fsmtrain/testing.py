"""Hypothesis strategies and helpers for property tests of termination conditions.

Needs ``hypothesis`` (``pip install hypothesis``; the ``test`` extra has it).
A condition is a pure function of a run's metric history, so it can be tested
against generated histories without training anything::

    from hypothesis import given
    from fsmtrain.stopping import early_stopping
    from fsmtrain.testing import first_firing, histories

    @given(histories(kind="plateau"))
    def test_early_stopping_stops_on_a_plateau(history):
        at = first_firing(early_stopping("val_loss", patience=3), history)
        assert at is None or at >= 4

``examples/custom_condition.py`` tests a user's own condition this way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

try:
    from hypothesis import strategies as st
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("fsmtrain.testing needs hypothesis: pip install hypothesis") from e

from .conditions import Condition
from .state import State, append
from .stopping import (
    diverged,
    early_stopping,
    max_epochs,
    min_epochs,
    non_finite,
    plateau,
    slope,
    target,
    time_budget,
)

__all__ = ["KINDS", "conditions", "epoch_states", "fired_at", "first_firing", "histories", "metric_values"]

KINDS = ("monotone", "noisy", "plateau", "diverging", "random")
"""The shapes :func:`histories` draws from."""


def metric_values(*, allow_nan: bool = True, allow_infinity: bool = True, min_value: float = -1e6,
                  max_value: float = 1e6) -> st.SearchStrategy[float]:
    """Single metric values: finite floats in a range, plus NaN and ±inf when allowed."""
    finite = st.floats(min_value=min_value, max_value=max_value, allow_nan=False, allow_infinity=False)
    specials = [v for v, ok in ((math.nan, allow_nan), (math.inf, allow_infinity), (-math.inf, allow_infinity)) if ok]
    return st.one_of(finite, st.sampled_from(specials)) if specials else finite


def histories(*, kind: str | None = None, min_size: int = 0, max_size: int = 40,
              allow_nan: bool = False) -> st.SearchStrategy[list[float]]:
    """Metric histories (one value per evaluation, a loss: lower is better) of a given shape.

    ``kind``: ``monotone`` (never rising, with ties), ``noisy`` (a falling trend
    plus noise), ``plateau`` (falls, then stays within a small band, with exact
    repeats), ``diverging`` (falls, then grows, possibly to inf/NaN), ``random``
    (any finite values); None draws any of them.  With ``allow_nan``, NaN or ±inf
    also appear at random places (and a diverging history may end in one);
    without it, every value is finite.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)} or None, got {kind!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 0:
        raise ValueError(f"min_size must be an int >= 0, got {min_size!r}")
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < min_size:
        raise ValueError(f"max_size must be an int >= min_size ({min_size}), got {max_size!r}")
    kinds = [kind] if kind else list(KINDS)
    return st.one_of(*(_shape(k, min_size, max_size, allow_nan) for k in kinds)).flatmap(
        lambda h: _sprinkle(h) if allow_nan else st.just(h))


def _shape(kind: str, lo: int, hi: int, allow_nan: bool) -> st.SearchStrategy[list[float]]:
    step = st.sampled_from([0.0, 0.0, 0.001, 0.01, 0.05, 0.25])  # ties are common, on purpose
    small = st.floats(-0.05, 0.05, allow_nan=False)
    if kind == "random":
        return st.lists(st.floats(-10, 10, allow_nan=False), min_size=lo, max_size=hi)
    if kind == "monotone":
        return st.tuples(st.floats(0.1, 10), st.lists(step, min_size=lo, max_size=hi)).map(
            lambda t: _cumulative(t[0], [-d for d in t[1]]))
    if kind == "noisy":
        return st.tuples(st.floats(0.5, 5), st.floats(0.01, 0.3), st.lists(small, min_size=lo, max_size=hi)).map(
            lambda t: [t[0] / (1 + t[1] * i) + e for i, e in enumerate(t[2])])
    if kind == "plateau":  # falls by 0.1 per evaluation until `turn`, then wobbles around a level, repeating values
        return st.tuples(st.integers(0, hi), st.floats(0.5, 5), st.sampled_from([0.001, 0.01])).flatmap(
            lambda t: st.lists(st.sampled_from([0.0, 0.0, t[2], -t[2]]), min_size=lo, max_size=hi).map(
                lambda wobble: [t[1] - 0.1 * min(i, t[0]) + (e if i > t[0] else 0.0) for i, e in enumerate(wobble)]))
    # diverging: falls for a while, then grows geometrically; with allow_nan, may end in inf or NaN
    ends = [None, math.inf, math.nan] if allow_nan else [None]
    return st.tuples(st.integers(lo, hi), st.integers(0, hi), st.floats(1.1, 3), st.sampled_from(ends)).map(
        lambda t: _diverge(*t))


def _cumulative(start: float, deltas: Sequence[float]) -> list[float]:
    out, v = [], start
    for d in deltas:
        v += d
        out.append(v)
    return out


def _diverge(n: int, turn: int, rate: float, end: float | None) -> list[float]:
    out, v = [], 1.0
    for i in range(n):
        v = v * 0.8 if i < turn else v * rate
        out.append(v)
    if end is not None and out:
        out[-1] = end
    return out


def _sprinkle(h: list[float]) -> st.SearchStrategy[list[float]]:
    if not h:
        return st.just(h)
    return st.lists(st.tuples(st.integers(0, len(h) - 1), st.sampled_from([math.nan, math.inf, -math.inf])),
                    max_size=3).map(lambda hits: _put(h, hits))


def _put(h: list[float], hits: list[tuple[int, float]]) -> list[float]:
    out = list(h)
    for i, v in hits:
        out[i] = v
    return out


def conditions(metric: str = "val_loss", *, depth: int = 2, with_time: bool = True) -> st.SearchStrategy[Condition]:
    """Built-in conditions over ``metric`` with drawn parameters, composed with ``&``, ``|``, ``~`` up to ``depth``.

    ``with_time`` includes :func:`~fsmtrain.stopping.time_budget` (the states
    from :func:`epoch_states` carry one second of active time per epoch).
    """
    mode = st.sampled_from(["min", "max"])
    small = st.sampled_from([0.0, 0.0, 0.001, 0.01, 0.1])
    opt = st.none() | st.floats(-2, 2, allow_nan=False)
    atoms = [
        st.builds(max_epochs, st.integers(1, 30)),
        st.builds(min_epochs, st.integers(1, 30)),
        st.builds(early_stopping, st.just(metric), st.integers(1, 6), min_delta=small, mode=mode, baseline=opt,
                  start_from_epoch=st.integers(0, 3), check_finite=st.booleans(), stopping_threshold=opt,
                  divergence_threshold=opt),
        st.builds(plateau, st.just(metric), st.integers(0, 5), min_delta=small, mode=mode, cooldown=st.integers(0, 3)),
        st.builds(target, st.just(metric), st.floats(-2, 2, allow_nan=False), mode=mode),
        st.builds(non_finite, st.just(metric)),
        st.tuples(st.none() | st.floats(1, 10), st.none() | st.floats(-2, 20, allow_nan=False), mode).filter(
            lambda t: t[0] is not None or t[1] is not None).map(
            lambda t: diverged(metric, factor=t[0], threshold=t[1], mode=t[2])),
        st.builds(slope, st.just(metric), st.integers(2, 6), below=st.floats(-0.5, 0.5, allow_nan=False), mode=mode),
    ]
    if with_time:
        atoms.append(st.builds(time_budget, st.integers(0, 40)))
    atom = st.one_of(*atoms)
    if depth <= 0:
        return atom

    def extend(inner: st.SearchStrategy[Condition]) -> st.SearchStrategy[Condition]:
        return st.one_of(st.builds(lambda a, b: a & b, inner, inner), st.builds(lambda a, b: a | b, inner, inner),
                         inner.map(lambda c: ~c))

    return st.recursive(atom, extend, max_leaves=2 ** depth)


def epoch_states(history: Sequence[float], metric: str = "val_loss", *, counter: str = "epoch",
                 seconds_per_epoch: float = 1.0, **fixed: Any) -> list[State]:
    """The state at the end of each epoch of a run that recorded ``history``, one value per epoch.

    State ``i`` has ``counter = i + 1``, ``metric`` = the first ``i + 1``
    values, ``steps`` = 10 per epoch, ``fixed`` keys as given, and
    ``seconds_per_epoch * (i + 1)`` of active time.  The states share their
    lists as a recorded run's do, so evaluating a condition on them in order
    takes the same path as ``fsmtrain whatif``.
    """
    state = State({counter: 0, "steps": 0, metric: [], **fixed})
    out = []
    for i, v in enumerate(history):
        state = state.apply({counter: i + 1, "steps": 10 * (i + 1), metric: append(v)})
        out.append(state.with_elapsed(seconds_per_epoch * (i + 1)))
    return out


def fired_at(condition: Condition, history: Sequence[float], metric: str = "val_loss", **kwargs: Any) -> list[int]:
    """Every epoch (1-based) at which ``condition`` fires on ``history`` (see :func:`epoch_states`)."""
    scan = condition.scanner()
    return [i + 1 for i, s in enumerate(epoch_states(history, metric, **kwargs)) if scan.fires(s)]


def first_firing(condition: Condition, history: Sequence[float], metric: str = "val_loss", **kwargs: Any) -> int | None:
    """The first epoch (1-based) at which ``condition`` fires on ``history``, or None: where it would stop the run."""
    scan = condition.scanner()
    for i, s in enumerate(epoch_states(history, metric, **kwargs)):
        if scan.fires(s):
            return i + 1
    return None
