"""Budget-based termination conditions: epochs, steps and active time (no torch).

Its one job is the conditions that compare a counter of the run with a limit:
:func:`max_epochs`, :func:`min_epochs`, :func:`max_steps` and
:func:`time_budget`; each has a cheap ``fired`` test and formats its reason
only when asked.  Import them from :mod:`fsmtrain.stopping`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .conditions import Condition, Scanner
from .errors import ConditionError
from .state import State
from .stopping_base import Setting, _fmt, _keys, _name, _Params, _resolve

__all__ = ["max_epochs", "max_steps", "min_epochs", "time_budget"]


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

