"""Search spaces: what a study may try, as JSON-serialisable dimensions.

>>> space = Space({"lr": LogUniform(1e-4, 1e-1), "hidden": IntRange(16, 128), "act": Choice(["relu", "tanh"])})
>>> import random
>>> p = space.sample(random.Random(0))
>>> sorted(p), 1e-4 <= p["lr"] <= 1e-1
(['act', 'hidden', 'lr'], True)
>>> Space.from_json(space.to_json()) == space
True
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs

from ..errors import InvalidDefinition

__all__ = ["Choice", "Dimension", "IntRange", "LogUniform", "Space", "Uniform"]


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@attrs.frozen
class Uniform:
    """A float drawn uniformly from [low, high]."""

    low: float
    high: float

    def problems(self, name: str) -> list[str]:
        """What is wrong with the domain's bounds or values (empty: nothing)."""
        if not (_number(self.low) and _number(self.high)) or not self.low < self.high:
            return [f"{name}: Uniform needs finite numbers low < high, got ({self.low!r}, {self.high!r})"]
        return []

    def sample(self, rng: random.Random) -> float:
        """A value drawn with ``rng``: a number, uniformly."""
        return rng.uniform(self.low, self.high)

    def grid(self, points: int) -> list[float]:
        """``points`` values spread over the domain, for a grid search (a number, uniformly)."""
        return [self.low + (self.high - self.low) * i / (points - 1) for i in range(points)] if points > 1 else [self.low]

    def to_json(self) -> dict[str, Any]:
        """The domain as plain JSON."""
        return {"type": "uniform", "low": self.low, "high": self.high}


@attrs.frozen
class LogUniform:
    """A float whose logarithm is uniform: for learning rates and weight decays (low > 0)."""

    low: float
    high: float

    def problems(self, name: str) -> list[str]:
        """What is wrong with the domain's bounds or values (empty: nothing)."""
        if not (_number(self.low) and _number(self.high)) or not 0 < self.low < self.high:
            return [f"{name}: LogUniform needs finite numbers 0 < low < high, got ({self.low!r}, {self.high!r})"]
        return []

    def sample(self, rng: random.Random) -> float:
        """A value drawn with ``rng``: a number, log-uniformly."""
        return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))

    def grid(self, points: int) -> list[float]:
        """``points`` values spread over the domain, for a grid search (a number, log-uniformly)."""
        if points < 2:
            return [self.low]
        lo, hi = math.log(self.low), math.log(self.high)
        return [math.exp(lo + (hi - lo) * i / (points - 1)) for i in range(points)]

    def to_json(self) -> dict[str, Any]:
        """The domain as plain JSON."""
        return {"type": "loguniform", "low": self.low, "high": self.high}


@attrs.frozen
class IntRange:
    """An int drawn uniformly from [low, high] (both included); ``log=True`` draws its logarithm uniformly."""

    low: int
    high: int
    log: bool = False

    def problems(self, name: str) -> list[str]:
        """What is wrong with the domain's bounds or values (empty: nothing)."""
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high)) and self.low <= self.high
        if not ok or (self.log and self.low < 1):
            return [f"{name}: IntRange needs ints low <= high{' and low >= 1 with log=True' if self.log else ''}, "
                    f"got ({self.low!r}, {self.high!r})"]
        return []

    def sample(self, rng: random.Random) -> int:
        """A value drawn with ``rng``: an integer in the range."""
        if self.log:
            return min(self.high, max(self.low, round(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))))
        return rng.randint(self.low, self.high)

    def grid(self, points: int) -> list[int]:
        """``points`` values spread over the domain, for a grid search (an integer in the range)."""
        values = list(range(self.low, self.high + 1))
        if len(values) <= points:
            return values
        return sorted({values[round(i * (len(values) - 1) / (points - 1))] for i in range(points)}) if points > 1 else [self.low]

    def to_json(self) -> dict[str, Any]:
        """The domain as plain JSON."""
        return {"type": "int", "low": self.low, "high": self.high, "log": self.log}


@attrs.frozen
class Choice:
    """One of a list of JSON values (strings, numbers, booleans)."""

    values: tuple[Any, ...] = attrs.field(converter=tuple)

    def problems(self, name: str) -> list[str]:
        """What is wrong with the domain's bounds or values (empty: nothing)."""
        if not self.values:
            return [f"{name}: Choice needs at least one value"]
        if len(set(map(repr, self.values))) != len(self.values):
            return [f"{name}: Choice has repeated values {list(self.values)!r}"]
        bad = [v for v in self.values if not (v is None or isinstance(v, (str, int, float, bool)))]
        return [f"{name}: Choice values must be str, int, float, bool or None, got {bad!r}"] if bad else []

    def sample(self, rng: random.Random) -> Any:
        """A value drawn with ``rng``: one of the choices."""
        return self.values[rng.randrange(len(self.values))]

    def grid(self, points: int) -> list[Any]:
        """``points`` values spread over the domain, for a grid search (one of the choices)."""
        return list(self.values)

    def to_json(self) -> dict[str, Any]:
        """The domain as plain JSON."""
        return {"type": "choice", "values": list(self.values)}


Dimension = Uniform | LogUniform | IntRange | Choice
_KINDS = {"uniform": Uniform, "loguniform": LogUniform, "int": IntRange, "choice": Choice}


class Space(Mapping[str, Dimension]):
    """Named dimensions.  Validated when built: every problem is listed in one InvalidDefinition."""

    def __init__(self, dims: Mapping[str, Any]) -> None:
        problems = []
        if not isinstance(dims, Mapping) or not dims:
            raise InvalidDefinition("search space", ["it is empty: give at least one dimension, "
                                                     "e.g. {'lr': LogUniform(1e-4, 1e-1)}"])
        self._dims: dict[str, Dimension] = {}
        for name, d in dims.items():
            if not isinstance(name, str) or not name.isidentifier():
                problems.append(f"{name!r}: a dimension's name must be an identifier")
            elif not isinstance(d, (Uniform, LogUniform, IntRange, Choice)):
                problems.append(f"{name}: {d!r} is not a dimension (Uniform, LogUniform, IntRange, Choice)")
            else:
                problems += d.problems(name)
                self._dims[name] = d
        if problems:
            raise InvalidDefinition("search space", problems)

    def __getitem__(self, k: str) -> Dimension:
        return self._dims[k]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dims)

    def __len__(self) -> int:
        return len(self._dims)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Space) and self._dims == other._dims

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Space({self._dims!r})"

    def sample(self, rng: random.Random) -> dict[str, Any]:
        """One point: each parameter drawn from its domain with ``rng``."""
        return {k: d.sample(rng) for k, d in self._dims.items()}

    def grid(self, points: int = 3) -> list[dict[str, Any]]:
        """Every combination, ``points`` values per continuous dimension."""
        names = list(self._dims)
        return [dict(zip(names, combo, strict=True))
                for combo in itertools.product(*(self._dims[n].grid(points) for n in names))]

    def to_json(self) -> dict[str, Any]:
        """The space as plain JSON (part of a study's settings)."""
        return {k: d.to_json() for k, d in self._dims.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Space:
        """A space from its JSON form (:meth:`to_json`)."""
        dims = {}
        for k, d in data.items():
            d = dict(d)
            kind = _KINDS[d.pop("type")]
            dims[k] = kind(**d)
        return cls(dims)


def as_space(space: Space | Mapping[str, Any] | Sequence[Any]) -> Space:
    return space if isinstance(space, Space) else Space(space)  # type: ignore[arg-type]
