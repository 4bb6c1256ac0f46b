"""Tiny torch fixtures for the training tests: a 3-class problem on 8 features, an MLP, Adam.

Importable by subprocesses too (``python -m tests.machines.train_kill``).
"""

from __future__ import annotations

import torch

from fsmtrain.stopping import max_epochs
from fsmtrain.train import Resources, training_machine


def tiny_data(n: int = 192, seed: int = 99) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return x, y


def tiny_build(state) -> Resources:
    """Dropout and a StepLR too, so that RNG and scheduler state must survive a resume."""
    x, y = tiny_data()
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=state["lr"])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    return Resources(model=model, optimizer=opt, scheduler=sched, train_data=(x[:144], y[:144]),
                     val_data=(x[144:], y[144:]), batch_size=32)


def tiny_machine(epochs: int = 3, **kwargs):
    return training_machine(max_epochs(epochs), name="tiny", initial={"lr": 0.01}, **kwargs)
