"""The home's batteries, with real processes and real kills: node loss (SIGKILL after observed progress in the
home, then the node's disk deleted, the same command on a fresh one) with a directory home and an S3 server;
two writers; a home that goes away mid-run; a gate answered, then the node lost."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fsmtrain import EventLog
from fsmtrain.log.store import open_store
from fsmtrain.replay import state_at
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

DEMO = [sys.executable, "-m", "fsmtrain", "demo", "--patience", "100", "--json"]
MODES = {"demo": ["--epochs", "3", "--delay", "0.25"],
         "chunked": ["--epochs", "2", "--chunk", "5", "--delay", "0.04"]}
TRIALS = int(os.environ.get("HOME_TRIALS", "20"))


def env_for(extra: dict[str, str] | None = None) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FSMTRAIN_", "AWS_"))}
    return {**base, "PYTHONPATH": str(ROOT), **(extra or {})}


def steps_in_home(home: str, env: dict[str, str]) -> int:
    """How many steps of run 1 the home holds (what a kill waits to see grow): the ``step`` of its newest event."""
    saved = dict(os.environ)
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    try:
        store = open_store(home)
        names = store.list("runs/1/events")
        if not names:
            return -1
        last = store.get(f"runs/1/events/{names[-1]}").decode().rstrip("\n").rsplit("\n", 1)[-1]
        return int(json.loads(last)["event"]["step"])
    except (OSError, ValueError, KeyError):
        return -1
    finally:
        os.environ.clear()
        os.environ.update(saved)


def reference(tmp_path: Path, mode: str) -> tuple[dict, dict]:
    log = tmp_path / f"ref-{mode}.db"
    p = subprocess.run(DEMO + ["--log", str(log), *MODES[mode]], cwd=ROOT, capture_output=True, text=True,
                       timeout=600, env=env_for())
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.splitlines()[-1]), histories(log)


def histories(log: Path) -> dict:
    with EventLog(log, readonly=True) as lg:
        assert lg.verify() == []
        s = state_at(lg, 1)
        return {k: list(s[k]) for k in ("train_loss", "val_loss", "val_acc")} | {k: s[k] for k in ("epoch", "steps")}


def lose_nodes_until_done(tmp_path: Path, home: str, mode: str, rng: random.Random, env: dict[str, str],
                          jitter: float = 0.6) -> tuple[dict, Path, int]:
    """Run the demo on a fresh 'node' (a new folder) with ``home``; once the home shows progress, SIGKILL it
    after a random delay and delete the node's folder; again until a run ends.  Returns (its JSON, its log, kills)."""
    kills = 0
    for launch in range(30):
        node = tmp_path / f"node{launch}"
        node.mkdir(parents=True)
        log = node / "r.db"
        before = steps_in_home(home, env)
        p = subprocess.Popen(DEMO + ["--log", str(log), "--home", home, *MODES[mode]], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 300
            while p.poll() is None and steps_in_home(home, env) <= before:
                assert time.monotonic() < deadline, "no progress in the home in 300 s"
                time.sleep(0.01)
            time.sleep(rng.uniform(0, jitter))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                kills += 1
            out, err = p.communicate(timeout=120)
        finally:
            if p.poll() is None:
                p.kill()
                p.communicate()
        if p.returncode == 0:
            return json.loads(out.splitlines()[-1]), log, kills
        assert p.returncode == -signal.SIGKILL, err
        shutil.rmtree(node)  # the node is gone, with its disk
    raise AssertionError("30 launches without an end")


def check_node_losses(tmp_path: Path, home_of, mode: str, env: dict[str, str], trials: int) -> None:
    want, want_hist = reference(tmp_path, mode)
    total = 0
    for trial in range(trials):
        home = home_of(trial)
        got, log, kills = lose_nodes_until_done(tmp_path / f"t{trial}", home, mode, random.Random(f"{mode}{trial}"),
                                                env)
        total += kills
        assert {k: got[k] for k in want} == want, (trial, kills)
        assert histories(log) == want_hist
        copy = tmp_path / f"t{trial}" / "pulled.db"
        p = subprocess.run([sys.executable, "-m", "fsmtrain", "pull", home, str(copy)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        assert histories(copy) == want_hist  # (the home alone holds the whole verified run)
    assert total >= trials, total  # (most trials lose at least one node)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_node_loss_with_a_directory_home_ends_bit_identically(tmp_path, mode):
    check_node_losses(tmp_path, lambda trial: str(tmp_path / f"home{trial}"), mode, env_for(), TRIALS)
