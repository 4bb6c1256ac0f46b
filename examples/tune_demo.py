"""Search learning rate, hidden size and weight decay for the demo's digits model: 2 trials at a time, ASHA.

    python examples/tune_demo.py              # runs the study (kill it and run it again: it resumes)
    fsmtrain study tune_demo.db               # the trial table, best first
    fsmtrain replay tune_demo.db --run 2      # any trial is an ordinary run: its timeline

The study is itself a run in ``tune_demo.db``; each trial is a child run of it, trained by a
process of the pool from its own checkpoints.  The trial target is ``tune_demo:trainer``: the
pool's processes import this file by that name, so the study is started under
``if __name__ == "__main__":``, as multiprocessing requires.

ASHA decides at each rung from the trials that reached it so far, so its decisions depend on the order
trials arrive: a study killed and resumed may prune other trials than an uninterrupted one (the trials it
ran are the same, each from its checkpoint). A pruned trial's run ends with a `pruned` event saying why.
"""

import sys

import torch

from fsmtrain import EventLog
from fsmtrain.stopping import early_stopping, max_epochs, setting
from fsmtrain.train import Resources, Trainer, training_machine
from fsmtrain.train.demo import load_digits
from fsmtrain.tune import ASHA, IntRange, LogUniform, Study, table

LOG = sys.argv[1] if len(sys.argv) > 1 else "tune_demo.db"

# -- what a trial is: the demo's MLP with AdamW, early stopping inside each trial -----------------
machine = training_machine(early_stopping("val_loss", patience=4) | max_epochs(setting("max_epochs")),
                           name="digits", keep_last=1,
                           initial={"lr": 0.01, "hidden": 64, "weight_decay": 0.0, "batch_size": 64, "max_epochs": 27})


def build(state) -> Resources:
    torch.set_num_threads(1)  # two trials share the two cores
    x, y = load_digits()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
    train, val = order[:1400], order[1400:]
    model = torch.nn.Sequential(torch.nn.Linear(64, state["hidden"]), torch.nn.ReLU(), torch.nn.Linear(state["hidden"], 10))
    optimizer = torch.optim.AdamW(model.parameters(), lr=state["lr"], weight_decay=state["weight_decay"])
    return Resources(model=model, optimizer=optimizer, train_data=(x[train], y[train]), val_data=(x[val], y[val]),
                     batch_size=state["batch_size"])


def trainer(log) -> Trainer:
    """The study's trial target (the pool's processes import it as ``tune_demo:trainer``)."""
    return Trainer(machine, build, log=log)


# -- the study ----------------------------------------------------------------------------------------
space = {"lr": LogUniform(1e-3, 1e-1), "hidden": IntRange(16, 128, log=True), "weight_decay": LogUniform(1e-6, 1e-2)}

if __name__ == "__main__":
    with EventLog(LOG) as log:
        study = Study(log, "tune_demo:trainer", space, n_trials=12, max_concurrent=2, seed=0,
                      scheduler=ASHA(grace_period=3, reduction_factor=3, max_t=27))
        runner = study.run()
        for row in table(runner.state)[:5]:
            params = ", ".join(f"{k}={v:.3g}" for k, v in row["params"].items())
            print(f"trial {row['trial']:2d}  {row['status']:9s}  val_loss {row['best']:.4f}  epochs {row['epochs']:2d}  {params}")
        best = runner.state["best"]
        print(f"best: trial {best['index']} (run {best['run_id']}), val_loss {best['value']:.4f} at epoch {best['epoch']}")
