"""A training-shaped machine without torch: each run replays the validation curve it was started with.

``curve_machine(stop)`` runs ``train`` (epoch + 1, 10 optimizer steps) then ``evaluate`` (appends
``curve[epoch - 1]`` to ``val_loss`` and ``1 - val_loss / 2`` to ``val_acc``) until ``stop`` fires,
or the curve runs out.  ``delay`` seconds of sleep per train step make active time measurable.
"""

from __future__ import annotations

import time

from fsmtrain import Condition, Machine, action, append

CURVES = {
    "falls": [1.0, 0.8, 0.7, 0.65, 0.62, 0.61, 0.605, 0.603, 0.602, 0.6015, 0.6012, 0.601],
    "overfits": [1.0, 0.7, 0.5, 0.45, 0.44, 0.46, 0.5, 0.55, 0.6, 0.66, 0.7, 0.8],
    "noisy": [1.0, 0.9, 0.95, 0.8, 0.85, 0.82, 0.7, 0.75, 0.76, 0.74, 0.78, 0.77],
    "diverges": [1.0, 0.8, 0.7, 0.9, 1.5, 3.0, 9.0, float("inf"), float("nan"), 1.0, 1.0, 1.0],
}


@action(reads=["epoch", "steps", "delay"], writes=["epoch", "steps"])
def train(state):
    if state["delay"]:
        time.sleep(state["delay"])
    return {"epoch": state["epoch"] + 1, "steps": state["steps"] + 10}


@action(reads=["epoch", "curve"], writes=["val_loss", "val_acc"])
def evaluate(state):
    v = state["curve"][state["epoch"] - 1]
    return {"val_loss": append(v), "val_acc": append(1 - v / 2)}


@action()
def done(state):
    return None


def curve_machine(stop: Condition, name: str = "curves") -> Machine:
    out_of_data = Condition(lambda s: s["epoch"] >= len(s["curve"]), keys=["epoch", "curve"], name="end_of_curve")
    return Machine(name, [train, evaluate, done],
                   [("train", "evaluate"), ("evaluate", "done", stop | out_of_data), ("evaluate", "train")],
                   entry="train", terminal=["done"],
                   initial={"epoch": 0, "steps": 0, "val_loss": [], "val_acc": [], "curve": [], "delay": 0.0})
