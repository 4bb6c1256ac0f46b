import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from fsmtrain import EventLog, Runner
from fsmtrain.cli import main
from fsmtrain.log import SCHEMA_VERSION
from tests.conftest import ROOT, file_digest, finished_counter_log, tamper
from tests.machines import gated


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def counter_log(log_path):
    """A finished run of the torch-free counter machine: 5 ticks, then done (6 steps, 7 events)."""
    return finished_counter_log(log_path, 5)


class TestDemo:
    def test_prints_one_line_per_epoch_and_a_summary(self, log_path):
        r = invoke("demo", "--log", log_path, "--epochs", 3)
        assert r.exit_code == 0, r.output
        lines = r.output.splitlines()
        assert lines[0] == f"run 1: new demo run (epochs=3, seed=0) in {log_path}"
        epochs = [line.split() for line in lines if line.startswith("epoch ")]
        assert [e[1] for e in epochs] == ["1", "2", "3"]
        assert all(e[2:7:2] == ["train_loss", "val_loss", "val_acc"] and e[-1] == "ms)" for e in epochs)
        assert lines[-2].startswith("run 1 finished: 3 epochs, best val_loss ")
        assert lines[-1].startswith(f"best checkpoint: {log_path}.artifacts/run1/e0000")

    def test_running_again_resumes_the_unfinished_run(self, log_path):
        from fsmtrain.train import demo

        runner = demo.trainer(log_path).start({"max_epochs": 3})
        runner.run(max_steps=4)
        r = invoke("demo", "--log", log_path, "--json")
        assert r.exit_code == 0, r.output
        summary = json.loads(r.output.splitlines()[-1])
        assert summary["run_id"] == 1 and summary["status"] == "finished" and summary["epochs"] == 3
        assert len(summary["weights_sha256"]) == 64 and summary["best_epoch"] in (1, 2, 3)
        again = invoke("demo", "--log", log_path)
        assert "already finished" in again.output
        assert "run 2" in invoke("demo", "--log", log_path, "--new", "--epochs", 1).output


class TestReplay:
    def test_lists_runs(self, counter_log):
        r = invoke("replay", counter_log)
        assert r.exit_code == 0
        header, row = r.output.splitlines()
        assert header.split()[:5] == ["run", "machine", "status", "steps", "last"]
        assert row.split()[:5] == ["1", "counter", "finished", "6", "done"]

    def test_lists_runs_as_json(self, counter_log):
        runs = json.loads(invoke("replay", counter_log, "--json").output)
        assert [(x["id"], x["status"], x["steps"], x["last_action"]) for x in runs] == [(1, "finished", 6, "done")]

    def test_timeline(self, counter_log):
        out = invoke("replay", counter_log, "--run", 1).output.splitlines()
        assert out[0] == "run 1 · machine counter · finished · 6 steps"
        assert out[2].split()[0:5] == ["1", out[2].split()[1], out[2].split()[2], "start", "->"]
        assert len(out) == 2 + 7
        assert "-> done" in out[-2] and "[n>=limit]" in out[-2]  # why it stopped
        data = json.loads(invoke("replay", counter_log, "--run", 1, "--json").output)
        assert [e["seq"] for e in data["events"]] == list(range(1, 8))
        assert data["events"][-1]["action"] == "done" and data["events"][-1]["next"] is None

    def test_state_at_a_step(self, counter_log):
        data = json.loads(invoke("replay", counter_log, "--run", 1, "--at", 4, "--json").output)
        assert data["state"]["n"] == 3 and data["state"]["history"] == [0.0, 1.5, 3.0]
        text = invoke("replay", counter_log, "--run", 1, "--at", 4).output
        assert "  n = 3" in text.splitlines()

    def test_replay_never_writes(self, counter_log):
        digest = file_digest(counter_log)
        for args in ([], ["--json"], ["--run", 1], ["--run", 1, "--at", 3, "--json"]):
            assert invoke("replay", counter_log, *args).exit_code == 0
        invoke("verify", counter_log)
        assert file_digest(counter_log) == digest


class TestVerify:
    def test_an_intact_log(self, counter_log):
        r = invoke("verify", counter_log)
        assert r.exit_code == 0 and r.output.startswith("OK: 1 run(s), 7 event(s)")

    def test_an_edited_log_names_the_first_bad_event(self, counter_log):
        tamper(counter_log, "DROP TRIGGER events_no_update", "UPDATE events SET error = 'x' WHERE run_id = 1 AND seq = 5")
        r = invoke("verify", counter_log)
        assert r.exit_code == 1
        assert r.output.startswith("CORRUPT: trigger events_no_update is missing")
        assert "also: run 1 event 5: hash does not match its contents" in r.output


class TestGraph:
    def test_mermaid_and_dot(self):
        r = invoke("graph", "fsmtrain.train.demo:machine")
        assert r.exit_code == 0 and r.output.startswith("stateDiagram-v2\n    [*] --> train_steps")
        r = invoke("graph", "tests.machines:gated", "--format", "dot")
        assert r.exit_code == 0 and r.output.startswith('digraph "gated" {')

    @pytest.mark.parametrize("target, msg", [
        ("nocolon", "must be MODULE:ATTR"),
        ("no_such_module_xyz:m", "cannot import module"),
        ("fsmtrain.train.demo:nothing", "has no attribute"),
        ("fsmtrain.train.demo:CONFIG", "not an fsmtrain Machine"),
    ])
    def test_bad_targets(self, target, msg):
        r = invoke("graph", target)
        assert r.exit_code != 0 and msg in r.output


def make_bad_logs(tmp_path, log_path):
    """Every kind of bad log file the commands must refuse cleanly."""
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_text("just some notes\n")
    empty = tmp_path / "empty.db"
    empty.touch()
    newer = tmp_path / "newer.db"
    with EventLog(newer) as log:
        Runner.start(gated(), log=log).run()
    tamper(newer, ("INSERT INTO fsmtrain_schema VALUES (?, 0, 'future')", (SCHEMA_VERSION + 1,)))
    with EventLog(log_path) as log:
        Runner.start(gated(), log=log).run()
    return {"not_sqlite": not_sqlite, "empty": empty, "newer": newer, "good": log_path}


BAD_CASES = [
    (["replay", "{not_sqlite}"], "is not a SQLite database"),
    (["verify", "{not_sqlite}"], "is not a SQLite database"),
    (["replay", "{empty}"], "is an empty file"),
    (["verify", "{empty}"], "is an empty file"),
    (["replay", "{newer}"], "newer than this fsmtrain supports"),
    (["verify", "{newer}"], "newer than this fsmtrain supports"),
    (["demo", "--log", "{newer}"], "newer than this fsmtrain supports"),
    (["demo", "--log", "{not_sqlite}"], "is not a SQLite database"),
    (["demo", "--log", "{good}", "--new", "--data", "/no/such.csv"], "data set '/no/such.csv' does not exist"),
    (["demo", "--log", "{good}", "--new", "--data", "{not_sqlite}"], "line 1: expected numbers then an integer label"),
    (["replay", "{good}", "--run", "42"], "run 42 does not exist"),
    (["replay", "{good}", "--run", "1", "--at", "99"], "run 1 has no event 99 (its events are 1..3)"),
    (["replay", "{good}", "--at", "2"], "--at needs --run"),
    (["replay", "{good}", "--run", "abc"], "'abc' is not a valid integer"),
    (["replay", "{good}", "--run", "\u0661"], "is not a whole number written with the digits 0-9"),  # (Arabic-Indic 1)
    (["approve", "{good}", "\uff11"], "is not a whole number written with the digits 0-9"),  # (full-width 1)
]


class TestBadInput:
    @pytest.mark.parametrize("args, msg", BAD_CASES)
    def test_a_clear_message_a_nonzero_exit_no_traceback_and_no_change(self, tmp_path, log_path, args, msg):
        """Run as a real subprocess: the message names the problem, and every file is unchanged."""
        files = make_bad_logs(tmp_path, log_path)
        before = {k: file_digest(p) for k, p in files.items()}
        argv = [a.format(**{k: str(p) for k, p in files.items()}) for a in args]
        p = subprocess.run([sys.executable, "-m", "fsmtrain", *argv], cwd=ROOT, capture_output=True, text=True)
        assert p.returncode != 0
        assert msg in p.stderr, p.stderr
        assert "Traceback" not in p.stderr + p.stdout
        assert {k: file_digest(p) for k, p in files.items()} == before

    def test_an_undeclared_write_from_a_user_machine_is_a_clean_error(self, tmp_path):
        """A machine whose action writes an undeclared key: clear message, exit 1, log unchanged."""
        mod = tmp_path / "usermachine.py"
        mod.write_text(
            "from fsmtrain import Machine, action\n"
            "@action(writes=['a'])\n"
            "def bad(state):\n"
            "    return {'a': 1, 'lr': 0.1}\n"
            "machine = Machine('user', [bad], [], entry='bad', terminal=['bad'])\n"
        )
        script = ("import sys; sys.path.insert(0, sys.argv[1]); from usermachine import machine\n"
                  "from fsmtrain import EventLog, Runner\n"
                  "log = EventLog(sys.argv[2]); Runner.start(machine, log=log).run()\n")
        log = tmp_path / "user.db"
        p = subprocess.run([sys.executable, "-c", script, str(tmp_path), str(log)], capture_output=True, text=True)
        assert p.returncode == 1 and "action `bad` wrote `lr`, which it does not declare" in p.stderr
        with EventLog(log, readonly=True) as lg:
            assert [e.kind for e in lg.events(1)] == ["start"]

    def test_an_invalid_machine_definition_lists_its_problems(self, tmp_path):
        mod = tmp_path / "broken.py"
        mod.write_text("from fsmtrain import Machine, action\n"
                       "@action()\ndef a(state): return None\n"
                       "machine = lambda: Machine('m', [a], [('a', 'zz')], entry='a')\n")
        p = subprocess.run([sys.executable, "-m", "fsmtrain", "graph", "broken:machine"], cwd=tmp_path,
                           capture_output=True, text=True, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
        assert p.returncode == 2, p.stderr
        assert "machine `m` is invalid" in p.stderr and "target `zz` is not an action" in p.stderr
        assert "Traceback" not in p.stderr


def test_every_command_has_help_ending_with_an_example():
    for name, cmd in main.commands.items():
        help_text = invoke(name, "--help").output
        assert "Example" in help_text, name
        assert cmd.help and "Example" in cmd.help.split("\n\n")[-1], name


def test_doctor_reports_versions_and_the_log(counter_log):
    r = invoke("doctor", "--log", counter_log)
    assert r.exit_code == 0, r.output
    assert "sqlite       " in r.output and "schema v2, journal wal, 1 run(s)" in r.output


@pytest.mark.slow
def test_ctrl_c_in_the_demo_says_how_to_resume(tmp_path):
    """SIGINT mid-run: exit 130, a one-line hint, no traceback; the same command then resumes."""
    import signal
    import threading
    import time

    log = tmp_path / "slow.db"
    cmd = [sys.executable, "-m", "fsmtrain", "demo", "--log", str(log), "--delay", "0.3"]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first_epoch = threading.Event()
    lines: list[str] = []

    def read() -> None:  # the demo prints a line per epoch: interrupt it once one is out
        for line in p.stdout:
            lines.append(line)
            if line.startswith("epoch"):
                first_epoch.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert first_epoch.wait(timeout=60), ("no epoch line", lines, p.poll())
    time.sleep(0.1)
    assert p.poll() is None, "the demo finished before it could be interrupted"
    p.send_signal(signal.SIGINT)
    p.wait(timeout=30)
    reader.join(timeout=5)
    err = p.stderr.read()
    assert p.returncode == 130, err
    assert "run the same command again to resume run 1" in err and "Traceback" not in err
    again = subprocess.run(cmd[:-2], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stdout.startswith("run 1: resuming at")


class TestALongTimeline:
    def test_the_text_timeline_is_shown_a_page_at_a_time_and_says_how_to_see_the_rest(self, tmp_path):
        """A run of 2,502 events: the first 1,000 by default with the total and the next command; --from and
        --limit page through it; --limit 0 shows every event; --json gives every event unless limited."""
        from tests.machines import counter

        path = tmp_path / "long.db"
        with EventLog(path, durability="none") as log:
            Runner.start(counter(2500), log=log).run()
        first = invoke("replay", path, "--run", 1).output
        assert "(events 1–1,000 of 2,502; the next page: fsmtrain replay" in first and "--from 1001" in first
        seqs = [int(line.split()[0]) for line in first.splitlines() if line.split() and line.split()[0].isdigit()]
        assert seqs == list(range(1, 1001))
        last = invoke("replay", path, "--run", 1, "--from", 2001, "--limit", 600).output
        seqs = [int(line.split()[0]) for line in last.splitlines() if line.split() and line.split()[0].isdigit()]
        assert seqs == list(range(2001, 2503)) and "of 2,502" not in last
        everything = invoke("replay", path, "--run", 1, "--limit", 0).output
        assert "2502" in everything and "next page" not in everything
        assert len(json.loads(invoke("replay", path, "--run", 1, "--json").output)["events"]) == 2502
        page = json.loads(invoke("replay", path, "--run", 1, "--json", "--from", 10, "--limit", 5).output)
        assert [e["seq"] for e in page["events"]] == [10, 11, 12, 13, 14]
        assert "past its end" in invoke("replay", path, "--run", 1, "--from", 9999).output
