"""The demo machine: a small, deterministic "training" loop with early stopping (no torch).

It fits one weight ``w`` to minimise ``(w - 3)^2`` by noisy gradient descent,
where the noise of epoch ``e`` comes from ``random.Random(seed * 100003 + e)``,
so every epoch is a pure function of the state and a resumed run ends exactly
as an uninterrupted one.  ``fsmtrain demo`` runs it; ``fsmtrain graph
fsmtrain.demo:machine`` draws it.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

from .actions import action
from .conditions import Condition
from .machine import Machine
from .state import State, append

TARGET = 3.0


@action(reads=["w", "epoch", "lr", "seed", "delay"], writes=["w", "epoch", "train_loss"])
def train_epoch(state: State) -> dict[str, Any]:
    """One epoch of 20 noisy gradient steps."""
    if state["delay"]:
        time.sleep(state["delay"])
    rng = random.Random(state["seed"] * 100003 + state["epoch"])
    w, lr, losses = state["w"], state["lr"], []
    for _ in range(20):
        x = rng.gauss(TARGET, 1.0)  # a noisy sample of the target
        losses.append((w - x) ** 2)
        w -= lr * 2 * (w - x)
    return {"w": w, "epoch": state["epoch"] + 1, "train_loss": append(sum(losses) / len(losses))}


@action(reads=["w", "epoch", "best_val_loss", "bad_epochs"],
        writes=["val_loss", "best_val_loss", "best_epoch", "bad_epochs"])
def evaluate(state: State) -> dict[str, Any]:
    """Validation loss: the exact expected loss, ``(w - 3)^2 + 1``; tracks the best epoch."""
    loss = (state["w"] - TARGET) ** 2 + 1.0
    best = state["best_val_loss"]
    if best is None or loss < best - 1e-4:
        return {"val_loss": append(loss), "best_val_loss": loss, "best_epoch": state["epoch"], "bad_epochs": 0}
    return {"val_loss": append(loss), "bad_epochs": state["bad_epochs"] + 1}


@action(reads=["epoch", "best_epoch", "best_val_loss"], writes=["summary"])
def finish(state: State) -> dict[str, Any]:
    return {"summary": {"epochs": state["epoch"], "best_epoch": state["best_epoch"],
                        "best_val_loss": state["best_val_loss"]}}


stalled = Condition(lambda s: (s["bad_epochs"] >= s["patience"],
                               f"no improvement for {s['bad_epochs']} epochs (patience {s['patience']})"),
                    keys=["bad_epochs", "patience"], name="stalled")
out_of_epochs = Condition(lambda s: (s["epoch"] >= s["max_epochs"], f"reached max_epochs={s['max_epochs']}"),
                          keys=["epoch", "max_epochs"], name="out_of_epochs")

machine = Machine(
    "demo",
    [train_epoch, evaluate, finish],
    [
        ("train_epoch", "evaluate"),
        ("evaluate", "finish", stalled | out_of_epochs),
        ("evaluate", "train_epoch"),
    ],
    entry="train_epoch",
    terminal=["finish"],
)


def initial_state(*, epochs: int = 30, seed: int = 0, lr: float = 0.02, patience: int = 3,
                  delay: float = 0.0) -> dict[str, Any]:
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a positive number, got {lr}")
    return {"w": 0.0, "epoch": 0, "lr": lr, "seed": seed, "max_epochs": epochs, "patience": patience,
            "train_loss": [], "val_loss": [], "best_val_loss": None, "best_epoch": None, "bad_epochs": 0,
            "delay": delay}
