"""Write your own stop condition and test it with Hypothesis, like fsmtrain tests its own.

    python -m pytest examples/custom_condition.py        # run the property tests below
    fsmtrain whatif runs.db --import custom_condition -c "relative_plateau(val_loss, window=3, fraction=0.01)"
                                                         # (with examples/ on PYTHONPATH) replay it on recorded runs

A condition is a pure function of the run's state, so its tests need no model
and no training: `fsmtrain.testing` generates metric histories (monotone, noisy,
plateauing, diverging, with NaN/inf) and says at which epoch a condition fires.
"""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from fsmtrain import Condition
from fsmtrain.stopping import register
from fsmtrain.testing import check_condition, fired_at, first_firing, histories


# -- the condition -------------------------------------------------------------------------------------
@register  # so that `fsmtrain whatif --import custom_condition -c "relative_plateau(...)"` knows the name
def relative_plateau(metric: str, window: int, fraction: float) -> Condition:
    """Fires when the best of the last `window` evaluations is not `fraction` better than the best before them.

    A relative version of early stopping: "the last 3 epochs did not improve the loss by 1%".
    NaN and infinities never count as a best value.
    """
    if not isinstance(window, int) or window < 1 or not 0 <= fraction < 1:
        raise ValueError(f"relative_plateau needs window >= 1 and 0 <= fraction < 1, got {window!r}, {fraction!r}")
    name = f"relative_plateau({metric}, window={window}, fraction={fraction})"

    def check(state):
        values = list(state[metric])
        before = [v for v in values[:-window] if math.isfinite(v)]
        recent = [v for v in values[-window:] if math.isfinite(v)]
        if len(values) <= window or not before:
            return False, f"{name}: {len(values)} evaluations, need more than {window} with a finite best before them"
        old, new = min(before), min(recent, default=math.inf)
        fired = not new < old - fraction * abs(old)
        return fired, f"{name}: best of the last {window} is {new:.4g}, best before {old:.4g}"

    return Condition(check, keys=[metric], name=name)


stop = relative_plateau("val_loss", window=3, fraction=0.01)


# -- its properties -----------------------------------------------------------------------------------
def test_it_keeps_the_promises_of_every_condition():
    """Deterministic, no look-ahead, its scanner agrees, NaN/inf raise nothing, its name parses back."""
    check_condition(stop)


@given(histories(allow_nan=True))
def test_it_never_fires_before_window_plus_one_evaluations(history):
    at = first_firing(stop, history)
    assert at is None or at >= 4


@given(st.floats(0.1, 10), st.integers(4, 30))
def test_it_never_fires_while_the_loss_falls_by_more_than_the_fraction(start, n):
    history = [start * 0.9 ** i for i in range(n)]  # 10% better every epoch
    assert first_firing(stop, history) is None


@given(st.floats(0.1, 10), st.integers(4, 30))
def test_it_fires_as_soon_as_the_loss_is_flat_for_a_window(start, n):
    assert first_firing(stop, [start] * n) == 4


@given(histories(allow_nan=True), histories(allow_nan=True))
def test_what_it_says_at_an_epoch_never_depends_on_later_epochs(history, tail):
    longer = fired_at(stop, history + tail)
    assert [epoch for epoch in longer if epoch <= len(history)] == fired_at(stop, history)


@given(histories(kind="diverging", allow_nan=True, min_size=5))
def test_nan_never_breaks_it(history):
    fired_at(stop, history)  # raises nothing: NaN/inf are filtered, not compared
