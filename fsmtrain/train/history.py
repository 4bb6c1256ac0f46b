"""Where a run's checkpoints come from: which step's state each committed checkpoint file holds.

A synchronous checkpoint holds the state of the step that committed it.  An asynchronous one (spec/training.md
§3b) is committed late, by a later step (its ``info["late"]``), and holds the state of the step that *staged* it:
the newest step before that set ``checkpoint_pending``.  A restore loads a checkpoint and redoes the steps after
the one whose state it holds; for a fork, that step may lie in the parent run (a *prelude* to redo first).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

from ..errors import CheckpointError
from ..log import EventLog
from ..state import Ref
from .actions import kept_refs

__all__ = ["Origin", "checkpoint_commits", "committed_checkpoints", "origin_of"]


class Origin(NamedTuple):
    """Where a checkpoint's state is in the log: redo the steps after ``seq`` of the run being restored, after
    redoing, when ``prelude`` is ``(parent_run, from_seq, to_seq)``, the parent's steps ``from_seq+1..to_seq``."""

    seq: int
    prelude: tuple[int, int, int] | None = None


def checkpoint_commits(events: Iterable[Any]) -> Iterator[tuple[int, int | None, Ref]]:
    """``(seq of the step that committed it, seq of the step whose state it holds, Ref)`` for each checkpoint the
    ``events`` commit, in order.  The state's step is None for a late commit whose staging step is not among the
    events (it precedes them)."""
    staged: int | None = None
    for ev in events:
        if ev.kind != "step" or not ev.updates:
            continue
        sets = ev.updates.get("set") or {}
        late = ev.info.get("late") if isinstance(ev.info, Mapping) else None
        late_ref = late.get("checkpoint") if isinstance(late, Mapping) else None
        if isinstance(late_ref, Ref):  # an asynchronous save, staged earlier
            yield ev.seq, staged, late_ref
        own = sets.get("checkpoint")
        if isinstance(own, Ref) and own != late_ref:  # (the action's own save: it may also override a late one)
            yield ev.seq, ev.seq, own
        if isinstance(sets.get("checkpoint_pending"), Mapping):
            staged = ev.seq


def committed_checkpoints(log: EventLog, run_id: int, upto: int) -> list[tuple[int, Ref]]:
    """Every checkpoint the run committed up to event ``upto``, newest first, with the seq of the step whose state
    it holds (late commits whose staging step is not in the run are left out)."""
    found = [(state_seq, ref) for _, state_seq, ref in checkpoint_commits(log.events(run_id, start=2, end=upto))
             if state_seq is not None]
    return found[::-1]


def origin_of(log: EventLog, run_id: int, ref: Ref) -> Origin:
    """Where ``ref``'s state is: the step of ``run_id`` whose state it holds, or, for a checkpoint the run inherited
    from the run it was forked from, its start (seq 1) with the parent's steps to redo before it."""
    start = next(log.events(run_id, end=1))
    if ref in kept_refs(start.snapshot or {}):
        info = log.run(run_id)
        if info.parent_id is None or info.parent_seq is None:
            raise CheckpointError(f"run {run_id} began with checkpoint {ref.path}, but it was not forked from a run")
        held = None
        for _, state_seq, r in checkpoint_commits(log.events(info.parent_id, start=2, end=info.parent_seq)):
            if r == ref and state_seq is not None:
                held = state_seq
        if held is None:
            raise CheckpointError(f"run {run_id} inherited checkpoint {ref.path}, but run {info.parent_id} did not "
                                  f"commit it before event {info.parent_seq}, where it was forked")
        return Origin(1, None if held == info.parent_seq else (info.parent_id, held, info.parent_seq))
    for _, state_seq, r in checkpoint_commits(log.events(run_id, start=2)):
        if r == ref:
            if state_seq is None:
                break
            return Origin(state_seq)
    raise CheckpointError(f"no step of run {run_id} recorded checkpoint {ref.path}")
