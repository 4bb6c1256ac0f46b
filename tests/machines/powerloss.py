"""A training run that leaves behind what power losses would: ``python -m tests.machines.powerloss OUT SEED``.

The log is the default policy (``durability="barrier"``) with a barrier every ``EVERY`` commits, so that a short
run has many.  What it writes under OUT:

- ``barrier-NNN/``: the log's files (witness, db and WAL) copied right after barrier NNN — the least a power loss at any
  later moment leaves (everything after the last barrier may be gone);
- ``loss-NNN/``: a power loss at a random moment between two steps: the last barrier's image of the log beside
  the artifacts folder exactly as it was at that moment;
- ``checks.json``: at every step, whether a file named by a state the log could fall back to (any state since the
  last barrier) was missing — retention must never delete one;
- ``final.json``: the uninterrupted run's summary, on its last line of stdout too.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from fsmtrain import EventLog
from fsmtrain.train import Trainer
from fsmtrain.train import actions as A

from .training import tiny_build, tiny_machine

EPOCHS = 14
EVERY = 3
MACHINE = tiny_machine(EPOCHS, keep_last=1)


def summary(state: Any) -> dict[str, Any]:
    s = state.to_dict()
    return {k: s[k] for k in ("epoch", "train_loss", "val_loss", "val_acc", "best", "checkpoints", "weights_sha256")}


def copy_log(src: Path, dst: Path) -> None:
    """The log's files as they are (the witness first: it never holds more than the log does, so a copy of it
    taken before the log's is never ahead of that)."""
    dst.mkdir(parents=True, exist_ok=True)
    witness = Path(f"{src}.artifacts") / "witness.jsonl"
    if witness.exists():
        shutil.copyfile(witness, dst / "witness.jsonl")
    for suffix in ("", "-wal"):
        f = Path(f"{src}{suffix}")
        if f.exists():
            shutil.copyfile(f, dst / f"runs.db{suffix}")


class ImagingLog(EventLog):
    """Copies its files at each barrier (the durable image)."""

    out: Path
    images = 0
    on_barrier: Any = None

    def _synced(self, c: Any) -> None:
        super()._synced(c)
        if getattr(self, "out", None) is None:
            return
        ImagingLog.images += 1
        copy_log(self.path, self.out / f"barrier-{ImagingLog.images:03d}")
        if self.on_barrier is not None:
            self.on_barrier()


class Losses:
    """Checks that no file a possibly-lost prefix names is gone, and takes power-loss images between steps."""

    def __init__(self, out: Path, log: ImagingLog, rng: random.Random) -> None:
        self.out, self.log, self.rng = out, log, rng
        self.reset = True
        self.since: set[str] = set()
        self.checks: list[dict[str, Any]] = []
        self.losses = 0
        log.on_barrier = self.barrier

    def barrier(self) -> None:
        self.reset = True

    def _check(self, where: str) -> None:
        missing = sorted(p for p in self.since if not (self.log.artifacts / p).exists())
        self.checks.append({"where": where, "named": sorted(self.since), "missing": missing})

    def on_step_end(self, *, step: int, state: Any, **_: Any) -> None:
        named = {r.path for r in A.artifact_refs(state)}
        if self.reset:  # the barrier came with this step's commit (or before it): the durable prefix ends here
            self.since, self.reset = set(named), False
        else:
            self.since |= named
        time.sleep(0.01)  # (so that the test, copying the log at random moments, sees many of them)

    def on_step_start(self, *, step: int, **_: Any) -> None:
        self._check(f"before step {step}")
        if ImagingLog.images and self.rng.random() < 0.6:
            self.losses += 1
            dst = self.out / f"loss-{self.losses:03d}"
            shutil.copytree(self.out / f"barrier-{ImagingLog.images:03d}", dst)
            shutil.copytree(self.log.artifacts, dst / "runs.db.artifacts")

    def on_run_end(self, **_: Any) -> None:
        self._check("at the end")


def main() -> None:
    out, seed = Path(sys.argv[1]), int(sys.argv[2])
    (out / "live").mkdir(parents=True, exist_ok=True)
    log = ImagingLog(out / "live" / "runs.db", barrier_every=EVERY, barrier_seconds=3600)
    log.out = out
    losses = Losses(out, log, random.Random(seed))
    trainer = Trainer(MACHINE, tiny_build, log=log, hooks=[losses])
    runner = trainer.fit()
    (out / "checks.json").write_text(json.dumps(losses.checks))
    result = summary(runner.state)
    trainer.close()
    (out / "final.json").write_text(json.dumps(result, default=str))
    print(json.dumps({"barriers": ImagingLog.images, "losses": losses.losses}))


if __name__ == "__main__":
    main()
