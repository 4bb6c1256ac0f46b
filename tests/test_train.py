"""Training on torch: checkpoint files, the ready-made actions, and the Trainer's resume and restore."""

from __future__ import annotations

import hashlib
import io
import pathlib
import random
import struct
import subprocess
import sys

import pytest
import torch

from fsmtrain import EventLog, Machine, Ref, Runner, State, fork, state_at
from fsmtrain.errors import CheckpointError, InvalidDefinition, ResourceError
from fsmtrain.log import EventLog as _EventLog
from fsmtrain.stopping import max_epochs
from fsmtrain.train import (
    Resources,
    Trainer,
    batches,
    checkpoint,
    epoch_seed,
    evaluate,
    finish,
    load_checkpoint,
    save_checkpoint,
    train_epoch,
    training_machine,
    weights_sha256,
)
from fsmtrain.train import actions as A
from fsmtrain.train.checkpoints import capture_rng, read_verified, restore_rng, write_artifact
from tests.conftest import file_digest
from tests.machines.training import tiny_build, tiny_data, tiny_machine


def fit(log_path, epochs=3, build=tiny_build, **kwargs):
    return Trainer(tiny_machine(epochs), build, log=log_path, **kwargs).fit()


def summary(runner):
    """What must be identical between an uninterrupted and an interrupted run."""
    s = runner.state.to_dict()
    return {k: s[k] for k in ("epoch", "train_loss", "val_loss", "val_acc", "best", "checkpoints", "weights_sha256")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 3-epoch run of the tiny machine."""
    path = tmp_path_factory.mktemp("ref") / "ref.db"
    return summary(fit(path))


def corrupt(path: pathlib.Path, how: str) -> None:
    if how == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif how == "bitflip":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    else:
        path.unlink()


class Interrupt(BaseException):
    """Stands in for the process dying (not an Exception, so nothing counts it as an attempt)."""


def interrupt_at(monkeypatch, k: int, when: str) -> None:
    """Make the k-th step commit die just before or just after it is written."""
    orig = _EventLog.append
    seen = {"steps": 0}

    def append(self, run_id, expected_seq, *, kind, **fields):
        if kind == "step":
            seen["steps"] += 1
            if seen["steps"] == k and when == "before":
                raise Interrupt
        ev = orig(self, run_id, expected_seq, kind=kind, **fields)
        if kind == "step" and seen["steps"] == k and when == "after":
            raise Interrupt
        return ev

    monkeypatch.setattr(_EventLog, "append", append)


class TestCheckpointFiles:
    def test_save_then_load_round_trips_and_the_name_carries_the_content_hash(self, tmp_path):
        """The file holds exactly what was saved; its Ref records size and sha256."""
        payload = {"format": 1, "w": torch.arange(5.0), "epoch": 3, "rng": capture_rng()}
        ref = save_checkpoint(tmp_path, "run1", "e00003", payload)
        data = (tmp_path / ref.path).read_bytes()
        assert ref.size == len(data) and ref.sha256 == hashlib.sha256(data).hexdigest()
        assert ref.path == f"run1/e00003-{ref.sha256[:12]}.pt"
        back = load_checkpoint(tmp_path, ref)
        assert torch.equal(back["w"], payload["w"]) and back["epoch"] == 3
        assert [p.name for p in (tmp_path / "run1").iterdir()] == [pathlib.Path(ref.path).name]  # no temp file left

    @pytest.mark.parametrize("how", ["truncate", "bitflip", "delete"])
    def test_a_damaged_or_missing_file_is_never_loaded(self, tmp_path, how):
        ref = save_checkpoint(tmp_path, "run1", "e00001", {"format": 1, "w": torch.ones(100)})
        corrupt(tmp_path / ref.path, how)
        expected = {"truncate": "bytes, but", "bitflip": "does not match its recorded sha256", "delete": "is missing"}
        with pytest.raises(CheckpointError, match=expected[how]):
            load_checkpoint(tmp_path, ref)

    def test_a_pickle_that_runs_code_is_refused(self, tmp_path):
        """torch.load(weights_only=True): a checkpoint is data; the payload's code never runs."""
        marker = tmp_path / "pwned"

        class Evil:
            def __reduce__(self):
                return (pathlib.Path.touch, (marker,))

        buf = io.BytesIO()
        torch.save({"format": 1, "model": Evil()}, buf)
        ref = write_artifact(tmp_path, "run1/e00001-evil.pt", buf.getvalue())
        assert read_verified(tmp_path, ref)  # the hash matches: only the loader stands in the way
        with pytest.raises(CheckpointError, match="not a plain-data checkpoint; refused to load it"):
            load_checkpoint(tmp_path, ref)
        assert not marker.exists()

    def test_a_failed_write_leaves_neither_the_file_nor_a_temp_file(self, tmp_path, monkeypatch):
        def boom(src, dst):
            raise OSError("disk full")

        monkeypatch.setattr("os.replace", boom)
        with pytest.raises(OSError, match="disk full"):
            write_artifact(tmp_path, "run1/e00001-x.pt", b"abc")
        assert list((tmp_path / "run1").iterdir()) == []

    def test_weights_sha256_hashes_each_tensor_in_state_dict_order(self):
        """An independent computation of the same digest: each value packed with struct, little-endian."""
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
        h = hashlib.sha256()
        for t in model.state_dict().values():
            fmt = {torch.float32: "f", torch.int64: "q"}[t.dtype]
            values = t.flatten().tolist()
            h.update(struct.pack(f"<{len(values)}{fmt}", *values))
        assert weights_sha256(model) == h.hexdigest() == weights_sha256(model.state_dict())

    def test_rng_states_round_trip(self):
        np = pytest.importorskip("numpy")  # in the test extra
        saved = capture_rng()
        first = (random.random(), torch.rand(3).tolist(), np.random.rand())
        restore_rng(saved)
        assert (random.random(), torch.rand(3).tolist(), np.random.rand()) == first
        assert isinstance(load_round_trip(saved)["numpy"][1], torch.Tensor)

    def test_rng_states_round_trip_without_numpy(self):
        """Where NumPy is not installed, checkpoints carry the other RNG states and load fine."""
        code = ("import sys; sys.modules['numpy'] = None\n"
                "import random, torch\n"
                "from fsmtrain.train.checkpoints import capture_rng, restore_rng\n"
                "s = capture_rng(); assert 'numpy' not in s\n"
                "a = (random.random(), torch.rand(2).tolist()); restore_rng(s)\n"
                "assert (random.random(), torch.rand(2).tolist()) == a; print('ok')")
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr


def load_round_trip(payload):
    """``payload`` through torch.save and a weights-only load, as a checkpoint would go."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def resources_for_test(tmp_path, run_id=1):
    torch.manual_seed(0)
    r = tiny_build(State(lr=0.01))
    r.artifacts, r.run_id = tmp_path, run_id
    return r


class TestActions:
    def test_train_epoch_is_the_hand_written_loop(self, tmp_path):
        """Oracle: the same epoch written by hand gives bit-identical weights and loss."""
        r = resources_for_test(tmp_path)
        torch.manual_seed(0)
        model = tiny_build(State(lr=0.01)).model
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        x, y = r.train_data
        torch.manual_seed(5)
        out = train_epoch()(State(epoch=4, seed=7), resources=r)
        torch.manual_seed(5)
        model.train()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch_seed(7, 4)))
        total = 0.0
        for i in range(0, len(x), 32):
            idx = order[i:i + 32]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        assert out["epoch"] == 5 and out["train_loss"].items == (total / len(x),)
        assert weights_sha256(r.model) == weights_sha256(model)

    def test_the_data_order_depends_only_on_seed_and_epoch(self, tmp_path):
        """Drawing from the global RNG in between changes nothing but dropout, which we switch off."""
        results = []
        for noise in (0, 1000):
            r = resources_for_test(tmp_path)
            r.model[2].p = 0.0  # no dropout: only the data order could differ
            torch.rand(noise)
            random.random()
            results.append((train_epoch()(State(epoch=2, seed=1), resources=r)["train_loss"], weights_sha256(r.model)))
        assert results[0] == results[1]
        assert epoch_seed(1, 2) != epoch_seed(1, 3) != epoch_seed(2, 2)

    def test_a_map_style_dataset_is_batched_by_a_seeded_loader(self):
        """Any Dataset works; its shuffled order is a function of the generator, not of the global RNG."""
        x, y = tiny_data(20)

        class Pairs(torch.utils.data.Dataset):
            def __len__(self):
                return len(x)

            def __getitem__(self, i):
                return x[i], y[i]

        def order(noise):
            torch.rand(noise)
            return [b[1].tolist() for b in batches(Pairs(), 8, generator=torch.Generator().manual_seed(epoch_seed(1, 2)))]

        first = order(0)
        assert first == order(500) and sorted(sum(first, [])) == sorted(y.tolist()) and [len(b) for b in first] == [8, 8, 4]
        assert [b[0].tolist() for b in batches(Pairs(), 8)][0] == x[:8].tolist()  # in order without a generator

    def test_evaluate_matches_a_direct_computation(self, tmp_path):
        r = resources_for_test(tmp_path)
        out = evaluate()(State(), resources=r)
        x, y = r.val_data
        r.model.eval()
        with torch.no_grad():
            logits = r.model(x)
        assert out["val_loss"].items[0] == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-6)
        assert out["val_acc"].items[0] == pytest.approx((logits.argmax(1) == y).float().mean().item())

    def test_checkpoint_keeps_the_last_k_and_the_best(self, tmp_path):
        r = resources_for_test(tmp_path)
        act = checkpoint("val_loss", keep_last=2)
        state = State(epoch=0, checkpoints=[], best=None, val_loss=[])
        for epoch, loss in enumerate([0.5, 0.3, 0.4, 0.35], 1):
            r.model[0].bias.data.fill_(epoch)  # a different file each epoch
            state = state.apply({"epoch": epoch, "val_loss": [*state["val_loss"], loss]})
            state = state.apply(act(state, resources=r))
        names = [pathlib.Path(c.path).name[:6] for c in state["checkpoints"]]
        assert names == ["e00003", "e00004"] and state["checkpoint"] == state["checkpoints"][-1]
        assert state["best"]["epoch"] == 2 and state["best"]["value"] == 0.3
        payload = load_checkpoint(tmp_path, state["best"]["checkpoint"])
        assert payload["epoch"] == 2 and torch.all(payload["model"]["0.bias"] == 2)

    def test_nan_is_never_the_best(self, tmp_path):
        r = resources_for_test(tmp_path)
        state = State(epoch=1, checkpoints=[], best=None, val_loss=[float("nan")])
        assert "best" not in checkpoint()(state, resources=r)

    def test_a_monitor_no_action_writes_is_refused_when_the_machine_is_built(self):
        with pytest.raises(InvalidDefinition, match="monitor `val_los` is written by no action"):
            training_machine(max_epochs(3), monitor="val_los")

    def test_checkpointing_before_any_evaluation_fails_clearly_and_writes_nothing(self, tmp_path):
        m = Machine("early", [train_epoch(), checkpoint("val_loss"), finish()],
                    [("train_epoch", "checkpoint"), ("checkpoint", "finish")], entry="train_epoch",
                    terminal=["finish"], initial={"seed": 0, "epoch": 0, "train_loss": [], "checkpoints": [],
                                                   "best": None, "lr": 0.01})
        trainer = Trainer(m, tiny_build, log=tmp_path / "runs.db")
        runner = trainer.start()
        runner.step()
        digest = file_digest(tmp_path / "runs.db")
        with pytest.raises(CheckpointError, match="monitors `val_loss`, but the state has no value for it yet"):
            runner.step()
        assert file_digest(tmp_path / "runs.db") == digest
        assert not (tmp_path / "runs.db.artifacts" / "run1").exists()


class TestTrainer:
    def test_fit_trains_until_the_stop_condition(self, tmp_path, reference):
        runner = fit(tmp_path / "runs.db")
        assert runner.status == "finished" and runner.state["epoch"] == 3
        assert summary(runner) == reference  # deterministic: same seed, same result
        assert len(reference["val_loss"]) == len(reference["train_loss"]) == 3
        with EventLog(tmp_path / "runs.db") as log:
            assert log.verify() == []
            last = log.last_event(1)
            assert last.action == "finish" and runner.state["weights_sha256"] == weights_sha256(runner.resources.model)

    def test_a_trainer_is_a_context_manager_that_closes_its_log(self, tmp_path):
        with Trainer(tiny_machine(1), tiny_build, log=tmp_path / "runs.db") as trainer:
            assert trainer.fit().status == "finished"
        with pytest.raises(Exception, match="closed"):
            trainer.log.runs()

    def test_a_second_fit_with_the_same_config_returns_the_finished_run(self, tmp_path):
        first = fit(tmp_path / "runs.db")
        again = fit(tmp_path / "runs.db")
        assert again.run_id == first.run_id and again.status == "finished" and again.resources is None

    @pytest.mark.parametrize("when", ["before", "after"])
    @pytest.mark.parametrize("k", range(1, 11))
    def test_an_interruption_at_any_commit_resumes_to_the_identical_run(self, tmp_path, reference, monkeypatch, k, when):
        """Die just before or after the k-th step commit, resume in a fresh Trainer: bit-identical end."""
        log_path = tmp_path / "runs.db"
        interrupt_at(monkeypatch, k, when)
        with pytest.raises(Interrupt):
            fit(log_path)
        monkeypatch.undo()
        torch.rand(17)  # whatever the dead process left in the global RNG must not matter
        resumed = fit(log_path)
        assert resumed.run_id == 1 and summary(resumed) == reference
        with EventLog(log_path) as log:
            assert log.verify() == []
            epochs = [e.updates["set"]["epoch"] for e in log.events(1) if e.action == "train_epoch" and e.kind == "step"]
            assert epochs == [1, 2, 3]  # no epoch recorded twice
            resume = [e for e in log.events(1) if e.kind == "resume"]
            if (k, when) == (10, "after"):  # the last step had committed: the run was already finished
                assert resume == []
            else:
                assert len(resume) == 1 and "mismatches" not in resume[0].info["restore"]

    @pytest.mark.parametrize("how", ["truncate", "bitflip", "delete"])
    def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(self, tmp_path, reference, monkeypatch, how):
        """The fallback is said in the resume event; re-running from the older checkpoint ends identical."""
        log_path = tmp_path / "runs.db"
        interrupt_at(monkeypatch, 7, "before")  # epochs 1-2 checkpointed, epoch 3 trained, not committed
        with pytest.raises(Interrupt):
            fit(log_path)
        monkeypatch.undo()
        with EventLog(log_path) as log:
            newest = state_at(log, 1)["checkpoint"]
        corrupt(log.artifacts / newest.path, how)
        resumed = fit(log_path)
        assert summary(resumed) == reference
        with EventLog(log_path) as log:
            note = next(e for e in log.events(1) if e.kind == "resume").info["restore"]
        assert note["skipped"][0]["checkpoint"] == newest.path and note["checkpoint"] != newest.path
        assert note["redone"] == 3  # train_epoch, evaluate, checkpoint of epoch 2, from epoch 1's checkpoint

    def test_no_usable_checkpoint_left_redoes_the_run_from_its_start(self, tmp_path, monkeypatch, reference):
        """Every checkpoint damaged: the run is redone from its start (recorded), and ends as it would have."""
        log_path = tmp_path / "runs.db"
        interrupt_at(monkeypatch, 7, "before")
        with pytest.raises(Interrupt):
            fit(log_path)
        monkeypatch.undo()
        for p in (tmp_path / "runs.db.artifacts" / "run1").iterdir():
            corrupt(p, "bitflip")
        resumed = fit(log_path)
        assert summary(resumed) == reference
        with EventLog(log_path) as log:
            note = next(e for e in log.events(1) if e.kind == "resume").info["restore"]
        assert note["fallback"] == "the start" and "checkpoint" not in note and note["from_seq"] == 1
        assert [s["checkpoint"] for s in note["skipped"]] == sorted({s["checkpoint"] for s in note["skipped"]},
                                                                     reverse=True)  # newest first
        assert note["redone"] == 6  # train, evaluate, checkpoint of epochs 1 and 2

    def test_a_checkpoint_the_state_no_longer_names_is_used_when_the_named_ones_are_gone(self, tmp_path, monkeypatch):
        """A log that lost its last steps (a power loss, a restored backup) beside files that moved on: the newest
        checkpoint the run ever committed that still verifies.  Retention had not deleted epoch 1's file: no
        barrier came after the step that stopped naming it."""
        machine = tiny_machine(3, keep_last=1)
        ref = Trainer(machine, tiny_build, log=tmp_path / "ref.db").fit()
        expected = summary(ref)
        log_path = tmp_path / "runs.db"
        interrupt_at(monkeypatch, 7, "before")
        with pytest.raises(Interrupt):
            Trainer(machine, tiny_build, log=EventLog(log_path, barrier_seconds=3600)).fit()
        monkeypatch.undo()
        with EventLog(log_path) as log:
            first = state_at(log, 1, 4)["checkpoint"]
            state = state_at(log, 1)
        folder = tmp_path / "runs.db.artifacts"
        assert first not in (state["checkpoint"], state["best"]["checkpoint"]) and (folder / first.path).exists()
        (folder / state["checkpoint"].path).unlink()
        (folder / state["best"]["checkpoint"].path).unlink(missing_ok=True)
        t = Trainer(machine, tiny_build, log=log_path)
        assert summary(t.fit()) == expected
        t.close()
        with EventLog(log_path) as log:
            note = next(e for e in log.events(1) if e.kind == "resume").info["restore"]
        assert note["fallback"] == "an earlier checkpoint" and note["checkpoint"] == first.path
        assert note["from_seq"] == 4 and note["redone"] == 3
        assert sorted(p.name for p in (folder / "run1").iterdir()) == sorted(
            {pathlib.Path(r.path).name for r in (expected["checkpoints"][-1], expected["best"]["checkpoint"])})

    def test_a_fork_without_its_checkpoints_is_a_clear_error_that_writes_nothing(self, tmp_path):
        log_path = tmp_path / "runs.db"
        fit(log_path, epochs=2)
        with EventLog(log_path) as log:
            child = fork(log, 1, 4)  # right after epoch 1's checkpoint
        for p in (tmp_path / "runs.db.artifacts" / "run1").iterdir():
            corrupt(p, "bitflip")
        digest = file_digest(log_path)
        t = Trainer(tiny_machine(2), tiny_build, log=log_path)
        with pytest.raises(CheckpointError, match=f"run {child} has no usable checkpoint left, and it began from a "
                                                  "checkpoint"):
            t.resume(child).run()
        t.close()
        assert file_digest(log_path) == digest

    def test_a_failed_attempt_is_retried_from_restored_resources(self, tmp_path, reference):
        """An epoch that raises halfway (after optimizer steps) is re-run from the last checkpoint."""
        calls = {"n": 0}

        def build(state):
            r = tiny_build(state)
            loss = r.loss_fn

            def flaky_loss(out, target):
                calls["n"] += 1
                if calls["n"] == 10:  # in epoch 2, after some optimizer steps
                    raise RuntimeError("transient failure")
                return loss(out, target)

            r.loss_fn = flaky_loss
            return r

        runner = fit(tmp_path / "runs.db", build=build)
        assert summary(runner) == reference
        with EventLog(tmp_path / "runs.db") as log:
            assert [e.kind for e in log.events(1)].count("error") == 1

    def test_retention_deletes_only_files_the_state_no_longer_names(self, tmp_path):
        seen = []

        class Watch:
            def on_step_end(self, *, action, state, **_):
                if action == "checkpoint":
                    on_disk = sorted(p.name for p in (tmp_path / "runs.db.artifacts" / "run1").iterdir())
                    named = sorted({pathlib.Path(r.path).name for r in
                                    [*state["checkpoints"], state["best"]["checkpoint"]]})
                    seen.append((on_disk, named))

        log = EventLog(tmp_path / "runs.db", durability="step")  # every commit a barrier: deleted at once
        Trainer(tiny_machine(5, keep_last=2), tiny_build, log=log, hooks=[Watch()]).fit()
        assert len(seen) == 5 and all(on_disk == named for on_disk, named in seen)
        assert all(len(named) <= 3 for _, named in seen)

    def test_retention_waits_for_a_barrier_after_the_step_that_stopped_naming_a_file(self, tmp_path):
        """No state that a power loss could leave as the log's last names a deleted file: a dropped file goes
        only once the step that dropped it is durable."""
        seen = []

        class Watch:
            def on_step_end(self, *, action, state, **_):
                if action == "checkpoint":
                    on_disk = {p.name for p in (tmp_path / "runs.db.artifacts" / "run1").iterdir()}
                    seen.append((on_disk, log.durable))

        log = EventLog(tmp_path / "runs.db", barrier_seconds=3600, barrier_every=7)
        trainer = Trainer(tiny_machine(6, keep_last=1), tiny_build, log=log, hooks=[Watch()])
        runner = trainer.fit()
        named = sorted({pathlib.Path(r.path).name for r in A.artifact_refs(runner.state)})
        with EventLog(tmp_path / "runs.db") as reader:
            every = sorted({pathlib.Path(ev.updates["set"]["checkpoint"].path).name for ev in reader.events(1)
                            if ev.kind == "step" and "checkpoint" in (ev.updates or {}).get("set", {})})
        assert len(every) == 6 and len(named) <= 2
        assert sorted(p.name for p in (tmp_path / "runs.db.artifacts" / "run1").iterdir()) == named
        # between barriers (every 7 commits: 2 epochs and a bit), files stay longer than the state names them
        assert any(len(on_disk) > 2 for on_disk, _ in seen)
        assert all(on_disk <= set(every) for on_disk, _ in seen)

    def test_a_fork_keeps_the_files_it_inherited(self, tmp_path):
        log_path = tmp_path / "runs.db"
        trainer = Trainer(tiny_machine(6, keep_last=1), tiny_build, log=log_path)
        parent = trainer.start()
        parent.run(halt_after=["checkpoint"])  # epoch 1 checkpointed
        child_id = fork(trainer.log, 1, updates={"lr": 0.001})
        parent.run()
        inherited = state_at(trainer.log, child_id)["checkpoint"]
        assert (trainer.artifacts / inherited.path).exists()
        child = trainer.resume(child_id)
        child.run()
        assert child.status == "finished" and child.state["epoch"] == 6

    def test_a_factory_that_raises_writes_nothing(self, tmp_path):
        def build(state):
            raise ValueError("no GPU here")

        with pytest.raises(ResourceError, match="the resource factory `.*build` raised ValueError: no GPU here"):
            fit(tmp_path / "runs.db", build=build)
        with EventLog(tmp_path / "runs.db") as log:
            assert log.runs() == []

    def test_a_factory_returning_something_else_is_refused(self, tmp_path):
        with pytest.raises(ResourceError, match="returned dict; it must return fsmtrain.train.Resources"):
            fit(tmp_path / "runs.db", build=lambda s: {"model": 1})
        x, y = tiny_data()
        bad = Resources(model="m", optimizer=None, train_data=(x[:0], y[:0]), batch_size=0)  # type: ignore[arg-type]
        with pytest.raises(ResourceError, match="model must be a torch.nn.Module.*optimizer must be.*train_data is empty"
                                                ".*batch_size must be a positive int"):
            fit(tmp_path / "runs.db", build=lambda s: bad)

    def test_a_missing_data_set_path_is_named(self, tmp_path):
        from fsmtrain.train import demo

        with pytest.raises(ResourceError, match="data set '/no/such/digits.csv' does not exist"):
            demo.trainer(tmp_path / "runs.db").fit({"data": "/no/such/digits.csv"})
        with EventLog(tmp_path / "runs.db") as log:
            assert log.runs() == []

    def test_load_gives_the_best_models_weights(self, tmp_path):
        trainer = Trainer(tiny_machine(3), tiny_build, log=tmp_path / "runs.db")
        runner = trainer.fit()
        best = trainer.load(runner.run_id, "best")
        payload = load_checkpoint(trainer.artifacts, runner.state["best"]["checkpoint"])
        assert weights_sha256(best.model) == weights_sha256(payload["model"])

    def test_a_nondeterministic_step_is_reported_not_hidden(self, tmp_path, monkeypatch):
        """Redo compares what it recomputes with the log; differences go into the resume event."""
        noise = random.Random()  # unseeded: a different loss each time

        def build(state):
            r = tiny_build(state)
            loss = r.loss_fn
            r.loss_fn = lambda out, t: loss(out, t) * (1 + noise.random() * 1e-3)
            return r

        interrupt_at(monkeypatch, 3, "before")
        with pytest.raises(Interrupt):
            fit(tmp_path / "runs.db", build=build)
        monkeypatch.undo()
        fit(tmp_path / "runs.db", build=build)
        with EventLog(tmp_path / "runs.db") as log:
            note = next(e for e in log.events(1) if e.kind == "resume").info["restore"]
        assert "checkpoint" not in note and note["from_seq"] == 1  # epoch 1 never checkpointed: from the start
        assert note["redone"] == 2 and note["mismatches"][0].startswith("step 1 `train_epoch`: recorded ")


def test_the_engine_runner_can_drive_training_actions_directly(tmp_path):
    """Resources work with a bare Runner too (no Trainer), e.g. in a notebook."""
    r = resources_for_test(tmp_path)
    m = tiny_machine(2)
    runner = Runner.start(m, resources=r)
    assert runner.run().reason == "finished" and runner.state["epoch"] == 2
    assert isinstance(runner.state["checkpoint"], Ref)


class TestWhatTrainingRecords:
    def test_the_learning_rate_of_each_epoch_is_recorded(self, tmp_path):
        """A StepLR halving every 2 epochs shows in the history: the lr each epoch started with."""
        runner = fit(tmp_path / "lr.db", epochs=5)
        assert list(runner.state["learning_rate"]) == [0.01, 0.01, 0.005, 0.005, 0.0025]

    def test_reduce_lr_on_plateau_steps_with_the_watched_metric_and_resumes_identically(self, tmp_path):
        def build(state):
            r = tiny_build(state)
            r.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(r.optimizer, factor=0.5, patience=0,
                                                                     threshold=0.5)
            return r

        machine = tiny_machine(6)
        done = Trainer(machine, build, log=tmp_path / "a.db").fit({"lr": 0.05})
        rates = list(done.state["learning_rate"])
        assert rates[0] == 0.05 and rates[-1] < 0.05 and rates == sorted(rates, reverse=True)  # it reduced
        t = Trainer(machine, build, log=tmp_path / "b.db")
        r = t.start({"lr": 0.05})
        r.run(max_steps=7)  # stopped mid-run, then resumed by a fresh trainer: restore + redo
        r.close()
        again = Trainer(machine, build, log=tmp_path / "b.db").fit({"lr": 0.05})
        assert list(again.state["learning_rate"]) == rates
        assert again.state["weights_sha256"] == done.state["weights_sha256"]

    def test_a_plateau_scheduler_watching_a_metric_evaluate_does_not_compute_is_an_error(self, tmp_path):
        def build(state):
            r = tiny_build(state)
            r.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(r.optimizer)
            r.scheduler_metric = "val_f1"
            return r

        with pytest.raises(Exception, match="scheduler_metric `val_f1` is not one this evaluation computes"):
            Trainer(tiny_machine(2), build, log=tmp_path / "p.db", max_attempts=1).fit({"lr": 0.05})

    def test_a_dataloader_is_refused_saying_what_to_pass_instead(self, tmp_path):
        def build(state):
            r = tiny_build(state)
            r.train_data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*r.train_data), batch_size=8)
            return r

        with pytest.raises(ResourceError, match=r"train_data is a DataLoader.*pass its dataset "
                                                r"\(train_data=loader.dataset\)"):
            Trainer(tiny_machine(2), build, log=tmp_path / "d.db").fit({"lr": 0.05})


class TestSequenceOutputs:
    """The default accuracy follows cross_entropy's conventions; other shapes leave it out with one warning."""

    def _resources(self, model, loss_fn):
        import torch

        from fsmtrain.train import Resources

        x = torch.randint(0, 12, (40, 6))
        return Resources(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), train_data=(x, x),
                         val_data=(x, x), loss_fn=loss_fn, batch_size=8)

    def test_sequence_logits_skip_the_default_accuracy_with_one_warning_and_the_run_goes_on(self):
        import warnings

        import torch
        import torch.nn.functional as F

        from fsmtrain.state import State
        from fsmtrain.train import evaluate

        model = torch.nn.Sequential(torch.nn.Embedding(12, 8), torch.nn.Linear(8, 12))  # (B, T) -> (B, T, V)
        r = self._resources(model, lambda out, y: F.cross_entropy(out.transpose(1, 2), y))
        act = evaluate(name="evaluate_seq")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            updates = act.fn(State({}), r)
            act.fn(State({}), r)
        assert "val_loss" in updates and "val_acc" not in updates
        said = [str(w.message) for w in caught if "default accuracy is skipped" in str(w.message)]
        assert len(said) == 1 and ", 6, 12) and targets of shape (" in said[0]

    def test_accuracy_over_positions_follows_cross_entropy(self):
        """(N, C, T) logits against (N, T) class indices: the mean over every position."""
        import torch

        from fsmtrain.train.actions import accuracy, fits_a_classifier

        targets = torch.tensor([[0, 1, 2], [2, 2, 0]])
        logits = torch.nn.functional.one_hot(torch.tensor([[0, 1, 1], [2, 2, 0]]), 3).float().transpose(1, 2)
        assert float(accuracy(logits, targets)) == pytest.approx(5 / 6)
        assert fits_a_classifier(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))
        assert not fits_a_classifier(torch.zeros(4, 6, 3), torch.zeros(4, 6, dtype=torch.long))
        with pytest.raises(ValueError, match=r"shape \(4, 6, 3\) and targets of shape \(4, 6\)"):
            accuracy(torch.zeros(4, 6, 3), torch.zeros(4, 6, dtype=torch.long))
