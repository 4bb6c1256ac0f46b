"""Study speed: bookkeeping per trial (beside Optuna), and throughput of concurrent CPU-bound trials.

    python benchmarks/tuning.py            # 300 trivial trials; 4 torch trials on 1 then 2 processes (~1 min)
    python benchmarks/tuning.py --quick    # tiny sizes, to check that it runs

Bookkeeping: 300 trials of a trivial objective, random sampler, one at a time in this
process (InlineExecutor), each trial a child run in a durable log (synchronous=FULL, the
default; NORMAL also shown).  Every figure is wall time divided by trials, so it includes
everything the study does: proposing, the child run's events, collecting, the scheduler.
Optuna, when installed, runs the same objective with its SQLite storage and with its
journal file storage.  Throughput: 6 small torch trainings (one thread each) with
max_concurrent 1 and then 2 on a process pool whose processes have started (imported
torch) before the clock starts; the ratio of trials per second.
The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fsmtrain import EventLog, Machine, action, append
from fsmtrain.tune import InlineExecutor, IntRange, LogUniform, Study, Uniform

SPACE = {"x": Uniform(-2, 2), "y": Uniform(-2, 2)}


@action(reads=["x", "y", "epoch"], writes=["epoch", "val_loss"])
def objective(state):
    return {"epoch": state["epoch"] + 1, "val_loss": append((state["x"] - 0.3) ** 2 + (state["y"] + 0.5) ** 2)}


trivial = Machine("objective", [objective], [], entry="objective", terminal=["objective"],
                  initial={"x": 0.0, "y": 0.0, "epoch": 0, "val_loss": []})
"""The trivial trial: one step computing the objective (the study's target `tuning:trivial`)."""


def trainer(log):
    """A CPU-bound trial: a small MLP trained for `max_epochs` epochs, one thread."""
    import torch

    from fsmtrain.stopping import max_epochs, setting
    from fsmtrain.train import Resources, Trainer, training_machine

    torch.set_num_threads(1)

    def build(state):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(4000, 32, generator=g)
        y = (x[:, :4].sum(1) > 0).long()
        model = torch.nn.Sequential(torch.nn.Linear(32, state["hidden"]), torch.nn.ReLU(), torch.nn.Linear(state["hidden"], 2))
        return Resources(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=state["lr"]),
                         train_data=(x[:3200], y[:3200]), val_data=(x[3200:], y[3200:]), batch_size=32)

    machine = training_machine(max_epochs(setting("max_epochs")), name="cpu", keep_last=1,
                               initial={"lr": 0.05, "hidden": 128, "max_epochs": 4})
    return Trainer(machine, build, log=log)


def bookkeeping(tmp: Path, n: int, sync: str, batch: int = 1) -> float:
    path = tmp / f"book-{sync}-{batch}-{time.perf_counter_ns()}.db"
    with EventLog(path, synchronous=sync) as log:
        t = time.perf_counter()
        runner = Study(log, "tuning:trivial", SPACE, n_trials=n, max_concurrent=batch, seed=0,
                       executor=InlineExecutor()).run()
        elapsed = time.perf_counter() - t
    assert runner.status == "finished" and runner.state["summary"] == {"completed": n}
    return elapsed / n * 1000


def optuna_ms(tmp: Path, n: int, storage_kind: str) -> float | None:
    try:
        import optuna
    except ImportError:
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if storage_kind == "sqlite":
        storage: object = f"sqlite:///{tmp / 'optuna.db'}"
    else:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        storage = JournalStorage(JournalFileBackend(str(tmp / "optuna.journal")))
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))

    def f(trial):
        x, y = trial.suggest_float("x", -2, 2), trial.suggest_float("y", -2, 2)
        return (x - 0.3) ** 2 + (y + 0.5) ** 2

    t = time.perf_counter()
    study.optimize(f, n_trials=n)
    return (time.perf_counter() - t) / n * 1000


def warm() -> None:
    """Import torch and fsmtrain.train in a pool process (what its first task would otherwise pay)."""
    import fsmtrain.train  # noqa: F401


def throughput(tmp: Path, trials: int, epochs: int, workers: int) -> float:
    """Trials per second on a pool of ``workers`` spawned processes, once they have started (steady state)."""
    import concurrent.futures as cf
    import multiprocessing

    with cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool, \
            EventLog(tmp / f"cpu-{workers}.db") as log:
        for f in [pool.submit(warm) for _ in range(workers)]:
            f.result()
        t = time.perf_counter()
        runner = Study(log, "tuning:trainer", {"lr": LogUniform(0.01, 0.1), "hidden": IntRange(96, 128)},
                       n_trials=trials, max_concurrent=workers, seed=0, config={"max_epochs": epochs},
                       executor=pool).run()
        elapsed = time.perf_counter() - t
    assert runner.state["summary"] == {"completed": trials}
    return trials / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    args = ap.parse_args()
    n, cpu_trials, cpu_epochs = (30, 2, 1) if args.quick else (300, 6, 12)
    figures: dict[str, object] = {"trials": n, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        full = min(bookkeeping(tmp, n, "FULL") for _ in range(1 if args.quick else 2))
        normal = min(bookkeeping(tmp, n, "NORMAL") for _ in range(1 if args.quick else 2))
        print(f"bookkeeping per trial, {n} trivial trials, log FULL:   {full:6.2f} ms   (target <= 1 ms "
              f"{'✔' if full <= 1 else '✘'})")
        print(f"bookkeeping per trial, {n} trivial trials, log NORMAL: {normal:6.2f} ms")
        batched = min(bookkeeping(tmp, n, "FULL", batch=8) for _ in range(1 if args.quick else 2))
        print(f"  the same, FULL, 8 trials per study step:            {batched:6.2f} ms")
        figures.update(ms_per_trial=round(full, 3), ms_per_trial_normal=round(normal, 3),
                       ms_per_trial_batch8=round(batched, 3))
        for kind in ("sqlite", "journal"):
            ms = optuna_ms(tmp, n, kind)
            if ms is None:
                print("optuna: not installed (pip install optuna to compare)")
                break
            print(f"optuna, {kind} storage, same objective:          {ms:6.2f} ms   ratio fsmtrain/optuna "
                  f"{full / ms:5.2f}x")
            figures[f"optuna_{kind}_ms"] = round(ms, 3)
        one = throughput(tmp, cpu_trials, cpu_epochs, 1)
        two = throughput(tmp, cpu_trials, cpu_epochs, 2)
        print(f"CPU-bound trials: {one:.3f} trials/s with 1 process, {two:.3f} with 2: speedup {two / one:4.2f}x "
              f"(target >= 1.8 {'✔' if two / one >= 1.8 else '✘'})")
        figures.update(trials_per_s_1=round(one, 4), trials_per_s_2=round(two, 4), speedup_2_workers=round(two / one, 3))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
