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
from fsmtrain.state import dumps
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")


def history(log_path: Path, run_id: int) -> list[tuple]:
    """What a run did, without times: every committed step and the run's final state."""
    with EventLog(log_path, readonly=True) as log:
        steps = [(e.step, e.action, dumps(e.updates), e.next, e.inputs, e.info)
                 for e in log.events(run_id) if e.kind == "step"]
        return steps + [state_at(log, run_id).to_json()]


def events_in(log_path: Path) -> int:
    """How many step events the log holds now (0 before it exists); read-only, from outside the writer.

    Only steps count as progress: a `resume` event is written before the action it
    precedes, and killing every process right after it would be a crash loop.
    """
    if not log_path.exists() or log_path.stat().st_size == 0:
        return 0
    try:
        with EventLog(log_path, readonly=True) as log:
            return log.conn.execute("SELECT count(*) FROM events WHERE kind IN ('start', 'step')").fetchone()[0]
    except Exception:
        return 0  # the writer is still creating the schema


HISTORY: list[tuple[int, int, int]] = []
"""The last kill_until_done's processes: (steps before it, steps after it, its exit code), for messages."""


def kill_until_done(cmd: list[str], log_path: Path, rng: random.Random, kills: int, jitter: float, *,
                    env: dict[str, str] | None = None, group: bool = False) -> tuple[int, str]:
    """Start ``cmd``; once it has committed a new step, SIGKILL it after a random ``0..jitter`` s.

    Waiting for progress first makes every kill land inside the run (mid-action,
    mid-commit or between commits) however fast or slow the machine is; a process
    that makes no progress at all fails the test (after a generous limit) instead
    of being killed blindly.  ``group=True`` kills the process's whole group (a
    study and its pool's processes).  No process outlives the call.
    """
    killed = 0
    HISTORY.clear()
    for _ in range(kills):
        before = events_in(log_path)
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                             start_new_session=group)
        try:
            deadline = time.monotonic() + 300
            while p.poll() is None and events_in(log_path) <= before:
                assert time.monotonic() < deadline, "no progress in 300 s"
                time.sleep(0.005)
            time.sleep(rng.uniform(0, jitter))
            if p.poll() is None:
                if group:
                    os.killpg(p.pid, signal.SIGKILL)
                else:
                    os.kill(p.pid, signal.SIGKILL)
                killed += 1
            out, err = p.communicate(timeout=120)
        finally:
            if p.poll() is None:
                (os.killpg if group else os.kill)(p.pid, signal.SIGKILL)
                p.communicate()
        assert p.returncode in (0, -signal.SIGKILL), err
        HISTORY.append((before, events_in(log_path), p.returncode))
        if p.returncode == 0:
            break
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr
    return killed, p.stdout


def test_counter_machine_survives_random_kills(tmp_path):
    """60 steps with a commit every few ms, killed up to 12 times anywhere (mid-action, mid-commit)."""
    ref, crashed = tmp_path / "ref.db", tmp_path / "crashed.db"
    cmd = [sys.executable, "-m", "tests.machines"]
    subprocess.run(cmd + [str(ref), "60", "0.004"], cwd=ROOT, check=True, capture_output=True)
    killed, out = kill_until_done(cmd + [str(crashed), "60", "0.004"], crashed, random.Random(7), 12, 0.03)
    assert killed >= 8  # most kills landed while the run was in progress
    run_id = json.loads(out)["run_id"]
    assert run_id == 1  # every restart resumed the same run
    assert history(crashed, 1) == history(ref, 1)
    with EventLog(crashed, readonly=True) as log:
        assert log.verify() == []
        steps = [e.step for e in log.events(1) if e.kind == "step"]
        assert steps == list(range(1, 62))  # no step lost, none applied twice
        assert log.run(1).status == "finished"
