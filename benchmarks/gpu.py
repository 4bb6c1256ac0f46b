"""The distributed checks on GPUs (nccl), where CUDA is present; a clear skip where it is not.

    python benchmarks/gpu.py             # every GPU count from 1 to min(8, GPUs): uninterrupted vs killed-and-resumed
    python benchmarks/gpu.py --max 2     # at most 2 GPUs

For each count N: a run of a small MLP on N GPUs (one process per GPU, torchrun, nccl, fp16 with a
GradScaler, chunks of 8 optimizer steps, a checkpoint after each, deterministic kernels), once straight
through and once stopped mid-run and resumed by a new job; the two must end with the same weights
and metrics.  Prints a line per count and one JSON line.  Without CUDA it prints why it skipped and
exits 0 (CI machines here have no GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def worker(log: str, steps: str) -> None:
    """One rank: train (``steps`` = "all", or a number of steps to stop after) and print the final state."""
    import torch

    from fsmtrain.stopping import max_epochs
    from fsmtrain.train import Resources, Trainer, training_machine

    torch.use_deterministic_algorithms(True)
    local = int(os.environ.get("LOCAL_RANK", "0"))

    def build(state):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(8192, 32, generator=g)
        y = (x[:, :4].sum(1) > 0).long()
        model = torch.nn.Sequential(torch.nn.Linear(32, 256), torch.nn.ReLU(), torch.nn.Linear(256, 2)).cuda(local)
        return Resources(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
                         train_data=(x[:7168], y[:7168]), val_data=(x[7168:], y[7168:]), batch_size=64,
                         device=f"cuda:{local}", precision="fp16")

    trainer = Trainer(training_machine(max_epochs(3), name="gpu", every=8), build, log=log, distributed=True)
    if steps == "all":
        runner = trainer.fit({"seed": 0}, on_interrupt="raise")
    else:  # a new run, stopped after that many steps (the next "all" job resumes it)
        runner = trainer.start({"seed": 0})
        for _ in runner.iterate(max_steps=int(steps)):
            pass
        runner.close()
    if trainer.dist.writer:
        print(json.dumps({"state": runner.state.to_json()}))
    trainer.close()


def _job(n: int, log: str, steps: str, env_extra: dict[str, str]) -> str:
    from fsmtrain.launch import launch_command

    cmd, env = launch_command(n, "gpu", ["--worker", log, steps], max_restarts=0)
    p = subprocess.run(cmd, env={**env, **env_extra}, capture_output=True, text=True, timeout=1800,
                       cwd=Path(__file__).resolve().parent)
    if p.returncode != 0:
        raise RuntimeError(f"{n} GPU(s): {p.stderr[-3000:]}")
    return str(json.loads(p.stdout.strip().splitlines()[-1])["state"])


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max", type=int, default=8)
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        reason = "no CUDA device here: the GPU checks (nccl, fp16 with a GradScaler) need one"
        print(f"skipped: {reason}")
        print(json.dumps({"skipped": reason}))
        return 0
    figures: dict[str, object] = {"gpus": torch.cuda.device_count()}
    env_extra = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    ok = True
    for n in range(1, min(args.max, torch.cuda.device_count()) + 1):
        with tempfile.TemporaryDirectory() as d:
            straight = _job(n, f"{d}/a.db", "all", env_extra)
            _job(n, f"{d}/b.db", "7", env_extra)  # stopped after 7 steps (mid-epoch), then resumed by a new job
            resumed = _job(n, f"{d}/b.db", "all", env_extra)
            same = straight == resumed
            ok &= same
            print(f"{n} GPU(s): uninterrupted and resumed runs {'identical ✔' if same else 'DIFFER ✘'}")
            figures[f"identical_{n}"] = same
    print(json.dumps(figures))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
