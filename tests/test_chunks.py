"""Training below the epoch: chunks of N optimizer steps, step schedules, gradient accumulation, mixed precision,
seeded per-sample randomness — all resumable bit for bit, real torch and real SIGKILL."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys

import pytest
import torch

from fsmtrain import EventLog, state_at
from fsmtrain.errors import InvalidDefinition, ResourceError
from fsmtrain.stopping import early_stopping, max_epochs, max_steps
from fsmtrain.train import Resources, Trainer, training_machine
from fsmtrain.whatif import whatif
from tests.conftest import ROOT
from tests.machines.training import tiny_build, tiny_data
from tests.test_crash import HISTORY, kill_until_done

DEMO = [sys.executable, "-m", "fsmtrain", "demo", "--epochs", "4", "--patience", "100", "--json"]


def demo_result(log, *extra):
    p = subprocess.run(DEMO + ["--log", str(log), *extra], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.splitlines()[-1])


def chunk_points(log_path):
    """Each committed training chunk of run 1: the epoch it trained in, its samples, steps before it, and the
    train_loss / learning_rate values it appended."""
    out = []
    with EventLog(log_path, readonly=True) as log:
        for e in log.events(1):
            if e.kind == "step" and e.action == "train_steps":
                before, after = state_at(log, 1, e.seq - 1), state_at(log, 1, e.seq)
                end = after["offset"] if after["epoch"] == before["epoch"] else 144  # 144 training samples
                out.append({"epoch": before["epoch"], "samples": end - before["offset"],
                            "steps_before": before["steps"], "loss": after["train_loss"][-1],
                            "lr": after["learning_rate"][-1]})
    return out


def chunked(every=3, **kw):
    return training_machine(max_epochs(3), initial={"lr": 0.01}, every=every, **kw)


class TestChunks:
    def test_chunks_give_exactly_the_weights_and_metrics_of_whole_epochs(self, tmp_path):
        whole = Trainer(training_machine(max_epochs(3), initial={"lr": 0.01}), tiny_build, log=tmp_path / "w.db").fit()
        for every in (1, 2, 3, 100):
            got = Trainer(chunked(every), tiny_build, log=tmp_path / f"c{every}.db").fit()
            assert got.state["weights_sha256"] == whole.state["weights_sha256"], every
            for key in ("val_loss", "val_acc"):  # one value per evaluation, as before
                assert list(got.state[key]) == list(whole.state[key]), (every, key)
            assert got.state["steps"] == whole.state["steps"] == 15 and got.state["steps_per_epoch"] == 5
            # train curves: one point per committed chunk, which recombine into the whole epochs' values exactly
            chunks = chunk_points(tmp_path / f"c{every}.db")
            assert len(got.state["train_loss"]) == len(got.state["learning_rate"]) == got.state["chunks"] == len(chunks)
            assert [c["loss"] for c in chunks] == list(got.state["train_loss"])
            assert [c["lr"] for c in chunks] == list(got.state["learning_rate"])
            for epoch in range(3):
                mine = [c for c in chunks if c["epoch"] == epoch]
                assert len(mine) == (-(-5 // every)), (every, epoch)  # 5 steps an epoch
                mean = sum(c["loss"] * c["samples"] for c in mine) / sum(c["samples"] for c in mine)
                assert mean == pytest.approx(whole.state["train_loss"][epoch], rel=1e-6), (every, epoch)
                assert mine[0]["lr"] == whole.state["learning_rate"][epoch]
            if every >= 5:  # a chunk as long as an epoch: the very same lists
                assert list(got.state["train_loss"]) == list(whole.state["train_loss"])
                assert list(got.state["learning_rate"]) == list(whole.state["learning_rate"])

    def test_a_per_step_schedule_records_each_chunks_own_learning_rate(self, tmp_path):
        def build(state):
            r = tiny_build(state)
            r.scheduler = torch.optim.lr_scheduler.LambdaLR(r.optimizer, lambda step: 1.0 / (1 + step))
            r.scheduler_interval = "step"
            return r

        got = Trainer(chunked(2), build, log=tmp_path / "s.db").fit()
        steps_before = [c["steps_before"] for c in chunk_points(tmp_path / "s.db")]
        assert list(got.state["learning_rate"]) == pytest.approx([0.01 / (1 + s) for s in steps_before], rel=1e-12)

    def test_the_cursor_advances_and_wraps_at_each_epoch(self, tmp_path):
        runner = Trainer(chunked(2), tiny_build, log=tmp_path / "c.db").fit()
        with EventLog(tmp_path / "c.db", readonly=True) as log:
            seen = []
            for e in log.events(1):
                if e.kind == "step" and e.action == "train_steps":
                    s = state_at(log, 1, e.seq)
                    seen.append((s["epoch"], s["offset"], s["steps"]))
        # 144 samples, batches of 32 (the last of 16): chunks of 2 steps end at 64, 128 and the epoch's end
        assert seen[:3] == [(0, 64, 2), (0, 128, 4), (1, 0, 5)]
        positions = [(e, o) for e, o, _ in seen]
        assert all(a < b for a, b in zip(positions, positions[1:], strict=False))  # (epoch, offset) strictly advances
        assert "epoch_loss" not in runner.state and runner.state["chunks"] == 9

    def test_evaluation_and_checkpoints_follow_a_step_schedule(self, tmp_path):
        m = chunked(2, evaluate_every="4 steps", checkpoint_every="3 chunks")
        Trainer(m, tiny_build, log=tmp_path / "s.db").fit()
        with EventLog(tmp_path / "s.db", readonly=True) as log:
            evals = [state_at(log, 1, e.seq)["steps"] for e in log.events(1) if e.action == "evaluate"]
            ckpts = [state_at(log, 1, e.seq)["chunks"] for e in log.events(1) if e.action == "checkpoint"]
        assert evals == [4, 9, 12, 15]  # the first chunk boundary at or after each multiple of 4, and the end
        assert ckpts == [3, 6, 9]  # every 3 chunks; the last one also because the run stops there

    @pytest.mark.parametrize(("kwargs", "message"), [
        ({"every": 0}, "n \\(optimizer steps per chunk\\) must be an int >= 1"),
        ({"every": 2, "evaluate_every": "3 fortnights"}, "evaluate_every must be"),
        ({"evaluate_every": "10 steps"}, "evaluate_every needs every=N"),
        ({"every": 2, "accumulate": 0}, "accumulate must be an int >= 1"),
    ])
    def test_bad_schedules_are_refused_when_the_machine_is_built(self, kwargs, message):
        with pytest.raises(InvalidDefinition, match=message):
            training_machine(max_epochs(3), **kwargs)

    def test_a_stop_condition_over_evaluations_stops_where_whatif_says(self, tmp_path):
        stop = early_stopping("val_loss", patience=1, min_delta=0.01) | max_steps(200)
        m = training_machine(stop, initial={"lr": 0.05}, every=2, evaluate_every="3 steps")
        runner = Trainer(m, tiny_build, log=tmp_path / "e.db").fit({"seed": 3})
        assert runner.status == "finished" and runner.state["steps"] < 200
        with EventLog(tmp_path / "e.db", readonly=True) as log:
            result = whatif(log, [stop, "max_steps(9)"], counter="steps")
        assert result.rows[0].stopped_at == runner.state["steps"]
        assert result.rows[1].stopped_at == 9 or runner.state["steps"] < 9


class TestAccumulation:
    def test_accumulating_k_batches_equals_one_batch_k_times_larger(self, tmp_path):
        """Within float tolerance: the same samples per step, each loss weighted by its share."""
        def build(bs):
            def b(state):
                r = tiny_build(state)
                r.batch_size = bs
                r.model[2].p = 0.0  # no dropout: the two runs draw random numbers differently
                return r
            return b

        big = Trainer(training_machine(max_epochs(2), initial={"lr": 0.05}), build(48), log=tmp_path / "b.db").fit()
        acc = Trainer(training_machine(max_epochs(2), initial={"lr": 0.05}, accumulate=3), build(16),
                      log=tmp_path / "a.db").fit()
        assert acc.state["steps"] == big.state["steps"] == 6
        wa = Trainer(training_machine(max_epochs(2), initial={"lr": 0.05}, accumulate=3), build(16),
                     log=tmp_path / "a.db").load(1, "checkpoint").model.state_dict()
        wb = Trainer(training_machine(max_epochs(2), initial={"lr": 0.05}), build(48),
                     log=tmp_path / "b.db").load(1, "checkpoint").model.state_dict()
        for k in wa:
            assert torch.allclose(wa[k], wb[k], atol=1e-6), k
        assert acc.state["train_loss"][-1] == pytest.approx(big.state["train_loss"][-1], rel=1e-5)


class TestPrecision:
    def test_bf16_trains_on_the_cpu_and_fp16_without_cuda_is_refused(self, tmp_path):
        def build(p):
            def b(state):
                r = tiny_build(state)
                r.precision = p
                return r
            return b

        bf = Trainer(chunked(2), build("bf16"), log=tmp_path / "bf.db").fit()
        full = Trainer(chunked(2), tiny_build, log=tmp_path / "f.db").fit()
        assert bf.status == "finished" and bf.state["weights_sha256"] != full.state["weights_sha256"]
        if not torch.cuda.is_available():
            with pytest.raises(ResourceError, match="precision fp16 needs a CUDA device"):
                Trainer(chunked(2), build("fp16"), log=tmp_path / "h.db").fit()

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 with a GradScaler needs CUDA; none here")
    def test_fp16_with_a_grad_scaler_resumes_identically_on_cuda(self, tmp_path):
        def build(state):
            x, y = tiny_data()
            model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).cuda()
            return Resources(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=state["lr"]),
                             train_data=(x[:144], y[:144]), val_data=(x[144:], y[144:]), batch_size=32,
                             device="cuda", precision="fp16")

        whole = Trainer(chunked(2), build, log=tmp_path / "w.db").fit()
        t = Trainer(chunked(2), build, log=tmp_path / "r.db")
        r = t.start()
        r.run(max_steps=5)
        r.close()
        again = Trainer(chunked(2), build, log=tmp_path / "r.db").fit()
        assert again.state["weights_sha256"] == whole.state["weights_sha256"]


class Jitter(torch.utils.data.Dataset):
    """A map-style dataset with random augmentation from every global RNG (torch, Python)."""

    def __init__(self):
        self.x, self.y = tiny_data()

    def __len__(self):
        return 144

    def __getitem__(self, i):
        noise = torch.randn(8) * 0.1 + random.random() * 0.01
        return self.x[i] + noise, self.y[i]


def jitter_build(workers):
    def build(state):
        r = tiny_build(state)
        r.train_data = Jitter()
        r.num_workers = workers
        return r
    return build


class TestPerSampleRandomness:
    def test_random_augmentation_gives_the_same_run_with_0_or_2_workers_and_across_a_resume(self, tmp_path):
        none = Trainer(chunked(2), jitter_build(0), log=tmp_path / "n.db").fit()
        two = Trainer(chunked(2), jitter_build(2), log=tmp_path / "t.db").fit()
        assert two.state["weights_sha256"] == none.state["weights_sha256"]
        assert list(two.state["train_loss"]) == list(none.state["train_loss"])
        t = Trainer(chunked(2), jitter_build(2), log=tmp_path / "k.db")
        r = t.start()
        r.run(max_steps=4)  # mid-epoch
        r.close()
        again = Trainer(chunked(2), jitter_build(2), log=tmp_path / "k.db").fit()
        assert again.state["weights_sha256"] == none.state["weights_sha256"]


@pytest.mark.parametrize("mode", [["--chunk", "3"], ["--chunk", "2", "--precision", "bf16"],
                                  ["--chunk", "4", "--accumulate", "2"]])
@pytest.mark.slow
def test_the_demo_survives_random_kills_mid_epoch_bit_identically(tmp_path, mode):
    """Random SIGKILLs (after observed progress) in chunked, bf16 and accumulating runs: same result; the cursor
    never goes back in the committed history; work redone after a kill never exceeds one chunk."""
    want = demo_result(tmp_path / "ref.db", *mode)
    log = tmp_path / "k.db"
    cmd = DEMO + ["--log", str(log), "--delay", "0.02", *mode]
    kills, out = kill_until_done(cmd, log, random.Random(" ".join(mode)), 6, 0.05)
    assert kills >= 3, HISTORY
    assert json.loads(out.splitlines()[-1]) == want
    chunk = int(mode[1])
    with EventLog(log, readonly=True) as lg:
        assert lg.verify() == []
        cursor, redone = [], []
        for e in lg.events(1):
            if e.kind == "step" and e.action == "train_steps":
                s = state_at(lg, 1, e.seq)
                cursor.append((s["epoch"], s["offset"]))
            if e.kind == "resume" and isinstance(e.info, dict) and "restore" in e.info:
                back = state_at(lg, 1, e.info["restore"]["from_seq"])["steps"]
                redone.append(state_at(lg, 1, e.seq)["steps"] - back)
        assert all(a < b for a, b in zip(cursor, cursor[1:], strict=False))  # no chunk applied twice
        assert redone and max(redone) <= chunk  # a checkpoint after every chunk: at most one chunk redone


class Stateful:
    """A stateful loader as torchdata's StatefulDataLoader is one: its own shuffled order, a position, and
    state_dict()/load_state_dict() to save and restore both."""

    def __init__(self, x, y, batch_size=32, seed=0):
        self.x, self.y, self.bs = x, y, batch_size
        self.epoch, self.pos, self.seed = 0, 0, seed

    def state_dict(self):
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state):
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])

    def __iter__(self):
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch))
        while self.pos < len(order):
            idx = order[self.pos:self.pos + self.bs]
            self.pos += len(idx)
            yield self.x[idx], self.y[idx]
        self.epoch, self.pos = self.epoch + 1, 0


def stateful_build(state):
    r = tiny_build(state)
    x, y = tiny_data()
    r.train_data = Stateful(x[:144], y[:144])
    return r


class TestStatefulLoaders:
    def test_a_stateful_loader_is_saved_in_checkpoints_and_a_deterministic_one_resumes_identically(self, tmp_path):
        whole = Trainer(chunked(2), stateful_build, log=tmp_path / "w.db").fit()
        assert whole.status == "finished" and whole.state["epoch"] == 3
        t = Trainer(chunked(2), stateful_build, log=tmp_path / "r.db")
        r = t.start()
        r.run(max_steps=5)  # mid-epoch
        r.close()
        again = Trainer(chunked(2), stateful_build, log=tmp_path / "r.db").fit()
        assert again.state["weights_sha256"] == whole.state["weights_sha256"]
        assert list(again.state["train_loss"]) == list(whole.state["train_loss"])
        from fsmtrain.train import load_checkpoint

        with EventLog(tmp_path / "r.db", readonly=True) as log:
            ref = state_at(log, 1)["checkpoint"]
            assert load_checkpoint(log.artifacts, ref)["loader"] == {"epoch": 3, "pos": 0}


def test_progress_shows_the_step_within_the_epoch(tmp_path):
    import io

    from fsmtrain import Progress

    out = io.StringIO()
    Trainer(chunked(2), tiny_build, log=tmp_path / "p.db", hooks=[Progress(out, force=True, every=0)]).fit()
    draws = [d.split(" [")[0] for d in out.getvalue().split("\r") if d]  # (the head, before the budget's bar)
    shown = [d for i, d in enumerate(draws) if i == 0 or d != draws[i - 1]]  # (a checkpoint redraws the same line)
    assert shown[:4] == ["epoch 1/3 step 2/5", "epoch 1/3 step 4/5", "epoch 1/3", "epoch 2/3 step 2/5"]
    assert "epoch 3/3 step 4/5" in draws and not any(d.endswith("step 5/5") for d in draws)


class TestCurvesPerChunk:
    """A chunked run's train curves have a point per chunk, drawn on the optimizer-step axis by plot, watch and the
    page; evaluations keep a point per evaluation."""

    def run(self, tmp_path):
        m = chunked(2, evaluate_every="4 steps")
        runner = Trainer(m, tiny_build, log=tmp_path / "c.db").fit()
        with EventLog(tmp_path / "c.db", readonly=True) as log:
            train_at = [state_at(log, 1, e.seq)["steps"] for e in log.events(1) if e.action == "train_steps"]
            eval_at = [state_at(log, 1, e.seq)["steps"] for e in log.events(1) if e.action == "evaluate"]
        assert len(train_at) == len(runner.state["train_loss"]) == runner.state["chunks"] == 9
        return tmp_path / "c.db", runner.state, train_at, eval_at

    def test_plot_puts_each_value_at_its_step(self, tmp_path):
        log, state, train_at, eval_at = self.run(tmp_path)
        out = tmp_path / "c.svg"
        p = subprocess.run([sys.executable, "-m", "fsmtrain", "plot", str(log), "--run", "1", "--metric", "train_loss",
                            "--metric", "val_loss", "-o", str(out)], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 0, p.stderr
        assert "train_loss: 9 points" in p.stdout
        svg = out.read_text()
        titles = re.findall(r"<title>(\w+) at step (\d+): ([^<]+)</title>", svg)
        train = list(zip(train_at, state["train_loss"], strict=True))
        evals = list(zip(eval_at, state["val_loss"], strict=True))
        assert [(int(s), float(v)) for k, s, v in titles if k == "train_loss"] == train
        assert [(int(s), float(v)) for k, s, v in titles if k == "val_loss"] == evals
        assert ">step<" in svg

    def test_watch_says_the_step_of_each_chunks_point(self, tmp_path):
        log, state, train_at, _ = self.run(tmp_path)
        p = subprocess.run([sys.executable, "-m", "fsmtrain", "watch", str(log), "--run", "1"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        points = re.findall(r"train_steps .* at step (\d+) .*train_loss (\S+)", p.stdout)
        assert [int(s) for s, _ in points] == train_at
        assert [float(v) for _, v in points] == pytest.approx(list(state["train_loss"]), rel=1e-3)

    def test_the_run_page_draws_train_curves_on_the_step_axis_and_evaluations_per_evaluation(self, tmp_path):
        from fsmtrain.ui import UI

        log, state, train_at, _ = self.run(tmp_path)
        app = UI(log)
        app.bind("127.0.0.1", 0)
        app.serve_in_thread()
        try:
            from tests.test_ui import Served

            status, _, body = Served(app).get("/run/1")
        finally:
            app.server.shutdown()
            app.server.server_close()
        assert status == 200
        steps = [int(s) for s in re.findall(r"<title>train_loss at step (\d+): ", body)]
        assert steps == train_at
        assert re.findall(r"<title>val_loss (\d+): ", body) == [str(i + 1) for i in range(len(state["val_loss"]))]
        assert "learning_rate at step" in body
