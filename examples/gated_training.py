"""Train, stop at a person's review, and retrain with the learning rate they give — top to bottom.

    python examples/gated_training.py                                   # train until the review gate, exit
    python examples/gated_training.py no-go new_lr=0.003 more_epochs=4  # retrain with that LR, review again
    python examples/gated_training.py go                                # export the best model, finish

or answer from anywhere and let a worker continue (from the folder you ran the script in, here the
repository's root):

    fsmtrain input gated_training.db 1 decision=no-go new_lr=0.003
    fsmtrain approve gated_training.db 1 --comment "good enough"
    fsmtrain worker gated_training.db --machine examples.gated_training:trainer --once

The run's state is in ``gated_training.db`` (checkpoints in ``gated_training.db.artifacts/``): kill the
script at any moment, or answer days later from another machine's shell; it continues where it was.
"""

import math
import sys

import torch

from fsmtrain import Input, Machine, action, gate, when
from fsmtrain.stopping import early_stopping, max_epochs, setting
from fsmtrain.train import Resources, Trainer, checkpoint, evaluate, export_best, finish, train_epoch

LOG = "gated_training.db"
CONFIG = {"seed": 7, "lr": 0.1, "batch_size": 128, "max_epochs": 6}


# -- data and resources (built at start and at every resume) --------------------------------
def rings(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two noisy concentric rings: class = which ring."""
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 2, (n,), generator=g)
    angle = torch.rand(n, generator=g) * 2 * math.pi
    radius = 1.0 + label.float() + 0.25 * torch.randn(n, generator=g)
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1), label


def build(state) -> Resources:
    x, y = rings(3000, seed=0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=state["lr"], momentum=0.9)
    return Resources(model=model, optimizer=optimizer, train_data=(x[:2400], y[:2400]), val_data=(x[2400:], y[2400:]),
                     batch_size=state["batch_size"])


# -- the review: a gate, and what a no-go does ----------------------------------------------
review = gate("review", inputs=[
    Input("new_lr", type="float", required=False, min=1e-6, max=1.0, help="learning rate for the retraining"),
    Input("more_epochs", type="int", required=False, min=1, max=100, help="epochs to add (default 4)"),
])


@action(reads=["lr", "new_lr", "more_epochs", "max_epochs"], writes=["lr", "max_epochs"])
def retune(state, resources):
    """No-go: continue training with the reviewer's learning rate, for a few more epochs."""
    lr = state["new_lr"] or state["lr"] / 3
    for group in resources.optimizer.param_groups:  # the live optimizer; its state is in the next checkpoint
        group["lr"] = lr
    return {"lr": lr, "max_epochs": state["max_epochs"] + (state["more_epochs"] or 4)}


# -- the machine -----------------------------------------------------------------------------
stop = early_stopping("val_loss", patience=2) | max_epochs(setting("max_epochs"))
machine = Machine(
    "gated_training",
    [train_epoch(), evaluate(), checkpoint("val_loss", keep_last=2), review, retune, export_best(), finish()],
    [("train_epoch", "evaluate"), ("evaluate", "checkpoint"),
     ("checkpoint", "review", stop), ("checkpoint", "train_epoch"),
     ("review", "export", when(decision="go")), ("review", "retune"),     # no-go: retrain
     ("retune", "train_epoch"), ("export", "finish")],
    entry="train_epoch", terminal=["finish"],
    initial={**CONFIG, "epoch": 0, "steps": 0, "train_loss": [], "val_loss": [], "val_acc": [], "checkpoint": None,
             "checkpoints": [], "best": None, "weights_sha256": None, "exported": None,
             "decision": None, "comment": None, "new_lr": None, "more_epochs": None},
)


def trainer(log=LOG, **kwargs) -> Trainer:
    """The worker's target: ``fsmtrain worker LOG --machine examples.gated_training:trainer --once``."""
    return Trainer(machine, build, log=log, **kwargs)


class Progress:
    def on_step_end(self, *, action, state, replayed=False, **_):
        if action == "evaluate" and not replayed:
            print(f"epoch {state['epoch']:2d}  lr {state['lr']:.4g}  val_loss {state['val_loss'][-1]:.4f}  "
                  f"val_acc {state['val_acc'][-1]:.3f}")


# -- the script: resume the unfinished run (answering its gate if asked), or start one -------
if __name__ == "__main__":
    answer = sys.argv[1:]
    with trainer(hooks=[Progress()]) as t:
        unfinished = [r for r in t.runs() if r.status in ("running", "waiting")]
        runner = t.resume(unfinished[-1].id) if unfinished else t.start(CONFIG)
        inputs = None
        if answer and runner.status == "waiting":
            inputs = {"decision": answer[0]}
            for item in answer[1:]:
                key, _, value = item.partition("=")
                inputs[key] = float(value) if key == "new_lr" else int(value)
        try:
            halt = runner.run(inputs=inputs)
        except KeyboardInterrupt:
            print(f"\ninterrupted: run {runner.run_id} keeps its {runner.steps} committed steps in {LOG}; run this "
                  "script again to continue it", file=sys.stderr)
            sys.exit(130)
        best = runner.state["best"]
        if halt.reason == "waiting":
            print(f"run {runner.run_id} waits for review: best val_loss {best['value']:.4f} at epoch {best['epoch']}. "
                  f"Answer `go`, or `no-go new_lr=... more_epochs=...`")
        else:
            print(f"run {runner.run_id} {runner.status}: {runner.state['epoch']} epochs, best val_loss "
                  f"{best['value']:.4f}; exported {runner.state['exported'].path if runner.state['exported'] else None}")
