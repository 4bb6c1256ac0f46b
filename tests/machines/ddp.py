"""A distributed run for the tests: ``python -m tests.machines.ddp LOG OUT MODE`` on every rank (torchrun).

MODE ``train``: the tiny model in chunks with early stopping; ``diverge``: a machine whose rank 1 counts
differently at its 3rd step (what a rank-dependent bug does).  Every rank writes what it ended with to
``OUT/rank<R>.json`` (epoch, steps, metric histories, its weights' hash), so the test can compare the ranks.
"""

from __future__ import annotations

import json
import os
import sys

from fsmtrain import Machine, action, when
from fsmtrain.stopping import early_stopping, max_epochs
from fsmtrain.train import Resources, Trainer, training_machine, weights_sha256

from .training import tiny_build

STOP = early_stopping("val_loss", patience=1, min_delta=0.02) | max_epochs(6)
machine = training_machine(STOP, name="ddp", initial={"lr": 0.05}, every=2)


def trainer(log, **kwargs) -> Trainer:
    """The worker's target for these runs (accepts distributed=True)."""
    return Trainer(machine, tiny_build, log=log, **kwargs)


@action(reads=["n"], writes=["n"])
def count(state, resources):
    rank = resources.dist.rank if resources is not None and resources.dist is not None else 0
    return {"n": state["n"] + (2 if rank == 1 and state["n"] == 3 else 1)}


@action()
def done(state):
    return None


def diverging_build(state) -> Resources:
    return tiny_build(state)


counting = Machine("diverge", [count, done], [("count", "done", when(n=8)), ("count", "count")], entry="count",
                   terminal=["done"], initial={"n": 0, "lr": 0.05})


def main() -> None:
    log, out, mode = sys.argv[1:4]
    t = trainer(log, distributed=True) if mode == "train" else Trainer(counting, diverging_build, log=log,
                                                                         distributed=True)
    runner = t.fit({"seed": 5}, on_interrupt="raise")
    model = runner.resources.model if runner.resources is not None else None
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"rank{t.dist.rank}.json"), "w") as f:
        json.dump({"rank": t.dist.rank, "writer": t.dist.writer, "status": runner.status, "state": runner.state.to_json(),
                   "weights": weights_sha256(model) if model is not None else None}, f)
    t.close()


if __name__ == "__main__":
    main()
