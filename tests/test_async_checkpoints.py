"""Asynchronous checkpoints (``checkpoint(async_=True)``, ``training_machine(checkpoints="async")``): the same training
as synchronous ones, a Ref committed only once its file is durable, and a kill at any phase of a save loses only that
save."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch

from fsmtrain import EventLog, state_at
from fsmtrain.errors import StorageError
from fsmtrain.hooks import Hook
from fsmtrain.state import State
from fsmtrain.stopping import max_epochs
from fsmtrain.train import Trainer, training_machine
from fsmtrain.train import saver as saver_module
from fsmtrain.train.actions import artifact_refs
from fsmtrain.train.checkpoints import read_verified
from fsmtrain.train.saver import AsyncSaver, Stager
from tests.conftest import ROOT
from tests.machines.training import tiny_build

DEMO = [sys.executable, "-m", "fsmtrain", "demo", "--patience", "100", "--json", "--checkpoints", "async"]


def machine(mode, every=2, **kw):
    return training_machine(max_epochs(3), initial={"lr": 0.01}, every=every, checkpoints=mode, **kw)


def committed_refs_verify(log_path, run_id=1, seq=None):
    """Every Ref the run's committed state names is a complete file (size and sha256 as recorded)."""
    with EventLog(log_path, readonly=True) as log:
        state = state_at(log, run_id, seq)
        for ref in artifact_refs(state):
            read_verified(log.artifacts, ref)
        return state


class Verifying(Hook):
    """After every committed step: each Ref its state names is a complete file."""

    def __init__(self, root):
        self.root, self.checked, self.pending_seen = root, 0, 0

    def on_step_end(self, *, state, **_):
        for ref in artifact_refs(state):
            read_verified(self.root, ref)
            self.checked += 1
        self.pending_seen += isinstance(state.get("checkpoint_pending"), Mapping)


class TestSameTraining:
    @pytest.mark.parametrize("every", [None, 2])
    def test_async_and_sync_checkpoints_train_bit_identically(self, tmp_path, every):
        runs = {}
        for mode in ("sync", "async"):
            runs[mode] = Trainer(machine(mode, every), tiny_build, log=tmp_path / f"{mode}.db").fit()
        a, s = runs["async"].state, runs["sync"].state
        assert a["weights_sha256"] == s["weights_sha256"]
        for key in ("train_loss", "val_loss", "val_acc", "learning_rate"):
            assert list(a[key]) == list(s[key]), key
        assert a["checkpoint"] == s["checkpoint"] and a["best"] == s["best"]  # the very same files (named by hash)
        assert list(a["checkpoints"]) == list(s["checkpoints"]) and a["checkpoint_pending"] is None
        with EventLog(tmp_path / "async.db", readonly=True) as log:
            assert log.verify() == []
            late = [e for e in log.events(1) if e.kind == "step" and isinstance(e.info, dict) and "late" in e.info]
            staged = [e for e in log.events(1) if e.kind == "step" and isinstance(
                ((e.updates or {}).get("set") or {}).get("checkpoint_pending"), dict)]
        assert staged and len(late) == len(staged)  # every staged save committed once, late

    def test_every_committed_ref_names_a_complete_file_even_with_a_slow_disk(self, tmp_path, monkeypatch):
        monkeypatch.setattr(saver_module, "_PAUSE", 0.05)  # each phase of a save takes 50 ms: steps commit meanwhile
        t = Trainer(machine("async"), tiny_build, log=tmp_path / "a.db")
        hook = Verifying(t.artifacts)
        t.hooks.append(hook)
        runner = t.fit()
        assert runner.status == "finished" and hook.checked > 10 and hook.pending_seen > 3
        ref = Trainer(machine("sync"), tiny_build, log=tmp_path / "s.db").fit()
        assert runner.state["weights_sha256"] == ref.state["weights_sha256"]
        assert sorted(p.name for p in (t.artifacts / "run1").iterdir()) == \
            sorted(Path(r.path).name for r in artifact_refs(runner.state))  # nothing else left behind

    def test_a_save_left_in_flight_by_a_process_that_stopped_is_redone_or_dropped_and_the_run_ends_the_same(
            self, tmp_path, monkeypatch):
        monkeypatch.setattr(saver_module, "_PAUSE", 0.05)
        whole = Trainer(machine("sync"), tiny_build, log=tmp_path / "w.db").fit()
        first = Trainer(machine("async"), tiny_build, log=tmp_path / "a.db")
        r = first.start()
        while not isinstance(r.state.get("checkpoint_pending"), Mapping) or r.state["steps"] < 4:
            r.step()  # stop right after a checkpoint step staged a save: it is still being written
        r.close()
        again = Trainer(machine("async"), tiny_build, log=tmp_path / "a.db").fit()  # another saver: the save is not its
        assert again.state["weights_sha256"] == whole.state["weights_sha256"]
        assert list(again.state["val_loss"]) == list(whole.state["val_loss"])
        committed_refs_verify(tmp_path / "a.db")
        first.saver.wait()


class TestSaver:
    def test_staging_reuses_its_buffers_keeps_tied_tensors_shared_and_saves_the_same_bytes(self, tmp_path):
        import io

        emb = torch.nn.Embedding(10, 4)
        head = torch.nn.Linear(4, 10, bias=False)
        head.weight = emb.weight  # tied
        model = torch.nn.ModuleDict({"emb": emb, "head": head})
        opt = torch.optim.AdamW(model.parameters())
        model["head"](model["emb"](torch.tensor([1, 2]))).sum().backward()
        opt.step()
        stager = Stager()
        payload = {"model": model.state_dict(), "optimizer": opt.state_dict(), "n": 3}
        one = stager.stage(payload)
        assert one["model"]["emb.weight"].data_ptr() == one["model"]["head.weight"].data_ptr()  # still one tensor
        assert one["model"]["emb.weight"].data_ptr() != model["emb"].weight.data_ptr()  # a copy
        ptrs = {k: v.data_ptr() for k, v in one["model"].items()}
        with torch.no_grad():
            model["emb"].weight.add_(1.0)
        two = stager.stage({"model": model.state_dict(), "optimizer": opt.state_dict(), "n": 3})
        assert {k: v.data_ptr() for k, v in two["model"].items()} == ptrs  # the same buffers, refilled
        assert torch.equal(two["model"]["emb.weight"], model["emb"].weight)
        a, b = io.BytesIO(), io.BytesIO()
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "n": 3}, a)
        torch.save(two, b)
        assert a.getvalue() == b.getvalue()  # the file a synchronous save writes, byte for byte
        assert two["model"]._metadata == model.state_dict()._metadata

    def test_a_pending_save_with_no_writer_behind_it_is_dropped(self, tmp_path):
        saver = AsyncSaver(tmp_path)
        state = State({"checkpoint_pending": {"path": "run1/e00001", "epoch": 1}, "checkpoints": [], "best": None})
        act = machine("async").actions["train_steps"]
        assert saver.late(state, act, False) == {"checkpoint_pending": None}
        assert saver.late(State({"checkpoint_pending": None}), act, False) is None

    def test_retention_spares_only_the_files_of_the_save_in_flight(self, tmp_path):
        saver = AsyncSaver(tmp_path)
        saver.save("run1", "e00002s9", {"path": "run1/e00002s9"}, {"format": 1, "x": torch.zeros(3)})
        assert saver.protects("run1/e00002s9-0123456789ab.pt") and saver.protects("run1/.e00002s9.77.88.tmp")
        assert not saver.protects("run1/e00002s90-0123456789ab.pt") and not saver.protects("run2/e00002s9-01.pt")
        saver.wait()

    def test_a_failed_background_save_stops_the_run_resumably_and_commits_no_ref(self, tmp_path, monkeypatch):
        real = saver_module.save_streaming

        def full_disk(root, folder, stem, payload):
            if stem.startswith("e00001"):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(root, folder, stem, payload)

        monkeypatch.setattr(saver_module, "save_streaming", full_disk)
        with pytest.raises(StorageError, match="No space left"):
            Trainer(machine("async"), tiny_build, log=tmp_path / "a.db").fit()
        state = committed_refs_verify(tmp_path / "a.db")
        assert all(not Path(r.path).name.startswith("e00001") for r in artifact_refs(state))
        monkeypatch.setattr(saver_module, "save_streaming", real)
        again = Trainer(machine("async"), tiny_build, log=tmp_path / "a.db").fit()
        whole = Trainer(machine("sync"), tiny_build, log=tmp_path / "s.db").fit()
        assert again.status == "finished" and again.state["weights_sha256"] == whole.state["weights_sha256"]

    def test_bad_settings_are_refused(self):
        from fsmtrain.errors import InvalidDefinition
        from fsmtrain.train.actions import checkpoint

        with pytest.raises(InvalidDefinition, match="checkpoints must be 'sync', 'async'"):
            training_machine(max_epochs(2), checkpoints="sometimes")
        with pytest.raises(InvalidDefinition, match="async_ must be True, False or setting"):
            checkpoint(async_="yes")


# -- kills at each phase of a save, in a real process -----------------------------------------------------------------
PHASES = ("staging", "staged", "writing", "written", "durable")
"""staging/staged: the step's copy into memory (nothing committed); writing: before the temp file; written: the temp
file complete, not renamed; durable: renamed and synced, not yet committed by a step."""


def demo_json(log, *extra, env=None):
    p = subprocess.run(DEMO + ["--log", str(log), *extra], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env=env)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.splitlines()[-1])


def kill_in_phases(tmp_path, kills, rng, *extra):
    """SIGKILL the async demo ``kills`` times, each once the save trace shows this process in the phase chosen
    (cycling through PHASES, the order shuffled by ``rng``): observed progress, never a guessed sleep.  After each
    kill the committed state's Refs all name complete files.  Returns the kills per phase and the final JSON."""
    log, trace = tmp_path / "k.db", tmp_path / "trace.txt"
    env = {**os.environ, "FSMTRAIN_SAVE_TRACE": str(trace), "FSMTRAIN_SAVE_PAUSE": "0.08"}
    done: dict[str, int] = dict.fromkeys(PHASES, 0)
    order = []
    while len(order) < kills:
        order += rng.sample(PHASES, len(PHASES))
    for phase in order[:kills]:
        trace.write_text("")
        p = subprocess.Popen(DEMO + ["--log", str(log), *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 300
            mark = f"{p.pid} {phase} "
            while p.poll() is None and not any(line.startswith(mark) for line in trace.read_text().splitlines()):
                assert time.monotonic() < deadline, f"no save reached phase {phase} in 300 s"
                time.sleep(0.002)
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                done[phase] += 1
            _, err = p.communicate(timeout=120)
        finally:
            if p.poll() is None:
                p.kill()
                p.communicate()
        assert p.returncode in (0, -signal.SIGKILL), err
        committed_refs_verify(log)
        if p.returncode == 0:
            break
    final = demo_json(log, *extra)
    with EventLog(log, readonly=True) as lg:
        assert lg.verify() == []
    return done, final


def test_kills_in_every_phase_of_a_save_lose_only_that_save(tmp_path):
    want = demo_json(tmp_path / "ref.db", "--epochs", "6", "--chunk", "4")
    sync = demo_json(tmp_path / "sync.db", "--epochs", "6", "--chunk", "4", "--checkpoints", "sync")
    assert want["weights_sha256"] == sync["weights_sha256"] and want["checkpoints"] == "async"
    done, final = kill_in_phases(tmp_path, 5, random.Random(7), "--epochs", "6", "--chunk", "4")
    assert final == want
    assert sum(done.values()) >= 4, done


@pytest.mark.slow
def test_thirty_five_kills_during_saves_every_run_bit_identical(tmp_path):
    want = demo_json(tmp_path / "ref.db", "--epochs", "20", "--chunk", "3")
    done, final = kill_in_phases(tmp_path, 35, random.Random(2026), "--epochs", "20", "--chunk", "3")
    assert final == want
    assert sum(done.values()) >= 30 and all(n >= 5 for n in done.values()), done
