"""Real training processes killed with SIGKILL resume to the bit-identical result of an uninterrupted run."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from fsmtrain import EventLog, state_at
from tests.conftest import ROOT
from tests.machines.train_kill import CONFIG
from tests.test_crash import history, kill_until_done

pytestmark = [pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL"), pytest.mark.slow]

STEPS = CONFIG["max_epochs"] * 3 + 1  # train_steps (a whole epoch), evaluate, checkpoint per epoch, then finish
POINTS = [("before", n) for n in range(1, STEPS + 1)] + [("after", n) for n in range(1, STEPS)] + \
    [(p, n) for p in ("temp", "renamed") for n in range(1, CONFIG["max_epochs"] + 1)]


def driver(log, point, n):
    return subprocess.run([sys.executable, "-m", "tests.machines.train_kill", str(log), point, str(n)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def result_of(log_path):
    with EventLog(log_path) as log:
        s = state_at(log, 1)
        return {"run_id": 1, "status": log.run(1).status, "weights_sha256": s["weights_sha256"],
                "val_loss": list(s["val_loss"]), "best": s["best"]["checkpoint"].path}


def test_a_kill_at_every_commit_and_checkpoint_write_resumes_identically(tmp_path):
    """For every step n: SIGKILL just before and just after its commit, and inside each checkpoint write."""
    ref = driver(tmp_path / "ref.db", "none", 0)
    assert ref.returncode == 0, ref.stderr
    want = json.loads(ref.stdout)
    logs = {pt: tmp_path / f"{pt[0]}-{pt[1]}.db" for pt in POINTS}
    with ThreadPoolExecutor(2) as pool:
        killed = list(pool.map(lambda pt: driver(logs[pt], *pt), POINTS))
    for pt, proc in zip(POINTS, killed, strict=True):
        assert proc.returncode == -signal.SIGKILL, (pt, proc.stderr)
        # the resume: the same command again, in a fresh process (as after a real kill; a test process may hold
        # global torch settings other tests left, which would change the numerics)
    with ThreadPoolExecutor(2) as pool:
        resumed = list(pool.map(lambda pt: driver(logs[pt], "none", 0), POINTS))
    for pt, proc in zip(POINTS, resumed, strict=True):
        assert proc.returncode == 0, (pt, proc.stderr)
        assert result_of(logs[pt]) == want, pt
        with EventLog(logs[pt]) as log:
            assert log.verify() == []
            epochs = [e.updates["set"]["epoch"] for e in log.events(1) if e.kind == "step" and e.action == "train_steps"]
            assert epochs == [1, 2], pt  # no epoch recorded twice
            files = sorted(p.name for p in (log.artifacts / "run1").iterdir())
            assert files == sorted({r.path.split("/")[1] for r in state_at(log, 1)["checkpoints"]}), pt


def test_the_demo_cli_survives_random_kills(tmp_path):
    """`fsmtrain demo` SIGKILLed at random moments, rerun until done, ends as an uninterrupted run."""
    ref, crashed = tmp_path / "ref.db", tmp_path / "crashed.db"
    # (long enough that a poller starved on a busy machine still finds the run unfinished when it kills: 10 epochs
    # of at least 0.08 s; with 6 of 0.03 s a CI run once saw the first process finish the run before its kill)
    cmd = [sys.executable, "-m", "fsmtrain", "demo", "--delay", "0.08", "--epochs", "10", "--patience", "100",
           "--json", "--log"]
    done = subprocess.run(cmd + [str(ref)], cwd=ROOT, check=True, capture_output=True, text=True)
    killed, out = kill_until_done(cmd + [str(crashed)], crashed, random.Random(11), 10, 0.06)
    assert killed >= 6
    assert json.loads(out.splitlines()[-1]) == json.loads(done.stdout.splitlines()[-1])
    assert history(crashed, 1) == history(ref, 1)  # every step's updates, decisions and the final state
    verify = subprocess.run([sys.executable, "-m", "fsmtrain", "verify", str(crashed)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
