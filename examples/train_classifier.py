"""Train a small classifier as a state machine, top to bottom. Kill it at any moment and run it again.

    python examples/train_classifier.py                    # trains, checkpointing every epoch
    python examples/train_classifier.py max_epochs=5 lr=0.01   # override any config value

Every run of the script resumes the unfinished run with the same config in
``train_classifier.db`` (checkpoints in ``train_classifier.db.artifacts/``), so an
interrupted run ends with exactly the weights an uninterrupted one would have.
A finished run is just reported; change the config (or delete the log) to train again.
"""

import math
import sys

import torch

from fsmtrain import Machine
from fsmtrain.stopping import early_stopping, max_epochs
from fsmtrain.train import Resources, Trainer, checkpoint, evaluate, finish, train_epoch

# -- config: every value can be overridden as key=value on the command line ---------------
config = {
    "seed": 1337,
    "lr": 0.03,
    "batch_size": 128,
    "hidden": 64,
    "max_epochs": 40,
    "patience": 6,
    "log": "train_classifier.db",
}
for arg in sys.argv[1:]:
    key, _, value = arg.partition("=")
    if key not in config or not value:
        sys.exit(f"unknown or empty config override {arg!r}; known keys: {', '.join(config)}")
    config[key] = type(config[key])(value)
log_path = config.pop("log")


# -- data: two interleaved spirals, generated deterministically (no download) --------------
def spirals(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g) * 3 * math.pi
    label = torch.randint(0, 2, (n,), generator=g)
    sign = label.float() * 2 - 1
    x = torch.stack([sign * t * torch.cos(t), sign * t * torch.sin(t)], dim=1) / 10
    return x + 0.05 * torch.randn(n, 2, generator=g), label


# -- resources: built from the run's state at start and at every resume --------------------
def build(state) -> Resources:
    x, y = spirals(4000, seed=0)
    model = torch.nn.Sequential(
        torch.nn.Linear(2, state["hidden"]), torch.nn.Tanh(),
        torch.nn.Linear(state["hidden"], state["hidden"]), torch.nn.Tanh(),
        torch.nn.Linear(state["hidden"], 2),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=state["lr"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=state["max_epochs"])
    return Resources(model=model, optimizer=optimizer, scheduler=scheduler, train_data=(x[:3200], y[:3200]),
                     val_data=(x[3200:], y[3200:]), batch_size=state["batch_size"])


# -- the machine: one epoch per step; stopping is a condition over the metric history -------
stop = early_stopping("val_loss", patience=config["patience"]) | max_epochs(config["max_epochs"])
machine = Machine(
    "spirals",
    [train_epoch(), evaluate(), checkpoint("val_loss", keep_last=2), finish()],
    [("train_epoch", "evaluate"), ("evaluate", "checkpoint"),
     ("checkpoint", "finish", stop), ("checkpoint", "train_epoch")],
    entry="train_epoch", terminal=["finish"],
    initial={"epoch": 0, "train_loss": [], "val_loss": [], "val_acc": [], "checkpoint": None, "checkpoints": [],
             "best": None, "weights_sha256": None},
)


# -- progress: a hook prints one line per epoch (not for epochs replayed on resume) ---------
class Progress:
    def on_step_end(self, *, action, state, replayed=False, **_):
        if action == "checkpoint" and not replayed:
            best = state["best"]
            print(f"epoch {state['epoch']:3d}  train {state['train_loss'][-1]:.4f}  val {state['val_loss'][-1]:.4f}  "
                  f"acc {state['val_acc'][-1]:.3f}  best epoch {best['epoch']}")

    def on_restore(self, *, note, **_):
        print(f"resumed: {note.get('checkpoint', 'no checkpoint yet')}, re-ran {note['redone']} step(s)")


# -- the run -------------------------------------------------------------------------------
trainer = Trainer(machine, build, log=log_path, hooks=[Progress()])
runner = trainer.fit(config)
best = runner.state["best"]
print(f"run {runner.run_id} {runner.status}: {runner.state['epoch']} epochs, best val_loss {best['value']:.4f} "
      f"(acc {runner.state['val_acc'][best['epoch'] - 1]:.3f}) at epoch {best['epoch']}; "
      f"best model: {trainer.artifacts / best['checkpoint'].path}")
