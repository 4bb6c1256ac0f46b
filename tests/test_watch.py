"""Watching runs: metric-writer hooks, the progress line, TensorBoard, `fsmtrain watch` and `fsmtrain plot`."""

import csv
import io
import json
import re
import subprocess
import sys

import pytest

from fsmtrain import CsvMetrics, EventLog, JsonlMetrics, Runner, state_at
from fsmtrain.hooks import Progress
from fsmtrain.stopping import max_epochs
from tests.conftest import ROOT
from tests.machines.curves import CURVES, curve_machine

ENV = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}


def fsmtrain(*args, cwd):
    return subprocess.run([sys.executable, "-m", "fsmtrain", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=ENV)


def record(log, hooks=(), curve="overfits", steps=None):
    r = Runner.start(curve_machine(max_epochs(12)), log=log, state={"curve": CURVES[curve]}, hooks=hooks)
    r.run(max_steps=steps)
    return r


def history_from_jsonl(path, run):
    out = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec["run"] == run:
            for k, v in rec["metrics"].items():
                out.setdefault(k, []).extend(v)
    return out


def history_from_csv(path, run):
    out = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if row["run"] == str(run):
                out.setdefault(row["metric"], []).append(float(row["value"]))
    return out


class TestMetricWriters:
    def test_the_files_equal_the_metric_history_in_the_log_even_across_a_resume(self, tmp_path):
        jl, cv = tmp_path / "m.jsonl", tmp_path / "m.csv"
        with EventLog(tmp_path / "w.db") as log:
            r = record(log, hooks=[JsonlMetrics(jl), CsvMetrics(cv)], steps=7)
            # a new process: its hooks get the last step again (replayed=True); nothing is written twice
            again = Runner.resume(curve_machine(max_epochs(12)), log, r.run_id, hooks=[JsonlMetrics(jl), CsvMetrics(cv)])
            again.run()
            state = state_at(log, r.run_id)
        want = {"val_loss": list(state["val_loss"]), "val_acc": list(state["val_acc"])}
        assert history_from_jsonl(jl, 1) == want
        assert history_from_csv(cv, 1) == want
        first = json.loads(jl.read_text().splitlines()[0])
        assert first["run"] == 1 and first["action"] == "evaluate" and first["epoch"] == 1

    def test_nan_round_trips(self, tmp_path):
        jl = tmp_path / "m.jsonl"
        with EventLog(tmp_path / "w.db") as log:
            record(log, hooks=[JsonlMetrics(jl)], curve="diverges")
        values = history_from_jsonl(jl, 1)["val_loss"]
        assert values[7] == float("inf") and values[8] != values[8]


class TestProgress:
    def test_a_bar_with_eta_and_the_latest_metrics(self):
        out = io.StringIO()
        with _nolog() as log:
            record(log, hooks=[Progress(out, force=True, every=0)])
        text = out.getvalue()
        assert "\repoch 1/12 [#...................]   8%" in text and "val_acc 0.5  val_loss 1" in text  # (its budget)
        assert text.rstrip().endswith("finished")

    def test_redraws_at_most_every_interval_but_always_shows_the_end(self):
        out = io.StringIO()
        with _nolog() as log:
            record(log, hooks=[Progress(out, force=True, every=3600)])
        draws = out.getvalue().count("\r")
        assert draws == 2 and "\repoch 12/12 [####################] 100%" in out.getvalue()
        assert out.getvalue().endswith("val_acc 0.6  val_loss 0.8\nfinished\n")

    def test_one_plain_line_per_epoch_when_the_stream_is_not_a_terminal(self):
        """A background job writing to a file sees each epoch once it is complete, and the end."""
        out = io.StringIO()
        with _nolog() as log:
            record(log, hooks=[Progress(out)])
        lines = out.getvalue().splitlines()
        assert [line.split()[1] for line in lines[:-1]] == [f"{e}/12" for e in range(1, 13)]
        assert lines[0].startswith("epoch 1/12  val_acc 0.5  val_loss 1  (0:0") and lines[-1] == "run 1 finished"
        assert "\r" not in out.getvalue()

    def test_a_plain_line_says_when_a_run_resumes(self, tmp_path):
        with EventLog(tmp_path / "p.db") as log:
            r = record(log, steps=4)
            r.close()
            out = io.StringIO()
            Runner.resume(curve_machine(max_epochs(12)), log, r.run_id, hooks=[Progress(out)]).run()
        lines = out.getvalue().splitlines()
        assert lines[0] == "run 1 resumed at epoch 2, next `train`" and lines[1].startswith("epoch 3/12  ")

    def test_the_bar_counts_against_max_epochs(self):
        from fsmtrain import State
        from fsmtrain.state import append

        out = io.StringIO()
        p = Progress(out, force=True, width=10, every=0)
        for e in (1, 2):
            p.on_step_end(run_id=1, state=State(epoch=e, max_epochs=4), updates={"val_loss": append(0.5 / e)})
        assert re.search(r"epoch 2/4 \[#####\.\.\.\.\.\]  50% eta 0:\d\d  val_loss 0.25", out.getvalue())


    def test_the_budget_is_the_stop_conditions_steps_or_time_and_long_epochs_print_chunks(self):
        """Issue 28: `epoch 1/100` when the budget was max_steps=200; nothing for 45 s off a terminal."""
        from fsmtrain import State
        from fsmtrain.hooks import budgets_of
        from fsmtrain.stopping import early_stopping, max_epochs, max_steps, time_budget
        from fsmtrain.train import training_machine

        m = training_machine(early_stopping("val_loss", 5) | max_steps(200), every=10)
        assert budgets_of(m) == [("max_steps", 200.0)]
        out = io.StringIO()
        p = Progress(out, force=True, width=10, every=0)
        p.on_run_start(run_id=1, state=State(epoch=0, steps=0), machine=m)
        p.on_step_end(run_id=1, state=State(epoch=0, steps=50, max_epochs=100), updates={})
        assert "step 50/200 [##........]  25%" in out.getvalue() and "/100" not in out.getvalue()
        assert budgets_of(training_machine(time_budget(60) | max_epochs(3))) == [("time_budget", 60.0),
                                                                                  ("max_epochs", 3.0)]
        plain = io.StringIO()
        q = Progress(plain, plain_every=0)
        q.on_run_start(run_id=1, state=State(epoch=0, steps=0), machine=m)
        for steps in (10, 20, 30):  # chunks inside one long epoch: a line for each (plain_every=0), flushed
            q.on_step_end(run_id=1, state=State(epoch=0, steps=steps), updates={})
        assert [line.split("·")[1].split()[1] for line in plain.getvalue().splitlines()] == ["10/200", "20/200",
                                                                                              "30/200"]


class _nolog:
    """A log in a temporary folder (the progress tests do not look at it)."""

    def __enter__(self):
        import tempfile

        self.dir = tempfile.TemporaryDirectory()
        self.log = EventLog(f"{self.dir.name}/p.db")
        return self.log

    def __exit__(self, *exc):
        self.log.close()
        self.dir.cleanup()


def test_tensorboard_event_files_are_readable(tmp_path):
    pytest.importorskip("tensorboard", reason="the optional `tensorboard` extra (installed by CI)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fsmtrain.train.tensorboard import TensorBoard

    with EventLog(tmp_path / "w.db") as log:
        record(log, hooks=[TensorBoard(tmp_path / "tb")])
        state = state_at(log, 1)
    acc = EventAccumulator(str(tmp_path / "tb" / "run1"))
    acc.Reload()
    got = [(e.step, e.value) for e in acc.Scalars("val_loss")]
    assert got == [(i + 1, pytest.approx(v, rel=1e-6)) for i, v in enumerate(state["val_loss"])]


class TestPlot:
    def test_the_svg_points_are_the_logged_values(self, tmp_path):
        with EventLog(tmp_path / "w.db") as log:
            record(log)
            state = state_at(log, 1)
        p = fsmtrain("plot", "w.db", "--run", "1", "--metric", "val_loss", "--metric", "val_acc", "-o", "c.svg",
                     cwd=tmp_path)
        assert p.returncode == 0, p.stderr
        svg = (tmp_path / "c.svg").read_text()
        points = re.findall(r"<title>(\w+) (\d+): ([^<]+)</title>", svg)
        assert [float(v) for k, _, v in points if k == "val_loss"] == list(state["val_loss"])
        assert [float(v) for k, _, v in points if k == "val_acc"] == list(state["val_acc"])
        assert svg.count("<polyline") == 2

    @pytest.mark.parametrize(("args", "message"), [
        (["--run", "1", "--metric", "val_los", "-o", "c.svg"],
         "run 1 has no metric 'val_los' (its metrics: curve, val_acc, val_loss)"),
        (["--run", "1", "--metric", "val_loss", "-o", "c.pdf"], "write .svg or .png"),
        (["--run", "9", "--metric", "val_loss", "-o", "c.svg"], "run 9 does not exist"),
    ])
    def test_bad_input(self, tmp_path, args, message):
        with EventLog(tmp_path / "w.db") as log:
            record(log)
        p = fsmtrain("plot", "w.db", *args, cwd=tmp_path)
        assert p.returncode != 0 and message in p.stderr and "Traceback" not in p.stderr
        assert not (tmp_path / "c.svg").exists()


class TestWatch:
    def test_watch_follows_a_training_beside_it_and_stops_at_the_end(self, tmp_path):
        pytest.importorskip("torch")
        train = subprocess.Popen([sys.executable, "-m", "fsmtrain", "demo", "--log", "w.db", "--epochs", "4",
                                  "--delay", "0.3"], cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
        import time

        for _ in range(200):  # wait for the run to exist
            if (tmp_path / "w.db").exists():
                try:
                    with EventLog(tmp_path / "w.db", readonly=True) as log:
                        if log.runs():
                            break
                except Exception:
                    pass
            time.sleep(0.05)
        p = fsmtrain("watch", "w.db", "--interval", "0.1", cwd=tmp_path)
        train.wait(timeout=120)
        assert p.returncode == 0, p.stderr
        lines = p.stdout.splitlines()
        assert lines[0].startswith("watching run 1 (demo)")
        assert sum("evaluate -> checkpoint" in line and "val_loss" in line for line in lines) == 4
        assert lines[-1] == "run 1 finished after 13 steps"

    def test_watch_says_what_a_waiting_run_needs(self, tmp_path):
        from tests.machines.approval import machine

        with EventLog(tmp_path / "g.db") as log:
            Runner.start(machine, log=log).run()
        p = fsmtrain("watch", "g.db", "--interval", "0.1", cwd=tmp_path)
        assert p.returncode == 0
        assert p.stdout.splitlines()[-1] == ("run 1 is waiting at `review` for decision (go | no-go); answer with "
                                             "`fsmtrain approve g.db 1`, `fsmtrain reject g.db 1` or "
                                             "`fsmtrain input g.db 1 KEY=VALUE`")

    @pytest.mark.parametrize(("setup", "args", "message"), [
        ("none", ["watch", "missing.db"], "does not exist"),
        ("junk", ["watch", "junk.db"], "not a SQLite database"),
        ("log", ["watch", "w.db", "--run", "5"], "run 5 does not exist"),
    ])
    def test_bad_input(self, tmp_path, setup, args, message):
        if setup == "junk":
            (tmp_path / "junk.db").write_text("hello")
        if setup == "log":
            with EventLog(tmp_path / "w.db") as log:
                record(log)
        p = fsmtrain(*args, cwd=tmp_path)
        assert p.returncode != 0 and message in p.stderr and "Traceback" not in p.stderr


def test_graph_as_svg_needs_graphviz_or_says_so(tmp_path):
    import shutil

    p = fsmtrain("graph", "tests.machines:gated", "--format", "svg", cwd=ROOT)
    if shutil.which("dot"):
        assert p.returncode == 0 and p.stdout.lstrip().startswith("<?xml")
    else:
        assert p.returncode == 2 and "needs Graphviz's `dot`" in p.stderr
