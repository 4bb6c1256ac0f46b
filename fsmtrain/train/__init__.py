"""Training on torch: epochs as actions, checkpoints as state references, bit-identical resume.

This subpackage (and ``fsmtrain.tune``) is the only place that imports torch.

- :class:`Resources`: the live model, optimizer, scheduler and data a factory builds.
- :func:`train_steps` (a chunk of N optimizer steps from the data cursor), :func:`train_epoch`,
  :func:`evaluate`, :func:`checkpoint`, :func:`finish`: ready-made actions.
- :func:`training_machine`: the usual loop in one call; :class:`Trainer` runs it.
- :mod:`fsmtrain.train.checkpoints`: atomic, hashed, data-only checkpoint files;
  :mod:`fsmtrain.train.sharded`: FSDP2 models (:func:`shard_model`) and their sharded checkpoints.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():  # torch without NumPy warns on import; NumPy is optional here (RNG capture only)
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    import torch  # noqa: F401

from .actions import accuracy, checkpoint, evaluate, export_best, finish, train_epoch, train_steps
from .checkpoints import load_checkpoint, save_checkpoint, seed_everything, weights_sha256
from .loop import training_machine
from .resources import Resources, batches, epoch_order, epoch_seed, sample_seed
from .sharded import shard_model
from .trainer import Trainer

__all__ = [
    "Resources",
    "Trainer",
    "accuracy",
    "batches",
    "checkpoint",
    "epoch_order",
    "epoch_seed",
    "evaluate",
    "export_best",
    "finish",
    "load_checkpoint",
    "save_checkpoint",
    "sample_seed",
    "seed_everything",
    "shard_model",
    "train_epoch",
    "train_steps",
    "training_machine",
    "weights_sha256",
]
