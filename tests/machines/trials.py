"""Tiny torch trials for the study tests: ``trainer(log)`` is the study's trial target.

The MLP's validation loss depends on ``lr`` and ``hidden``; ``max_epochs`` comes from the
run's state.  A trial whose ``lr`` is above ``$FSMTRAIN_TEST_BAD_LR`` raises in train_epoch.
"""

from __future__ import annotations

import os

import torch

from fsmtrain.stopping import max_epochs, setting
from fsmtrain.train import Resources, Trainer, training_machine

from .training import tiny_data

machine = training_machine(max_epochs(setting("max_epochs")), name="trial", keep_last=1,
                           initial={"lr": 0.01, "hidden": 8, "max_epochs": 4})


def build(state) -> Resources:
    count = os.environ.get("FSMTRAIN_TEST_BUILDS")
    if count:  # one line per (re)start of a trial: a finished trial must never add one
        with open(count, "a") as f:
            f.write(f"{state['lr']}\n")
    bad = os.environ.get("FSMTRAIN_TEST_BAD_LR")
    if bad and state["lr"] > float(bad):
        raise RuntimeError(f"lr {state['lr']:.3g} is too high for this test")
    x, y = tiny_data()
    model = torch.nn.Sequential(torch.nn.Linear(8, state["hidden"]), torch.nn.ReLU(), torch.nn.Linear(state["hidden"], 3))
    opt = torch.optim.SGD(model.parameters(), lr=state["lr"])
    return Resources(model=model, optimizer=opt, train_data=(x[:144], y[:144]), val_data=(x[144:], y[144:]),
                     batch_size=48)


def trainer(log) -> Trainer:
    return Trainer(machine, build, log=log)
