"""Resources: the live, mutable objects training works with (never state, never logged).

A user factory ``build(state) -> Resources`` makes them from the run's
hyperparameters, at start and whenever a run is resumed; a checkpoint then
brings them to where the run stands.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..errors import ResourceError
from .checkpoints import seed_everything
from .lifetime import loader_worker_init

__all__ = ["PRECISIONS", "Resources", "batches", "epoch_order", "epoch_seed", "sample_seed"]

PRECISIONS = ("32", "bf16", "fp16")
"""``Resources.precision``: float32, bfloat16 autocast (CPU and CUDA), float16 autocast with a GradScaler (CUDA)."""


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s data order: a pure function of (seed, epoch)."""
    digest = hashlib.sha256(f"fsmtrain:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of sample ``index``'s randomness (augmentation) in epoch ``epoch``: a pure function of the three."""
    digest = hashlib.sha256(f"fsmtrain:{seed}:{epoch}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s own random stream (dropout...) in a distributed run."""
    digest = hashlib.sha256(f"fsmtrain:rank:{seed}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def epoch_order(n: int, seed: int, epoch: int, *, loader: bool = False) -> torch.Tensor:
    """The order in which epoch ``epoch`` visits ``n`` samples: a permutation that is a pure function of
    (seed, epoch).  ``loader=True`` is the order a map-style Dataset gets (a DataLoader's generator first
    draws its workers' base seed, then the permutation)."""
    g = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    if loader:
        torch.empty((), dtype=torch.int64).random_(generator=g)
    return torch.randperm(n, generator=g)


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
    ``Dataset`` (batched by a ``DataLoader`` that fsmtrain makes, with
    ``num_workers``, ``collate_fn`` and ``worker_init_fn``; its workers die with the
    training process, then run ``worker_init_fn``).  Not a ``DataLoader``: it would choose the
    data order itself; here the order of epoch ``e`` comes from a generator seeded
    with ``epoch_seed(seed, e)``, never from the global RNG, which is what lets a
    resumed run continue exactly where it stopped.  ``loss_fn(outputs, targets)``
    (default ``cross_entropy``) must return the batch mean as a 0-d tensor; for a model that computes its own
    loss (Hugging Face's return ``outputs.loss``), ``loss_fn=lambda outputs, targets: outputs.loss``.  A metric
    (or the loss) that raises in ``evaluate`` is a ``MetricError`` naming the shapes, never retried; in training,
    a step that raises is an attempt (retried from the last checkpoint, as any error).  ``grad_clip`` (a float) clips
    the gradients' global norm to it before every optimizer step (``clip_grad_norm_``, after unscaling with
    fp16).  ``device`` (e.g. ``"cuda"``) is where batches go;
    put the model there in the factory.  ``scheduler`` is stepped once per epoch
    (``scheduler_interval="step"``: after every optimizer step, as OneCycle and
    warm-up schedules want); a ``ReduceLROnPlateau`` is stepped by ``evaluate``
    instead, with the value of ``scheduler_metric`` (default: that evaluation's
    loss).  ``precision`` is ``"32"``, ``"bf16"`` (autocast to bfloat16, CPU or
    CUDA) or ``"fp16"`` (autocast to float16 with a GradScaler, CUDA only).
    With a map-style Dataset, ``seed_samples`` (default) seeds the global RNGs
    (torch, Python, NumPy) from ``sample_seed(seed, epoch, index)`` around each
    ``dataset[index]``, so random augmentation gives the same sample whatever the
    worker count or timing, and never disturbs the training loop's own RNG.
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
    collate_fn: Callable[[list[Any]], Any] | None = None
    worker_init_fn: Callable[[int], None] | None = None
    scheduler_metric: str | None = None
    scheduler_interval: str = "epoch"
    precision: str = attrs.field(default="32", converter=str)
    seed_samples: bool = True
    scaler: Any = None  # made for precision "fp16": torch.amp.GradScaler, saved in every checkpoint
    _feed: Any = attrs.field(default=None, init=False, repr=False)  # the live Feed of the current epoch
    # Set by a distributed Trainer: this process's place in the run, and the model in DistributedDataParallel.
    dist: Any = attrs.field(default=None, repr=False)
    _ddp: Any = attrs.field(default=None, init=False, repr=False)

    def net(self) -> torch.nn.Module:
        """What training calls: the model, or its DistributedDataParallel wrapper in a distributed run."""
        return self._ddp if self._ddp is not None else self.model

    def shard(self) -> tuple[int, int]:
        """(rank, world size) of this process (0, 1 without torch.distributed)."""
        return (self.dist.rank, self.dist.world) if self.dist is not None else (0, 1)
    # Set by the Trainer: where this run's checkpoints go.
    artifacts: Path | None = None
    run_id: int | None = None
    saver: Any = attrs.field(default=None, repr=False)  # the Trainer's AsyncSaver (asynchronous checkpoints)

    def problems(self) -> list[str]:
        """What is wrong with these resources (empty when usable)."""
        out = []
        if not isinstance(self.model, torch.nn.Module):
            out.append(f"model must be a torch.nn.Module, got {type(self.model).__name__}")
        if not isinstance(self.optimizer, torch.optim.Optimizer):
            out.append(f"optimizer must be a torch.optim.Optimizer, got {type(self.optimizer).__name__}")
        for name, data in (("train_data", self.train_data), ("val_data", self.val_data)):
            if isinstance(data, DataLoader) and not (name == "train_data" and stateful(data)):
                out.append(f"{name} is a DataLoader, which would choose the data order itself, so a resumed run "
                           f"could not continue exactly where it stopped; pass its dataset ({name}=loader.dataset) "
                           "and set batch_size, num_workers and collate_fn on Resources: fsmtrain orders every epoch "
                           "from (seed, epoch)" + (" (a stateful loader, with state_dict() and load_state_dict(), "
                                                   "is accepted as train_data)" if name == "train_data" else ""))
        if stateful(self.train_data):
            pass  # a loader that saves its own position: it orders the data itself
        elif not isinstance(self.train_data, DataLoader) and not _is_data(self.train_data):
            out.append(f"train_data must be a tuple of tensors or a Dataset, got {type(self.train_data).__name__}")
        elif not isinstance(self.train_data, DataLoader) and _length(self.train_data) == 0:
            out.append("train_data is empty")
        if self.val_data is not None and not isinstance(self.val_data, DataLoader) and not _is_data(self.val_data):
            out.append(f"val_data must be a tuple of tensors or a Dataset, got {type(self.val_data).__name__}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            out.append(f"batch_size must be a positive int, got {self.batch_size!r}")
        if self.scheduler is not None and not hasattr(self.scheduler, "state_dict"):
            out.append(f"scheduler must be a torch LR scheduler, got {type(self.scheduler).__name__}")
        if not callable(self.loss_fn):
            out.append(f"loss_fn must be callable, got {type(self.loss_fn).__name__}")
        if self.collate_fn is not None and not callable(self.collate_fn):
            out.append(f"collate_fn must be callable, got {type(self.collate_fn).__name__}")
        if self.worker_init_fn is not None and not callable(self.worker_init_fn):
            out.append(f"worker_init_fn must be callable, got {type(self.worker_init_fn).__name__}")
        if self.scheduler_metric is not None and not isinstance(self.scheduler_metric, str):
            out.append(f"scheduler_metric must be a metric's state key, got {self.scheduler_metric!r}")
        if self.scheduler_interval not in ("epoch", "step"):
            out.append(f"scheduler_interval must be 'epoch' or 'step', got {self.scheduler_interval!r}")
        if self.precision not in PRECISIONS:
            out.append(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        elif self.precision == "fp16" and self.device.type != "cuda":
            out.append("precision fp16 needs a CUDA device (a GradScaler keeps float16 gradients in range); "
                       "on the CPU use precision='bf16'")
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) or self.num_workers < 0:
            out.append(f"num_workers must be an int >= 0, got {self.num_workers!r}")
        return out

    def autocast(self) -> Any:
        """The autocast context of ``precision`` (a no-op for "32")."""
        if self.precision == "32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def grad_scaler(self) -> Any:
        """The GradScaler of precision "fp16" (made once, kept: its state goes into checkpoints); else None."""
        if self.precision != "fp16":
            return None
        if self.scaler is None:
            self.scaler = torch.amp.GradScaler(self.device.type)
        return self.scaler


def stateful(data: Any) -> bool:
    """A loader that saves and restores its own position (``state_dict``/``load_state_dict``, iterable), such as
    torchdata's ``StatefulDataLoader``: fsmtrain saves its state in every checkpoint and restores it."""
    return all(callable(getattr(data, a, None)) for a in ("state_dict", "load_state_dict", "__iter__")) \
        and not isinstance(data, (Dataset, tuple, list))


def _tensors(data: Any) -> tuple[torch.Tensor, ...] | None:
    if isinstance(data, TensorDataset):
        return tuple(data.tensors)
    if isinstance(data, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in data):
        return tuple(data)
    return None


def _length(data: Any) -> int:
    ts = _tensors(data)
    if ts is not None:
        return len(ts[0])
    if stateful(data):  # its epoch ends when it says so (its sampler may drop, repeat or shard samples)
        return -1
    return len(data)


def batches(data: Any, batch_size: int, *, generator: torch.Generator | None = None, device: torch.device | None = None,
            num_workers: int = 0, collate_fn: Callable[[list[Any]], Any] | None = None,
            worker_init_fn: Callable[[int], None] | None = None) -> Iterator[tuple[Any, ...]]:
    """Batches of ``data``, shuffled by ``generator`` when one is given, in order otherwise (a DataLoader's workers
    die with this process, then run ``worker_init_fn``)."""
    host = _host_batches(data, batch_size, generator, num_workers, collate_fn, worker_init_fn)
    if device is None or device.type == "cpu":
        return host
    return (tuple(t.to(device, non_blocking=True) for t in batch) for batch in host)


def _host_batches(data: Any, batch_size: int, generator: torch.Generator | None,
                  num_workers: int, collate_fn: Callable[[list[Any]], Any] | None = None,
                  worker_init_fn: Callable[[int], None] | None = None) -> Iterator[tuple[Any, ...]]:
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
                        num_workers=num_workers, collate_fn=collate_fn,
                        worker_init_fn=loader_worker_init(worker_init_fn) if num_workers else None)
    for batch in loader:
        yield tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)


class _SeededSamples(Dataset):  # type: ignore[type-arg]
    """A Dataset whose ``[i]`` draws its randomness from ``sample_seed(seed, epoch, i)``.

    In a DataLoader worker the global RNGs are simply seeded before each sample; in the training
    process they are saved and restored around it, so the loop's own randomness (dropout...) is
    never disturbed by data loading: the result is the same with 0 workers or 8.
    """

    def __init__(self, dataset: Any, seed: int, epoch: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        import random

        s = sample_seed(self.seed, self.epoch, int(index))
        if torch.utils.data.get_worker_info() is not None:
            seed_everything(s)
            return self.dataset[index]
        saved = (torch.get_rng_state(), random.getstate(), _numpy_state())
        try:
            seed_everything(s)
            return self.dataset[index]
        finally:
            torch.set_rng_state(saved[0])
            random.setstate(saved[1])
            if saved[2] is not None:
                import numpy as np

                np.random.set_state(saved[2])


def _numpy_state() -> Any:
    try:
        import numpy as np
    except ImportError:
        return None
    return np.random.get_state()


class Feed:
    """The batches of one epoch from a cursor ``(epoch, offset)``: the samples ``order[offset:]`` of the epoch's
    permutation, ``batch_size`` at a time.

    Kept on the resources between actions: the next chunk of the same epoch continues the same iterator
    (a DataLoader's workers live on through the epoch) when the cursor is where the last one stopped;
    anywhere else (a resume, a redo) a new one starts at the cursor.  Nothing is fast-forwarded.
    """

    def __init__(self, r: Resources, seed: int, epoch: int, offset: int) -> None:
        self.key = (id(r.train_data), seed, epoch)
        self.offset = offset
        self.exhausted = False
        data, bs = r.train_data, r.batch_size
        rank, world = r.shard()
        self.world = world  # a batch of this rank is 1/world of the global batch: the cursor counts global samples
        ts = _tensors(data)
        self._it: Iterator[tuple[Any, ...]]
        self.total = -1
        if stateful(data):  # its own order and position (restored from the checkpoint): iterate where it stands
            self._it = (tuple(b) if isinstance(b, (tuple, list)) else (b,) for b in data)
        elif ts is not None:
            order = _padded(epoch_order(len(ts[0]), seed, epoch), world)
            self.total = len(order)
            mine = _mine(order[offset:], bs, rank, world)
            self._it = (tuple(t[mine[i:i + bs]] for t in ts) for i in range(0, len(mine), bs))
        else:
            order = _padded(epoch_order(len(data), seed, epoch, loader=True), world)
            self.total = len(order)
            mine = _mine(order[offset:], bs, rank, world)
            source = _SeededSamples(data, seed, epoch) if r.seed_samples else data
            g = torch.Generator().manual_seed(epoch_seed(seed, epoch) ^ offset)  # the workers' base seed
            loader = DataLoader(source, batch_size=bs, sampler=mine.tolist(), num_workers=r.num_workers,
                                collate_fn=r.collate_fn, generator=g,
                                worker_init_fn=loader_worker_init(r.worker_init_fn) if r.num_workers else None)
            self._it = (tuple(b) if isinstance(b, (tuple, list)) else (b,) for b in loader)
        self.device = r.device

    def take(self) -> tuple[Any, ...] | None:
        """The next batch (on the device), or None at the end of the epoch."""
        batch = next(self._it, None)
        if batch is None:
            self.exhausted = True
            return None
        self.offset += len(batch[-1]) * self.world
        if self.device.type != "cpu":
            batch = tuple(t.to(self.device, non_blocking=True) if isinstance(t, torch.Tensor) else t for t in batch)
        return batch


def _padded(order: torch.Tensor, world: int) -> torch.Tensor:
    """The epoch's order padded (with its own first samples) to a multiple of the world size, as
    DistributedSampler pads: every rank then takes the same number of batches (no rank waits forever)."""
    extra = -len(order) % world
    return order if not extra else torch.cat([order, order[:extra]])


def _mine(rest: torch.Tensor, batch_size: int, rank: int, world: int) -> torch.Tensor:
    """This rank's samples of the rest of the epoch: of each global batch (``world * batch_size`` samples, in
    the epoch's order), every ``world``-th one from ``rank`` on — a pure function of (seed, epoch, rank, world)."""
    if world == 1:
        return rest
    step = world * batch_size
    return torch.cat([rest[i:i + step][rank::world] for i in range(0, len(rest), step)]) if len(rest) else rest


def shard(data: Any, rank: int, world: int) -> Any:
    """Every ``world``-th sample of ``data`` from ``rank`` on (a distributed evaluation's part)."""
    if world == 1:
        return data
    ts = _tensors(data)
    if ts is not None:
        return tuple(t[rank::world] for t in ts)
    return torch.utils.data.Subset(data, range(rank, len(data), world))


def feed(r: Resources, seed: int, epoch: int, offset: int) -> Feed:
    """The live feed of ``r`` if it stands exactly at this cursor, else a new one there."""
    live: Feed | None = r._feed
    if live is not None and live.key == (id(r.train_data), seed, epoch) and live.offset == offset:
        return live
    made = Feed(r, seed, epoch, offset)
    r._feed = made
    return made


def check(resources: Any, factory: str) -> Resources:
    """``resources`` if the factory returned usable Resources, else :class:`ResourceError`."""
    if not isinstance(resources, Resources):
        raise ResourceError(f"the resource factory `{factory}` returned {type(resources).__name__}; "
                            "it must return fsmtrain.train.Resources(model=..., optimizer=..., train_data=...)")
    problems = resources.problems()
    if problems:
        raise ResourceError(f"the resource factory `{factory}` returned unusable resources: " + "; ".join(problems))
    return resources
