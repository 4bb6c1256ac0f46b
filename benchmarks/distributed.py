"""One run on two processes: fsmtrain's DDP epoch against a hand-written DDP loop doing the same work, and 2 ranks
against 1, on the CPU (gloo), measured in the same run.

    python benchmarks/distributed.py            # 40,000x64 data, 64-128-10 MLP, batch 128 per rank, 5 epochs
    python benchmarks/distributed.py --quick    # tiny sizes, to check that it runs

Each variant is a fresh ``torchrun --nproc-per-node N`` job (one thread per process); rank 0 times the
epochs after the first (warm-up) and writes its figure.  ``raw`` is the hand-written DDP loop: each rank
its shard of the epoch's permutation, the model in DistributedDataParallel, a sharded evaluation summed
over the ranks, rank 0 saving an atomic checkpoint (every rank's RNG gathered) each epoch.  ``fsmtrain``
is ``Trainer(distributed=True)`` with ``training_machine`` — the same work plus the log (written by one
rank), the per-step agreement between the ranks and content-addressed checkpoints.  Both end with
bit-identical weights, which the script checks.  The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SEED = 0


def make_data(n: int) -> tuple:
    import torch

    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 10, generator=g)
    x = torch.randn(n + n // 5, 64, generator=g)
    y = (x @ w + 0.5 * torch.randn(len(x), 10, generator=g)).argmax(1)
    return x[:n], y[:n], x[n:], y[n:]


def build_factory(data: tuple, batch: int):
    import torch

    from fsmtrain.train import Resources

    def build(state):
        model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
        return Resources(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
                         train_data=(data[0], data[1]), val_data=(data[2], data[3]), batch_size=batch)
    return build


def raw_worker(out: str, n: int, epochs: int, batch: int) -> None:
    """The hand-written DDP loop (what fsmtrain's actions do, without the log)."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    from fsmtrain.train import epoch_order, weights_sha256
    from fsmtrain.train.checkpoints import capture_rng, save_checkpoint, seed_everything
    from fsmtrain.train.resources import _mine, _padded, rank_seed

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    data = make_data(n)
    x, y, xv, yv = data
    seed_everything(SEED)
    r = build_factory(data, batch)(None)
    model, opt = r.model, r.optimizer
    net = DistributedDataParallel(model) if world > 1 else model
    seed_everything(rank_seed(SEED, rank))
    times = []
    for epoch in range(epochs):
        t = time.perf_counter()
        model.train()
        mine = _mine(_padded(epoch_order(len(x), SEED, epoch), world), batch, rank, world)
        total = count = 0.0
        for i in range(0, len(mine), batch):
            idx = mine[i:i + batch]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            count += len(idx)
        sums = torch.tensor([total, count], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(sums)
        model.eval()
        v = torch.zeros(3, dtype=torch.float64)
        with torch.no_grad():
            xs, ys = xv[rank::world], yv[rank::world]
            for i in range(0, len(xs), batch * 4):
                o = model(xs[i:i + batch * 4])
                k = len(o)
                v += torch.tensor([float(F.cross_entropy(o, ys[i:i + batch * 4])) * k,
                                   float((o.argmax(1) == ys[i:i + batch * 4]).float().mean()) * k, k], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(v)
        rngs = [None] * world if rank == 0 else None
        if world > 1:
            dist.gather_object(capture_rng(), rngs, dst=0)
        if rank == 0:
            save_checkpoint(Path(out), "raw", f"e{epoch:05d}", {"format": 1, "model": model.state_dict(),
                                                               "optimizer": opt.state_dict(), "rng": rngs or capture_rng()})
        times.append(time.perf_counter() - t)
    if rank == 0:
        Path(out, "raw.json").write_text(json.dumps({"epoch_s": statistics.median(times[1:] or times),
                                                     "weights": weights_sha256(model)}))
    dist.destroy_process_group()


def fsm_worker(out: str, n: int, epochs: int, batch: int) -> None:
    import torch.distributed as dist

    from fsmtrain.stopping import max_epochs
    from fsmtrain.train import Trainer, training_machine, weights_sha256

    world = int(os.environ.get("WORLD_SIZE", "1"))
    times: list[float] = []

    class Clock:
        t = 0.0

        def on_step_start(self, *, action, **kw):
            if action == "train_epoch":
                Clock.t = time.perf_counter()

        def on_step_end(self, *, action, **kw):
            if action == "checkpoint":
                times.append(time.perf_counter() - Clock.t)

    machine = training_machine(max_epochs(epochs), name="bench", keep_last=1)
    trainer = Trainer(machine, build_factory(make_data(n), batch), log=Path(out) / "fsm.db", hooks=[Clock()],
                      distributed=world > 1)
    runner = trainer.fit({"seed": SEED}, on_interrupt="raise")
    if trainer.dist is None or trainer.dist.writer:
        Path(out, f"fsm{world}.json").write_text(json.dumps({"epoch_s": statistics.median(times[1:] or times),
                                                             "weights": weights_sha256(runner.resources.model)}))
    trainer.close()
    if world > 1:
        dist.destroy_process_group()


def job(kind: str, nproc: int, out: Path, n: int, epochs: int, batch: int) -> dict:
    from fsmtrain.launch import launch_command

    args = ["--worker", kind, str(out), str(n), str(epochs), str(batch)]
    if nproc == 1 and kind == "fsm":
        cmd, env = [sys.executable, __file__, *args], {**os.environ, "OMP_NUM_THREADS": "1"}
    else:
        cmd, env = launch_command(nproc, "distributed", args, max_restarts=0)
    env["PYTHONPATH"] = f"{Path(__file__).resolve().parent}:{Path(__file__).resolve().parent.parent}"
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800, cwd=Path(__file__).resolve().parent)
    if p.returncode != 0:
        raise RuntimeError(f"{kind} on {nproc} process(es) failed: {p.stderr[-3000:]}")
    name = "raw.json" if kind == "raw" else f"fsm{nproc}.json"
    return json.loads((out / name).read_text())


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        kind, out, n, epochs, batch = sys.argv[2], sys.argv[3], *map(int, sys.argv[4:7])
        (raw_worker if kind == "raw" else fsm_worker)(out, n, epochs, batch)
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check that it runs")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    n, epochs, batch, rounds = (2000, 2, 64, 1) if args.quick else (40_000, 5, 128, args.rounds)
    got: dict[str, list[float]] = {"raw2": [], "fsm2": [], "fsm1": []}
    with tempfile.TemporaryDirectory() as d:
        for i in range(rounds):
            for kind, nproc in (("raw", 2), ("fsm", 2), ("fsm", 1)):
                out = Path(d) / f"{kind}{nproc}-{i}"
                out.mkdir()
                r = job(kind, nproc, out, n, epochs, batch)
                got[f"{kind}{nproc}"].append(r["epoch_s"])
                if kind == "raw":
                    raw_weights = r["weights"]
                elif nproc == 2:
                    assert r["weights"] == raw_weights, "fsmtrain and the raw DDP loop did different work"
    med = {k: statistics.median(v) for k, v in got.items()}
    ratio, scale = med["fsm2"] / med["raw2"], med["fsm1"] / med["fsm2"]
    print(f"{n}x64 data, 64-128-10 MLP, batch {batch} per rank, Adam, gloo, one thread per process, "
          f"median of {rounds} round(s)")
    print(f"fsmtrain, 2 ranks, vs a hand-written DDP loop:  {med['fsm2'] * 1e3:8.1f} vs {med['raw2'] * 1e3:8.1f} "
          f"ms/epoch  {ratio:5.3f}x  (target ≤ 1.05x {'✔' if ratio <= 1.05 else '✘'})")
    print(f"fsmtrain, 1 process vs 2 ranks (epoch time):     {med['fsm1'] * 1e3:8.1f} vs {med['fsm2'] * 1e3:8.1f} "
          f"ms/epoch  {scale:5.2f}x faster on 2 ({os.cpu_count()} cores)")
    print(json.dumps({"raw_ddp2_epoch_s": med["raw2"], "fsm_ddp2_epoch_s": med["fsm2"], "fsm_1proc_epoch_s": med["fsm1"],
                      "ddp_ratio": ratio, "speedup_2_ranks": scale, "rounds": rounds, "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
