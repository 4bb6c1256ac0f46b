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
from collections.abc import Mapping, Sequence
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

__all__ = ["KINDS", "aligned_histories", "check_condition", "conditions", "epoch_states", "fired_at", "first_firing",
           "histories", "metric_values", "run_states"]

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


# -- several metrics at once -----------------------------------------------------------------------
LOSS, ACCURACY = "loss", "accuracy"


def aligned_histories(metrics: Mapping[str, str] | None = None, *, min_size: int = 0, max_size: int = 40,
                      allow_nan: bool = False) -> st.SearchStrategy[dict[str, list[float]]]:
    """Several metric histories of one run, aligned (one value per evaluation each, the same length).

    ``metrics`` maps a state key to its kind: ``"loss"`` (a :func:`histories` shape, positive-ish,
    lower is better) or ``"accuracy"`` (in [0, 1], higher is better, rising noisily as the loss falls);
    the default is ``{"train_loss": "loss", "val_loss": "loss", "val_acc": "accuracy"}``.  With
    ``allow_nan``, a loss may hold NaN or ±inf (an accuracy stays in [0, 1]: it cannot diverge).
    """
    metrics = dict(metrics or {"train_loss": LOSS, "val_loss": LOSS, "val_acc": ACCURACY})
    bad = {k: v for k, v in metrics.items() if v not in (LOSS, ACCURACY) or not isinstance(k, str) or not k}
    if bad or not metrics:
        raise ValueError(f"metrics must map state keys to 'loss' or 'accuracy', got {metrics!r}")
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < min_size:
        raise ValueError(f"max_size must be an int >= min_size ({min_size}), got {max_size!r}")

    def one(n: int) -> st.SearchStrategy[dict[str, list[float]]]:
        parts = {}
        for key, kind in metrics.items():
            if kind == LOSS:
                parts[key] = histories(min_size=n, max_size=n, allow_nan=allow_nan)
            else:
                parts[key] = st.tuples(st.floats(0.0, 0.6), st.floats(0.0, 0.4), st.lists(
                    st.floats(-0.05, 0.05, allow_nan=False), min_size=n, max_size=n)).map(
                    lambda t: [min(1.0, max(0.0, t[0] + t[1] * (1 - 1 / (1 + i)) + e)) for i, e in enumerate(t[2])])
        return st.fixed_dictionaries(parts)

    return st.integers(min_size, max_size).flatmap(one)


def run_states(history: Mapping[str, Sequence[float]], *, counter: str = "epoch", seconds_per_epoch: float = 1.0,
               **fixed: Any) -> list[State]:
    """:func:`epoch_states` for several aligned metrics: the state at the end of each epoch, every metric
    appended once per epoch (lists shared as a recorded run's are)."""
    lengths = {len(v) for v in history.values()}
    if len(lengths) > 1:
        raise ValueError(f"the histories must be aligned (one value per epoch each), got lengths {sorted(lengths)}")
    state = State({counter: 0, "steps": 0, **{k: [] for k in history}, **fixed})
    out = []
    for i in range(lengths.pop() if lengths else 0):
        state = state.apply({counter: i + 1, "steps": 10 * (i + 1), **{k: append(v[i]) for k, v in history.items()}})
        out.append(state.with_elapsed(seconds_per_epoch * (i + 1)))
    return out


# -- a property suite for a user's own condition ---------------------------------------------------
def check_condition(condition: Condition, *, metrics: Mapping[str, str] | None = None, examples: int = 100,
                    max_size: int = 30, name_round_trip: bool | None = None, shrink: bool = True) -> None:
    """Check, on generated runs, the promises every stop condition must keep; raise AssertionError (or the
    condition's own error) with the smallest failing run Hypothesis finds if one is broken.  One line in a
    test::

        def test_my_condition():
            check_condition(relative_plateau("val_loss", window=3, fraction=0.01))

    - **it raises nothing**, on any history, NaN and ±inf included (a ``ConditionError`` is a failure);
    - **deterministic**: the same state gives the same verdict and reason;
    - **no look-ahead**: what it says at an epoch depends only on that epoch's state, never on later ones;
    - **scanner equals evaluate**: the incremental :meth:`Condition.scanner` (what the runner and ``whatif``
      use) gives the verdict and reason of :meth:`Condition.evaluate` at every epoch;
    - **its name round-trips** through the expression language (when the name parses: registered
      factories called with literal arguments) to a condition with the same name and verdicts, so
      ``fsmtrain whatif -c NAME`` and ``Machine.swap`` find it.

    ``metrics`` (default: the keys the condition reads, as losses; ``"val_acc"``-like keys as accuracies)
    says what to generate; ``name_round_trip`` (default: when the name parses) forces or skips the last check;
    ``shrink=False`` reports the first failing run found instead of searching for the smallest (faster).
    """
    from hypothesis import HealthCheck, Phase, given, settings

    from .errors import ExpressionError, FsmtrainError
    from .expr import parse

    if not isinstance(condition, Condition):
        raise TypeError(f"check_condition needs a Condition, got {type(condition).__name__}")
    kinds = dict(metrics) if metrics is not None else {
        k: (ACCURACY if "acc" in k.lower() else LOSS) for k in sorted(condition.keys)
        if k not in ("epoch", "steps")} or {"val_loss": LOSS}
    twin: Condition | None = None
    if name_round_trip is not False:
        try:
            twin = parse(condition.name)
        except (ExpressionError, FsmtrainError) as e:
            if name_round_trip:
                raise AssertionError(f"the name {condition.name!r} does not parse back: {e}") from None
        if twin is not None and twin.name != condition.name:
            raise AssertionError(f"the name {condition.name!r} parses back to a condition named {twin.name!r}")

    phases = [Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if shrink else [])

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck),
              phases=phases)
    @given(aligned_histories(kinds, min_size=1, max_size=max_size, allow_nan=True),
           aligned_histories(kinds, min_size=0, max_size=5, allow_nan=True))
    def promises(run: dict[str, list[float]], later: dict[str, list[float]]) -> None:
        states = run_states(run)
        longer = run_states({k: list(v) + list(later[k]) for k, v in run.items()})
        scan = condition.scanner()
        verdicts = []
        for i, state in enumerate(states):
            first = condition.evaluate(state)
            assert condition.evaluate(state) == first, f"not deterministic at epoch {i + 1}: {first}"
            fired = scan.fires(state)
            assert (fired, scan.reason()) == first, \
                f"scanner says {(fired, scan.reason())} where evaluate says {first} at epoch {i + 1}"
            verdicts.append(first)
            if twin is not None:
                assert twin.evaluate(state)[0] == first[0], f"the parsed name decides otherwise at epoch {i + 1}"
        for i, state in enumerate(longer[:len(states)]):
            assert condition.evaluate(state) == verdicts[i], f"looks ahead: epoch {i + 1} changed with later epochs"

    promises()
