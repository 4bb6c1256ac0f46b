"""Resources: the live, mutable objects training works with (never state, never logged).

A user factory ``build(state) -> Resources`` makes them from the run's
hyperparameters, at start and whenever a run is resumed; a checkpoint then
brings them to where the run stands.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..errors import ResourceError

__all__ = ["Resources", "batches", "epoch_seed"]


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s data order: a pure function of (seed, epoch)."""
    digest = hashlib.sha256(f"fsmtrain:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _is_data(value: Any) -> bool:
    if isinstance(value, TensorDataset):
        return True
    if isinstance(value, (tuple, list)):
        return len(value) > 0 and all(isinstance(t, torch.Tensor) for t in value)
    return isinstance(value, Dataset) or (hasattr(value, "__getitem__") and hasattr(value, "__len__"))


@attrs.define(eq=False)
class Resources:
    """What the ready-made actions train.

    ``train_data``/``val_data`` are a tuple of tensors ``(inputs, targets)``, a
    ``TensorDataset`` (both batched by index, fast), or any map-style
    ``Dataset`` (batched by a ``DataLoader``).  The data order of epoch ``e``
    comes from a generator seeded with ``epoch_seed(seed, e)``, never from the
    global RNG.  ``loss_fn(outputs, targets)`` must return the batch mean.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    train_data: Any
    val_data: Any = None
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = torch.nn.functional.cross_entropy
    batch_size: int = 64
    scheduler: Any = None
    device: torch.device = attrs.field(default=torch.device("cpu"), converter=torch.device)
    grad_clip: float | None = None
    num_workers: int = 0
    # Set by the Trainer: where this run's checkpoints go.
    artifacts: Path | None = None
    run_id: int | None = None

    def problems(self) -> list[str]:
        """What is wrong with these resources (empty when usable)."""
        out = []
        if not isinstance(self.model, torch.nn.Module):
            out.append(f"model must be a torch.nn.Module, got {type(self.model).__name__}")
        if not isinstance(self.optimizer, torch.optim.Optimizer):
            out.append(f"optimizer must be a torch.optim.Optimizer, got {type(self.optimizer).__name__}")
        if not _is_data(self.train_data):
            out.append(f"train_data must be a tuple of tensors or a Dataset, got {type(self.train_data).__name__}")
        elif _length(self.train_data) == 0:
            out.append("train_data is empty")
        if self.val_data is not None and not _is_data(self.val_data):
            out.append(f"val_data must be a tuple of tensors or a Dataset, got {type(self.val_data).__name__}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            out.append(f"batch_size must be a positive int, got {self.batch_size!r}")
        if self.scheduler is not None and not hasattr(self.scheduler, "state_dict"):
            out.append(f"scheduler must be a torch LR scheduler, got {type(self.scheduler).__name__}")
        if not callable(self.loss_fn):
            out.append(f"loss_fn must be callable, got {type(self.loss_fn).__name__}")
        return out


def _tensors(data: Any) -> tuple[torch.Tensor, ...] | None:
    if isinstance(data, TensorDataset):
        return tuple(data.tensors)
    if isinstance(data, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in data):
        return tuple(data)
    return None


def _length(data: Any) -> int:
    ts = _tensors(data)
    return len(ts[0]) if ts is not None else len(data)


def batches(data: Any, batch_size: int, *, generator: torch.Generator | None = None, device: torch.device | None = None,
            num_workers: int = 0) -> Iterator[tuple[Any, ...]]:
    """Batches of ``data``, shuffled by ``generator`` when one is given, in order otherwise."""
    host = _host_batches(data, batch_size, generator, num_workers)
    if device is None or device.type == "cpu":
        return host
    return (tuple(t.to(device, non_blocking=True) for t in batch) for batch in host)


def _host_batches(data: Any, batch_size: int, generator: torch.Generator | None,
                  num_workers: int) -> Iterator[tuple[Any, ...]]:
    ts = _tensors(data)
    if ts is not None:
        n = len(ts[0])
        if generator is None:  # in order: slices are views, no copy
            for i in range(0, n, batch_size):
                yield tuple(t[i:i + batch_size] for t in ts)
            return
        order = torch.randperm(n, generator=generator)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            yield tuple(t[idx] for t in ts)
        return
    # A DataLoader draws its workers' base seed from its generator: give it one, so
    # that iterating never consumes the global RNG.
    loader = DataLoader(data, batch_size=batch_size, shuffle=generator is not None,
                        generator=generator if generator is not None else torch.Generator().manual_seed(0),
                        num_workers=num_workers)
    for batch in loader:
        yield tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)


def check(resources: Any, factory: str) -> Resources:
    """``resources`` if the factory returned usable Resources, else :class:`ResourceError`."""
    if not isinstance(resources, Resources):
        raise ResourceError(f"the resource factory `{factory}` returned {type(resources).__name__}; "
                            "it must return fsmtrain.train.Resources(model=..., optimizer=..., train_data=...)")
    problems = resources.problems()
    if problems:
        raise ResourceError(f"the resource factory `{factory}` returned unusable resources: " + "; ".join(problems))
    return resources
