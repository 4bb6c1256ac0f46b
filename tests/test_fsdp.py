"""FSDP2 (``fully_shard``) under ``Trainer(distributed=True)``: sharded checkpoints through torch.distributed.checkpoint,
committed by a manifest of hashed files, restored bit-identically after kills of one rank or of the group, and through
DCP's resharding at another world size (recorded as not bit-identical).  Real torchrun processes, gloo, CPU."""

from __future__ import annotations

import hashlib
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
from tests.conftest import ROOT, env
from tests.test_crash import events_in, kill_until_done

torch = pytest.importorskip("torch")
fsdp = pytest.importorskip("torch.distributed.fsdp")
pytestmark = [pytest.mark.skipif(not torch.distributed.is_available() or not hasattr(fsdp, "fully_shard"),
                                 reason="needs torch.distributed with FSDP2"),
              pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")]

DEMO = [sys.executable, "-m", "fsmtrain", "demo", "--fsdp", "--epochs", "3", "--patience", "100", "--chunk", "4",
        "--json"]


def demo(log: Path, tag: str, nproc: int = 2, *extra: str) -> dict:
    p = subprocess.run([*DEMO, "--nproc", str(nproc), "--log", str(log), *extra], cwd=ROOT, capture_output=True,
                       text=True, env=env(tag), timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.splitlines()[-1])


def kill_group_when(cmd: list[str], e: dict[str, str], ready) -> None:
    """Start ``cmd`` (its own process group) and SIGKILL the whole group once ``ready()`` holds (observed progress,
    never a guessed sleep); it must not exit before.  No process outlives the call."""
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e,
                         start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not ready():
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()[1][-3000:]
            time.sleep(0.005)
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_fsdp_demo_saves_sharded_checkpoints_that_one_process_can_load(tmp_path, tag):
    """`fsmtrain demo --nproc 2 --fsdp`: each checkpoint is a folder of DCP shards, each rank's own state and a
    manifest hashing every file, named by the manifest's hash; the Ref names the manifest; retention removes whole
    folders; and one process (Trainer.load) gathers the shards into an unsharded model."""
    log = tmp_path / "f.db"
    got = demo(log, tag)
    assert got["sharded"] is True and got["world_size"] == 2 and got["status"] == "finished"
    assert got["checkpoints"] == "sync" and got["best_checkpoint"].endswith(".dcp/manifest.json")
    arts = Path(f"{log}.artifacts")
    with EventLog(log, readonly=True) as lg:
        assert lg.verify() == []
        state = state_at(lg, 1)
    kept = {Path(r.path).parent.name for r in state["checkpoints"]}
    assert sorted(p.name for p in (arts / "run1").iterdir()) == sorted(kept)  # (older folders removed whole)
    ref = state["checkpoint"]
    folder = arts / ref.path
    assert sha(folder) == ref.sha256 and folder.stat().st_size == ref.size
    manifest = json.loads(folder.read_text())
    assert manifest["world_size"] == 2
    names = [f["path"] for f in manifest["files"]]
    assert {".metadata", "rank0.pt", "rank1.pt"} <= set(names) and sum(n.endswith(".distcp") for n in names) == 2
    for f in manifest["files"]:
        assert sha(folder.parent / f["path"]) == f["sha256"] and (folder.parent / f["path"]).stat().st_size == f["size"]
    assert hashlib.sha256(folder.read_bytes()).hexdigest()[:12] in folder.parent.name

    from fsmtrain.train import demo as d
    from fsmtrain.train.checkpoints import weights_sha256

    with d.trainer(log) as trainer:
        resources = trainer.load(1, "checkpoint")  # one process: no process group, an unsharded model
    assert weights_sha256(resources.model) == got["weights_sha256"]  # (the last checkpoint is the final model)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_killing_the_group_at_random_moments_resumes_bit_identically(tmp_path, tag, mode):
    want = demo(tmp_path / "ref.db", tag, 2, "--checkpoints", mode)
    log = tmp_path / "k.db"
    kills, out = kill_until_done([*DEMO, "--nproc", "2", "--log", str(log), "--delay", "0.05", "--checkpoints", mode],
                                 log, random.Random(5), 4, 0.3, env=env(tag), group=True)
    assert kills >= 2
    assert json.loads(out.splitlines()[-1]) == want
    with EventLog(log, readonly=True) as lg, EventLog(tmp_path / "ref.db", readonly=True) as ref:
        assert lg.verify() == []
        assert state_at(lg, 1).to_json() == state_at(ref, 1).to_json()
    assert not [p for p in Path(f"{log}.artifacts/run1").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_async_and_sync_sharded_checkpoints_train_bit_identically(tmp_path, tag):
    """The same run with each rank's part written in the background: the same weights, histories and checkpoint
    Refs (the same bytes) as with synchronous saves; its steps staged saves and committed them late."""
    sync = demo(tmp_path / "s.db", tag, 2, "--checkpoints", "sync")
    got = demo(tmp_path / "a.db", tag, 2, "--checkpoints", "async")
    assert got.pop("checkpoints") == "async" and sync.pop("checkpoints") == "sync" and got == sync
    with EventLog(tmp_path / "a.db", readonly=True) as a, EventLog(tmp_path / "s.db", readonly=True) as s:
        sa, ss = json.loads(state_at(a, 1).to_json()), json.loads(state_at(s, 1).to_json())
        assert {k: v for k, v in sa.items() if k != "checkpoint_mode"} == \
            {k: v for k, v in ss.items() if k != "checkpoint_mode"}
        steps = [e for e in a.events(1) if e.kind == "step"]
        staged = [e for e in steps if e.action == "checkpoint"  # (a save staged: not the pending one cleared)
                  and isinstance(((e.updates or {}).get("set") or {}).get("checkpoint_pending"), dict)]
        late = [e for e in steps if isinstance(e.info, dict) and e.info.get("late", {}).get("checkpoint")]
        assert len(staged) == len(late) >= 5  # (every staged save committed by a later step)
        assert all(done.seq > began.seq for began, done in zip(staged, late, strict=True))


# each phase of a save, sync and async ("staged": the action copied the shards; the rest run in the background)
PHASES = [("sync", "sharded-written"), ("sync", "sharded-renamed"), ("sync", "sharded-durable"),
          ("async", "staged"), ("async", "sharded-written"), ("async", "sharded-renamed"), ("async", "durable")]


@pytest.mark.slow
@pytest.mark.parametrize("mode,phase", PHASES)
def test_a_group_killed_in_each_phase_of_a_save_resumes_bit_identically(tmp_path, tag, mode, phase):
    """Killed once every rank wrote its shards (before the manifest), after the rename, and once the manifest is
    durable but no step names it (and, async, once the shards are staged): the resume never loads the unfinished
    save, and the run ends as an uninterrupted one; the unfinished folders are removed."""
    want = demo(tmp_path / "ref.db", tag, 2, "--checkpoints", mode)
    log, trace = tmp_path / "p.db", tmp_path / "trace"
    e = {**env(tag), "FSMTRAIN_SAVE_TRACE": str(trace), "FSMTRAIN_SAVE_PAUSE": "0.3"}
    stems: list[str] = []

    def third_save_reached_the_phase() -> bool:
        nonlocal stems
        lines = trace.read_text().splitlines() if trace.exists() else []
        stems = list(dict.fromkeys(line.split()[2] for line in lines if line.split()[1] == phase))
        return len(stems) >= 3

    kill_group_when([*DEMO, "--nproc", "2", "--log", str(log), "--checkpoints", mode], e, third_save_reached_the_phase)
    with EventLog(log, readonly=True) as lg:
        named = {Path(r.path).parent.name for r in state_at(lg, 1).get("checkpoints") or []}
    killed = stems[2]
    assert not any(n.startswith(f"{killed}-") for n in named)  # (the save was killed before its step committed)
    assert demo(log, tag, 2, "--checkpoints", mode) == want
    with EventLog(log, readonly=True) as lg:
        resume = [ev for ev in lg.events(1) if ev.kind == "resume"]
        restored = resume[0].info["restore"]["checkpoint"]
        kept = {Path(r.path).parent.name for r in state_at(lg, 1)["checkpoints"]}
    # sync: the save before; async: that one, or the one before it when its late commit was lost with the kill
    assert restored.startswith(f"run1/{stems[1]}-") or (mode == "async" and restored.startswith(f"run1/{stems[0]}-"))
    assert sorted(p.name for p in Path(f"{log}.artifacts/run1").iterdir()) == sorted(kept)


@pytest.mark.slow
def test_one_rank_killed_alone_restarts_the_group_which_ends_identically(tmp_path, tag):
    from tests.test_distributed import one_rank_killed_alone

    one_rank_killed_alone(tmp_path, tag, [*DEMO, "--nproc", "2"])


def _stop_after_checkpoints(log: Path, tag: str, n: int) -> None:
    """Run the 2-rank demo until ``n`` checkpoints are committed, then kill the group."""
    kill_group_when([*DEMO, "--nproc", "2", "--log", str(log), "--delay", "0.05"], env(tag),
                    lambda: _committed(log) >= n)


def _committed(log: Path) -> int:
    if events_in(log) == 0:
        return 0
    try:
        with EventLog(log, readonly=True) as lg:
            return lg.conn.execute("SELECT count(*) FROM events WHERE action = 'checkpoint'").fetchone()[0]
    except Exception:  # (a log being created)
        return 0


@pytest.mark.slow
def test_a_damaged_shard_falls_back_to_an_older_checkpoint_and_still_ends_identically(tmp_path, tag):
    want = demo(tmp_path / "ref.db", tag)
    log = tmp_path / "d.db"
    _stop_after_checkpoints(log, tag, 3)
    with EventLog(log, readonly=True) as lg:
        newest = state_at(lg, 1)["checkpoint"]
    shard = Path(f"{log}.artifacts") / Path(newest.path).parent / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert demo(log, tag) == want
    with EventLog(log, readonly=True) as lg:
        note = next(ev for ev in lg.events(1) if ev.kind == "resume").info["restore"]
    assert note["skipped"][0]["checkpoint"] == newest.path and "__1_0.distcp" in note["skipped"][0]["problem"]
    assert note["fallback"] == "an earlier checkpoint"


@pytest.mark.slow
def test_another_world_size_reshards_and_says_it_is_not_bit_identical(tmp_path, tag):
    """A run saved by 2 ranks continues on 1 (DCP reshards the parameters and Adam's state); the restore records
    the change, and the run finishes."""
    log = tmp_path / "w.db"
    _stop_after_checkpoints(log, tag, 2)
    got = demo(log, tag, 1)
    assert got["status"] == "finished" and got["world_size"] == 1 and got["sharded"] is True
    with EventLog(log, readonly=True) as lg:
        note = next(ev for ev in lg.events(1) if ev.kind == "resume").info["restore"]
        assert lg.verify() == []
    assert note["world_size_changed"] == {"from": 2, "to": 1, "bit_identical": False}


@pytest.mark.slow
def test_a_sharded_run_continues_on_another_node_from_its_home(tmp_path, tag):
    """Node A trains 2 ranks with a directory home and is lost (its disk too); node B runs the same command with an
    empty disk: the home gives it the log and the sharded checkpoint (manifest, shards, ranks' files, each checked
    against the manifest), and the run ends as an uninterrupted one."""
    from tests.test_home_battery import steps_in_home

    want = demo(tmp_path / "ref.db", tag)
    home = str(tmp_path / "home")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    e = {**env(tag), "FSMTRAIN_HOME": home}
    kill_group_when([*DEMO, "--nproc", "2", "--log", str(a / "r.db"), "--delay", "0.1"], e,
                    lambda: steps_in_home(home, e) >= 6)  # (a few chunks and their checkpoints are in the home)
    p = subprocess.run([*DEMO, "--nproc", "2", "--log", str(b / "r.db")], cwd=ROOT, capture_output=True, text=True,
                       env=e, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout.splitlines()[-1]) == want
    with EventLog(b / "r.db", readonly=True) as lg:
        note = next(ev for ev in lg.events(1) if ev.kind == "resume").info["restore"]
    assert note["checkpoint"].endswith(".dcp/manifest.json") and "skipped" not in note


@pytest.mark.slow
def test_a_gated_sharded_run_exports_its_best_model_gathered_in_one_file(tmp_path, tag):
    """Go at the gate of a 2-rank FSDP run: the worker relaunches it on 2 ranks, and the export gathers the best
    sharded checkpoint's model into one plain file, equal to what Trainer.load gathers."""
    from tests.test_distributed import gate_go_and_the_worker

    gate_go_and_the_worker(tmp_path, tag, "--fsdp")
    from fsmtrain.train import demo as d

    with EventLog(tmp_path / "g.db", readonly=True) as lg:
        exported = state_at(lg, 1)["exported"]
    model = torch.load(tmp_path / "g.db.artifacts" / exported.path, weights_only=True)["model"]
    with d.gated_trainer(tmp_path / "g.db") as trainer:
        best = trainer.load(1, "best").model.state_dict()
    assert list(model) == list(best) and all(torch.equal(model[k], best[k]) for k in best)


SHARDING_MISUSE = """
import sys, tempfile, torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from fsmtrain.errors import ResourceError
from fsmtrain.train import Resources, Trainer
from fsmtrain.train.demo import machine
dist.init_process_group("gloo", init_method=f"file://{tempfile.mktemp()}", rank=0, world_size=1)
def build(half):
    def make(state):
        model = torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.Linear(8, 10))
        fully_shard(model[0])
        if not half:
            fully_shard(model)
        x = torch.randn(16, 64)
        return Resources(model=model, optimizer=torch.optim.Adam(model.parameters()),
                         train_data=(x, torch.zeros(16, dtype=torch.long)), val_data=(x, torch.zeros(16, dtype=torch.long)))
    return make
for half in (True, False):
    try:
        Trainer(machine, build(half), log=tempfile.mktemp(suffix=".db")).start()
    except ResourceError as e:
        print(e)
"""


def test_a_sharded_model_outside_a_distributed_trainer_or_sharded_only_in_part_is_refused_by_name(tmp_path):
    p = subprocess.run([sys.executable, "-c", SHARDING_MISUSE], cwd=ROOT, capture_output=True, text=True,
                       env=env(), timeout=300)
    lines = p.stdout.splitlines()
    assert len(lines) == 2, p.stdout + p.stderr[-3000:]
    assert "submodules sharded with fully_shard, but not the model itself" in lines[0]
    assert "train it with Trainer(..., distributed=True)" in lines[1]


BUFFERS = """
import sys, torch, torch.nn as nn
from pathlib import Path
from fsmtrain.train.distributed import Distributed
from fsmtrain.train.sharded import (full_model_state, load_sharded, local_buffers, save_sharded, shard_model,
                                    verify_sharded)
d = Distributed()
class M(nn.Module):  # an embedding tied to the output layer, and BatchNorm statistics
    def __init__(self):
        super().__init__()
        self.emb, self.mid, self.bn = nn.Embedding(32, 8), nn.Linear(8, 8), nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 32, bias=False)
        self.head.weight = self.emb.weight
    def forward(self, x):
        return self.head(self.bn(self.mid(self.emb(x))))
torch.manual_seed(0)
model = shard_model(M())
opt = torch.optim.Adam(model.parameters())
model(torch.randint(8 * d.rank, 8 * d.rank + 8, (32,))).sum().backward()  # each rank its own batch and statistics
opt.step()
class R: pass
r = R(); r.dist, r.model, r.optimizer = d, model, opt
root = Path(sys.argv[1])
mine, weights = model.bn.running_mean.clone(), model.emb.weight.full_tensor().clone()
ref = save_sharded(r, root, "run1", "e00001", {"epoch": 1, "buffers": local_buffers(model)})
with torch.no_grad():
    model.bn.running_mean.zero_()
    model.emb.weight.zero_()
manifest = d.agree(verify_sharded(root, ref) if d.writer else None)
load_sharded(r, root, ref, manifest)
out = [d.rank, torch.equal(model.bn.running_mean, mine), round(float(mine.sum()), 4),
       torch.equal(model.emb.weight.full_tensor(), weights) and model.head.weight is model.emb.weight,
       manifest["aliases"] == {"head.weight": "emb.weight"}]
if d.writer:
    full = full_model_state(root, ref)
    out += [sorted(full) == ["bn.bias", "bn.num_batches_tracked", "bn.running_mean", "bn.running_var", "bn.weight",
                             "emb.weight", "head.weight", "mid.bias", "mid.weight"],
            torch.equal(full["head.weight"], weights)]
(root / f"rank{d.rank}.txt").write_text(" ".join(map(str, out)))  # (a file each: the ranks' stdout interleave)
"""


def test_each_rank_gets_its_own_buffers_back_and_tied_weights_are_saved_once(tmp_path):
    """FSDP2 leaves buffers (BatchNorm's running statistics) unsharded and different on each rank, and DCP keeps one
    copy of a plain tensor: each rank's are saved in its own file and restored from there.  An embedding tied to the
    output layer is saved once (the manifest names the alias), restored tied, and an export has both names."""
    from fsmtrain.launch import launch_command

    (tmp_path / "buffers_check.py").write_text(BUFFERS)
    cmd, e = launch_command(2, "buffers_check", [str(tmp_path / "ck")], max_restarts=0)
    p = subprocess.run(cmd, env={**e, **env(), "PYTHONPATH": f"{ROOT}:{tmp_path}"}, cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [(tmp_path / "ck" / f"rank{r}.txt").read_text().split() for r in (0, 1)]
    assert [row[:2] + row[3:] for row in rows] == [["0", "True", "True", "True", "True", "True"],
                                                   ["1", "True", "True", "True"]]  # (rank 0 also exported)
    assert rows[0][2] != rows[1][2]  # (the ranks' statistics differed: one copy for both would not do)


def test_dcp_failures_become_fsmtrain_errors():
    """DCP raises CheckpointException (a BaseException in torch 2.13) carrying each rank's exception: a full disk
    stays an OSError (the runner stops the run, resumable), anything else becomes a CheckpointError naming it."""
    import errno

    from torch.distributed.checkpoint.api import CheckpointException

    from fsmtrain.errors import CheckpointError, environmental
    from fsmtrain.train.sharded import _dcp

    full = OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError) as got, _dcp("saving x failed"):
        raise CheckpointException("save failed", {1: (full, None)})
    assert got.value is full and environmental(got.value)
    with pytest.raises(CheckpointError, match=r"saving x failed \(ValueError: bad shape\)"), _dcp("saving x failed"):
        raise CheckpointException("save failed", {0: (ValueError("bad shape"), None)})
    with pytest.raises(CheckpointError, match=r"loading y \(KeyError"), _dcp("loading y"):
        raise KeyError("model.0.weight")
