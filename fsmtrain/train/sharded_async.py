"""Asynchronous sharded checkpoints: each rank stages its shards in CPU memory and writes them in the background.

The checkpoint action of a distributed run whose model is sharded with FSDP2 (``checkpoint(async_=True)``, or
``"auto"`` from :data:`~fsmtrain.train.actions.AUTO_ASYNC_BYTES`) calls :meth:`ShardedSaver.save` on every rank:

1. it waits for the previous save of this process (at most one in flight), and the log's rank prepares the temp
   folder (as a synchronous save does, :func:`~fsmtrain.train.sharded.prepare`);
2. ``dcp.async_save`` stages the rank's shards into CPU buffers that a stager keeps from one save to the next
   (pinned on CUDA), then writes them from a DCP thread, planning over the save group (gloo, never training's);
3. a thread of ours waits for that write, then finishes the save as a synchronous one does
   (:func:`~fsmtrain.train.sharded.finish`: each rank's own file, the hashes, the manifest, the rename), with
   collectives on the save group only; every rank then holds the Ref.

The action commits ``checkpoint_pending`` at once.  The Ref is committed by the first step after every rank's
part is done: the runner asks :meth:`ShardedSaver.late` before and after each action, and the ranks agree on
the answer (one all-gather of a small code, only while a save is pending), so every rank commits the same
updates on the same step — as the single-process :class:`~fsmtrain.train.saver.AsyncSaver` does, whose
semantics (spec/training.md §3b) this follows.  A kill of any rank loses only the save in flight.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, environmental
from ..state import Ref
from .saver import LATE_KEYS, OneInFlight, _trace, commit_updates
from .sharded import dcp_error, finish, own_bytes, prepare, state_dicts

__all__ = ["ShardedSaver"]

_PENDING, _DONE, _FAILED, _NONE = 1, 2, 3, 0  # each rank's state of the save a step asks about


class _Job:
    def __init__(self, pending: Mapping[str, Any], folder: str, stem: str) -> None:
        self.pending, self.folder, self.stem = dict(pending), folder, stem
        self.ref: Ref | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.started = time.monotonic()


class ShardedSaver(OneInFlight):
    """The background writer of one rank's part of a distributed run's sharded checkpoints."""

    def __init__(self, root: Path, dist: Any) -> None:
        super().__init__()
        self.root, self.dist = root, dist
        self._stager: Any = None

    def save(self, r: Any, folder: str, stem: str, pending: Mapping[str, Any], own: Mapping[str, Any]) -> None:
        """Every rank: wait for this rank's save in flight, stage the shards, hand the write to the background."""
        from torch.distributed.checkpoint.state_dict_saver import async_save

        from .sharded import _writer

        t0 = time.perf_counter()
        waited = self.wait()
        tmp = prepare(self.dist, self.root, folder, stem)
        _trace("staging", stem)
        state, aliases = state_dicts(r)
        future = async_save(state, storage_writer=_writer(tmp, f"{folder}/{stem}"),
                            process_group=self.dist.save_group(), async_stager=self.stager())
        _trace("staged", stem)
        self.stats["staging"].append(time.perf_counter() - t0 - waited)
        self.stats["stall"].append(time.perf_counter() - t0)
        job = _Job(pending, folder, stem)
        data = own_bytes(own)
        threading.Thread(target=self._finish, args=(job, future, tmp, data, own.get("epoch"), aliases),
                         name="fsmtrain-sharded-writer", daemon=True).start()
        self._job = job

    def stager(self) -> Any:
        """DCP's stager, kept from one save to the next: its CPU copies are reused once shapes settle."""
        if self._stager is None:
            from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

            cuda = torch.cuda.is_available()
            self._stager = DefaultStager(StagingOptions(use_pinned_memory=cuda, use_shared_memory=False,
                                                        use_async_staging=False, use_non_blocking_copy=False))
        return self._stager

    def _finish(self, job: _Job, future: Any, tmp: Path, own: bytes, epoch: Any, aliases: dict[str, str]) -> None:
        try:
            _trace("writing", job.stem)
            meta = future.result()
            job.ref = finish(self.dist, self.root, job.folder, job.stem, tmp, meta, own, epoch, aliases)
            _trace("durable", job.stem)
        except BaseException as e:  # reported by the step that would have committed it (DCP's failures unwrapped)
            job.error = dcp_error(e)
        finally:
            self.stats["in_flight"].append(time.monotonic() - job.started)
            job.done.set()

    def late(self, state: Any, action: Any, terminal: bool, after: bool = False) -> dict[str, Any] | None:
        """The late updates of the save ``state["checkpoint_pending"]`` describes, the same on every rank (see
        :meth:`fsmtrain.train.saver.AsyncSaver.late`): the ranks agree on whether every part is done."""
        pending = state.get("checkpoint_pending")
        if not isinstance(pending, Mapping):
            return None
        codes = self._codes(pending)
        if all(c == _NONE for c in codes):
            return {"checkpoint_pending": None}  # lost with the processes that were writing it
        if _NONE in codes:
            raise CheckpointError(f"ranks {[i for i, c in enumerate(codes) if c == _NONE]} have no part of the "
                                  f"pending save {pending.get('path')}, which the others are writing")
        if _PENDING in codes:
            if after or not (terminal or set(action.reads) & set(LATE_KEYS)):
                return None
            self.wait()
            codes = self._codes(pending)
        job = self._job
        assert job is not None
        if _FAILED in codes:
            e = job.error
            if e is not None and (environmental(e) or self.dist.lost(e)):
                raise e  # the disk, or a rank lost: the runner stops the run, resumable
            why = f"{type(e).__name__}: {e}" if e is not None else \
                f"rank(s) {', '.join(str(i) for i, c in enumerate(codes) if c == _FAILED)} failed to write their part"
            raise CheckpointError(f"the asynchronous save of sharded checkpoint {job.folder}/{job.stem} failed: {why}")
        assert job.ref is not None
        return {**commit_updates(state, pending, job.ref), "checkpoint_pending": None}

    def _codes(self, pending: Mapping[str, Any]) -> list[int]:
        job = self._job
        if job is None or job.pending.get("path") != pending.get("path"):
            mine = _NONE
        elif not job.done.is_set():
            mine = _PENDING
        else:
            mine = _FAILED if job.error is not None else _DONE
        return [row[0] for row in self.dist.all_gather_ints([mine])]

    def close(self) -> None:
        """Wait for the save in flight, then free the stager's buffers."""
        super().close()
        if self._stager is not None:
            self._stager.close()
            self._stager = None
