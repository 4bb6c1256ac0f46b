"""A study's trials as its state records them, and the trial table (no torch).

Its one job is reading the study state: :func:`trials_of` folds the proposed
trials and the append-only list of updates into :class:`Trial` objects (the
study's own steps use an incremental fold), and :func:`table` reports them,
best first.  The study's actions in :mod:`fsmtrain.tune.study` write that state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from ..state import State

__all__ = ["Trial", "table", "trials_of"]


@attrs.define
class Trial:
    """One trial as the study sees it (folded from the study state)."""

    index: int
    run_id: int
    params: dict[str, Any]
    status: str = "pending"  # pending, running, paused, completed, pruned, failed
    epochs: int = 0
    values: list[float] = attrs.field(factory=list)
    error: str | None = None
    attempts: int = 1
    _best: Any = attrs.field(default=None, repr=False, eq=False)

    def best(self, mode: str) -> tuple[float | None, int | None]:
        """The best finite value and its (1-based) epoch."""
        cached = self._best
        if cached is not None and cached[0] is self.values and cached[1] == mode:
            hit: tuple[float | None, int | None] = cached[2]
            return hit
        found = self._find_best(mode)
        self._best = (self.values, mode, found)
        return found

    def _find_best(self, mode: str) -> tuple[float | None, int | None]:
        best, at = None, None
        for i, v in enumerate(self.values):
            if isinstance(v, (int, float)) and v == v and abs(v) != float("inf") and \
                    (best is None or (v < best if mode == "min" else v > best)):
                best, at = v, i + 1
        return best, at


def trials_of(state: State | Mapping[str, Any]) -> list[Trial]:
    """The study's trials: each proposed trial with its updates applied in order."""
    return _fold([], state["trials"], state["updates"], 0, 0)


def _fold(out: list[Trial], trials: Any, updates: Any, n_trials: int, n_updates: int) -> list[Trial]:
    """Apply ``trials[n_trials:]`` and ``updates[n_updates:]`` to ``out`` (in place) and return it."""
    for i in range(n_trials, len(trials)):
        t = trials[i]
        out.append(Trial(t["index"], t["run_id"], dict(t["params"])))
    for i in range(n_updates, len(updates)):
        u = updates[i]
        t = out[u["index"]]
        for k in ("status", "epochs", "error", "attempts", "run_id"):
            if k in u:
                setattr(t, k, u[k])
        if "values" in u:
            t.values = list(u["values"])
    return out


class _Folder:
    """``trials_of`` for one study's successive states, folding only what each step appended.

    Appends share a Seq's storage and never change its first items, so a state whose lists
    are on the same storage and at least as long extends the cached fold.  Every state of
    one run satisfies that; anything else (a hand-made state) is folded from scratch.
    """

    def __init__(self) -> None:
        self._key: tuple[Any, Any] | None = None
        self._lens = (0, 0)
        self._trials: list[Trial] = []

    def __call__(self, state: State) -> list[Trial]:
        trials, updates = state["trials"], state["updates"]
        key = (getattr(trials, "_items", None), getattr(updates, "_items", None))
        n = (len(trials), len(updates))
        if self._key is None or key[0] is not self._key[0] or key[1] is not self._key[1] \
                or n[0] < self._lens[0] or n[1] < self._lens[1] or key[0] is None or key[1] is None:
            self._trials, self._lens = [], (0, 0)
        if n != self._lens:  # (the fold reflects the state's own lists only, so a retried step sees the same)
            self._trials = _fold(self._trials, trials, updates, *self._lens)
        self._key, self._lens = key, n
        return self._trials



def _value_at(values: list[float], at: int, mode: str) -> float:
    """A trial's value at epoch ``at`` (NaN when it has none): what a scheduler compares by default."""
    return values[at - 1] if len(values) >= at else float("nan")


def _best(trials: list[Trial], mode: str) -> dict[str, Any] | None:
    best: dict[str, Any] | None = None
    top = 0.0
    for t in trials:
        value, epoch = t.best(mode)
        if value is not None and (best is None or (value < top if mode == "min" else value > top)):
            best, top = {"index": t.index, "run_id": t.run_id, "value": value, "epoch": epoch, "params": t.params}, value
    return best


def table(state: State | Mapping[str, Any]) -> list[dict[str, Any]]:
    """The trial table, best result first (then unfinished and failed ones)."""
    mode = state["mode"]
    rows = []
    for t in trials_of(state):
        value, epoch = t.best(mode)
        rows.append({"trial": t.index, "run_id": t.run_id, "params": t.params, "status": t.status,
                     "best": value, "best_epoch": epoch, "epochs": t.epochs, "pruned": t.status == "pruned",
                     "attempts": t.attempts, "error": t.error})
    sign = 1 if mode == "min" else -1
    return sorted(rows, key=lambda r: (r["best"] is None, sign * (r["best"] or 0), r["trial"]))
