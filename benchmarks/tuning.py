"""Study speed: a real search side by side with Optuna, bookkeeping per trial, concurrent CPU-bound trials.

    python benchmarks/tuning.py            # everything (~2 min)
    python benchmarks/tuning.py --quick    # tiny sizes, to check that it runs

Side by side: the same search written as each library's user would — 8 trials of the demo's digits
MLP (64 hidden units by default), learning rate and hidden size searched, 9 epochs, no pruning, a
checkpoint each epoch for fsmtrain (as the demo does) — through ``Study`` with ``max_concurrent`` 1
and 2 and, when Optuna is installed, through ``optuna.create_study(storage="sqlite:///...")`` with
``n_jobs`` 1 and 2.  Each variant runs in a fresh process; its figure is the wall time of the search
itself (``Study(...).run()``; ``create_study`` + ``optimize``), torch and the library already imported,
the first optimizer's one-off import of ``torch._dynamo`` included for both.  The whole process's wall
time (Python start, imports, search) is printed beside it.

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


SEARCH_TRIALS, SEARCH_EPOCHS = 8, 9


def _digits() -> tuple[object, object, object, object]:
    import torch

    from fsmtrain.train.demo import load_digits

    x, y = load_digits()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
    cut = int(len(x) * 0.8)
    return x, y, order[:cut], order[cut:]


def search_optuna(tmp: str, n_jobs: int, trials: int, epochs: int) -> float:
    """Optuna, as its user writes it: an objective that trains the digits MLP and returns the best val loss."""
    import optuna
    import torch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    x, y, tr, va = _digits()

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
        hidden = trial.suggest_int("hidden", 16, 128, log=True)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        best = float("inf")
        for epoch in range(epochs):
            perm = tr[torch.randperm(len(tr), generator=torch.Generator().manual_seed(epoch))]
            model.train()
            for i in range(0, len(perm), 64):
                idx = perm[i:i + 64]
                loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                best = min(best, torch.nn.functional.cross_entropy(model(x[va]), y[va]).item())
        return best

    t = time.perf_counter()
    study = optuna.create_study(storage=f"sqlite:///{tmp}/optuna.db", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=trials, n_jobs=n_jobs)
    return time.perf_counter() - t


def search_fsmtrain(tmp: str, concurrent: int, trials: int, epochs: int) -> float:
    """The same search as a Study over the demo's trainer (a checkpoint each epoch)."""
    import fsmtrain.train.demo  # noqa: F401 - the target module, imported as the user's script would
    from fsmtrain.tune import IntRange, LogUniform, Study

    t = time.perf_counter()
    runner = Study(f"{tmp}/study.db", "fsmtrain.train.demo:trainer",
                   {"lr": LogUniform(1e-3, 1e-1), "hidden": IntRange(16, 128, log=True)},
                   n_trials=trials, max_concurrent=concurrent, seed=0,
                   config={"max_epochs": epochs, "patience": 1000}).run()
    elapsed = time.perf_counter() - t
    assert runner.state["summary"] == {"completed": trials}, runner.state["summary"]
    return elapsed


def side_by_side(kind: str, concurrency: int, trials: int, epochs: int) -> tuple[float, float] | None:
    """(search seconds, whole process seconds) of one variant, in a fresh process; None without Optuna."""
    import subprocess

    if kind == "optuna":
        try:
            import optuna  # noqa: F401
        except ImportError:
            return None
    with tempfile.TemporaryDirectory() as tmp:
        code = (f"import sys, json; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
                f"sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r}); import torch; "
                f"import tuning; print(json.dumps(tuning.search_{'optuna' if kind == 'optuna' else 'fsmtrain'}"
                f"({tmp!r}, {concurrency}, {trials}, {epochs})))")
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
        whole = time.perf_counter() - t
        if p.returncode != 0:
            raise RuntimeError(f"{kind} with concurrency {concurrency} failed: {p.stderr[-2000:]}")
        return float(p.stdout.strip().splitlines()[-1]), whole


def bookkeeping(tmp: Path, n: int, durability: str, batch: int = 1) -> float:
    path = tmp / f"book-{durability}-{batch}-{time.perf_counter_ns()}.db"
    with EventLog(path, durability=durability) as log:
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
    s_trials, s_epochs = (2, 1) if args.quick else (SEARCH_TRIALS, SEARCH_EPOCHS)
    print(f"the same search ({s_trials} trials of the digits MLP, lr and hidden, {s_epochs} epochs), "
          "each in a fresh process: search (whole process)")
    for c in (1, 2):
        ours = side_by_side("fsmtrain", c, s_trials, s_epochs)
        theirs = side_by_side("optuna", c, s_trials, s_epochs)
        assert ours is not None
        line = f"  concurrency {c}: fsmtrain Study {ours[0]:6.2f} s ({ours[1]:5.2f} s)"
        figures[f"study_{c}_s"], figures[f"study_{c}_process_s"] = round(ours[0], 3), round(ours[1], 3)
        if theirs is not None:
            ratio = ours[0] / theirs[0]
            line += (f"   Optuna, SQLite storage, n_jobs={c} {theirs[0]:6.2f} s ({theirs[1]:5.2f} s)   ratio {ratio:4.2f}x "
                     f"(target <= 1.0 {'✔' if ratio <= 1.0 else '✘'})")
            figures[f"optuna_{c}_s"], figures[f"optuna_{c}_process_s"] = round(theirs[0], 3), round(theirs[1], 3)
        print(line)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        reps = 1 if args.quick else 3
        default = min(bookkeeping(tmp, n, "barrier") for _ in range(reps))
        step = min(bookkeeping(tmp, n, "step") for _ in range(reps))
        print(f"bookkeeping per trial, {n} trivial trials, default policy:   {default:6.2f} ms   (target <= 1 ms "
              f"{'✔' if default <= 1 else '✘'})")
        print(f"bookkeeping per trial, {n} trivial trials, durability=step: {step:6.2f} ms")
        batched = min(bookkeeping(tmp, n, "barrier", batch=8) for _ in range(reps))
        print(f"  the same, default policy, 8 trials per study step:     {batched:6.2f} ms")
        figures.update(ms_per_trial=round(default, 3), ms_per_trial_step=round(step, 3),
                       ms_per_trial_batch8=round(batched, 3))
        full = default
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
