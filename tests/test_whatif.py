"""whatif: conditions replayed against recorded runs; active time; swapping a run's stop condition."""

import json
import subprocess
import sys
import time

import pytest

from fsmtrain import EventLog, Runner
from fsmtrain.errors import ExpressionError, InvalidDefinition, MachineMismatch, MetricNotRecorded, RunNotFound
from fsmtrain.expr import parse
from fsmtrain.replay import active_time, state_at
from fsmtrain.stopping import early_stopping, max_epochs, time_budget
from fsmtrain.whatif import epoch_states, whatif
from tests.conftest import ROOT, file_digest
from tests.machines.curves import CURVES, curve_machine

STOPS = [
    "early_stopping(val_loss, patience=2)",
    "early_stopping(val_loss, patience=3, min_delta=0.01) | max_epochs(9)",
    "plateau(val_loss, patience=1) & min_epochs(4)",
    "target(val_acc, value=0.7, mode='max')",
    "diverged(val_loss, factor=2) | non_finite(val_loss)",
    "slope(val_loss, 3, below=0.02)",
    "max_steps(50)",
    "~min_epochs(3) & max_epochs(1)",
]


def record(log, stop, curve, **state):
    runner = Runner.start(curve_machine(parse(stop) if isinstance(stop, str) else stop), log=log,
                          state={"curve": CURVES[curve], **state})
    runner.run()
    return runner


class TestWhatIfEqualsWhatHappened:
    @pytest.mark.parametrize("stop", STOPS)
    @pytest.mark.parametrize("curve", sorted(CURVES))
    def test_the_condition_a_run_stopped_with_stops_it_at_the_same_epoch(self, tmp_path, stop, curve):
        with EventLog(tmp_path / "w.db") as log:
            runner = record(log, stop, curve)
            result = whatif(log, [stop])
        (row,) = result.rows
        recorded = result.runs[0]
        stopped_by_it = not recorded.reason.startswith("end_of_curve")
        assert row.stopped_at == (runner.state["epoch"] if stopped_by_it else None)
        assert recorded.epochs == runner.state["epoch"]
        assert recorded.stopped_by == (parse(stop) | curve_machine(max_epochs(1)).transitions[1].condition.parts[1]).name
        if stopped_by_it:
            assert row.reason == recorded.reason  # the reason recorded at the time, recomputed from the log

    def test_a_time_budget_stops_where_it_did_even_across_a_restart(self, tmp_path, monkeypatch):
        """Active time comes from the log's timestamps: the dead gap before a resume does not count.

        A fake clock (binary-exact ticks) makes it exact on any machine, however busy: each train step
        takes 1/16 s, the budget is 4 of them, and the process is "dead" for 100 s after two epochs.
        """
        import types

        clock = [1024.0]
        monkeypatch.setattr(time, "time", lambda: clock[0])
        monkeypatch.setattr("tests.machines.curves.time", types.SimpleNamespace(
            sleep=lambda s: clock.__setitem__(0, clock[0] + s)))
        stop = time_budget(0.25)
        with EventLog(tmp_path / "w.db") as log:
            first = Runner.start(curve_machine(stop), log=log, state={"curve": CURVES["falls"], "delay": 0.0625})
            first.run(max_steps=4)  # two epochs: 1/8 s of active time
            first.close()
            clock[0] += 100.0  # the process "died" here for far longer than the whole budget
            again = Runner.resume(curve_machine(stop), log, first.run_id)
            again.run()
            assert again.status == "finished" and again.state["epoch"] == 4
            assert again.state.elapsed == active_time(log, first.run_id)[0] == 0.25
            (row,) = whatif(log, [stop]).rows
        assert row.stopped_at == 4

    def test_torch_training_stopped_by_early_stopping_is_reported_exactly(self, tmp_path):
        pytest.importorskip("torch")
        from fsmtrain.train import Trainer, training_machine
        from tests.machines.training import tiny_build

        stop = early_stopping("val_loss", patience=1, min_delta=0.02) | max_epochs(12)
        with Trainer(training_machine(stop, initial={"lr": 0.05}), tiny_build, log=tmp_path / "t.db") as trainer:
            runner = trainer.fit({"seed": 3})
            result = whatif(trainer.log, [stop, "max_epochs(12)", "early_stopping(val_loss, patience=1)"])
        assert runner.status == "finished"
        assert result.rows[0].stopped_at == runner.state["epoch"]
        assert result.rows[1].stopped_at == (12 if runner.state["epoch"] == 12 else None)
        assert result.runs[0].best == min(runner.state["val_loss"])


class TestTheComparison:
    @pytest.fixture
    def log(self, tmp_path):
        log = EventLog(tmp_path / "w.db")
        for curve in ("falls", "overfits", "noisy"):
            record(log, "max_epochs(12)", curve)
        Runner.start(curve_machine(max_epochs(12)), log=log, state={"curve": CURVES["noisy"]}).run(max_steps=6)
        yield log
        log.close()

    def test_every_finished_run_by_default_side_by_side(self, log):
        result = whatif(log, ["early_stopping(val_loss, patience=2)", "max_epochs(12)"])
        assert [r.run_id for r in result.runs] == [1, 2, 3]
        assert len(result.rows) == 6
        overfits = [r for r in result.rows if r.run_id == 2]
        es, full = overfits
        assert (es.stopped_at, es.epochs_saved, es.best_by_then, es.best_epoch_by_then) == (7, 5, 0.44, 5)
        assert es.kept_best and es.gap == 0
        assert (full.stopped_at, full.epochs_saved, full.best, full.best_epoch) == (12, 0, 0.44, 5)
        (s_es, s_full) = result.summary()
        assert s_full.fired == 3 and s_full.epochs_saved == 0
        assert s_es.epochs_run == 36 and s_es.epochs_saved == sum(r.epochs_saved for r in result.rows[::2])

    def test_a_condition_that_stops_before_the_best_reports_the_gap(self, log):
        (row,) = whatif(log, ["max_epochs(3)"], runs=[2]).rows
        assert (row.best_by_then, row.best_epoch_by_then, row.best, row.best_epoch) == (0.5, 3, 0.44, 5)
        assert not row.kept_best and row.gap == pytest.approx(0.06)

    def test_a_condition_that_never_fires_says_so(self, log):
        (row,) = whatif(log, ["target(val_loss, value=0.1)"], runs=[1]).rows
        assert row.stopped_at is None and row.epochs_saved == 0
        assert row.reason.startswith("did not fire in 12 epochs (last: target(val_loss, value=0.1): value 0.601")

    def test_unfinished_runs_can_be_named(self, log):
        (row,) = whatif(log, ["max_epochs(2)"], runs=[4]).rows
        assert row.stopped_at == 2 and row.epochs_run == 3

    def test_the_metric_and_mode_can_be_chosen(self, log):
        result = whatif(log, ["max_epochs(3)"], runs=[2], metric="val_acc", mode="max")
        assert (result.metric, result.mode, result.rows[0].best) == ("val_acc", "max", 1 - 0.44 / 2)

    def test_the_text_and_json_forms(self, log):
        result = whatif(log, ["early_stopping(val_loss, patience=2)"], runs=[2, 3])
        text = result.to_text()
        assert "run 2 (curves): 12 epochs, stopped by max_epochs(12): epoch 12 reached 12" in text
        assert "summary over 2 run(s), val_loss (min):" in text
        data = json.loads(json.dumps(result.to_dict()))
        assert data["rows"][0]["stopped_at"] == 7 and data["summary"][0]["runs"] == 2

    def test_epoch_states_are_the_states_at_the_end_of_each_epoch(self, log):
        states = epoch_states(log, 2)
        assert [s["epoch"] for s in states] == list(range(1, 13))
        assert list(states[4]["val_loss"]) == CURVES["overfits"][:5]
        assert states[-1] == state_at(log, 2)


class TestMixedLogs:
    def test_runs_of_another_kind_are_skipped_unless_named(self, tmp_path):
        from fsmtrain import Machine, action

        @action(reads=["n"], writes=["n"])
        def tick(state):
            return {"n": state["n"] + 1}

        other = Machine("counter", [tick], [("tick", "tick")], entry="tick", initial={"n": 0})
        with EventLog(tmp_path / "w.db") as log:
            record(log, "max_epochs(12)", "falls")
            Runner.start(other, log=log).run(max_steps=3)
            record(log, "max_epochs(12)", "overfits")
            result = whatif(log, ["max_epochs(5)"])  # run 2 is not finished: not even considered
            assert [r.run_id for r in result.runs] == [1, 3] and result.skipped == []
            # a finished run without the metric is left out, and said so
            done = Machine("once", [tick], [], entry="tick", terminal=["tick"], initial={"n": 0})
            Runner.start(done, log=log).run()
            result = whatif(log, ["early_stopping(val_loss, patience=2)"])
            assert [r.run_id for r in result.runs] == [1, 3]
            assert result.skipped[0][0] == 4 and "run 4 never set `epoch`" in result.skipped[0][1]
            assert "skipped 1 ended run(s)" in result.to_text()
            with pytest.raises(MetricNotRecorded, match="run 4 never set `epoch`"):
                whatif(log, ["early_stopping(val_loss, patience=2)"], runs=[1, 4])


class TestBadInput:
    def test_a_metric_the_run_never_recorded(self, tmp_path):
        with EventLog(tmp_path / "w.db") as log:
            record(log, "max_epochs(3)", "falls")
            with pytest.raises(MetricNotRecorded, match="reads `val_los`, which run 1 never recorded"):
                whatif(log, ["early_stopping(val_los, patience=2)"])
            with pytest.raises(MetricNotRecorded, match="never set `round`"):
                whatif(log, ["max_epochs(3)"], counter="round")
            with pytest.raises(RunNotFound, match="run 7 does not exist"):
                whatif(log, ["max_epochs(3)"], runs=[7])
            with pytest.raises(ExpressionError):
                whatif(log, ["max_epochs(3) +"])


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "fsmtrain", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


class TestCommandLine:
    @pytest.fixture
    def log_file(self, tmp_path):
        path = tmp_path / "w.db"
        with EventLog(path) as log:
            for curve in ("overfits", "noisy"):
                record(log, "max_epochs(12)", curve)
        return path

    def test_side_by_side_tables_and_json(self, log_file, tmp_path):
        p = cli("whatif", str(log_file), "-c", "early_stopping(val_loss, patience=2)", "-c", "max_epochs(10)",
                cwd=tmp_path)
        assert p.returncode == 0, p.stderr
        assert "run 1 (curves): 12 epochs" in p.stdout and "summary over 2 run(s)" in p.stdout
        line = next(x for x in p.stdout.splitlines() if x.strip().startswith("early_stopping"))
        assert line.split()[2:4] == ["7", "0.44"]
        p = cli("whatif", str(log_file), "--run", "1", "-c", "max_epochs(10)", "--json", cwd=tmp_path)
        data = json.loads(p.stdout)
        assert data["rows"][0]["stopped_at"] == 10 and data["rows"][0]["epochs_saved"] == 2

    def test_user_conditions_from_an_imported_module(self, log_file, tmp_path):
        (tmp_path / "myconds.py").write_text(
            "from fsmtrain.stopping import register, target\n"
            "@register\n"
            "def good_enough(metric='val_loss'):\n"
            "    return target(metric, value=0.5)\n")
        p = subprocess.run([sys.executable, "-m", "fsmtrain", "whatif", str(log_file), "--import", "myconds",
                            "-c", "good_enough()", "--run", "1", "--summary"], cwd=tmp_path, capture_output=True,
                           text=True, env={"PYTHONPATH": f"{ROOT}:{tmp_path}", "PATH": "/usr/bin:/bin"})
        assert p.returncode == 0, p.stderr
        assert "target(val_loss, value=0.5)" in p.stdout and "1/1" in p.stdout

    @pytest.mark.parametrize(("args", "code", "message"), [
        (["-c", "early_stoping(val_loss, patience=2)"], 2, "unknown condition `early_stoping`"),
        (["-c", "max_epochs(n='5')"], 2, "n must be an int >= 1"),
        (["-c", "max_epochs(n=open('x'))"], 2, "a call is not allowed as an argument"),
        (["-c", "early_stopping(val_los, patience=2)"], 2, "reads `val_los`, which run 1 never recorded"),
        (["-c", "max_epochs(3)", "--run", "9"], 1, "run 9 does not exist"),
        (["-c", "max_epochs(3)", "--import", "no_such_module_xyz"], 2, "--import no_such_module_xyz: cannot import"),
        ([], 2, "Missing option '--condition'"),
    ])
    def test_bad_input_exits_non_zero_with_a_clear_message_and_the_log_unchanged(self, log_file, tmp_path, args,
                                                                                  code, message):
        before = file_digest(log_file)
        p = cli("whatif", str(log_file), *args, cwd=tmp_path)
        assert p.returncode == code, (p.stdout, p.stderr)
        assert message in p.stderr and "Traceback" not in p.stderr
        assert file_digest(log_file) == before

    def test_a_file_that_is_not_a_log(self, tmp_path):
        junk = tmp_path / "junk.db"
        junk.write_bytes(b"not sqlite at all" * 100)
        p = cli("whatif", str(junk), "-c", "max_epochs(3)", cwd=tmp_path)
        assert p.returncode != 0 and "not" in p.stderr and "Traceback" not in p.stderr
        assert junk.read_bytes() == b"not sqlite at all" * 100


class TestSwappingTheStopCondition:
    def test_a_run_resumed_with_another_condition_records_the_override(self, tmp_path):
        first, later = max_epochs(12), early_stopping("val_loss", patience=2)
        with EventLog(tmp_path / "w.db") as log:
            runner = Runner.start(curve_machine(first), log=log, state={"curve": CURVES["overfits"]})
            runner.run(max_steps=12)  # 6 epochs: the best (epoch 5) is 1 evaluation old
            with pytest.raises(MachineMismatch):
                Runner.resume(curve_machine(first).swap(first, later), log, runner.run_id)
            swapped = Runner.resume(curve_machine(first).swap(first, later), log, runner.run_id,
                                    allow_changed_machine=True)
            swapped.run()
            resume = next(e for e in log.events(runner.run_id) if e.kind == "resume")
            # an uninterrupted run with the later condition, for comparison
            direct = record(log, later, "overfits")
        assert resume.info["conditions"] == [{"source": "evaluate", "target": "done",
                                             "was": "max_epochs(12) | end_of_curve",
                                             "now": "early_stopping(val_loss, patience=2) | end_of_curve"}]
        assert resume.info["changed_from"] == curve_machine(first).fingerprint
        timeline = cli("replay", str(tmp_path / "w.db"), "--run", "1", cwd=tmp_path).stdout
        assert "machine changed: evaluate->done: max_epochs(12) | end_of_curve => early_stopping(val_loss, patience=2)" \
            in timeline
        # the patience count was not lost across the swap: it is recomputed from the history
        assert swapped.state["epoch"] == direct.state["epoch"] == 7
        assert list(swapped.state["val_loss"]) == list(direct.state["val_loss"])

    def test_swapping_a_condition_no_transition_uses_is_refused_naming_those_it_has(self):
        with pytest.raises(InvalidDefinition, match="no transition uses a condition named `max_epochs\\(3\\)`; the "
                                                    "conditions its transitions are made of: end_of_curve; max_epochs"):
            curve_machine(max_epochs(12)).swap("max_epochs(3)", max_epochs(4))

    @pytest.mark.parametrize("old", [early_stopping("val_loss", patience=3), "early_stopping(val_loss, patience=3)",
                                     "early_stopping( 'val_loss' , patience = 3 )"])
    @pytest.mark.parametrize("new", [max_epochs(4), "max_epochs(n=4)"])
    def test_conditions_are_found_by_name_and_may_be_written_as_expressions(self, old, new):
        """A condition built anew (a new process never has the original object), its name, or an expression."""
        machine = curve_machine(early_stopping("val_loss", patience=3) | max_epochs(12))
        swapped = machine.swap(old, new)
        assert [t.condition.name for t in swapped.transitions][1] == "max_epochs(4) | max_epochs(12) | end_of_curve"

    def test_a_trainer_resumes_a_run_in_a_new_process_with_another_condition(self, tmp_path):
        """`Trainer.fit(..., allow_changed_machine=True)` with machine.swap(...): the user's way, across processes."""
        pytest.importorskip("torch")
        script = (
            "import sys\n"
            f"sys.path.insert(0, {str(ROOT)!r})\n"
            "from fsmtrain.stopping import early_stopping, max_epochs\n"
            "from fsmtrain.train import Trainer, training_machine\n"
            "from tests.machines.training import tiny_build\n"
            "machine = training_machine(max_epochs(12), initial={'lr': 0.05})\n"
            "if sys.argv[2] == 'swap':\n"
            "    machine = machine.swap(max_epochs(12),\n"
            "                           'early_stopping(val_loss, patience=1, min_delta=0.02) | max_epochs(12)')\n"
            "t = Trainer(machine, tiny_build, log=sys.argv[1])\n"
            "if sys.argv[2] == 'start':\n"
            "    t.start({'seed': 3}).run(max_steps=6)\n"
            "else:\n"
            "    r = t.fit({'seed': 3}, allow_changed_machine=True)\n"
            "    print(r.status, r.state['epoch'])\n")
        log = tmp_path / "t.db"
        for mode in ("start", "swap"):
            p = subprocess.run([sys.executable, "-c", script, str(log), mode], capture_output=True, text=True,
                               timeout=300)
            assert p.returncode == 0, p.stderr
        status, epoch = p.stdout.split()
        assert status == "finished" and int(epoch) < 12
        with EventLog(log, readonly=True) as lg:
            resume = next(e for e in lg.events(1) if e.kind == "resume")
            assert resume.info["conditions"][0]["now"] == "early_stopping(val_loss, patience=1, min_delta=0.02) | max_epochs(12)"

    def test_whatif_imports_a_module_from_the_current_folder(self, tmp_path):
        """`fsmtrain whatif --import mymod` works in mymod's own folder, as `graph` and `worker` do."""
        (tmp_path / "mymod.py").write_text(
            "from fsmtrain.stopping import register, max_epochs\n"
            "@register\n"
            "def at_three(metric):\n"
            "    return max_epochs(3)\n")
        with EventLog(tmp_path / "w.db") as log:
            record(log, max_epochs(6), "falls")
        p = subprocess.run([sys.executable, "-m", "fsmtrain", "whatif", "w.db", "--import", "mymod", "-c",
                            "at_three(val_loss)"], cwd=tmp_path, capture_output=True, text=True,
                           env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
        assert p.returncode == 0, p.stderr
        assert "max_epochs(3)  3 " in p.stdout
