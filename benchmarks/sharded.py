"""Sharded checkpoints of an FSDP2 model on 2 ranks: synchronous against asynchronous, against no checkpoint.

    python benchmarks/sharded.py           # checkpoints.py's 55M-parameter transformer, AdamW, 2 gloo ranks (CPU)
    python benchmarks/sharded.py --quick   # tiny sizes, to check that it runs

The model is sharded with ``shard_model(model, units=(TransformerEncoderLayer,))`` (the tied embedding and head
stay in the root unit) and trains in chunks, with a checkpoint after every chunk.  Each variant is a fresh
``torchrun --nproc-per-node 2`` job (one thread per process); the log's rank times it; variants are interleaved
over the rounds (median):
  none   no checkpoint
  sync   every rank writes its shards through DCP, the step commits once the manifest is durable
  async  every rank stages its shards in CPU memory and writes them in the background; the ranks agree on the
         step that commits the Ref
Figures: seconds per chunk (from the end of the first chunk to the end of the last), ``stall_s`` (per
asynchronous save, the seconds the log's rank's training loop was blocked), ``sync_save_s`` (one synchronous
checkpoint step), ``in_flight_s`` (an asynchronous save, hand-over to committed Ref), ``checkpoint_mb`` (every
file of one checkpoint folder) and ``rank_mb`` (the largest rank's shard file).  The three variants must end with
the same weights (checked).  The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

VARIANTS = ("none", "sync", "async")


def rank_main(variant: str, quick: bool, folder: Path) -> None:
    """One rank of one variant (under torchrun): train, and the log's rank writes its figures."""
    import torch
    from checkpoints import LM, SIZES, chunked_machine, clock_hook, data, lm_loss

    from fsmtrain.train import Resources, Trainer, shard_model

    c = SIZES["quick" if quick else "full"]
    x, y = data(c)

    def build(state: Any) -> Resources:
        torch.manual_seed(0)
        model = LM(c["vocab"], c["d"], c["layers"], c["heads"], c["seq"])
        shard_model(model, units=(torch.nn.TransformerEncoderLayer,))
        return Resources(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-4), train_data=(x, y),
                         val_data=(x[: c["batch"]], y[: c["batch"]]), batch_size=c["batch"] // 2, loss_fn=lm_loss)

    machine = chunked_machine(c, variant)
    clock = clock_hook(c["chunks"])
    trainer = Trainer(machine, build, log=folder / f"{variant}.db", hooks=[clock], distributed=True)
    runner = trainer.fit()
    stats = trainer.saver.stats
    trainer.close()
    if not trainer.dist.writer:
        return
    assert runner.status == "finished", runner.status
    ends = clock.chunk_ends
    out: dict[str, Any] = {"chunk_s": (ends[-1] - ends[0]) / (len(ends) - 1), "weights": runner.state["weights_sha256"],
                           "params": sum(p.numel() for p in LM(c["vocab"], c["d"], c["layers"], c["heads"],
                                                              c["seq"]).parameters())}
    if variant == "sync":
        out["save_s"] = statistics.median(clock.saves)
    if variant != "none":
        manifest = json.loads((trainer.artifacts / runner.state["checkpoint"].path).read_text())
        out["checkpoint_mb"] = sum(f["size"] for f in manifest["files"]) / 1e6
        out["rank_mb"] = max(f["size"] for f in manifest["files"] if f["path"].endswith(".distcp")) / 1e6
    if variant == "async":
        out["stall_s"] = statistics.mean(stats["stall"])
        out["in_flight_s"] = statistics.median(stats["in_flight"])
    (folder / f"{variant}.json").write_text(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check that it runs")
    ap.add_argument("--rounds", type=int, default=None, help="rounds of every variant (default 2; --quick 1)")
    ap.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # (one rank of a variant, under torchrun)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        rank_main(args.variant, args.quick, Path(args.folder))
        return
    from fsmtrain.launch import launch_command

    rounds = args.rounds or (1 if args.quick else 2)
    got: dict[str, list[dict[str, Any]]] = {n: [] for n in VARIANTS}
    for r in range(rounds):
        for n in VARIANTS:
            with tempfile.TemporaryDirectory() as tmp:
                cmd, env = launch_command(2, "sharded", ["--variant", n, "--folder", tmp]
                                          + (["--quick"] if args.quick else []), max_restarts=0)
                p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=HERE)
                if p.returncode != 0:
                    raise SystemExit(f"variant {n} failed:\n{p.stderr[-3000:]}")
                got[n].append(json.loads((Path(tmp) / f"{n}.json").read_text()))
            print(f"  round {r + 1} {n:<6} {got[n][-1]['chunk_s']:.3f} s/chunk", flush=True)

    def med(n: str, key: str) -> float | None:
        values = [g[key] for g in got[n] if key in g]
        return float(statistics.median(values)) if values else None

    weights = {g["weights"] for n in VARIANTS for g in got[n]}
    assert len(weights) == 1, f"the variants did not train identically: {weights}"
    none_s, sync_s, async_s = (med(n, "chunk_s") for n in VARIANTS)
    assert none_s and sync_s and async_s
    out = {"params": med("none", "params"), "ranks": 2.0, "none_s": none_s, "sync_s": sync_s, "async_s": async_s,
           "sync_ratio": sync_s / none_s, "async_ratio": async_s / none_s, "stall_s": med("async", "stall_s"),
           "sync_save_s": med("sync", "save_s"), "in_flight_s": med("async", "in_flight_s"),
           "checkpoint_mb": med("sync", "checkpoint_mb"), "rank_mb": med("sync", "rank_mb")}
    stall, save = out["stall_s"], out["sync_save_s"]
    print(f"\n{out['params'] / 1e6:.1f}M parameters on 2 ranks; seconds per chunk (median of {rounds}): none "
          f"{none_s:.3f}  sync {sync_s:.3f}  async {async_s:.3f}")
    ok = bool(stall is not None and save and stall <= 0.1 * save)
    print(f"  {'PASS' if ok else 'MISS'}  stall <= 10% of a sync save: {stall:.3f} s of {save:.3f} s")
    print(f"  async {out['async_ratio']:.3f}x no checkpoint, sync {out['sync_ratio']:.3f}x; a checkpoint "
          f"{out['checkpoint_mb']:.1f} MB (the largest rank's shards {out['rank_mb']:.1f} MB); an async save in "
          f"flight {out['in_flight_s']:.2f} s")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
