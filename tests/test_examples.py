"""Each example runs, and rerunning it resumes rather than restarts."""

import json
import shutil
import subprocess
import sys

import pytest

from fsmtrain import EventLog
from tests.conftest import ROOT

EXAMPLE = ROOT / "examples" / "gated_counter.py"


def run(*args, cwd):
    p = subprocess.run([sys.executable, str(EXAMPLE), *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_gated_counter_waits_then_takes_a_decision(tmp_path):
    log = tmp_path / "g.db"
    assert run(str(log), cwd=tmp_path).startswith("run 1: waiting after 3 steps; n=3")
    assert run(str(log), "no-go", cwd=tmp_path).startswith("run 1: waiting after 7 steps; n=6")
    assert run(str(log), "go", cwd=tmp_path).strip() == "run 1: finished after 9 steps; n=6, total=55"
    with EventLog(log, readonly=True) as lg:
        assert lg.verify() == [] and [r.status for r in lg.runs()] == ["finished"]


@pytest.mark.slow
def test_train_classifier_trains_and_a_rerun_reports_the_same_run(tmp_path):
    script = ROOT / "examples" / "train_classifier.py"
    args = [sys.executable, str(script), "max_epochs=3", f"log={tmp_path / 't.db'}"]
    first = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert [line.split()[1] for line in lines[:3]] == ["1", "2", "3"]
    assert lines[-1].startswith("run 1 finished: 3 epochs, best val_loss ")
    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout.splitlines() == [lines[-1]]  # the finished run, reported
    bad = subprocess.run([sys.executable, str(script), "epochs=3"], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown or empty config override 'epochs=3'" in bad.stderr


def test_custom_condition_example_tests_pass_and_whatif_can_use_the_condition(tmp_path):
    example = ROOT / "examples" / "custom_condition.py"
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(example)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "6 passed" in p.stdout
    from tests.test_whatif import record  # a recorded run of the torch-free curve machine

    with EventLog(tmp_path / "w.db") as log:
        record(log, "max_epochs(12)", "falls")
    p = subprocess.run([sys.executable, "-m", "fsmtrain", "whatif", str(tmp_path / "w.db"), "--import", "custom_condition",
                        "-c", "relative_plateau(val_loss, window=3, fraction=0.01)", "--json"],
                       capture_output=True, text=True, timeout=120,
                       env={"PYTHONPATH": f"{ROOT}:{ROOT / 'examples'}", "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
    (row,) = json.loads(p.stdout)["rows"]
    # falls: ... 0.605 0.603 0.602 0.6015: at epoch 10, the best of the last 3 (0.6015) is not 1% below 0.605
    assert row["stopped_at"] == 10 and row["condition"] == "relative_plateau(val_loss, window=3, fraction=0.01)"


@pytest.mark.slow
def test_gated_training_retrains_with_the_reviewers_learning_rate_then_a_worker_exports(tmp_path):
    """The commands of the script's header, as written, from a copy of the repository's root."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("__pycache__", "*.db*"))

    def run(*args):
        p = subprocess.run([sys.executable, "examples/gated_training.py", *args], cwd=tmp_path, capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        return p.stdout.splitlines()

    first = run()
    assert len(first) == 7 and first[-1].startswith("run 1 waits for review")
    second = run("no-go", "new_lr=0.01", "more_epochs=2")
    assert [line.split()[3] for line in second[:2]] == ["0.01", "0.01"]  # retrained at the reviewer's LR
    assert second[-1].startswith("run 1 waits for review")
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    for cmd in (["approve", "gated_training.db", "1"],
                ["worker", "gated_training.db", "--machine", "examples.gated_training:trainer", "--once"]):
        p = subprocess.run([sys.executable, "-m", "fsmtrain", *cmd], cwd=tmp_path, capture_output=True, text=True,
                           env=env, timeout=300)
        assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "run 1: finished after 3 step(s)"
    with EventLog(tmp_path / "gated_training.db", readonly=True) as log:
        from fsmtrain import state_at

        state = state_at(log, 1)
        assert log.verify() == [] and state["lr"] == 0.01 and state["max_epochs"] == 8
        assert state["exported"] is not None and state["decision"] == "go"
        assert [e.inputs for e in log.events(1) if e.kind == "input"] == [
            {"decision": "no-go", "new_lr": 0.01, "more_epochs": 2}, {"decision": "go"}]


def test_tune_demo_runs_a_study_and_the_study_command_shows_it(tmp_path):
    script = ROOT / "examples" / "tune_demo.py"
    p = subprocess.run([sys.executable, str(script), str(tmp_path / "t.db")], cwd=tmp_path, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 6 and lines[-1].startswith("best: trial ")
    p = subprocess.run([sys.executable, "-m", "fsmtrain", "study", str(tmp_path / "t.db"), "--json"],
                       capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    data = json.loads(p.stdout)
    assert data["status"] == "finished" and len(data["trials"]) == 12
    assert any(t["pruned"] for t in data["trials"])  # ASHA stopped some at a rung
    assert data["best"]["value"] == data["trials"][0]["best"]


def _char_lm(log, *extra, cwd):
    p = subprocess.run([sys.executable, str(ROOT / "examples" / "char_lm.py"), "--log", str(log), *extra], cwd=cwd,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.splitlines()[-1])


def test_the_char_lm_example_trains_a_sequence_model_and_a_rerun_prints_the_same_line(tmp_path):
    """Issue 28: (batch, time, vocabulary) outputs, chunks, a per-step schedule, clipping, a step budget, the best
    checkpoint generating text; deterministic, and rerun on a finished log it prints the same line."""
    first = _char_lm(tmp_path / "lm.db", "--max-steps", "30", cwd=tmp_path)
    assert {"run_id", "status", "steps", "best_val_loss", "sample"} <= set(first)
    assert first["status"] == "finished" and first["steps"] >= 30 and first["sample"].startswith("the cat ")
    assert _char_lm(tmp_path / "lm.db", "--max-steps", "30", cwd=tmp_path) == first
    with EventLog(tmp_path / "lm.db", readonly=True) as lg:
        assert lg.verify() == []


@pytest.mark.slow
def test_the_char_lm_example_killed_and_rerun_ends_with_the_same_line(tmp_path):
    import random

    from tests.test_crash import kill_until_done

    want = _char_lm(tmp_path / "ref.db", "--max-steps", "60", cwd=tmp_path)
    log = tmp_path / "k.db"
    cmd = [sys.executable, str(ROOT / "examples" / "char_lm.py"), "--log", str(log), "--max-steps", "60"]
    kills, out = kill_until_done(cmd, log, random.Random(28), 3, 0.3)
    assert kills >= 1
    assert json.loads(out.splitlines()[-1]) == want
