"""``python -m tests.machines.train_kill LOG POINT N``: run the tiny demo and SIGKILL itself at a chosen point.

POINT is ``before`` (the N-th step's action ran, its commit has not been written),
``after`` (the N-th step is committed, its hooks have not run), ``temp`` (the N-th
checkpoint file is written and fsynced under its temp name, not yet renamed) or
``renamed`` (the N-th checkpoint file is in place, its step is not committed).
``none`` runs to the end and prints the demo's JSON summary.
"""

from __future__ import annotations

import json
import os
import signal
import sys

from fsmtrain.log import EventLog
from fsmtrain.train import checkpoints, demo

CONFIG = {"max_epochs": 2, "patience": 100}


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str, n: int) -> None:
    count = {"steps": 0, "files": 0}
    if point in ("before", "after"):
        orig = EventLog.append

        def append(self, run_id, expected_seq, *, kind, **fields):
            if kind == "step":
                count["steps"] += 1
                if count["steps"] == n and point == "before":
                    die()
            ev = orig(self, run_id, expected_seq, kind=kind, **fields)
            if kind == "step" and count["steps"] == n and point == "after":
                die()
            return ev

        EventLog.append = append  # type: ignore[method-assign]
    elif point in ("temp", "renamed"):
        replace = os.replace

        def patched(src, dst):
            count["files"] += 1
            if count["files"] == n and point == "temp":
                die()
            replace(src, dst)
            if count["files"] == n and point == "renamed":
                die()

        checkpoints.os.replace = patched  # type: ignore[attr-defined]


def main() -> None:
    log, point, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    arm(point, n)
    runner = demo.trainer(log).fit(CONFIG)
    s = runner.state
    print(json.dumps({"run_id": runner.run_id, "status": runner.status, "weights_sha256": s["weights_sha256"],
                      "val_loss": list(s["val_loss"]), "best": s["best"]["checkpoint"].path}))


if __name__ == "__main__":
    main()
