"""Real processes killed with SIGKILL at random moments resume to exactly the uninterrupted result."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fsmtrain import EventLog, state_at
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")


def history(log_path: Path, run_id: int) -> list[tuple]:
    """What a run did, without times: every committed step and the run's final state."""
    with EventLog(log_path, readonly=True) as log:
        steps = [(e.step, e.action, json.dumps(e.updates, sort_keys=True), e.next, e.inputs, e.info)
                 for e in log.events(run_id) if e.kind == "step"]
        return steps + [state_at(log, run_id).to_json()]


def kill_until_done(cmd: list[str], rng: random.Random, kills: int, window: tuple[float, float]) -> tuple[int, str]:
    """Start ``cmd``, SIGKILL it after a random delay, ``kills`` times; then let it finish."""
    killed = 0
    for _ in range(kills):
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(*window))
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            killed += 1
        out, err = p.communicate(timeout=60)
        assert p.returncode in (0, -signal.SIGKILL), err
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return killed, p.stdout


def test_counter_machine_survives_random_kills(tmp_path):
    """30 steps with a commit every few ms, killed 12 times anywhere (mid-action, mid-commit)."""
    ref, crashed = tmp_path / "ref.db", tmp_path / "crashed.db"
    cmd = [sys.executable, "-m", "tests.machines"]
    subprocess.run(cmd + [str(ref), "30", "0.004"], cwd=ROOT, check=True, capture_output=True)
    killed, out = kill_until_done(cmd + [str(crashed), "30", "0.004"], random.Random(7), 12, (0.15, 0.45))
    assert killed >= 6  # most kills landed while the run was in progress
    run_id = json.loads(out)["run_id"]
    assert run_id == 1  # every restart resumed the same run
    assert history(crashed, 1) == history(ref, 1)
    with EventLog(crashed, readonly=True) as log:
        assert log.verify() == []
        steps = [e.step for e in log.events(1) if e.kind == "step"]
        assert steps == list(range(1, 32))  # no step lost, none applied twice
        assert log.run(1).status == "finished"


def test_the_demo_cli_survives_random_kills(tmp_path):
    """`fsmtrain demo` killed at random moments, rerun until done, ends as an uninterrupted run."""
    ref, crashed = tmp_path / "ref.db", tmp_path / "crashed.db"
    demo = [sys.executable, "-m", "fsmtrain", "demo", "--delay", "0.05", "--epochs", "25", "--patience", "100", "--json", "--log"]
    done = subprocess.run(demo + [str(ref)], cwd=ROOT, check=True, capture_output=True, text=True)
    killed, out = kill_until_done(demo + [str(crashed)], random.Random(11), 10, (0.25, 0.6))
    assert killed >= 5
    assert json.loads(out.splitlines()[-1]) == json.loads(done.stdout.splitlines()[-1])
    assert history(crashed, 1) == history(ref, 1)
    verify = subprocess.run([sys.executable, "-m", "fsmtrain", "verify", str(crashed)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
