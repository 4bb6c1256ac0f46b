"""Asynchronous checkpoints: a consistent copy in CPU memory, written in the background, committed when durable.

The checkpoint action (``checkpoint(async_=True)``) *stages* the state dicts — model, optimizer, scheduler,
scaler, RNG states, loader — into reusable CPU buffers (pinned on CUDA: the copy of a 1 GB model takes
milliseconds there), hands them to a writer thread and commits at once only ``checkpoint_pending``, a
description of the save.  Training goes on.  The writer serialises the staged copy straight into a temp file
while hashing it (one pass), fsyncs it, renames it to ``<stem>-<sha256[:12]>.pt`` and fsyncs the folder: the
same file a synchronous save writes.  The first step that commits after that takes the Ref into its own commit
(:meth:`AsyncSaver.late`, the runner's *late updates*): ``checkpoint``, ``checkpoints``, ``best`` — never before
the file is durable, so a committed Ref always names a complete file.

At most one save is in flight: the next checkpoint (and any action that reads a checkpoint key, and the
terminal action) first waits for it; the wait is measured (:attr:`AsyncSaver.stats`).  A process that dies
with a save in flight loses only that save: the next process finds ``checkpoint_pending`` with no save behind
it and commits ``checkpoint_pending: None``; the restore falls back to the newest committed Ref as always.
Files of a save in flight are protected from retention (:meth:`AsyncSaver.protects`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, environmental
from ..state import Ref

__all__ = ["LATE_KEYS", "AsyncSaver", "OneInFlight", "Stager", "better", "commit_updates", "fsync_dir", "save_streaming"]

LATE_KEYS = ("checkpoint", "checkpoints", "best", "checkpoint_pending")
"""The state keys an asynchronous save commits late (in the first step after its file is durable)."""

_TRACE = os.environ.get("FSMTRAIN_SAVE_TRACE")  # tests: a file that receives each phase of each save, flushed
_PAUSE = float(os.environ.get("FSMTRAIN_SAVE_PAUSE") or 0)  # tests: seconds each phase lasts at least (a slow disk)


def _trace(what: str, stem: str) -> None:
    if _TRACE:
        with open(_TRACE, "a", encoding="utf-8") as f:
            f.write(f"{os.getpid()} {what} {stem}\n")
    if _PAUSE:
        time.sleep(_PAUSE)


class _Hashing:
    """A write-only file that hashes and counts what passes through it (``torch.save`` writes to it).  A large
    write is hashed on a helper thread while this one writes it (both release the GIL): the hash costs little
    more than the write.  ``close()`` ends the helper."""

    BIG = 1 << 20

    def __init__(self, f: Any) -> None:
        self.f, self.sha, self.size = f, hashlib.sha256(), 0
        self._go, self._done = threading.Event(), threading.Event()
        self._buf: Any = None
        self._error: BaseException | None = None
        self._helper: threading.Thread | None = None

    def _hash_loop(self) -> None:
        while True:
            self._go.wait()
            self._go.clear()
            buf = self._buf
            if buf is None:
                return
            try:
                self.sha.update(buf)
            except BaseException as e:  # (re-raised by write)
                self._error = e
            self._done.set()

    def write(self, data: Any) -> int:
        n = data.nbytes if isinstance(data, memoryview) else len(data)
        if n < self.BIG:
            self.sha.update(data)
            self.f.write(data)
        else:
            if self._helper is None:
                self._helper = threading.Thread(target=self._hash_loop, name="fsmtrain-hash", daemon=True)
                self._helper.start()
            self._buf = data
            self._done.clear()
            self._go.set()
            try:
                self.f.write(data)
            finally:
                self._done.wait()  # (the buffer is torch's: it must not outlive this call)
                self._buf = None
            if self._error is not None:
                raise self._error
        self.size += n
        return n

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        if self._helper is not None:
            self._buf = None
            self._go.set()
            self._helper.join()
            self._helper = None


def fsync_dir(path: Path) -> None:
    """fsync a folder: a rename into it (or a new file in it) survives a power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_streaming(root: Path, folder: str, stem: str, payload: Mapping[str, Any]) -> Ref:
    """``torch.save`` ``payload`` as ``root/folder/<stem>-<sha256[:12]>.pt``, atomically and durably, hashing
    while it writes (no copy of the serialised bytes in memory, no second pass); return its Ref.

    The bytes are those ``torch.save`` writes to any file.  Temp file in the folder, fsync, rename, fsync the
    folder: a reader sees no file or the complete one.
    """
    base = root / folder
    if not base.is_dir():
        base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".{stem}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        with open(tmp, "wb") as f:
            out = _Hashing(f)
            try:
                torch.save(dict(payload), out)  # type: ignore[arg-type]  # (a file-like: write and flush)
            finally:
                out.close()
            f.flush()
            os.fsync(f.fileno())
            if hasattr(os, "posix_fadvise"):  # durable now: its pages need not crowd the page cache
                with contextlib.suppress(OSError):
                    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        digest = out.sha.hexdigest()
        rel = f"{folder}/{stem}-{digest[:12]}.pt"
        _trace("written", stem)
        os.replace(tmp, root / rel)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(base)
    return Ref(rel, digest, out.size)


class Stager:
    """Copies of state dicts in CPU memory, in buffers kept from one checkpoint to the next (the staging copy
    is bounded by one checkpoint and allocates nothing once shapes settle).  A tensor shared by two entries
    (tied weights) is copied once and stays shared, so the file holds it once.  CUDA tensors go to pinned
    buffers, copied asynchronously and synchronised once."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[Any, ...], torch.Tensor] = {}
        self.bytes = 0

    def stage(self, obj: Any) -> Any:
        seen: dict[tuple[Any, ...], torch.Tensor] = {}
        devices: set[Any] = set()
        used: set[tuple[Any, ...]] = set()
        out = self._copy(obj, (), seen, devices, used)
        for device in devices:  # every device copied from: the copies are complete before the writer reads them
            torch.cuda.synchronize(device)
        for path in [p for p in self._buffers if p not in used]:  # (buffers of a payload that changed shape)
            del self._buffers[path]
        self.bytes = sum(b.numel() * b.element_size() for b in self._buffers.values())
        return out

    def _copy(self, obj: Any, path: tuple[Any, ...], seen: dict[tuple[Any, ...], Any], devices: set[Any],
              used: set[tuple[Any, ...]]) -> Any:
        if isinstance(obj, torch.Tensor):
            if ("id", id(obj)) in seen:  # the same object again: the same copy (pickle refers to it)
                return seen[("id", id(obj))]
            t = obj.detach()
            storage = t.untyped_storage()
            key = (t.device, storage.data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
            if key in seen:  # another tensor over the same memory (tied weights): another view of the same copy
                view = seen[key].detach()
                seen[("id", id(obj))] = view
                return view
            buf = self._buffers.get(path)
            if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
                buf = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=t.is_cuda)
                self._buffers[path] = buf
            buf.copy_(t, non_blocking=t.is_cuda)
            if t.is_cuda:
                devices.add(t.device)
            seen[key] = seen[("id", id(obj))] = buf
            used.add(path)
            return buf
        if isinstance(obj, dict):
            if type(obj) is dict:
                return {k: self._copy(v, (*path, k), seen, devices, used) for k, v in obj.items()}
            out = copy.copy(obj)  # an OrderedDict state_dict keeps its _metadata; a defaultdict its factory
            out.clear()
            for k, v in obj.items():
                out[k] = self._copy(v, (*path, k), seen, devices, used)
            return out
        if isinstance(obj, list):
            return [self._copy(v, (*path, i), seen, devices, used) for i, v in enumerate(obj)]
        if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
            return tuple(self._copy(v, (*path, i), seen, devices, used) for i, v in enumerate(obj))
        return copy.deepcopy(obj)


class _Job:
    def __init__(self, pending: dict[str, Any], folder: str, stem: str, staged: Any) -> None:
        self.pending, self.folder, self.stem, self.staged = pending, folder, stem, staged
        self.ref: Ref | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.started = time.monotonic()
        self.seconds = 0.0  # in flight: from the hand-over to the durable file


class OneInFlight:
    """At most one save in flight: the newest handed over (``_job``: its ``folder``, ``stem`` and ``done`` event),
    waited for before the next, and the seconds each save blocked the loop, waited and was in flight (``stats``).
    The base of :class:`AsyncSaver` and of :class:`~fsmtrain.train.sharded_async.ShardedSaver`."""

    def __init__(self) -> None:
        self._job: Any = None  # the newest save handed over (in flight, or done and not yet committed)
        self.stats: dict[str, list[float]] = {"stall": [], "staging": [], "wait": [], "in_flight": []}

    def wait(self) -> float:
        """Block until the save in flight (if any) is durable or failed; the seconds waited."""
        job = self._job
        if job is None or job.done.is_set():
            return 0.0
        t0 = time.perf_counter()
        job.done.wait()
        waited = time.perf_counter() - t0
        self.stats["wait"].append(waited)
        return waited

    def close(self) -> None:
        """Wait for the save in flight (the Trainer closes)."""
        self.wait()

    def protects(self, relpath: str) -> bool:
        """Whether ``relpath`` (relative to the artifacts) may belong to the save in flight or not yet committed —
        its file, its folder or a file in it, or its temp file or folder: retention leaves such paths alone."""
        job = self._job
        if job is None or not relpath.startswith(f"{job.folder}/"):
            return False
        name = relpath[len(job.folder) + 1:].split("/")[0]
        return name.startswith(f"{job.stem}-") or name.startswith(f".{job.stem}.")


class AsyncSaver(OneInFlight):
    """One writer in the background for a Trainer's run: at most one save in flight (see the module's doc)."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.stager = Stager()

    # -- the checkpoint action's side ---------------------------------------------------------------------------
    def save(self, folder: str, stem: str, pending: dict[str, Any], payload: Mapping[str, Any]) -> None:
        """Wait for the save in flight, stage ``payload`` and hand it to a new writer thread."""
        t0 = time.perf_counter()
        waited = self.wait()
        _trace("staging", stem)
        staged = self.stager.stage(dict(payload))
        _trace("staged", stem)
        staging = time.perf_counter() - t0 - waited
        self.stats["staging"].append(staging)
        self.stats["stall"].append(time.perf_counter() - t0)
        job = _Job(dict(pending), folder, stem, staged)
        threading.Thread(target=self._write, args=(job,), name="fsmtrain-checkpoint-writer", daemon=True).start()
        self._job = job

    def _write(self, job: _Job) -> None:
        try:
            _trace("writing", job.stem)
            job.ref = save_streaming(self.root, job.folder, job.stem, job.staged)
            _trace("durable", job.stem)
        except BaseException as e:  # reported by the step that would have committed it
            job.error = e
        finally:
            job.staged = None  # (the buffers stay with the stager)
            job.seconds = time.monotonic() - job.started
            self.stats["in_flight"].append(job.seconds)
            job.done.set()

    # -- the runner's side: late updates ------------------------------------------------------------------------
    def late(self, state: Any, action: Any, terminal: bool, after: bool = False) -> dict[str, Any] | None:
        """What a step commits on behalf of the save ``state["checkpoint_pending"]`` describes (asked before its
        action runs, and after it with ``after=True``):

        * its file is durable: ``checkpoint``, ``checkpoints`` (the ``keep_last`` newest), ``best`` when its
          monitored value is the best so far, and ``checkpoint_pending: None``;
        * it is still being written: nothing (the step commits without it), unless the action reads a
          checkpoint key or is terminal (or is the next checkpoint): then it waits first;
        * no save of this process is behind it (the process that staged it died): ``checkpoint_pending: None``.

        Idempotent for a given state: a failed attempt's retry gets the same answer.
        """
        pending = state.get("checkpoint_pending")
        if not isinstance(pending, Mapping):
            return None
        job = self._job
        if job is None or job.pending.get("path") != pending.get("path"):  # (the path names the run and the step)
            return {"checkpoint_pending": None}  # lost with the process that was writing it
        if not job.done.is_set():
            if after or not (terminal or set(action.reads) & set(LATE_KEYS)):
                return None
            self.wait()
        if job.error is not None:
            e = job.error
            if environmental(e):
                raise e  # the disk (full, failing): the runner stops the run, resumable
            raise CheckpointError(f"the asynchronous save of checkpoint {job.folder}/{job.stem} failed: "
                                  f"{type(e).__name__}: {e}") from e
        assert job.ref is not None
        return {**commit_updates(state, pending, job.ref), "checkpoint_pending": None}


def commit_updates(state: Any, saved: Mapping[str, Any], ref: Ref) -> dict[str, Any]:
    """The updates that make ``ref`` the run's newest checkpoint: ``checkpoint``, ``checkpoints`` (the
    ``saved["keep_last"]`` newest) and ``best`` when ``saved["value"]`` of ``saved["metric"]`` is the best so far
    (``saved["mode"]``; NaN never is; no metric: every checkpoint is the best)."""
    keep_last = int(saved.get("keep_last") or 1)
    kept = [k for k in (state.get("checkpoints") or []) if k != ref][-(keep_last - 1):] if keep_last > 1 else []
    updates: dict[str, Any] = {"checkpoint": ref, "checkpoints": [*kept, ref]}
    monitor, value, mode = saved.get("metric"), saved.get("value"), saved.get("mode", "min")
    best = state.get("best")
    if monitor is None or (value is not None and better(value, best["value"] if best else None, mode)):
        updates["best"] = {"epoch": saved.get("epoch"), "metric": monitor, "value": value, "checkpoint": ref}
    return updates


def better(value: float, best: float | None, mode: str) -> bool:
    """Whether ``value`` beats ``best`` in ``mode`` (``"min"``/``"max"``); NaN and infinities never do."""
    if not math.isfinite(value):
        return False
    return best is None or (value < best if mode == "min" else value > best)
