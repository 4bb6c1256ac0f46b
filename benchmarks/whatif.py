"""What-if speed: 5 termination conditions against 1,000 recorded runs of 100 epochs.

    python benchmarks/whatif.py            # full size (1,000 runs x 100 epochs; building the log takes ~20 s)
    python benchmarks/whatif.py --quick    # tiny sizes, to check that it runs

The runs are recorded by the real engine with the training machine's shape
(train_epoch, evaluate, checkpoint with Refs and a `best` record, then finish),
without torch: only the log's contents matter here.  The baseline, measured in
the same run, is reading every run's final state back (`state_at`, what
`fsmtrain replay --run ID --at N` does); whatif reads the same events and
evaluates each condition at every epoch.  The last line is one JSON object
with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fsmtrain import EventLog, Machine, Ref, Runner, action, append
from fsmtrain.replay import state_at
from fsmtrain.stopping import max_epochs
from fsmtrain.whatif import whatif

CONDITIONS = [
    "early_stopping(val_loss, patience=5)",
    "early_stopping(val_loss, patience=10, min_delta=0.001, divergence_threshold=5.0)",
    "plateau(val_loss, patience=3) & min_epochs(20)",
    "target(val_acc, value=0.9, mode='max') | max_epochs(80)",
    "diverged(val_loss, factor=2) | time_budget(3600)",
]


def curve(run: int, epoch: int) -> float:
    """A noisy validation loss: falls at a run-specific rate; a third of the runs overfit late."""
    r = random.Random(run * 100_003 + epoch)
    rate = 0.05 + 0.1 * (run % 7) / 7
    overfit = 0.004 * max(0, epoch - 40) if run % 3 == 0 else 0.0
    return 0.2 + 1.5 / (1 + rate * epoch) + overfit + r.gauss(0, 0.01)


@action(reads=["epoch", "steps"], writes=["epoch", "steps", "train_loss"])
def train_epoch(state):
    e = state["epoch"] + 1
    return {"epoch": e, "steps": state["steps"] + 30, "train_loss": append(1.5 / (1 + 0.2 * e))}


@action(reads=["epoch", "run"], writes=["val_loss", "val_acc"])
def evaluate(state):
    v = curve(state["run"], state["epoch"])
    return {"val_loss": append(v), "val_acc": append(max(0.0, 1.0 - v / 2))}


@action(reads=["epoch", "run", "val_loss", "best", "checkpoints"], writes=["checkpoint", "checkpoints", "best"])
def checkpoint(state):
    e = state["epoch"]
    ref = Ref(f"run{state['run']}/e{e:05d}.pt", f"{e:064x}", 1000 + e)
    kept = [*state["checkpoints"][-2:], ref]
    v = state["val_loss"][-1]
    best = state["best"]
    if best is None or v < best["value"]:
        best = {"epoch": e, "metric": "val_loss", "value": v, "checkpoint": ref}
    return {"checkpoint": ref, "checkpoints": kept, "best": best}


@action(writes=["weights_sha256"])
def finish(state):
    return {"weights_sha256": "0" * 64}


def build_log(path: Path, runs: int, epochs: int) -> None:
    stop = max_epochs(epochs)
    m = Machine("bench", [train_epoch, evaluate, checkpoint, finish],
                [("train_epoch", "evaluate"), ("evaluate", "checkpoint"), ("checkpoint", "finish", stop),
                 ("checkpoint", "train_epoch")], entry="train_epoch", terminal=["finish"],
                initial={"epoch": 0, "steps": 0, "train_loss": [], "val_loss": [], "val_acc": [], "checkpoint": None,
                         "checkpoints": [], "best": None, "weights_sha256": None, "run": 0})
    with EventLog(path, synchronous="NORMAL") as log:
        for i in range(runs):
            Runner.start(m, log=log, state={"run": i}).run()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    args = ap.parse_args()
    runs, epochs = (40, 20) if args.quick else (1000, 100)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "runs.db"
        t = time.perf_counter()
        build_log(path, runs, epochs)
        print(f"recorded {runs:,} runs x {epochs} epochs ({runs * (3 * epochs + 2):,} events) in "
              f"{time.perf_counter() - t:.1f} s")
        with EventLog(path, readonly=True) as log:
            ids = [r.id for r in log.runs()]
            read_s = min(_timed(lambda: [state_at(log, i) for i in ids]) for _ in range(3))
            times = []
            for _ in range(3):
                t = time.perf_counter()
                result = whatif(log, CONDITIONS)
                times.append(time.perf_counter() - t)
            whatif_s = min(times)
            check = whatif(log, [f"max_epochs({epochs})"])
        # The recorded runs stopped by max_epochs(epochs): whatif must say exactly that.
        assert all(o.stopped_at == epochs and o.epochs_saved == 0 for o in check.rows), check.rows[:3]
        assert all(r.stopped_by == f"max_epochs({epochs})" for r in check.runs)
        assert len(result.rows) == runs * len(CONDITIONS)
        print(result.to_text(rows=False).rstrip())
        target = 2.0 * (runs * epochs) / 100_000
        print(f"read every run's final state (baseline): {read_s:7.3f} s")
        print(f"whatif, {len(CONDITIONS)} conditions at every epoch:   {whatif_s:7.3f} s   "
              f"ratio {whatif_s / read_s:5.2f}x the baseline; target <= 2 s for 1,000 x 100 "
              f"({'✔' if whatif_s <= target else '✘'} at this size: <= {target:.2f} s)")
    print(json.dumps({"whatif_s": round(whatif_s, 4), "read_s": round(read_s, 4), "runs": runs, "epochs": epochs,
                      "conditions": len(CONDITIONS), "cpus": os.cpu_count()}))


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
