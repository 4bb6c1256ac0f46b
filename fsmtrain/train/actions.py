"""Ready-made training actions: an epoch, an evaluation, a checkpoint, the finish.

Each function returns an :class:`~fsmtrain.Action` working on
:class:`~fsmtrain.train.Resources`; assemble them with
:func:`~fsmtrain.train.training_machine` or in your own machine beside actions
you write yourself.  Metric histories are lists in state, one value per epoch
(``train_loss``) or per evaluation (``val_loss``, ``val_acc``), appended in O(1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..actions import Action
from ..errors import CheckpointError, InvalidDefinition, ResourceError
from ..state import Ref, State, append
from .checkpoints import FORMAT, capture_rng, load_checkpoint, save_checkpoint, weights_sha256
from .resources import Resources, batches, epoch_seed

__all__ = ["accuracy", "artifact_refs", "checkpoint", "evaluate", "export_best", "finish", "run_folder", "train_epoch"]

Metric = Callable[[torch.Tensor, torch.Tensor], "torch.Tensor | float"]


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose highest output is the target class."""
    return (outputs.argmax(dim=1) == targets).float().mean()


def _resources(resources: Any, name: str) -> Resources:
    if not isinstance(resources, Resources):
        raise ResourceError(f"action `{name}` needs fsmtrain.train.Resources as the run's resources, "
                            f"got {type(resources).__name__}; start the run with a Trainer")
    return resources


def run_folder(run_id: int | None) -> str:
    """The folder, relative to the log's artifacts, that holds a run's checkpoints."""
    return f"run{run_id}"


def train_epoch(*, name: str = "train_epoch") -> Action:
    """One pass over ``train_data``: writes ``epoch`` (+1) and ``steps`` (optimizer steps so far), appends to ``train_loss``.

    The data order comes from ``(seed, epoch)``; the LR scheduler, if any, steps
    once at the end of the epoch.
    """

    def fn(state: State, resources: Any) -> dict[str, Any]:
        r = _resources(resources, name)
        epoch = state["epoch"]
        g = torch.Generator().manual_seed(epoch_seed(state["seed"], epoch))
        model, opt, loss_fn, clip = r.model, r.optimizer, r.loss_fn, r.grad_clip
        model.train()
        total = 0.0
        n = steps = 0
        for inputs, targets in batches(r.train_data, r.batch_size, generator=g, device=r.device,
                                       num_workers=r.num_workers):
            loss = loss_fn(model(inputs), targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            steps += 1
            k = len(targets)
            total += loss.item() * k
            n += k
        if r.scheduler is not None:
            r.scheduler.step()
        return {"epoch": epoch + 1, "steps": state.get("steps", 0) + steps, "train_loss": append(total / n)}

    return Action(fn, name=name, reads=["epoch", "seed", "steps"], writes=["epoch", "steps", "train_loss"])


def evaluate(metrics: Mapping[str, Metric] | None = None, *, prefix: str = "val_", name: str = "evaluate") -> Action:
    """Loss and ``metrics`` on ``val_data``, appended to ``<prefix>loss`` and ``<prefix><metric>``.

    ``metrics`` maps a name to ``fn(outputs, targets)`` returning the batch mean;
    the default is ``{"acc": accuracy}``.  Runs under ``torch.no_grad`` in eval mode.
    """
    metrics = {"acc": accuracy} if metrics is None else dict(metrics)
    keys = {m: prefix + m for m in metrics}
    writes = [prefix + "loss", *keys.values()]
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
        with torch.no_grad():
            for inputs, targets in batches(r.val_data, r.batch_size * 4, device=r.device, num_workers=r.num_workers):
                out = model(inputs)
                k = len(targets)
                sums["loss"] += float(loss_fn(out, targets)) * k
                for m, f in metrics.items():
                    sums[m] += float(f(out, targets)) * k
                n += k
        if n == 0:
            raise ResourceError(f"action `{name}`: val_data is empty")
        updates: dict[str, Any] = {prefix + "loss": append(sums["loss"] / n)}
        updates.update({keys[m]: append(sums[m] / n) for m in metrics})
        return updates

    return Action(fn, name=name, reads=[], writes=writes)


def _better(value: float, best: float | None, mode: str) -> bool:
    if not math.isfinite(value):
        return False
    return best is None or (value < best if mode == "min" else value > best)


def checkpoint(monitor: str | None = "val_loss", *, mode: str = "min", keep_last: int = 3,
               name: str = "checkpoint") -> Action:
    """Save model, optimizer, scheduler, RNG states and position; commit the file's Ref.

    Writes ``checkpoint`` (the newest Ref), ``checkpoints`` (the ``keep_last``
    newest) and, when the newest value of ``monitor`` is the best so far
    (``mode`` ``min``/``max``; NaN never is), ``best`` = ``{"epoch", "metric",
    "value", "checkpoint"}``.  Files that fall out of both are deleted after the
    step commits (by the Trainer), never before.
    """
    problems = []
    if mode not in ("min", "max"):
        problems.append(f"mode must be 'min' or 'max', got {mode!r}")
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
        problems.append(f"keep_last must be an int >= 1, got {keep_last!r}")
    if monitor is not None and (not isinstance(monitor, str) or not monitor):
        problems.append(f"monitor must be a metric key or None, got {monitor!r}")
    if problems:
        raise InvalidDefinition(f"action `{name}`", problems)
    reads = ["epoch", "checkpoints", "best"] + ([monitor] if monitor else [])

    def fn(state: State, resources: Any) -> dict[str, Any]:
        r = _resources(resources, name)
        if r.artifacts is None:
            raise CheckpointError(f"action `{name}` has nowhere to write: run it with a Trainer and a log")
        epoch = state["epoch"]
        value = None
        if monitor is not None:
            history = state.get(monitor)
            if not history:
                raise CheckpointError(
                    f"action `{name}` monitors `{monitor}`, but the state has no value for it yet; "
                    f"make an action that writes `{monitor}` run before `{name}`")
            value = float(history[-1])
        payload = {"format": FORMAT, "epoch": epoch, "model": r.model.state_dict(),
                   "optimizer": r.optimizer.state_dict(),
                   "scheduler": r.scheduler.state_dict() if r.scheduler is not None else None,
                   "rng": capture_rng()}
        ref = save_checkpoint(r.artifacts, run_folder(r.run_id), f"e{epoch:05d}", payload)
        kept = [k for k in state["checkpoints"] if k != ref][-(keep_last - 1):] if keep_last > 1 else []
        updates: dict[str, Any] = {"checkpoint": ref, "checkpoints": [*kept, ref]}
        best = state["best"]
        if monitor is None or (value is not None and _better(value, best["value"] if best else None, mode)):
            updates["best"] = {"epoch": epoch, "metric": monitor, "value": value, "checkpoint": ref}
        return updates

    return Action(fn, name=name, reads=reads, writes=["checkpoint", "checkpoints", "best"])


def finish(*, name: str = "finish") -> Action:
    """The terminal action: records ``weights_sha256`` of the final model."""

    def fn(state: State, resources: Any) -> dict[str, Any]:
        r = _resources(resources, name)
        return {"weights_sha256": weights_sha256(r.model)}

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
        payload = load_checkpoint(r.artifacts, best["checkpoint"], map_location="cpu")
        exported = {"format": FORMAT, "model": payload["model"], "epoch": best["epoch"], "metric": best["metric"],
                    "value": best["value"]}
        return {"exported": save_checkpoint(r.artifacts, run_folder(r.run_id), "model", exported)}

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
