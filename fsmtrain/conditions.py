"""Conditions: pure, named predicates over State that compose with ``&``, ``|``, ``~``.

A condition returns whether it fired and why.  Transitions are guarded by
conditions; termination rules over metric history are conditions too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .errors import ConditionError, FsmtrainError
from .state import State

__all__ = ["Condition", "Scanner", "all_of", "any_of", "default", "when"]

Verdict = tuple[bool, str]


class Scanner:
    """Evaluates one condition on a sequence of states, reusing work between them.

    ``fires(state)`` equals ``condition(state)`` and ``reason()`` the reason of
    that last call, whatever states are given; a condition over a metric
    history (see :mod:`fsmtrain.stopping`) makes the common case cheap, where
    each state's lists extend the previous one's (the epochs of one run).
    This is how ``whatif`` evaluates conditions at every epoch of many runs.
    """

    __slots__ = ("condition", "_why")

    def __init__(self, condition: Condition) -> None:
        self.condition = condition
        self._why = ""

    def fires(self, state: State) -> bool:
        fired, self._why = self.condition.evaluate(state)
        return fired

    def reason(self) -> str:
        """Why the last :meth:`fires` call returned what it did."""
        return self._why


class Condition:
    """A named predicate over State.

    ``fn`` returns a bool, or ``(bool, reason)`` to say why.

    >>> done = Condition(lambda s: s["epoch"] >= 3, keys=["epoch"], name="epoch>=3")
    >>> (done | when(stop=True)).name
    'epoch>=3 | when(stop=True)'
    >>> (~~done) is done
    True
    """

    __slots__ = ("fn", "keys", "name")

    def __init__(self, fn: Callable[[State], bool | Verdict], *, keys: Iterable[str] = (), name: str | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"Condition needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.keys = frozenset(keys)
        self.name: str = name or str(getattr(fn, "__name__", "condition"))

    def evaluate(self, state: State) -> Verdict:
        """``(fired, reason)`` for this state."""
        try:
            out = self.fn(state)
        except FsmtrainError:
            raise
        except Exception as e:
            raise ConditionError(f"condition `{self.name}` raised {type(e).__name__}: {e}") from e
        if isinstance(out, tuple):
            fired, reason = out
            return bool(fired), str(reason)
        return bool(out), self.name

    def __call__(self, state: State | Mapping[str, Any]) -> bool:
        return self.evaluate(state if isinstance(state, State) else State(state))[0]

    def scanner(self) -> Scanner:
        """A :class:`Scanner` for evaluating this condition on many states in turn."""
        return Scanner(self)

    def replace(self, old: Condition | str, new: Condition) -> Condition:
        """This condition with ``old`` replaced by ``new``, also inside ``&``, ``|`` and ``~``; itself when
        ``old`` does not occur.  ``old`` matches by name: a condition built anew, or its name as text,
        finds the one inside (a process that resumes a run never has the original object).

        >>> stop = when(a=1) | when(b=2)
        >>> stop.replace("when(b=2)", when(b=3)).name
        'when(a=1) | when(b=3)'
        >>> stop.replace(when(a=1), when(a=0)).name
        'when(a=0) | when(b=2)'
        """
        _check(new)
        return new if (self is old or self.name == (old if isinstance(old, str) else old.name)) else self

    def atoms(self) -> list[Condition]:
        """The conditions this one is made of (itself, unless it is ``&``, ``|`` or ``~`` of others)."""
        return [self]

    def __and__(self, other: Condition) -> Condition:
        return _And(self, _check(other))

    def __or__(self, other: Condition) -> Condition:
        return _Or(self, _check(other))

    def __invert__(self) -> Condition:
        return _Not(self)

    def __repr__(self) -> str:
        return f"Condition({self.name})"


def _check(c: Any) -> Condition:
    if not isinstance(c, Condition):
        raise TypeError(f"conditions combine only with conditions, got {type(c).__name__} {c!r}")
    return c


class _Composite(Condition):
    """``a & b & ...`` or ``a | b | ...``: nested composites of the same kind are flattened."""

    __slots__ = ("parts",)
    parts: tuple[Condition, ...]
    joiner = ""

    def __init__(self, *parts: Condition) -> None:
        flat: list[Condition] = []
        for p in parts:
            flat.extend(p.parts if isinstance(p, _Composite) and type(p) is type(self) else [p])
        self.parts = tuple(flat)
        name = f" {self.joiner} ".join(
            f"({p.name})" if isinstance(p, _Composite) and type(p) is not type(self) else p.name for p in flat
        )
        super().__init__(self._eval, keys=frozenset().union(*(p.keys for p in flat)), name=name)

    def _eval(self, state: State) -> Verdict:
        raise NotImplementedError

    def scanner(self) -> Scanner:
        return _CompositeScanner(self, [p.scanner() for p in self.parts])

    def atoms(self) -> list[Condition]:
        return [a for p in self.parts for a in p.atoms()]

    def replace(self, old: Condition | str, new: Condition) -> Condition:
        own = super().replace(old, new)
        if own is not self:
            return own
        parts = [p.replace(old, new) for p in self.parts]
        if all(a is b for a, b in zip(parts, self.parts, strict=True)):
            return self
        return type(self)(*parts)


class _CompositeScanner(Scanner):
    """Scans ``a & b`` / ``a | b`` with the parts' scanners (same verdicts as ``evaluate``)."""

    __slots__ = ("parts", "_decisive", "_all")

    def __init__(self, condition: _Composite, parts: list[Scanner]) -> None:
        super().__init__(condition)
        self.parts = parts
        self._all = type(condition) is _And
        self._decisive: Scanner | None = None

    def fires(self, state: State) -> bool:
        # A skipped part's scanner catches up the next time it is asked.
        want = not self._all  # the verdict that decides: a miss for &, a hit for |
        for p in self.parts:
            if p.fires(state) is want:
                self._decisive = p
                return want
        self._decisive = None
        return self._all

    def reason(self) -> str:
        d = self._decisive
        if self._all:
            return " & ".join(p.reason() for p in self.parts) if d is None else f"not {d.reason()}"
        return d.reason() if d is not None else f"none of {self.condition.name}"


class _And(_Composite):
    __slots__ = ()
    joiner = "&"

    def _eval(self, state: State) -> Verdict:
        reasons = []
        for p in self.parts:
            fired, why = p.evaluate(state)
            if not fired:
                return False, f"not {why}"
            reasons.append(why)
        return True, " & ".join(reasons)


class _Or(_Composite):
    __slots__ = ()
    joiner = "|"

    def _eval(self, state: State) -> Verdict:
        for p in self.parts:
            fired, why = p.evaluate(state)
            if fired:
                return True, why
        return False, f"none of {self.name}"


class _Not(Condition):
    __slots__ = ("inner",)

    def __new__(cls, inner: Condition) -> Any:
        if isinstance(inner, _Not):
            return inner.inner  # ~~c is c
        return super().__new__(cls)

    def __init__(self, inner: Condition) -> None:
        self.inner = inner
        inner_name = f"({inner.name})" if isinstance(inner, _Composite) else inner.name
        super().__init__(self._eval, keys=inner.keys, name=f"~{inner_name}")

    def _eval(self, state: State) -> Verdict:
        fired, why = self.inner.evaluate(state)
        return (not fired), (f"not {why}" if fired else f"~{why}")

    def scanner(self) -> Scanner:
        return _NotScanner(self, self.inner.scanner())

    def atoms(self) -> list[Condition]:
        return self.inner.atoms()

    def replace(self, old: Condition | str, new: Condition) -> Condition:
        own = super().replace(old, new)
        if own is not self:
            return own
        inner = self.inner.replace(old, new)
        return self if inner is self.inner else ~inner


class _NotScanner(Scanner):
    __slots__ = ("inner", "_inner_fired")

    def __init__(self, condition: _Not, inner: Scanner) -> None:
        super().__init__(condition)
        self.inner = inner
        self._inner_fired = False

    def fires(self, state: State) -> bool:
        self._inner_fired = self.inner.fires(state)
        return not self._inner_fired

    def reason(self) -> str:
        why = self.inner.reason()
        return f"not {why}" if self._inner_fired else f"~{why}"


def any_of(*conditions: Condition) -> Condition:
    """Fires when any of ``conditions`` fires (same as ``a | b | ...``)."""
    if not conditions:
        raise ValueError("any_of() needs at least one condition")
    return _Or(*map(_check, conditions)) if len(conditions) > 1 else _check(conditions[0])


def all_of(*conditions: Condition) -> Condition:
    """Fires when all of ``conditions`` fire (same as ``a & b & ...``)."""
    if not conditions:
        raise ValueError("all_of() needs at least one condition")
    return _And(*map(_check, conditions)) if len(conditions) > 1 else _check(conditions[0])


def when(**expected: Any) -> Condition:
    """Fires when every given key equals its value: ``when(decision="go")``."""
    if not expected:
        raise ValueError("when() needs at least one key=value")
    items = tuple(expected.items())
    name = "when(" + ", ".join(f"{k}={v!r}" for k, v in items) + ")"

    def check(state: State) -> bool:
        return all(state[k] == v for k, v in items)

    return Condition(check, keys=expected, name=name)


default = Condition(lambda state: True, name="default")
"""Always fires; the fallback transition, tried last."""
