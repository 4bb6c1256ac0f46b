"""Peer death is the environment's: an error that another process's death or hang caused is an interruption,
never a failed attempt; and the distributed collectives need nothing beyond the declared dependencies (no NumPy)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from fsmtrain import Condition, EventLog, Machine, Runner, action
from fsmtrain.errors import ActionFailed, PeerLost
from tests.conftest import ROOT, file_digest


class FakeSync:
    """A Sync that holds the log (a writer of one) and says which errors mean a lost peer."""

    writer = True

    def agree(self, value: Any) -> Any:
        return value

    def tick(self, now: float, digest: str) -> float:
        return now

    def lost(self, error: BaseException) -> str | None:
        return "rank 1 is gone (Connection reset by peer)" if "reset by peer" in str(error) else None


def flaky_machine(error: str | None) -> Machine:
    """work raises ``error`` at n == 1 (never, with None), then counts to 3."""

    @action(reads=["n"], writes=["n"])
    def work(state):
        if state["n"] == 1 and error is not None:
            raise RuntimeError(error)
        return {"n": state["n"] + 1}

    @action()
    def done(state):
        return None

    enough = Condition(lambda s: s["n"] >= 3, keys=["n"], name="n>=3")
    return Machine("flaky", [work, done], [("work", "done", enough), ("work", "work")], entry="work",
                   terminal=["done"], initial={"n": 0})


class TestAPeerLostIsAnInterruption:
    def test_the_step_is_not_recorded_as_an_attempt_and_nothing_is_written(self, log_path):
        """The collective's error stops the process (PeerLost) with the log as it was: no error event."""
        with EventLog(log_path) as log:
            r = Runner.start(flaky_machine("[pair.cc:537] Read error: Connection reset by peer"), log=log,
                             sync=FakeSync())
            r.step()
            before = [e.kind for e in log.events(1)]
            with pytest.raises(PeerLost, match="not counted as a failed attempt"):
                r.step()
            assert [e.kind for e in log.events(1)] == before == ["start", "step"]

    def test_an_error_the_action_raises_on_a_healthy_group_is_an_attempt(self, log_path):
        """The same runner records an ordinary exception as a failed attempt, as on one process."""
        with EventLog(log_path) as log:
            r = Runner.start(flaky_machine("a bug in the action"), log=log, sync=FakeSync(), max_attempts=2)
            r.step()
            with pytest.raises(ActionFailed):
                r.step()
            assert [e.kind for e in log.events(1)] == ["start", "step", "error", "failed"]

    def test_a_resume_after_it_counts_an_interruption(self, log_path):
        """Resumed, the run says it was interrupted once (like a kill), and its attempts stay untouched."""
        with EventLog(log_path) as log:
            r = Runner.start(flaky_machine("Connection reset by peer"), log=log, sync=FakeSync())
            r.step()
            with pytest.raises(PeerLost):
                r.step()
            r.close()
            again = Runner.resume(flaky_machine(None), log, 1)
            again.run()
            kinds = [e.kind for e in log.events(1)]
            assert "error" not in kinds and "failed" not in kinds and again.status == "finished"
            resume = [e for e in log.events(1) if e.kind == "resume"]
            assert len(resume) == 1 and resume[0].info["interrupted"] == 0


_WORLD_OF_ONE = r"""
import builtins, json, os, sys
real_import = builtins.__import__
def no_numpy(name, *a, **k):
    if name == "numpy" or name.startswith("numpy."):
        raise ModuleNotFoundError("No module named 'numpy' (blocked in this test)")
    return real_import(name, *a, **k)
builtins.__import__ = no_numpy
import torch, torch.distributed as dist
from fsmtrain.train.distributed import Distributed, peer_lost
os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1])
d = Distributed(backend="gloo", timeout=30)
out = {
    "agree": d.agree({"a": [1, 2.5, None], "b": "x" * 5000}),
    "gather": d.gather({"rank": d.rank, "blob": "y" * 3000}),
    "bytes": d.broadcast_bytes(bytes(range(256)) * 40).hex()[:64],
    "empty": d.broadcast_bytes(b"").hex(),
    "lost_reset": peer_lost(RuntimeError("[../gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]: Connection reset by peer")),
    "lost_backend": peer_lost(dist.DistBackendError("NCCL watchdog timeout")),
    "lost_wrapped": peer_lost(ValueError("while reducing").with_traceback(None)),
    "own_error": peer_lost(RuntimeError("The size of tensor a (96) must match the size of tensor b (64)")),
    "numpy": "numpy" in sys.modules,
}
try:
    raise ValueError("outer") from RuntimeError("Connection closed by peer")
except ValueError as e:
    out["lost_cause"] = peer_lost(e)
dist.destroy_process_group()
print(json.dumps(out))
"""


def test_collectives_and_the_peer_classifier_work_without_numpy(tmp_path):
    """agree, gather and broadcast_bytes pass bytes in tensors themselves: they work where NumPy cannot be imported;
    peer_lost names broken connections and torch's DistError family, and leaves the action's own errors alone."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.run([sys.executable, "-c", _WORLD_OF_ONE, str(port)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["agree"] == {"a": [1, 2.5, None], "b": "x" * 5000}
    assert out["gather"] == [{"rank": 0, "blob": "y" * 3000}]
    assert out["bytes"] == bytes(range(32)).hex() and out["empty"] == ""
    assert "died or hung" in out["lost_reset"] and "DistBackendError" in out["lost_backend"]
    assert "died or hung" in out["lost_cause"]
    assert out["own_error"] is None and out["lost_wrapped"] is None and out["numpy"] is False


@pytest.mark.slow
def test_the_two_process_demo_runs_where_numpy_cannot_be_imported(tmp_path):
    """`fsmtrain demo --nproc 2` on an install without NumPy (an import blocker on every rank's path)."""
    blocker = tmp_path / "blocked"
    (blocker / "numpy").mkdir(parents=True)
    (blocker / "numpy" / "__init__.py").write_text('raise ModuleNotFoundError("No module named numpy (blocked)")\n')
    env = {"PYTHONPATH": f"{blocker}:{ROOT}", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    log = tmp_path / "ddp.db"
    p = subprocess.run([sys.executable, "-m", "fsmtrain", "demo", "--nproc", "2", "--epochs", "2", "--json", "--log",
                        str(log)], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["world_size"] == 2 and summary["status"] == "finished"
    before = file_digest(log)
    assert subprocess.run([sys.executable, "-m", "fsmtrain", "verify", str(log)], env=env, capture_output=True,
                          cwd=tmp_path).returncode == 0
    assert file_digest(log) == before


_PARENT = r"""
import os, sys, time
import torch
from torch.utils.data import Dataset
from fsmtrain.train.resources import batches

class Slow(Dataset):
    def __len__(self):
        return 10_000
    def __getitem__(self, i):
        with open(sys.argv[1], "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(600)  # blocked inside a fetch, where DataLoader's own watchdog does not look
        return torch.tensor([float(i)]), torch.tensor(0)

def mine(worker_id):  # the caller's own worker_init_fn still runs
    with open(sys.argv[2], "w") as f:
        f.write(f"worker {worker_id}\n")

for batch in batches(Slow(), 2, num_workers=1, worker_init_fn=mine):
    pass
"""


def test_a_dataloader_worker_dies_with_its_sigkilled_parent(tmp_path):
    """The training process is SIGKILLed while its DataLoader worker runs: the worker does not outlive it (it would
    hold the log, the lock and the witness open); the user's own worker_init_fn ran first."""
    import os
    import time

    pids, init = tmp_path / "pids", tmp_path / "init"
    p = subprocess.Popen([sys.executable, "-c", _PARENT, str(pids), str(init)], cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 120
        while not (pids.exists() and pids.read_text().strip()):  # observed progress: the worker loads samples
            assert p.poll() is None and time.monotonic() < deadline, "the worker never started"
            time.sleep(0.01)
        worker = int(pids.read_text().split()[0])
        assert worker != p.pid and init.read_text() == "worker 0\n"
        p.kill()
        p.wait()
        while os.path.exists(f"/proc/{worker}") and _state(worker) not in ("Z", None):
            assert time.monotonic() < deadline, f"DataLoader worker {worker} outlived its parent"
            time.sleep(0.01)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None
