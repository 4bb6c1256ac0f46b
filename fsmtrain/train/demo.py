"""The demo: a small MLP classifying handwritten digits, with early stopping and checkpoints.

The data is the UCI "Optical Recognition of Handwritten Digits" test set (1,797
8×8 images, CC BY 4.0), bundled with the package, so nothing is downloaded.
``fsmtrain demo`` runs it; ``fsmtrain graph fsmtrain.train.demo:machine`` draws it.
A ``data`` setting may name a CSV file instead (64 feature columns, then an
integer label column; no header).
"""

from __future__ import annotations

import csv
import functools
import gzip
import hashlib
from importlib import resources as pkg_resources
from pathlib import Path
from typing import Any

import torch

from ..log import EventLog
from ..state import State
from ..stopping import early_stopping, max_epochs, setting
from .loop import training_machine
from .resources import Resources
from .sharded import shard_model
from .trainer import Trainer

__all__ = ["CONFIG", "build", "gated_machine", "gated_trainer", "load_digits", "machine", "trainer"]

DIGITS_SHA256 = "68aea062d35a127749050fa0e52dca09d6569ac08092c925610e0954e172dde2"

CONFIG: dict[str, Any] = {
    "seed": 0, "lr": 0.01, "batch_size": 64, "hidden": 64, "max_epochs": 30, "patience": 5, "data": None,
    "chunk": None, "accumulate": 1, "precision": "32", "checkpoint_mode": "auto", "fsdp": False,
}
"""The demo's settings.  ``chunk``: optimizer steps per training action (None: a whole epoch);
``accumulate``: batches per optimizer step; ``precision``: "32" or "bf16"; ``checkpoint_mode``: "auto", "sync"
or "async" (written in the background, :mod:`fsmtrain.train.saver`); ``fsdp``: shard the model with FSDP2 in a
distributed run (sharded checkpoints, :mod:`fsmtrain.train.sharded`)."""

STOP = early_stopping("val_loss", patience=setting("patience")) | max_epochs(setting("max_epochs"))

machine = training_machine(STOP, name="demo", monitor="val_loss", keep_last=2, initial=CONFIG,
                           every=setting("chunk"), accumulate=setting("accumulate"),
                           evaluate_every="epoch", checkpoint_every=1, checkpoints=setting("checkpoint_mode"))
"""Chunks of ``chunk`` optimizer steps (a whole epoch by default), each followed by a checkpoint;
an evaluation at each epoch's end; early stopping on validation loss."""

gated_machine = training_machine(STOP, name="demo-gate", monitor="val_loss", keep_last=2, initial=CONFIG, review=True,
                                 every=setting("chunk"), accumulate=setting("accumulate"),
                                 evaluate_every="epoch", checkpoint_every=1,
                                 checkpoints=setting("checkpoint_mode"))
"""The demo with a go/no-go gate after training: go exports the best model (``fsmtrain demo --gate``)."""


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The bundled digits: inputs (1797, 64) scaled to [0, 1], labels (1797,) (fresh tensors each call)."""
    x, y = _digits()
    return x.clone(), y.clone()


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    """Read, check and decode the bundled file once per process (a study's trials build many times)."""
    raw = gzip.decompress(pkg_resources.files("fsmtrain.train").joinpath("data/digits.bin.gz").read_bytes())
    if hashlib.sha256(raw).hexdigest() != DIGITS_SHA256:
        raise ValueError("the bundled digits data set is damaged (sha256 mismatch); reinstall fsmtrain")
    rows = torch.frombuffer(bytearray(raw), dtype=torch.uint8).reshape(-1, 65)
    return rows[:, :64].float() / 16.0, rows[:, 64].long()


def load_csv(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A CSV of feature columns then an integer label column (no header)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data set {path!r} does not exist")
    xs, ys = [], []
    with p.open(newline="") as f:
        for i, row in enumerate(csv.reader(f), 1):
            if not row:
                continue
            try:
                xs.append([float(v) for v in row[:-1]])
                ys.append(int(row[-1]))
            except ValueError:
                raise ValueError(f"{path}, line {i}: expected numbers then an integer label, got {row[:3]}…") from None
    if not xs or len({len(x) for x in xs}) != 1:
        raise ValueError(f"{path}: expected rows of equal length, at least one")
    return torch.tensor(xs), torch.tensor(ys)


def build(config: State) -> Resources:
    """The demo's resources: data split 80/20 (fixed), a 64-hidden-unit MLP, Adam."""
    x, y = load_csv(config["data"]) if config["data"] else load_digits()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
    cut = int(len(x) * 0.8)
    train, val = order[:cut], order[cut:]
    classes = int(y.max()) + 1
    model: torch.nn.Module = torch.nn.Sequential(torch.nn.Linear(x.shape[1], config["hidden"]), torch.nn.ReLU(),
                                torch.nn.Linear(config["hidden"], classes))
    if config.get("fsdp") and torch.distributed.is_initialized():  # (one process, e.g. Trainer.load: unsharded)
        model = shard_model(model)  # before the optimizer, which must hold the sharded parameters
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    return Resources(model=model, optimizer=optimizer, train_data=(x[train], y[train]),
                     val_data=(x[val], y[val]), batch_size=config["batch_size"],
                     precision=config.get("precision") or "32")


def trainer(log: EventLog | str, **kwargs: Any) -> Trainer:
    """A Trainer for the demo machine on ``log``."""
    return Trainer(machine, build, log=log, **kwargs)


def gated_trainer(log: EventLog | str, **kwargs: Any) -> Trainer:
    """A Trainer for the gated demo on ``log``: the worker's target,
    ``fsmtrain worker LOG --machine fsmtrain.train.demo:gated_trainer --once``."""
    return Trainer(gated_machine, build, log=log, **kwargs)
