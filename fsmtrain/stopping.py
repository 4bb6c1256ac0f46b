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

The exact rules are in ``spec/stopping.md``.  The conditions are defined by
family in :mod:`fsmtrain.stopping_budget`, :mod:`fsmtrain.stopping_improvement`
and :mod:`fsmtrain.stopping_value`, on the parameters and metric-history folds
of :mod:`fsmtrain.stopping_base`; this module gathers them and keeps the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .conditions import Condition, all_of, any_of
from .stopping_base import MAX_COUNT as MAX_COUNT
from .stopping_base import MetricCondition as MetricCondition
from .stopping_base import Setting as Setting
from .stopping_base import _better as _better
from .stopping_base import setting
from .stopping_budget import max_epochs, max_steps, min_epochs, time_budget
from .stopping_improvement import early_stopping, plateau, slope
from .stopping_value import diverged, non_finite, target

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
