"""Checkpoints at a real model size: asynchronous against synchronous, against torch.save and Lightning.

    python benchmarks/checkpoints.py           # a 55M-parameter causal transformer, AdamW (~660 MB a checkpoint)
    python benchmarks/checkpoints.py --quick   # tiny sizes, to check that it runs

The model trains in chunks of 2 optimizer steps (~1.6 s on a 2-core CPU), with a checkpoint after every chunk.
Each variant runs in a process of its own (its own peak RSS), the variants interleaved over the rounds (median):
  none        fsmtrain, chunks and no checkpoint
  sync        fsmtrain, checkpoint(...) after every chunk: the step commits once the file is durable
  async       fsmtrain, checkpoint(async_=True): staged into CPU buffers, written by a background thread,
              the Ref committed by the first step after the file is durable
  torch_save  a hand-written loop calling torch.save per chunk into a temp file, fsync, rename, fsync of the
              folder (as durable as fsmtrain's), no hash
  lightning   Lightning's Trainer with ModelCheckpoint(every_n_train_steps=2), when lightning is installed
Each figure is seconds per chunk, timed from the end of the first chunk to the end of the last (the same N-1
checkpoints inside the window for every variant; the run's start and end are left out).  Also: stall_s (per
asynchronous save, the seconds the training loop was blocked: staging plus any wait for the previous save),
sync_save_s (one synchronous checkpoint step), in_flight_s (an asynchronous save from hand-over to durable file),
checkpoint_mb (fsmtrain's file) and torch_save_mb (the same state dicts through torch.save).
The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F

SIZES = {"full": {"vocab": 16384, "d": 768, "layers": 6, "heads": 12, "seq": 64, "batch": 4, "steps": 2, "chunks": 7},
         "quick": {"vocab": 256, "d": 64, "layers": 2, "heads": 4, "seq": 16, "batch": 4, "steps": 1, "chunks": 4}}
VARIANTS = ("none", "sync", "async", "torch_save", "lightning")


class LM(torch.nn.Module):
    """A small causal transformer (pre-norm encoder layers with a causal mask), input and output embeddings tied."""

    def __init__(self, vocab: int, d: int, layers: int, heads: int, seq: int) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, d)
        self.pos = torch.nn.Parameter(torch.zeros(seq, d))
        layer = torch.nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.body = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = torch.nn.Linear(d, vocab, bias=False)
        self.head.weight = self.emb.weight
        self.register_buffer("mask", torch.nn.Transformer.generate_square_subsequent_mask(seq), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        return self.head(self.body(self.emb(x) + self.pos[:t], mask=self.mask[:t, :t], is_causal=True))


def lm_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))


def data(c: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor]:
    n = c["batch"] * c["steps"] * (c["chunks"] + 2)  # more than the run uses: no epoch ends inside it
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, c["vocab"], (n, c["seq"] + 1), generator=g)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def chunked_machine(c: dict[str, int], mode: str) -> Any:
    """``c["chunks"]`` chunks of ``c["steps"]`` steps, a checkpoint after each (none for ``mode`` "none")."""
    from fsmtrain.stopping import max_steps
    from fsmtrain.train import training_machine

    every = "1000 chunks" if mode == "none" else 1
    return training_machine(max_steps(c["steps"] * c["chunks"]), every=c["steps"], metrics={}, monitor=None,
                            evaluate_every="1000 chunks", checkpoint_every=every,
                            checkpoints="async" if mode == "async" else "sync")


def clock_hook(chunks: int) -> Any:
    """A hook that notes when each chunk ends and how long each checkpoint step takes (but the last's)."""
    from fsmtrain.hooks import Hook

    class Clock(Hook):
        def __init__(self) -> None:
            self.chunk_ends: list[float] = []
            self.saves: list[float] = []
            self.t0 = 0.0

        def on_step_start(self, *, action: str, **_: Any) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, *, action: str, **_: Any) -> None:
            now = time.perf_counter()
            if action == "train_steps":
                self.chunk_ends.append(now)
            elif action == "checkpoint" and len(self.chunk_ends) < chunks:
                self.saves.append(now - self.t0)

    return Clock()


# -- one variant, in its own process -------------------------------------------------------------------------------
def run_fsmtrain(c: dict[str, int], mode: str, folder: Path) -> dict[str, Any]:
    from fsmtrain.train import Resources, Trainer

    x, y = data(c)

    def build(state: Any) -> Resources:
        torch.manual_seed(0)
        model = LM(c["vocab"], c["d"], c["layers"], c["heads"], c["seq"])
        return Resources(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-4), train_data=(x, y),
                         val_data=(x[: c["batch"]], y[: c["batch"]]), batch_size=c["batch"], loss_fn=lm_loss)

    machine = chunked_machine(c, mode)
    clock = clock_hook(c["chunks"])
    trainer = Trainer(machine, build, log=folder / f"{mode}.db", hooks=[clock])
    runner = trainer.fit()
    assert runner.status == "finished", runner.status
    ends = clock.chunk_ends
    out: dict[str, Any] = {"chunk_s": (ends[-1] - ends[0]) / (len(ends) - 1), "peak_rss_mb": peak_rss_mb(),
                           "weights": runner.state["weights_sha256"]}
    if mode == "sync":
        out["save_s"] = statistics.median(clock.saves)
    if mode != "none":
        out["checkpoint_mb"] = runner.state["checkpoint"].size / 1e6
    if mode == "async":
        stats = trainer.saver.stats
        out["stall_s"] = statistics.mean(stats["stall"])
        out["wait_s"] = sum(stats["wait"]) / max(1, len(stats["stall"]))
        out["in_flight_s"] = statistics.median(stats["in_flight"])
    trainer.close()
    return out


def run_torch_save(c: dict[str, int], folder: Path) -> dict[str, Any]:
    from fsmtrain.train.checkpoints import capture_rng

    x, y = data(c)
    torch.manual_seed(0)
    model = LM(c["vocab"], c["d"], c["layers"], c["heads"], c["seq"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ends, saves, b, size = [], [], c["batch"], 0
    for chunk in range(c["chunks"]):
        for step in range(c["steps"]):
            i = (chunk * c["steps"] + step) * b
            opt.zero_grad(set_to_none=True)
            lm_loss(model(x[i:i + b]), y[i:i + b]).backward()
            opt.step()
        ends.append(time.perf_counter())
        if chunk < c["chunks"] - 1:
            t0 = time.perf_counter()
            target = folder / f"chunk{chunk}.pt"
            tmp = folder / f".chunk{chunk}.tmp"
            with open(tmp, "wb") as f:
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": capture_rng()}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
            fd = os.open(folder, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
            saves.append(time.perf_counter() - t0)
            size = target.stat().st_size
            if chunk:
                (folder / f"chunk{chunk - 1}.pt").unlink()
    return {"chunk_s": (ends[-1] - ends[0]) / (len(ends) - 1), "save_s": statistics.median(saves),
            "torch_save_mb": size / 1e6, "peak_rss_mb": peak_rss_mb()}


def run_lightning(c: dict[str, int], folder: Path) -> dict[str, Any]:
    import lightning as L
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint

    x, y = data(c)

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.model = LM(c["vocab"], c["d"], c["layers"], c["heads"], c["seq"])

        def training_step(self, batch: Any, _: int) -> torch.Tensor:
            return lm_loss(self.model(batch[0]), batch[1])

        def configure_optimizers(self) -> Any:
            return torch.optim.AdamW(self.parameters(), lr=1e-4)

    ends: list[float] = []

    class Clock(Callback):
        def on_train_batch_end(self, trainer: Any, *_: Any) -> None:  # (before ModelCheckpoint's save, which follows)
            if trainer.global_step % c["steps"] == 0:
                ends.append(time.perf_counter())

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=c["batch"])
    ckpt = ModelCheckpoint(dirpath=folder / "lightning", every_n_train_steps=c["steps"], save_top_k=1,
                           save_last=False)
    trainer = L.Trainer(max_steps=c["steps"] * c["chunks"], accelerator="cpu", devices=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[Clock(), ckpt],
                        num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(Module(), loader)
    return {"chunk_s": (ends[-1] - ends[0]) / (len(ends) - 1), "peak_rss_mb": peak_rss_mb()}


def variant(name: str, quick: bool) -> dict[str, Any]:
    c = SIZES["quick" if quick else "full"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if name == "torch_save":
            return run_torch_save(c, folder)
        if name == "lightning":
            return run_lightning(c, folder)
        return run_fsmtrain(c, name, folder)


# -- the parent: rounds of every variant, each in a fresh process ----------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check that it runs")
    ap.add_argument("--rounds", type=int, default=None, help="rounds of every variant (default 2; --quick 1)")
    ap.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # (one variant, in a child process)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(variant(args.variant, args.quick)))
        return
    has_lightning = importlib.util.find_spec("lightning") is not None
    names = [v for v in VARIANTS if v != "lightning" or has_lightning]
    rounds = args.rounds or (1 if args.quick else 2)
    got: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    c = SIZES["quick" if args.quick else "full"]
    torch.manual_seed(0)
    params = sum(p.numel() for p in LM(c["vocab"], c["d"], c["layers"], c["heads"], c["seq"]).parameters())
    print(f"model: {params / 1e6:.1f}M parameters (tied embeddings), AdamW; chunks of {c['steps']} steps, "
          f"{c['chunks']} chunks, a checkpoint after each; {rounds} round(s), torch threads "
          f"{torch.get_num_threads()}", flush=True)
    for r in range(rounds):
        for n in names:
            cmd = [sys.executable, __file__, "--variant", n] + (["--quick"] if args.quick else [])
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if p.returncode != 0:
                raise SystemExit(f"variant {n} failed:\n{p.stderr[-3000:]}")
            got[n].append(json.loads(p.stdout.strip().splitlines()[-1]))
            print(f"  round {r + 1} {n:<10} {got[n][-1]['chunk_s']:.3f} s/chunk", flush=True)

    def med(n: str, key: str) -> float | None:
        values = [g[key] for g in got.get(n, []) if key in g]
        return float(statistics.median(values)) if values else None

    weights = {g["weights"] for n in ("none", "sync", "async") for g in got[n]}
    assert len(weights) == 1, f"the fsmtrain variants did not train identically: {weights}"
    none_s, sync_s, async_s, ts_s = (med(n, "chunk_s") for n in ("none", "sync", "async", "torch_save"))
    assert none_s and sync_s and async_s and ts_s
    lightning_s = med("lightning", "chunk_s")
    out = {"params": float(params), "none_s": none_s, "sync_s": sync_s, "async_s": async_s, "torch_save_s": ts_s,
           "lightning_s": lightning_s, "async_ratio": async_s / none_s, "sync_ratio": sync_s / none_s,
           "sync_vs_torch_save": sync_s / ts_s, "stall_s": med("async", "stall_s"),
           "wait_s": med("async", "wait_s"), "sync_save_s": med("sync", "save_s"),
           "torch_save_save_s": med("torch_save", "save_s"), "in_flight_s": med("async", "in_flight_s"),
           "peak_rss_mb": med("async", "peak_rss_mb"),
           "peak_rss_mb_by_variant": {n: med(n, "peak_rss_mb") for n in names},
           "checkpoint_mb": med("sync", "checkpoint_mb"), "torch_save_mb": med("torch_save", "torch_save_mb")}
    stall, save = out["stall_s"], out["sync_save_s"]
    print(f"\nseconds per chunk (median of {rounds}): none {none_s:.3f}  sync {sync_s:.3f}  async {async_s:.3f}  "
          f"torch.save loop {ts_s:.3f}" + (f"  lightning {lightning_s:.3f}" if lightning_s else "  lightning n/a"))
    verdicts = [
        ("async <= 1.05x no checkpoint", out["async_ratio"] <= 1.05, f"{out['async_ratio']:.3f}x"),
        ("sync <= the torch.save loop", out["sync_vs_torch_save"] <= 1.0, f"{out['sync_vs_torch_save']:.3f}x"),
        ("stall <= 10% of a sync save", bool(stall is not None and save and stall <= 0.1 * save),
         f"{stall:.3f} s of {save:.3f} s" if stall is not None and save else "n/a"),
    ]
    for what, ok, figure in verdicts:
        print(f"  {'PASS' if ok else 'MISS'}  {what}: {figure}")
    print(f"  checkpoint {out['checkpoint_mb']:.1f} MB (torch.save of the same state dicts: "
          f"{out['torch_save_mb']:.1f} MB); an async save in flight {out['in_flight_s']:.2f} s; "
          f"peak RSS {out['peak_rss_mb']:.0f} MB async, "
          + ", ".join(f"{n} {v:.0f}" for n, v in out["peak_rss_mb_by_variant"].items() if v))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
