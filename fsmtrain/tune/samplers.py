"""Samplers: what to try next, given the space and the results so far.

A sampler is asked for trial ``index`` (0, 1, 2...) with the finished trials'
parameters and results.  The built-in ones are reproducible by construction:
``RandomSampler(seed)`` draws trial ``i`` from a generator seeded with
``(seed, i)`` and ``GridSampler`` takes the ``i``-th grid point, so a study
killed and started again proposes exactly the same parameters.
``OptunaSampler`` lets an installed Optuna sampler (TPE, CMA-ES...) decide
through Optuna's ask/tell interface; its proposals depend on which results had
arrived, as Optuna's own do.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

from ..errors import InvalidDefinition
from .space import Choice, IntRange, LogUniform, Space, Uniform

__all__ = ["GridSampler", "OptunaSampler", "RandomSampler", "Sampler", "make_sampler"]


class Sampler(Protocol):
    name: str

    def propose(self, space: Space, index: int, history: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
        """Parameters of trial ``index`` (None: nothing left to try).  ``history``: finished trials,
        each ``{"params", "value"}`` (``value`` None when the trial failed or has no result)."""
        ...


class RandomSampler:
    """Independent uniform draws, trial ``i`` from a generator seeded with ``(seed, i)``."""

    name = "random"
    uses_history = False  # proposals depend on (seed, index) only

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def propose(self, space: Space, index: int, history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The parameters of trial ``index``, drawn from a generator seeded by (seed, index)."""
        digest = hashlib.sha256(f"{self.seed}:{index}".encode()).digest()
        return space.sample(random.Random(int.from_bytes(digest[:8], "big")))


class GridSampler:
    """Every combination of the space's grid (``points`` values per continuous dimension), in order."""

    name = "grid"
    uses_history = False

    def __init__(self, points: int = 3) -> None:
        if isinstance(points, bool) or not isinstance(points, int) or points < 1:
            raise InvalidDefinition("GridSampler", [f"points must be an int >= 1, got {points!r}"])
        self.points = points
        self._grid: list[dict[str, Any]] | None = None
        self._for: Space | None = None

    def propose(self, space: Space, index: int, history: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
        """The parameters of trial ``index``: the ``index``-th combination of the grid."""
        if self._grid is None or self._for != space:
            self._grid, self._for = space.grid(self.points), space
        return dict(self._grid[index]) if index < len(self._grid) else None


class OptunaSampler:
    """An Optuna sampler (``optuna.samplers.TPESampler(seed=0)``...) deciding through ask/tell.

    Each proposal builds an in-memory Optuna study from the finished trials and
    asks it for one more; nothing of Optuna's is stored: the study's log is the
    record.  Needs ``optuna`` (optional).
    """

    name = "optuna"

    def __init__(self, sampler: Any, *, direction: Literal["minimize", "maximize"] = "minimize") -> None:
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise InvalidDefinition("OptunaSampler", ["needs optuna: pip install optuna"]) from None
        if direction not in ("minimize", "maximize"):
            raise InvalidDefinition("OptunaSampler", [f"direction must be 'minimize' or 'maximize', got {direction!r}"])
        self.sampler = sampler
        self.direction: Literal["minimize", "maximize"] = direction

    def propose(self, space: Space, index: int, history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The parameters of trial ``index``, asked of an Optuna study told every finished trial."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        dists = {k: _optuna_distribution(d) for k, d in space.items()}
        study = optuna.create_study(direction=self.direction, sampler=self.sampler)
        for h in history:
            if h.get("value") is None:
                continue
            study.add_trial(optuna.trial.create_trial(params=dict(h["params"]), distributions=dists, value=h["value"]))
        trial = study.ask(dists)
        return dict(trial.params)


def _optuna_distribution(d: Any) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(d, Uniform):
        return FloatDistribution(d.low, d.high)
    if isinstance(d, LogUniform):
        return FloatDistribution(d.low, d.high, log=True)
    if isinstance(d, IntRange):
        return IntDistribution(d.low, d.high, log=d.log)
    if isinstance(d, Choice):
        return CategoricalDistribution(list(d.values))
    raise TypeError(d)


def make_sampler(sampler: Any, seed: int) -> Any:
    """A sampler from a name (``"random"``, ``"grid"``) or an object with ``propose``."""
    if isinstance(sampler, str):
        if sampler == "random":
            return RandomSampler(seed)
        if sampler == "grid":
            return GridSampler()
        raise InvalidDefinition("study", [f"unknown sampler {sampler!r}; use 'random', 'grid', "
                                          "or a sampler object such as OptunaSampler(optuna.samplers.TPESampler())"])
    if not callable(getattr(sampler, "propose", None)):
        raise InvalidDefinition("study", [f"sampler {sampler!r} has no propose(space, index, history) method"])
    return sampler
