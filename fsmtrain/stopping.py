"""Termination conditions over a run's metric history (no torch).

Each is a :class:`~fsmtrain.Condition`: a pure function of the state's metric
lists (``state["val_loss"]`` holds one value per evaluation) that says whether
it fired and why, so it can guard a transition, be swapped per run, and be
evaluated offline against a recorded history.  A numeric parameter may be a
literal or :func:`setting`, read from the run's state, so that one machine
serves runs with different budgets.

>>> from fsmtrain import State
>>> stop = early_stopping("val_loss", patience=2) | max_epochs(10)
>>> stop.name
'early_stopping(val_loss, patience=2) | max_epochs(10)'
>>> stop.evaluate(State(epoch=4, val_loss=[1.0, 0.5, 0.6, 0.55]))
(True, 'early_stopping(val_loss, patience=2): no improvement for 2 evaluations (best 0.5 at evaluation 2)')
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import attrs

from .conditions import Condition
from .errors import InvalidDefinition
from .state import State

__all__ = ["early_stopping", "max_epochs", "setting"]


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


def _param(name: str, value: Any, problems: list[str], *, minimum: float = 0) -> None:
    if isinstance(value, Setting):
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        problems.append(f"{name} must be a number >= {minimum} or setting('key'), got {value!r}")


def _value(state: State, p: Any) -> Any:
    return state[p.key] if isinstance(p, Setting) else p


def _keys(*params: Any) -> list[str]:
    return [p.key for p in params if isinstance(p, Setting)]


def max_epochs(n: int | Setting, *, counter: str = "epoch") -> Condition:
    """Fires once ``state[counter]`` (epochs completed) reaches ``n``."""
    problems: list[str] = []
    _param("n", n, problems, minimum=1)
    if problems:
        raise InvalidDefinition("max_epochs", problems)

    def fn(state: State) -> tuple[bool, str]:
        limit = _value(state, n)
        done = state[counter]
        return done >= limit, f"reached max_epochs={limit} ({counter} {done})"

    return Condition(fn, keys=[counter, *_keys(n)], name=f"max_epochs({n})")


def _improvements(values: Sequence[float], better: Any) -> tuple[int, float | None, int]:
    """(index of the best value, best value, evaluations since it): NaN/inf never count as best."""
    best: float | None = None
    best_i = -1
    for i, v in enumerate(values):
        if v is None or not math.isfinite(v):
            continue
        if best is None or better(v, best):
            best, best_i = v, i
    return best_i, best, len(values) - 1 - best_i


def early_stopping(metric: str, patience: int | Setting, *, min_delta: float = 0.0, mode: str = "min") -> Condition:
    """Fires when ``metric`` has not improved by more than ``min_delta`` for ``patience`` evaluations.

    Patience counts evaluations recorded in ``state[metric]``, not epochs.  A
    non-finite value is never an improvement.
    """
    problems: list[str] = []
    if not isinstance(metric, str) or not metric:
        problems.append(f"metric must be a state key (str), got {metric!r}")
    _param("patience", patience, problems, minimum=1)
    if mode not in ("min", "max"):
        problems.append(f"mode must be 'min' or 'max', got {mode!r}")
    if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or not min_delta >= 0:
        problems.append(f"min_delta must be a number >= 0, got {min_delta!r}")
    if problems:
        raise InvalidDefinition("early_stopping", problems)
    delta = float(min_delta)

    def better(v: float, best: float) -> bool:
        return v < best - delta if mode == "min" else v > best + delta

    name = f"early_stopping({metric}, patience={patience}" + (f", min_delta={min_delta}" if delta else "") + \
        (", mode='max'" if mode == "max" else "") + ")"

    def fn(state: State) -> tuple[bool, str]:
        values = state[metric]
        limit = _value(state, patience)
        best_i, best, since = _improvements(values, better)
        fired = len(values) > 0 and since >= limit
        where = "no finite value yet" if best is None else f"best {best:.6g} at evaluation {best_i + 1}"
        return fired, f"{name}: no improvement for {since} evaluations ({where})"

    return Condition(fn, keys=[metric, *_keys(patience)], name=name)
