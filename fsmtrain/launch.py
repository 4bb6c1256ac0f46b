"""How to start one command on several local processes with torchrun (no torch import here).

Used by ``fsmtrain demo --nproc N`` and by the worker for runs recorded on several processes.
"""

from __future__ import annotations

import os
import sys

__all__ = ["launch_command"]


def launch_command(nproc: int, module: str, args: list[str], *, max_restarts: int = 3) -> tuple[list[str], dict[str, str]]:
    """The command and environment that start ``python -m module args`` on ``nproc`` local processes with torchrun
    (``--standalone``: it picks a free port itself), restarting all of them up to ``max_restarts`` times when one
    dies.  ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``: a restarted attempt must not meet the previous one's keys in
    the launcher's store (it would connect to a dead rank and hang); one thread per process unless set."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           f"--max-restarts={max_restarts}", "--monitor-interval=0.1", "-m", module, "--", *args]
    return cmd, env
