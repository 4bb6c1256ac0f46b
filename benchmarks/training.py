"""Training speed: fsmtrain against the hand-written loop doing the same work, measured in the same run.

    python benchmarks/training.py           # 64-32-10 MLP, 10,000x64 synthetic data, batch 256, Adam, 10 epochs
    python benchmarks/training.py --quick   # tiny sizes, to check that it runs

Four variants, interleaved over several rounds (median per variant), one thread, CPU:
  raw        a hand-written loop: train epoch + validation, nothing recorded
  fsm        the same actions through fsmtrain, every step committed to the log: under the default durability
             policy (fsm_default: ordinary commits, a barrier — one fsync — every second, at gates and at the end)
             and with durability="step" (fsm: every commit fsynced, as before the policy)
  raw+ckpt   the raw loop plus an atomic checkpoint each epoch (temp file, fsync, rename, fsync of the folder)
  fsm+ckpt   fsmtrain's training_machine with its checkpoint action each epoch (same durability, plus sha256)
  +home      fsm+ckpt with a directory home (spec/home.md) against none, 60-epoch runs (~2 s) interleaved:
             segments and checkpoints shipped on a background thread at each barrier; the run's end waits
             until the home holds it.  Also: the home's lag (a barrier until the home holds it) and the
             upload throughput of a 256 MB checkpoint
Each pair must end with bit-identical weights: proof that both did the same work.
Checkpoint I/O is also timed alone: save + load of the same payload (model, optimizer, RNG states).
If pytorch-lightning is installed (never required) its figure is printed beside ours.
Below the epoch: a 5x larger data set (about 0.1 s per epoch), trained in chunks of ~10 ms and ~50 ms
of compute (optimizer steps per chunk calibrated from the raw loop's step time), each chunk a
committed step; with no checkpoint against the raw loop, and with a checkpoint after every chunk
against the raw loop saving the same checkpoints atomically at the same steps.
The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F

from fsmtrain import CsvMetrics, EventLog, JsonlMetrics, Machine, Progress, action
from fsmtrain.state import State
from fsmtrain.stopping import max_epochs
from fsmtrain.train import Resources, Trainer, epoch_seed, evaluate, train_epoch, training_machine, weights_sha256
from fsmtrain.train.checkpoints import capture_rng, load_checkpoint, save_checkpoint, seed_everything

SEED = 0


def make_data(n: int, features: int = 64, classes: int = 10) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(features, classes, generator=g)
    x = torch.randn(n + n // 5, features, generator=g)
    y = (x @ w + 0.5 * torch.randn(len(x), classes, generator=g)).argmax(1)
    return x[:n], y[:n], x[n:], y[n:]


def build_factory(data: tuple[torch.Tensor, ...], batch: int):
    def build(state: State) -> Resources:
        model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        return Resources(model=model, optimizer=opt, train_data=(data[0], data[1]), val_data=(data[2], data[3]),
                         batch_size=batch)
    return build


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def raw_save(payload: dict, path: Path, dir_fsync: bool = True) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if dir_fsync:
        fsync_dir(path.parent)


def raw_run(data, batch: int, epochs: int, ckpt_dir: Path | None) -> tuple[float, str]:
    """The hand-written loop: the work of train_epoch + evaluate (+ a checkpoint), nothing else."""
    x, y, xv, yv = data
    seed_everything(SEED)
    r = build_factory(data, batch)(State())
    model, opt = r.model, r.optimizer
    t = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch_seed(SEED, epoch)))
        total = 0.0
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        model.eval()
        vloss = vacc = 0.0
        with torch.no_grad():
            for i in range(0, len(xv), batch * 4):
                out = model(xv[i:i + batch * 4])
                vloss += float(F.cross_entropy(out, yv[i:i + batch * 4])) * len(out)
                vacc += float((out.argmax(1) == yv[i:i + batch * 4]).float().mean()) * len(out)
        history = (total / len(x), vloss / len(xv), vacc / len(xv))
        if ckpt_dir is not None:
            raw_save({"epoch": epoch + 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
                      "rng": capture_rng(), "history": history}, ckpt_dir / "ckpt.pt")
    elapsed = time.perf_counter() - t
    return elapsed / epochs, weights_sha256(model)


@action()
def done(state):
    return None


HOME: dict[str, list[float]] = {"lags": [], "end_wait": []}


def fsm_run(data, batch: int, epochs: int, log: Path, checkpoint: bool, durability: str = "barrier",
            hooks: bool = False, home: Path | None = None) -> tuple[float, str]:
    build = build_factory(data, batch)
    if checkpoint:
        machine = training_machine(max_epochs(epochs), name="bench", keep_last=1)
    else:
        machine = Machine("bench-nockpt", [train_epoch(), evaluate(), done],
                          [("train_epoch", "evaluate"), ("evaluate", "done", max_epochs(epochs)),
                           ("evaluate", "train_epoch")],
                          entry="train_epoch", terminal=["done"],
                          initial={"seed": SEED, "epoch": 0, "train_loss": [], "val_loss": [], "val_acc": []})
    watchers = [Progress(io.StringIO(), force=True), JsonlMetrics(log.with_suffix(".jsonl")),
                CsvMetrics(log.with_suffix(".csv"))] if hooks else []
    trainer = Trainer(machine, build, log=EventLog(log, durability=durability, home=home), hooks=watchers)
    runner = trainer.start({"seed": SEED})
    t = time.perf_counter()
    runner.run()
    elapsed = time.perf_counter() - t
    assert runner.status == "finished" and runner.state["epoch"] == epochs
    sha = weights_sha256(runner.resources.model)
    if home is not None:  # (the run's end waited for the home: what it held then is in the lags)
        ship = trainer.log._ship
        HOME["lags"].extend(ship.lags)
    trainer.log.close()
    return elapsed / epochs, sha


def upload_mb_s(tmp: Path, mb: int) -> float:
    """Upload throughput of a checkpoint-sized file to a directory home (a new object, synced)."""
    from fsmtrain.log.home import Home

    src = tmp / "big" / "ckpt.pt"
    src.parent.mkdir()
    src.write_bytes(os.urandom(mb << 20))
    home = Home.open(tmp / "uphome")
    t = time.perf_counter()
    home.upload(src.parent, "ckpt.pt")
    return mb / (time.perf_counter() - t)


def overhead_split(data, epochs: int, rounds: int, tmp: Path) -> tuple[float, float, dict[int, float]]:
    """fsmtrain's time over the raw loop's, split into a part per epoch and a part per batch: both are run at two
    batch sizes (so with two numbers of batches per epoch) and the overhead fitted as ``a + b * batches``.
    Returns (ms per epoch, us per batch, {batch size: overhead ratio})."""
    sizes = (256, 64)
    over: dict[int, list[float]] = {b: [] for b in sizes}
    ratio: dict[int, list[float]] = {b: [] for b in sizes}
    for i in range(rounds):
        for b in sizes:
            raw_s, sha = raw_run(data, b, epochs, None)
            fsm_s, fsha = fsm_run(data, b, epochs, tmp / f"split{b}-{i}.db", checkpoint=False)
            assert sha == fsha
            over[b].append(fsm_s - raw_s)
            ratio[b].append(fsm_s / raw_s)
    n = len(data[0])
    batches = {b: -(-n // b) for b in sizes}
    o = {b: statistics.median(v) for b, v in over.items()}
    per_batch = (o[sizes[1]] - o[sizes[0]]) / (batches[sizes[1]] - batches[sizes[0]])
    per_epoch = o[sizes[0]] - per_batch * batches[sizes[0]]
    return per_epoch * 1e3, per_batch * 1e6, {b: statistics.median(v) for b, v in ratio.items()}


def raw_chunked(data, batch: int, epochs: int, every: int, ckpt_dir: Path | None) -> tuple[float, str]:
    """The raw loop, saving an atomic checkpoint every ``every`` optimizer steps and at each epoch's end."""
    x, y, xv, yv = data
    seed_everything(SEED)
    r = build_factory(data, batch)(State())
    model, opt = r.model, r.optimizer
    t = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch_seed(SEED, epoch)))
        total = 0.0
        for steps, i in enumerate(range(0, len(x), batch), start=1):
            idx = order[i:i + batch]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            last = i + batch >= len(x)
            if ckpt_dir is not None and (steps % every == 0 or last):
                raw_save({"epoch": epoch, "offset": i + batch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                          "rng": capture_rng()}, ckpt_dir / "ckpt.pt")
        model.eval()
        with torch.no_grad():
            for i in range(0, len(xv), batch * 4):
                out = model(xv[i:i + batch * 4])
                float(F.cross_entropy(out, yv[i:i + batch * 4]))
                float((out.argmax(1) == yv[i:i + batch * 4]).float().mean())
    elapsed = time.perf_counter() - t
    return elapsed / epochs, weights_sha256(model)


def fsm_chunked(data, batch: int, epochs: int, every: int, log: Path, checkpoint: bool) -> tuple[float, str]:
    """fsmtrain's training_machine in chunks of ``every`` steps, evaluating at epoch ends, checkpointing after each
    chunk (``checkpoint=True``) or only at the end."""
    build = build_factory(data, batch)
    machine = training_machine(max_epochs(epochs), name="bench-chunks", keep_last=1, every=every,
                               checkpoint_every=1 if checkpoint else f"{epochs} epochs")
    trainer = Trainer(machine, build, log=EventLog(log))
    runner = trainer.start({"seed": SEED})
    t = time.perf_counter()
    runner.run()
    elapsed = time.perf_counter() - t
    assert runner.status == "finished" and runner.state["epoch"] == epochs
    sha = weights_sha256(runner.resources.model)
    trainer.log.close()
    return elapsed / epochs, sha


def lightning_epoch_s(data, batch: int, epochs: int) -> float | None:
    try:
        import lightning.pytorch as pl  # type: ignore[import-not-found]
    except ImportError:
        try:
            import pytorch_lightning as pl  # type: ignore[import-not-found,no-redef]
        except ImportError:
            return None
    x, y, xv, yv = data

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))

        def training_step(self, b, _):
            return F.cross_entropy(self.net(b[0]), b[1])

        def validation_step(self, b, _):
            self.log("val_loss", F.cross_entropy(self.net(b[0]), b[1]))

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch, shuffle=True)
    vl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xv, yv), batch_size=batch * 4)
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    t = time.perf_counter()
    trainer.fit(Module(), dl, vl)
    return (time.perf_counter() - t) / epochs


def checkpoint_io_ms(tmp: Path, data, batch: int, repeats: int) -> tuple[float, float, float]:
    """Median ms of save+load of one payload: raw (with and without the folder fsync) and fsmtrain."""
    r = build_factory(data, batch)(State())
    payload = {"format": 1, "epoch": 1, "model": r.model.state_dict(), "optimizer": r.optimizer.state_dict(),
               "scheduler": None, "rng": capture_rng()}
    raw_dir, fsm_dir = tmp / "raw", tmp / "fsm"
    raw_dir.mkdir()
    raw, raw_nodir, fsm = [], [], []
    for _ in range(repeats):
        t = time.perf_counter()
        raw_save(payload, raw_dir / "ckpt.pt")
        torch.load(raw_dir / "ckpt.pt", weights_only=True)
        raw.append(time.perf_counter() - t)
        t = time.perf_counter()
        raw_save(payload, raw_dir / "ckpt.pt", dir_fsync=False)
        torch.load(raw_dir / "ckpt.pt", weights_only=True)
        raw_nodir.append(time.perf_counter() - t)
        t = time.perf_counter()
        ref = save_checkpoint(fsm_dir, "run1", "e00001", payload)
        load_checkpoint(fsm_dir, ref)
        fsm.append(time.perf_counter() - t)
    return (statistics.median(raw) * 1e3, statistics.median(raw_nodir) * 1e3, statistics.median(fsm) * 1e3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check that the script runs")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per variant (median reported)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    n, epochs, rounds, batch = (1000, 2, 1, 256) if args.quick else (10_000, 10, args.rounds, 256)
    data = make_data(n)
    names = ("raw", "fsm", "fsm_default", "fsm_default_hooks", "raw_ckpt", "fsm_ckpt", "fsm_default_ckpt")
    times: dict[str, list[float]] = {k: [] for k in names}
    with tempfile.TemporaryDirectory(dir=Path.cwd() if os.access(Path.cwd(), os.W_OK) else None) as d:
        tmp = Path(d)
        raw_run(data, batch, 1, None)  # warm-up: allocator, kernels, imports
        for i in range(rounds):
            ck = tmp / f"raw{i}"
            ck.mkdir()
            for name in names:
                if name == "raw":
                    s, sha_raw = raw_run(data, batch, epochs, None)
                    sha = sha_raw
                elif name == "raw_ckpt":
                    s, sha = raw_run(data, batch, epochs, ck)
                else:
                    s, sha = fsm_run(data, batch, epochs, tmp / f"{name}{i}.db", checkpoint="ckpt" in name,
                                     durability="step" if name in ("fsm", "fsm_ckpt") else "barrier",
                                     hooks=name.endswith("hooks"))
                assert sha == sha_raw, f"{name} and the raw loop did different work"
                times[name].append(s)
        split_epoch_ms, split_batch_us, split_ratios = overhead_split(data, epochs, max(1, rounds), tmp)
        io_raw, io_raw_nodir, io_fsm = checkpoint_io_ms(tmp, data, batch, 5 if args.quick else 100)
        upload = upload_mb_s(tmp, 8 if args.quick else 256)
        # a home against none: runs long enough for the end's wait for the home to weigh as in a real run
        h_epochs = 2 if args.quick else 60
        home_times: dict[str, list[float]] = {"home": [], "none": []}
        for i in range(rounds if args.quick else max(rounds, 9)):
            for which in ("none", "home") if i % 2 else ("home", "none"):
                s, sha = fsm_run(data, batch, h_epochs, tmp / f"h{which}{i}.db", checkpoint=True,
                                 home=tmp / f"home{i}" if which == "home" else None)
                home_times[which].append(s)
        # below the epoch: chunks of ~10 ms and ~50 ms of compute
        big = make_data(n * 5)
        c_epochs = 1 if args.quick else 3
        step_s = raw_run(big, batch, 1, None)[0] / -(-len(big[0]) // batch)
        sizes = {"10ms": max(1, round(0.010 / step_s)), "50ms": max(1, round(0.050 / step_s))}
        chunk_times: dict[str, list[float]] = {k: [] for k in ("raw", "raw_ckpt_10ms", "raw_ckpt_50ms", "fsm_10ms",
                                                                "fsm_50ms", "fsm_ckpt_10ms", "fsm_ckpt_50ms")}
        for i in range(max(1, rounds - 2)):
            ck = tmp / f"rawc{i}"
            ck.mkdir()
            base_s, base = raw_run(big, batch, c_epochs, None)
            chunk_times["raw"].append(base_s)
            for label, k in sizes.items():
                s, sha = raw_chunked(big, batch, c_epochs, k, ck)
                assert sha == base
                chunk_times[f"raw_ckpt_{label}"].append(s)
                for ckpt in (False, True):
                    s, sha = fsm_chunked(big, batch, c_epochs, k, tmp / f"c{label}{ckpt}{i}.db", ckpt)
                    assert sha == base, "chunks and the raw loop did different work"
                    chunk_times[f"fsm_{'ckpt_' if ckpt else ''}{label}"].append(s)
    med = {k: statistics.median(v) for k, v in times.items()}
    cmed = {k: statistics.median(v) for k, v in chunk_times.items()}
    light = None if args.quick else lightning_epoch_s(data, batch, epochs)

    def line(what: str, ours: float, base: float, target: float, unit: str = "ms/epoch") -> None:
        ratio = ours / base
        ok = "✔" if ratio <= target else "✘"
        scale = 1e3 if unit == "ms/epoch" else 1.0
        print(f"{what:<48} {ours * scale:8.2f} vs {base * scale:8.2f} {unit}  {ratio:5.3f}x  (target ≤ {target}x {ok})")

    print(f"{n}x64 data, 64-32-10 MLP, batch {batch}, Adam, {epochs} epochs, 1 thread, median of {rounds} rounds")
    line("fsmtrain (default durability policy) vs raw loop", med["fsm_default"], med["raw"], 1.03)
    line("  same, durability=step (an fsync per commit)", med["fsm"], med["raw"], 1.03)
    print(f"  the overhead over the raw loop, fitted at batch 256 ({split_ratios[256]:.3f}x) and 64 "
          f"({split_ratios[64]:.3f}x): {split_epoch_ms:.3f} ms per epoch + {split_batch_us:.2f} us per batch")
    line("  + Progress, JSONL and CSV hooks vs none", med["fsm_default_hooks"], med["fsm_default"], 1.01)
    line("fsmtrain + checkpoint each epoch vs raw + save", med["fsm_default_ckpt"], med["raw_ckpt"], 1.03)
    line("  same, durability=step", med["fsm_ckpt"], med["raw_ckpt"], 1.03)
    hmed = {k: statistics.median(v) for k, v in home_times.items()}
    line(f"  same, {h_epochs} epochs, with a directory home vs none", hmed["home"], hmed["none"], 1.01)
    lags = sorted(HOME["lags"])
    lag = statistics.median(lags) if lags else float("nan")
    print(f"  the home's lag (a barrier until the home holds it): median {lag * 1e3:.1f} ms, max "
          f"{(lags[-1] if lags else float('nan')) * 1e3:.1f} ms over {len(lags)} barriers; upload {upload:.0f} MB/s")
    line("checkpoint save+load vs raw (equally durable)", io_fsm, io_raw, 1.15, unit="ms")
    print(f"  (raw without the folder fsync: {io_raw_nodir:.2f} ms; fsmtrain's ratio to that {io_fsm / io_raw_nodir:.3f}x)")
    if light is not None:
        print(f"{'pytorch-lightning, same model and data':<48} {light * 1e3:8.2f} ms/epoch  {light / med['raw']:5.3f}x raw")
    print(f"below the epoch: {len(big[0])}x64 data, {c_epochs} epochs, chunks of {sizes['10ms']} steps (~10 ms) and "
          f"{sizes['50ms']} steps (~50 ms)")
    for label in ("10ms", "50ms"):
        target = 1.03 if label == "50ms" else 1.10
        line(f"chunks of ~{label[:-2]} ms, committed, vs raw loop", cmed[f"fsm_{label}"], cmed["raw"], target)
        line("  + a checkpoint after each vs raw + the same saves", cmed[f"fsm_ckpt_{label}"],
             cmed[f"raw_ckpt_{label}"], target)
    figures = {"raw_epoch_s": med["raw"], "fsm_epoch_s": med["fsm"], "raw_ckpt_epoch_s": med["raw_ckpt"],
               "fsm_ckpt_epoch_s": med["fsm_ckpt"], "fsm_default_epoch_s": med["fsm_default"],
               "fsm_default_ckpt_epoch_s": med["fsm_default_ckpt"],
               "fsm_default_hooks_epoch_s": med["fsm_default_hooks"],
               "hooks_ratio": med["fsm_default_hooks"] / med["fsm_default"], "raw_ckpt_io_ms": io_raw,
               "overhead_per_epoch_ms": split_epoch_ms, "overhead_per_batch_us": split_batch_us,
               "raw_ckpt_io_nodirsync_ms": io_raw_nodir,
               "fsm_ckpt_io_ms": io_fsm, "fsm_ratio": med["fsm"] / med["raw"],
               "fsm_ckpt_ratio": med["fsm_ckpt"] / med["raw_ckpt"], "ckpt_io_ratio": io_fsm / io_raw,
               "fsm_default_ratio": med["fsm_default"] / med["raw"],
               "fsm_default_ckpt_ratio": med["fsm_default_ckpt"] / med["raw_ckpt"],
               "lightning_epoch_s": light, "epochs": epochs, "rounds": rounds,
               "fsm_home_epoch_s": hmed["home"], "fsm_nohome_epoch_s": hmed["none"],
               "home_ratio": hmed["home"] / hmed["none"],
               "home_lag_s": lag, "home_lag_max_s": lags[-1] if lags else None, "home_upload_mb_s": upload,
               "chunk_steps_10ms": sizes["10ms"], "chunk_steps_50ms": sizes["50ms"],
               **{f"chunks_{k}_epoch_s": v for k, v in cmed.items()},
               "chunk_10ms_ratio": cmed["fsm_10ms"] / cmed["raw"], "chunk_50ms_ratio": cmed["fsm_50ms"] / cmed["raw"],
               "chunk_ckpt_10ms_ratio": cmed["fsm_ckpt_10ms"] / cmed["raw_ckpt_10ms"],
               "chunk_ckpt_50ms_ratio": cmed["fsm_ckpt_50ms"] / cmed["raw_ckpt_50ms"]}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
