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
from fsmtrain.state import Ref, State
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


def stem_position(ref):
    """(epoch, steps or None) from a checkpoint's name: e<epoch>-… at an epoch's end, e<epoch>s<steps>-… mid-epoch."""
    stem = Path(ref.path).name.split("-")[0][1:]
    epoch, _, steps = stem.partition("s")
    return int(epoch), int(steps) if steps else None


class TestWhichStateAFileHolds:
    def test_every_committed_checkpoint_maps_to_the_step_whose_state_it_holds(self, tmp_path, monkeypatch):
        """Late commits, a late commit overridden by the final synchronous save in the same step, and plain ones:
        the step each maps to has the epoch and step count the file was named after."""
        from fsmtrain.train.history import checkpoint_commits, origin_of

        monkeypatch.setattr(saver_module, "_PAUSE", 0.03)  # saves still in flight when the next checkpoint comes
        Trainer(machine("async", every=3), tiny_build, log=tmp_path / "a.db").fit()
        with EventLog(tmp_path / "a.db", readonly=True) as log:
            commits = list(checkpoint_commits(log.events(1)))
            assert len(commits) == 6  # 5 steps an epoch, in chunks of 3 and 2, a checkpoint after each: all committed
            overridden = [c for c in commits if c[0] == commits[-1][0]]
            for commit_seq, state_seq, ref in commits:
                assert state_seq is not None and state_seq <= commit_seq
                assert origin_of(log, 1, ref).seq == state_seq
                held = state_at(log, 1, state_seq)
                epoch, steps = stem_position(ref)
                assert held["epoch"] == epoch and (steps is None or held["steps"] == steps), (ref.path, state_seq)
        assert len(overridden) in (1, 2)  # (2: the last async save committed by the final sync checkpoint's step)

    def test_a_time_budget_in_the_stop_condition_works_with_async_saves_and_their_redo(self, tmp_path):
        from fsmtrain.stopping import time_budget

        stop = max_epochs(3) | time_budget(3600)
        whole = Trainer(training_machine(stop, initial={"lr": 0.01}, every=2), tiny_build,
                        log=tmp_path / "s.db").fit()
        m = training_machine(stop, initial={"lr": 0.01}, every=2, checkpoints="async")
        first = Trainer(m, tiny_build, log=tmp_path / "a.db")
        r = first.start()
        while r.state["steps"] < 9:
            r.step()
        r.close()
        first.close()
        again = Trainer(m, tiny_build, log=tmp_path / "a.db").fit()
        assert again.status == "finished" and again.state["weights_sha256"] == whole.state["weights_sha256"]
        with EventLog(tmp_path / "a.db", readonly=True) as log:
            notes = [e.info["restore"] for e in log.events(1) if e.kind == "resume"]
        assert notes and notes[-1]["redone"] >= 1 and not notes[-1].get("mismatches")

    @pytest.mark.parametrize("mode", ["sync", "async"])
    def test_a_fork_at_any_step_restores_through_the_parents_steps(self, tmp_path, mode):
        """Forked after a chunk (not a checkpoint step): the fork's checkpoint holds an earlier step of the parent,
        whose steps up to the fork point are redone first; the fork then ends as the parent did."""
        from fsmtrain.replay import fork

        t = Trainer(machine(mode), tiny_build, log=tmp_path / "p.db")
        parent = t.start()
        with parent:
            while parent.state["steps"] < 9 or parent.next_action != "train_steps":
                parent.step()
            parent.step()  # a chunk: its step is no checkpoint step
            at = parent.seq
            child = fork(t.log, 1, at)
            parent.run()  # the parent goes on and ends (retention spares what the fork names)
        got = t.resume(child)
        with got:
            got.run()
        assert got.status == "finished" and got.state["weights_sha256"] == parent.state["weights_sha256"]
        restored = [e.info["restore"] for e in t.log.events(child) if e.kind == "resume"]
        assert restored and "checkpoint" in restored[0] and restored[0]["prelude"]["to_seq"] == at
        assert not restored[0].get("mismatches")
        t.close()


class TestWithAHome:
    def test_a_node_lost_mid_run_continues_elsewhere_from_the_home_with_async_checkpoints(self, tmp_path, monkeypatch):
        """Late-committed Refs ship like any other: the files a committed state names reach the home, and a new
        node resumes from them, bit-identical."""
        import shutil

        monkeypatch.setattr(saver_module, "_PAUSE", 0.02)
        home = tmp_path / "home"
        whole = Trainer(machine("sync"), tiny_build, log=tmp_path / "w.db").fit()
        (tmp_path / "a").mkdir()
        with Trainer(machine("async"), tiny_build, log=tmp_path / "a" / "r.db", home=home) as t:
            runner = t.start({})
            with runner:
                while runner.state["steps"] < 7 or not isinstance(runner.state.get("checkpoint"), Ref):
                    runner.step()
            t.saver.wait()
        shutil.rmtree(tmp_path / "a")  # the node is gone, with its disk (and the save it had in flight, if any)
        (tmp_path / "b").mkdir()
        with Trainer(machine("async"), tiny_build, log=tmp_path / "b" / "r.db", home=home) as t:
            got = t.fit()
            assert got.status == "finished" and got.state["weights_sha256"] == whole.state["weights_sha256"]
            assert list(got.state["val_loss"]) == list(whole.state["val_loss"])
            assert t.log.verify() == []
            restored = [e.info["restore"] for e in t.log.events(1) if e.kind == "resume"]
            assert restored and "checkpoint" in restored[-1]  # fetched from the home, not redone from the start
            t.log.sync_home()
        for ref in artifact_refs(got.state):
            assert read_verified(home / "artifacts", ref)


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
        import collections

        odd = {"counts": collections.Counter(a=2), "d": collections.defaultdict(list, b=[torch.ones(2)])}
        got = stager.stage(odd)  # (a loader's state_dict may hold such dicts)
        assert got["counts"] == odd["counts"] and type(got["d"]) is collections.defaultdict
        assert got["d"].default_factory is list and torch.equal(got["d"]["b"][0], torch.ones(2))

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

    @pytest.mark.parametrize(("threshold", "staged"), [(1, True), (1 << 40, False)])
    def test_auto_saves_in_the_background_from_a_size_of_state(self, tmp_path, monkeypatch, threshold, staged):
        from fsmtrain.train import actions

        monkeypatch.setattr(actions, "AUTO_ASYNC_BYTES", threshold)
        got = Trainer(training_machine(max_epochs(2), initial={"lr": 0.01}, every=2), tiny_build,
                      log=tmp_path / "a.db").fit()  # checkpoints="auto", the default
        with EventLog(tmp_path / "a.db", readonly=True) as log:
            pending = [e for e in log.events(1) if e.kind == "step" and isinstance(
                ((e.updates or {}).get("set") or {}).get("checkpoint_pending"), dict)]
        assert bool(pending) is staged and got.status == "finished"
        r = tiny_build(State({"lr": 0.01, "seed": 0}))
        size = sum(t.numel() * t.element_size() for t in r.model.state_dict().values())
        assert actions._state_bytes(r) == size  # (no optimizer state before the first step)

    def test_bad_settings_are_refused(self):
        from fsmtrain.errors import InvalidDefinition
        from fsmtrain.train.actions import checkpoint

        with pytest.raises(InvalidDefinition, match="checkpoints must be 'auto', 'sync', 'async'"):
            training_machine(max_epochs(2), checkpoints="sometimes")
        with pytest.raises(InvalidDefinition, match="async_ must be True, False, 'auto' or setting"):
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
def test_thirty_two_kills_during_saves_every_run_bit_identical(tmp_path):
    want = demo_json(tmp_path / "ref.db", "--epochs", "20", "--chunk", "3")
    done, final = kill_in_phases(tmp_path, 32, random.Random(2026), "--epochs", "20", "--chunk", "3")
    assert final == want
    assert sum(done.values()) >= 30 and all(n >= 5 for n in done.values()), done
