"""Ready-made training actions: an epoch, an evaluation, a checkpoint, the finish.

Each function returns an :class:`~fsmtrain.Action` working on
:class:`~fsmtrain.train.Resources`; assemble them with
:func:`~fsmtrain.train.training_machine` or in your own machine beside actions
you write yourself.  Metric histories are lists in state, one value per epoch
(``train_loss``) or per evaluation (``val_loss``, ``val_acc``), appended in O(1).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..actions import Action
from ..errors import CheckpointError, FsmtrainError, InvalidDefinition, MetricError, ResourceError, environmental
from ..state import Ref, State, append
from .checkpoints import FORMAT, capture_rng, load_checkpoint, save_checkpoint, weights_sha256
from .resources import Resources, batches, feed, shard, stateful
from .saver import commit_updates
from .sharded import (
    even_out,
    full_model_state,
    full_weights,
    is_sharded,
    is_sharded_ref,
    local_buffers,
    save_sharded,
    verify_sharded,
)

__all__ = ["accuracy", "artifact_refs", "checkpoint", "evaluate", "export_best", "finish", "fits_a_classifier",
           "run_folder", "train_epoch", "train_steps"]

Metric = Callable[[torch.Tensor, torch.Tensor], "torch.Tensor | float"]


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose highest output is the target class, with ``cross_entropy``'s conventions: logits
    ``(N, C)`` against class indices ``(N,)``, or ``(N, C, d1, ...)`` against ``(N, d1, ...)`` (the mean over every
    position).  Other shapes raise ``ValueError`` naming them (see :func:`fits_a_classifier`)."""
    if not fits_a_classifier(outputs, targets):
        raise ValueError(f"accuracy needs logits (N, C, ...) and class indices (N, ...), got outputs of shape "
                         f"{tuple(outputs.shape)} and targets of shape {tuple(targets.shape)}")
    return (outputs.argmax(dim=1) == targets).float().mean()


def fits_a_classifier(outputs: Any, targets: Any) -> bool:
    """Whether ``outputs`` are logits ``(N, C, d1, ...)`` for class-index ``targets`` ``(N, d1, ...)``, the shapes
    ``cross_entropy`` takes: what the default accuracy needs.  (A sequence model's ``(B, T, V)`` logits against
    ``(B, T)`` targets do not fit: ``cross_entropy`` wants them as ``(B, V, T)``.)"""
    if not (isinstance(outputs, torch.Tensor) and isinstance(targets, torch.Tensor)) or outputs.dim() < 2:
        return False
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        return False
    return tuple(targets.shape) == (outputs.shape[0], *outputs.shape[2:])


def _resources(resources: Any, name: str) -> Resources:
    if not isinstance(resources, Resources):
        raise ResourceError(f"action `{name}` needs fsmtrain.train.Resources as the run's resources, "
                            f"got {type(resources).__name__}; start the run with a Trainer")
    return resources


def run_folder(run_id: int | None) -> str:
    """The folder, relative to the log's artifacts, that holds a run's checkpoints."""
    return f"run{run_id}"


def _plateau(scheduler: Any) -> bool:
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


COUNTERS = ("epoch", "offset", "steps", "chunks")
"""Where training stands: epochs completed, samples of the current epoch consumed (its permutation's
offset), optimizer steps so far, training actions (chunks) so far."""


def _count(value: Any, what: str, name: str, *, none: bool) -> int | None:
    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ResourceError(f"action `{name}`: {what} must be an int >= 1{' or None' if none else ''}, got {value!r}")
    return value


def _setting_or(value: Any, what: str, name: str, *, none: bool) -> Any:
    """An int (checked now), or a ``setting("key")`` read from the run's state when the action runs."""
    from ..stopping import Setting

    if isinstance(value, Setting):
        return value
    try:
        return _count(value, what, name, none=none)
    except ResourceError as e:
        raise InvalidDefinition(f"action `{name}`", [str(e).split(": ", 1)[1]]) from None


def train_steps(n: Any = None, *, accumulate: Any = 1, name: str | None = None) -> Action:
    """Train for ``n`` optimizer steps from the data cursor, then commit: a resumable point every ``n`` steps.

    State holds the cursor: ``epoch`` (epochs completed) and ``offset`` (samples of the current
    epoch consumed, in the order of its permutation, a pure function of ``(seed, epoch)``).  A
    chunk starts at the cursor — no fast-forwarding, no sampler state — and stops after ``n`` steps
    or at the epoch's end, whichever comes first: when the cursor wraps, ``epoch`` advances.  Each
    chunk appends its own sample-weighted mean loss (over every rank's samples) to ``train_loss`` and
    the learning rate at its first step to ``learning_rate``: one point per committed chunk, the curve
    one watches in a long epoch (a chunk that finds the data already exhausted trains nothing and
    appends nothing).  ``n=None`` trains to the epoch's end (:func:`train_epoch`): one value per epoch.

    ``accumulate=k``: each optimizer step sums the gradients of ``k`` batches, each loss weighted by
    its share of the step's samples (the mean over all of them, as one batch of ``k * batch_size``
    would compute); a chunk never ends inside an accumulation.  ``n`` and ``accumulate`` may be
    ``setting("key")``: read from the run's state when the action runs.

    Writes ``epoch``, ``offset``, ``steps``, ``chunks`` (training actions so far), ``steps_per_epoch``,
    and appends to ``train_loss`` and ``learning_rate`` (the first parameter group's learning rate).
    Autocast follows ``Resources.precision``; the LR scheduler steps at each epoch's end
    (``scheduler_interval="step"``: after each step).
    """
    label = name or ("train_epoch" if n is None else "train_steps")
    n = _setting_or(n, "n (optimizer steps per chunk)", label, none=True)
    accumulate = _setting_or(accumulate, "accumulate", label, none=False)

    def fn(state: State, resources: Any) -> dict[str, Any]:
        from ..stopping import Setting

        r = _resources(resources, label)
        steps_n = _count(state[n.key], f"state[{n.key!r}]", label, none=True) if isinstance(n, Setting) else n
        k = _count(state[accumulate.key], f"state[{accumulate.key!r}]", label, none=False) \
            if isinstance(accumulate, Setting) else accumulate
        assert k is not None
        seed, epoch = state["seed"], state["epoch"]
        offset = state.get("offset") or 0
        total, count = 0.0, 0  # this chunk's (summed over the ranks at its end)
        model, opt, loss_fn, clip, scaler = r.net(), r.optimizer, r.loss_fn, r.grad_clip, r.grad_scaler()
        per_step = r.scheduler is not None and not _plateau(r.scheduler) and r.scheduler_interval == "step"
        model.train()
        lr = float(opt.param_groups[0]["lr"])
        data = feed(r, seed, epoch, offset)
        done = 0
        while steps_n is None or done < steps_n:
            group: list[tuple[Any, ...]] = []
            while len(group) < k:
                batch = data.take()
                if batch is None:
                    break
                group.append(batch)
            if not group:
                break
            opt.zero_grad(set_to_none=True)
            size = sum(len(b[-1]) for b in group)
            for j, (*inputs, targets) in enumerate(group):
                # DDP: gradients are averaged over the ranks once per optimizer step, at its last batch
                sync_off = getattr(model, "no_sync", None) if j < len(group) - 1 else None
                quiet = sync_off() if callable(sync_off) else contextlib.nullcontext()
                with quiet:
                    with r.autocast():
                        loss = loss_fn(model(*inputs), targets)  # (a training step that raises is an attempt)
                    weighted = loss if len(group) == 1 else loss * (len(targets) / size)
                    (scaler.scale(weighted) if scaler is not None else weighted).backward()
                total += loss.item() * len(targets)
                count += len(targets)
            if clip is not None:
                if scaler is not None:
                    scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            if per_step:
                r.scheduler.step()
            done += 1
        if r.dist is not None:  # the epoch's loss is over every rank's samples
            total, summed = r.dist.all_sum([total, float(count)])
            count = int(summed)
        # The epoch ends when its samples are all consumed (a stateful loader that cannot say how many it holds
        # is seen to end when the next chunk finds it exhausted).
        wrapped = data.exhausted or 0 <= data.total <= data.offset
        updates: dict[str, Any] = {"steps": state.get("steps", 0) + done}
        if n is not None:
            updates["chunks"] = (state.get("chunks") or 0) + 1
        samples = data.total
        spe = _steps_per_epoch(samples, r.batch_size * data.world, k) if samples >= 0 else None
        if spe is not None and state.get("steps_per_epoch") != spe and (n is not None or "steps_per_epoch" in state):
            updates["steps_per_epoch"] = spe
        if n is None or count:  # a point per chunk (a whole epoch's chunk: even an empty one, as NaN)
            updates.update(train_loss=append(total / count if count else math.nan), learning_rate=append(lr))
        if state.get("epoch_loss") is not None:  # a run begun before chunks had their own points carried sums
            updates["epoch_loss"] = None
        if wrapped:
            updates["epoch"] = epoch + 1
            if offset:
                updates["offset"] = 0
            if r.scheduler is not None and not _plateau(r.scheduler) and not per_step:
                r.scheduler.step()
        else:
            updates["offset"] = data.offset
        return updates

    return Action(fn, name=label, reads=["epoch", "seed", "steps", "offset", "epoch_loss", "chunks", "steps_per_epoch",
                                          *(x.key for x in (n, accumulate) if hasattr(x, "key"))],
                  writes=["epoch", "steps", "offset", "epoch_loss", "chunks", "steps_per_epoch", "train_loss",
                          "learning_rate"])


def _steps_per_epoch(samples: int, batch_size: int, accumulate: int) -> int:
    batches = -(-samples // batch_size)
    return -(-batches // accumulate)


def train_epoch(*, accumulate: Any = 1, name: str = "train_epoch") -> Action:
    """One pass over ``train_data`` (:func:`train_steps` to the epoch's end): writes ``epoch`` (+1) and ``steps``
    (optimizer steps so far), appends to ``train_loss`` and ``learning_rate`` (the first parameter group's learning
    rate at the epoch's first step, so a scheduler's work is in the history).

    The data order comes from ``(seed, epoch)``; the LR scheduler, if any, steps
    once at the end of the epoch (a ``ReduceLROnPlateau`` is stepped by ``evaluate``).
    """
    return train_steps(None, accumulate=accumulate, name=name)


def evaluate(metrics: Mapping[str, Metric] | None = None, *, prefix: str = "val_", name: str = "evaluate",
             at: str | None = None) -> Action:
    """Loss and ``metrics`` on ``val_data``, appended to ``<prefix>loss`` and ``<prefix><metric>``.

    ``metrics`` maps a name to ``fn(outputs, targets)`` returning the batch mean;
    the default is ``{"acc": accuracy}``.  Runs under ``torch.no_grad`` in eval mode,
    with the autocast of ``Resources.precision``.  ``at`` (optional) names a state key
    set to the step count when it runs (a schedule "every N steps" reads it).
    """
    default = {"acc"} if metrics is None else set()
    metrics = {"acc": accuracy} if metrics is None else dict(metrics)
    keys = {m: prefix + m for m in metrics}
    writes = [prefix + "loss", *keys.values()] + ([at] if at else [])
    if len(set(writes)) != len(writes):
        raise InvalidDefinition(f"action `{name}`", [f"metric names collide with `{prefix}loss`"])

    def fn(state: State, resources: Any) -> dict[str, Any]:
        r = _resources(resources, name)
        if r.val_data is None:
            raise ResourceError(f"action `{name}` needs val_data, but the resources have none")
        model, loss_fn = r.model, r.loss_fn
        model.eval()
        sums = dict.fromkeys(["loss", *metrics], 0.0)
        n = 0
        rank, world = r.shard()  # each rank evaluates its share; the sums are added over the ranks
        skipped: set[str] = set()
        ran, sample = 0, None
        with torch.no_grad():
            for *inputs, targets in batches(shard(r.val_data, rank, world), r.batch_size * 4, device=r.device,
                                            num_workers=r.num_workers, collate_fn=r.collate_fn,
                                            worker_init_fn=r.worker_init_fn):
                with r.autocast():
                    out = model(*inputs)
                    batch_loss = _measured(name, "the loss (Resources.loss_fn)", loss_fn, out, targets)
                k = len(targets)
                sums["loss"] += batch_loss * k
                for m, f in metrics.items():
                    if f is accuracy and m in default and not fits_a_classifier(out, targets):
                        skipped.add(m)  # the default accuracy where the shapes are not a classifier's: left out
                        continue
                    sums[m] += _measured(name, f"metric `{m}`", f, out, targets) * k
                n += k
                ran, sample = ran + 1, inputs
            if r.dist is not None and is_sharded(model):  # FSDP: as many forwards (all-gathers) on every rank
                even_out(r, ran, sample)
        if skipped:
            _warn_skipped(name, out, targets)
        if r.dist is not None:
            got = r.dist.all_sum([*sums.values(), float(n)])
            sums, n = dict(zip(sums, got[:-1], strict=True)), int(got[-1])
        if n == 0:
            raise ResourceError(f"action `{name}`: val_data is empty")
        means = {prefix + "loss": sums["loss"] / n, **{keys[m]: sums[m] / n for m in metrics if m not in skipped}}
        if _plateau(r.scheduler):  # ReduceLROnPlateau steps with the metric it watches, once per evaluation
            key = r.scheduler_metric or prefix + "loss"
            if key not in means:
                raise ResourceError(f"action `{name}`: scheduler_metric `{key}` is not one this evaluation computes "
                                    f"({', '.join(means)})")
            r.scheduler.step(means[key])
        updates: dict[str, Any] = {k: append(v) for k, v in means.items()}
        if at:
            updates[at] = state.get("steps", 0)
        return updates

    return Action(fn, name=name, reads=["steps"] if at else [], writes=writes)


def _measured(action: str, what: str, fn: Callable[[Any, Any], Any], outputs: Any, targets: Any) -> float:
    """``float(fn(outputs, targets))``, or :class:`MetricError` naming ``what`` and the shapes: a metric that
    raises on a batch raises on it again (deterministic), so the step is not retried."""
    try:
        return float(fn(outputs, targets))
    except Exception as e:
        if isinstance(e, FsmtrainError) or environmental(e):
            raise
        raise _metric_error(action, what, e, outputs, targets) from e


def _metric_error(action: str, what: str, e: BaseException, outputs: Any, targets: Any) -> MetricError:
    first = (str(e).strip().splitlines() or [""])[0]
    return MetricError(
        f"action `{action}`: {what} raised {type(e).__name__}: {first[:300]} — on outputs {_shape(outputs)} and "
        f"targets {_shape(targets)}. A metric is fn(outputs, targets) returning the batch's mean as a number (a 0-d "
        "tensor will do); the loss, fn(outputs, targets) returning a 0-d tensor (outputs.loss for a model that "
        "computes its own). Nothing of this step was written and it is not retried (the same batch would raise "
        "again): fix it, or leave the metric out (evaluate(metrics={...})), and run the same command again")


def _shape(x: Any) -> str:
    shape = getattr(x, "shape", None)
    if shape is not None:
        return f"of shape {tuple(shape)}"
    return f"of type {type(x).__name__}"


_WARNED: set[str] = set()


def _warn_skipped(action: str, outputs: Any, targets: Any) -> None:
    """Say once per process that the default accuracy is left out, and why."""
    if action in _WARNED:
        return
    _WARNED.add(action)
    import warnings

    warnings.warn(f"`{action}`: the default accuracy is skipped: outputs of shape {tuple(outputs.shape)} and targets "
                  f"of shape {tuple(targets.shape)} are not a classifier's logits (N, C, ...) and class indices "
                  "(N, ...); the loss is still recorded. Pass evaluate(metrics={...}) with your own metric, or "
                  "metrics={} to say none", stacklevel=2)


def checkpoint(monitor: str | None = "val_loss", *, mode: str = "min", keep_last: int = 3,
               name: str = "checkpoint", at: str | None = None, async_: Any = False,
               sync_when: Any = None) -> Action:
    """Save model, optimizer, scheduler (and a GradScaler's), RNG states and position; commit the file's Ref.

    Writes ``checkpoint`` (the newest Ref), ``checkpoints`` (the ``keep_last``
    newest) and, when the newest value of ``monitor`` is the best so far
    (``mode`` ``min``/``max``; NaN never is), ``best`` = ``{"epoch", "metric",
    "value", "checkpoint"}``; before the first evaluation (its history still
    empty) there is no best yet.  Files that fall out of both are deleted after
    the step commits (by the Trainer), never before.  ``at`` (optional) names a
    state key set to the step count (a schedule "every N steps" reads it).

    ``async_=True``: the state dicts are copied into reusable CPU buffers and written by a background thread
    while training goes on; the step commits ``checkpoint_pending`` (what is being saved) and the first step
    that commits after the file is durable commits ``checkpoint``, ``checkpoints`` and ``best`` (see
    :mod:`fsmtrain.train.saver`).  At most one save is in flight: this action first waits for the previous one.
    ``async_="auto"``: asynchronous when the model's and optimizer's tensors hold at least
    :data:`AUTO_ASYNC_BYTES` (64 MiB; below that a synchronous save takes milliseconds and a background one
    buys nothing).  ``sync_when`` (a condition; ``training_machine`` passes its stop condition): where it holds, the save is
    synchronous (the run's last checkpoint: nothing is left to overlap it with, and a gate or the end follows).
    A distributed run saves synchronously, unless its model is sharded with FSDP2: then each rank's part is
    written in the background (:mod:`fsmtrain.train.sharded_async`).
    """
    problems = []
    if mode not in ("min", "max"):
        problems.append(f"mode must be 'min' or 'max', got {mode!r}")
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
        problems.append(f"keep_last must be an int >= 1, got {keep_last!r}")
    if monitor is not None and (not isinstance(monitor, str) or not monitor):
        problems.append(f"monitor must be a metric key or None, got {monitor!r}")
    from ..stopping import Setting

    if not isinstance(async_, (bool, Setting)) and async_ != "auto":
        problems.append(f"async_ must be True, False, 'auto' or setting('key') (the state says 'async', 'sync' or "
                        f"'auto'), got {async_!r}")
    if sync_when is not None and not callable(sync_when):
        problems.append(f"sync_when must be a condition (or None), got {type(sync_when).__name__}")
    if problems:
        raise InvalidDefinition(f"action `{name}`", problems)
    reads = ["epoch", "offset", "steps", "checkpoints", "best"] + ([monitor] if monitor else []) \
        + (["checkpoint_pending"] if async_ is not False else []) + ([async_.key] if isinstance(async_, Setting) else [])
    if async_ is not False and sync_when is not None:
        reads += sorted(k for k in getattr(sync_when, "keys", ()) if k not in reads)

    def fn(state: State, resources: Any) -> dict[str, Any]:
        r = _resources(resources, name)
        if r.artifacts is None and (r.dist is None or r.dist.writer):
            raise CheckpointError(f"action `{name}` has nowhere to write: run it with a Trainer and a log")
        epoch = state["epoch"]
        value = None
        if monitor is not None:
            history = state.get(monitor)
            if history is None:
                raise CheckpointError(
                    f"action `{name}` monitors `{monitor}`, but the state has no value for it yet; "
                    f"make an action that writes `{monitor}` run before `{name}`")
            value = float(history[-1]) if history else None
        rng = capture_rng()
        sharded = r.dist is not None and is_sharded(r.model)
        ranks = r.dist.gather(rng) if r.dist is not None and not sharded else None  # every rank's RNG, on the log's
        offset = state.get("offset") or 0
        stem = f"e{epoch:05d}" if not offset else f"e{epoch:05d}s{state.get('steps', 0)}"  # mid-epoch: its step
        saved = {"path": f"{run_folder(r.run_id)}/{stem}", "epoch": epoch, "metric": monitor, "value": value,
                 "mode": mode, "keep_last": keep_last}
        wanted = _async_mode(state.get(async_.key), async_.key, name) if isinstance(async_, Setting) else async_
        if wanted == "auto":
            wanted = _state_bytes(r) >= AUTO_ASYNC_BYTES
        background = wanted and r.saver is not None and not _holds(sync_when, state) and (r.dist is None or sharded)
        if sharded:  # FSDP2: every rank writes its shards and its own state (spec/training.md §6b)
            own = {"epoch": epoch, "rng": rng, "buffers": local_buffers(r.model), **_side_state(r)}
            if background:
                r.saver.save(r, run_folder(r.run_id), stem, saved, own)
                return {"checkpoint_pending": saved, **({at: state.get("steps", 0)} if at else {})}
            if r.saver is not None:
                r.saver.wait()
            return _committed(state, saved, save_sharded(r, r.artifacts or Path(), run_folder(r.run_id), stem, own),
                              async_ is not False, at)
        ref: Ref | None = None
        if r.dist is None or r.dist.writer:
            side = _side_state(r)
            payload = {"format": FORMAT, "epoch": epoch, "model": r.model.state_dict(),
                       "optimizer": r.optimizer.state_dict(), "scheduler": side.pop("scheduler"), "rng": rng, **side}
            if ranks is not None:  # ("rng" is rank 0's, whichever rank writes: the same file either way)
                payload.update(rng=ranks[0], rng_ranks=ranks, world_size=len(ranks))
            if background:
                r.saver.save(run_folder(r.run_id), stem, saved, payload)
                return {"checkpoint_pending": saved, **({at: state.get("steps", 0)} if at else {})}
            assert r.artifacts is not None
            ref = save_checkpoint(r.artifacts, run_folder(r.run_id), stem, payload)
        if r.dist is not None:  # the file is complete and durable on the log's rank: every rank records its Ref
            ref = r.dist.agree(ref)
        assert ref is not None
        return _committed(state, saved, ref, async_ is not False, at)

    return Action(fn, name=name, reads=reads, writes=["checkpoint", "checkpoints", "best"] + ([at] if at else [])
                  + (["checkpoint_pending"] if async_ is not False else []))


def _side_state(r: Resources) -> dict[str, Any]:
    """What a checkpoint holds beside the model and the optimizer: the LR scheduler's state (None without one),
    a GradScaler's and a stateful loader's (where there are)."""
    side: dict[str, Any] = {"scheduler": r.scheduler.state_dict() if r.scheduler is not None else None}
    if r.scaler is not None:
        side["scaler"] = r.scaler.state_dict()
    if stateful(r.train_data):
        side["loader"] = r.train_data.state_dict()
    return side


def _committed(state: State, saved: dict[str, Any], ref: Ref, may_pend: bool, at: str | None) -> dict[str, Any]:
    """A synchronous checkpoint step's updates: the durable ``ref`` committed as ``saved`` says."""
    updates = commit_updates(state, saved, ref)
    if may_pend and state.get("checkpoint_pending") is not None:
        updates["checkpoint_pending"] = None  # (a save staged where no writer commits it: a distributed resume)
    if at:
        updates[at] = state.get("steps", 0)
    return updates


def _holds(condition: Any, state: State) -> bool:
    """Whether ``condition`` holds on ``state``; False where it cannot be judged (a time budget on a state
    without elapsed time, as a redo's): the save is then asynchronous, the safe default."""
    if condition is None:
        return False
    try:
        return bool(condition(state))
    except Exception:
        return False


AUTO_ASYNC_BYTES = 64 << 20
"""``checkpoint(async_="auto")`` saves in the background from this many bytes of model and optimizer tensors."""


def _state_bytes(r: Resources) -> int:
    """The bytes of the model's and the optimizer's tensors (what a checkpoint mostly holds)."""
    total = sum(t.numel() * t.element_size() for t in r.model.state_dict().values() if isinstance(t, torch.Tensor))
    for per_param in r.optimizer.state.values():
        total += sum(t.numel() * t.element_size() for t in per_param.values() if isinstance(t, torch.Tensor))
    return total


def _async_mode(value: Any, key: str, name: str) -> bool | str:
    if value in ("async", True):
        return True
    if value in ("sync", False, None):
        return False
    if value == "auto":
        return "auto"
    raise ResourceError(f"action `{name}`: state[{key!r}] must be 'async', 'sync' or 'auto', got {value!r}")


def finish(*, name: str = "finish") -> Action:
    """The terminal action: records ``weights_sha256`` of the final model."""

    def fn(state: State, resources: Any) -> dict[str, Any]:
        r = _resources(resources, name)
        return {"weights_sha256": weights_sha256(full_weights(r.model) if is_sharded(r.model) else r.model)}

    return Action(fn, name=name, reads=[], writes=["weights_sha256"])


def export_best(*, name: str = "export") -> Action:
    """Export the best checkpoint's model weights as a file of their own: writes ``exported`` (a Ref).

    The file, ``run<ID>/model-<sha256[:12]>.pt`` in the artifacts, holds
    ``{"format", "model": state_dict, "epoch", "metric", "value"}``; load it with
    ``torch.load(path, weights_only=True)`` and ``model.load_state_dict(...["model"])``.
    The best checkpoint is verified (size, sha256) before it is read.
    """

    def fn(state: State, resources: Any) -> dict[str, Any]:
        r = _resources(resources, name)
        best = state["best"]
        if not best or not isinstance(best.get("checkpoint"), Ref):
            raise CheckpointError(f"action `{name}`: the run has no best checkpoint to export")
        if r.artifacts is None:
            raise CheckpointError(f"action `{name}` has nowhere to write: run it with a Trainer and a log")
        ref = best["checkpoint"]
        if r.dist is not None and not r.dist.writer:  # (the log's rank writes the file: the others take its Ref)
            said = r.dist.agree(None)
            if said[0] == "error":
                raise CheckpointError(f"action `{name}` failed on the log's rank: {said[1]}")
            return {"exported": said[1]}
        try:
            model = full_model_state(r.artifacts, ref) if is_sharded_ref(ref) and verify_sharded(r.artifacts, ref) \
                else load_checkpoint(r.artifacts, ref, map_location="cpu")["model"]
            exported = {"format": FORMAT, "model": model, "epoch": best["epoch"], "metric": best["metric"],
                        "value": best["value"]}
            made = save_checkpoint(r.artifacts, run_folder(r.run_id), "model", exported)
        except Exception as e:
            if r.dist is not None:
                r.dist.agree(("error", f"{type(e).__name__}: {e}"))
            raise
        if r.dist is not None:
            r.dist.agree(("ref", made))
        return {"exported": made}

    return Action(fn, name=name, reads=["best"], writes=["exported"])


def artifact_refs(state: State | Mapping[str, Any]) -> list[Ref]:
    """Every file a state names: its checkpoints (:func:`kept_refs`) and an exported model."""
    refs = kept_refs(state)
    exported = state.get("exported")
    if isinstance(exported, Ref) and exported not in refs:
        refs.append(exported)
    return refs


def kept_refs(state: State | Mapping[str, Any]) -> list[Ref]:
    """The checkpoint Refs a state still needs: newest, kept and best."""
    refs: list[Ref] = []
    for r in (state.get("checkpoint"), *(state.get("checkpoints") or ()),
              (state.get("best") or {}).get("checkpoint")):
        if isinstance(r, Ref) and r not in refs:
            refs.append(r)
    return refs
