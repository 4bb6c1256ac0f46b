"""Human gates: waiting with a summary, input validated before anything is written, the first answer wins."""

import subprocess
import sys

import pytest

from fsmtrain import EventLog, Notify, Runner, decide, gate, give_input
from fsmtrain.errors import InvalidDefinition, InvalidInput, RunNotFound, RunNotRunnable
from tests.conftest import ROOT, file_digest
from tests.machines.approval import machine


@pytest.fixture
def waiting_log(tmp_path):
    """A log with run 1 waiting at `review`."""
    path = tmp_path / "g.db"
    with EventLog(path) as log:
        assert Runner.start(machine, log=log).run().reason == "waiting"
    return path


def cli(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "fsmtrain", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", **(env or {})})


class TestWaiting:
    def test_the_waiting_event_names_what_is_needed_and_summarises_the_metrics(self, waiting_log):
        with EventLog(waiting_log, readonly=True) as log:
            ev = log.last_event(1)
            assert log.run(1).status == "waiting"
        assert ev.kind == "waiting" and ev.action == "review" and ev.info["missing"] == ["decision"]
        assert [n["name"] for n in ev.info["needs"]] == ["decision", "comment", "scale"]
        assert ev.info["summary"]["metrics"]["history"] == {"n": 3, "last": 4, "min": 0, "max": 4}

    def test_replay_shows_the_run_waiting(self, waiting_log, tmp_path):
        p = cli("replay", str(waiting_log), cwd=tmp_path)
        assert p.returncode == 0 and "waiting" in p.stdout.splitlines()[1]

    def test_hooks_fire_on_waiting_and_on_input_and_notify_writes_lines(self, tmp_path):
        told = tmp_path / "gates.txt"
        calls = []
        hooks = [Notify(told, log="g.db"), Notify(call=calls.append, log="g.db")]
        with EventLog(tmp_path / "g.db") as log:
            r = Runner.start(machine, log=log, hooks=hooks)
            r.run()
            give_input(log, r.run_id, {"decision": "go"}, by="alice")
            Runner.resume(machine, log, r.run_id, hooks=hooks).run()
        lines = told.read_text().splitlines()
        assert len(lines) == 2 and lines == calls
        assert "run 1 waits at `review` for decision (go | no-go). Answer: fsmtrain approve g.db 1" in lines[0]
        assert "run 1 got its input for `review` (decision='go') and goes on" in lines[1]

    def test_notify_needs_somewhere_to_tell(self):
        with pytest.raises(ValueError, match="needs a path"):
            Notify()


class TestGivingInput:
    def test_approve_and_reject_use_the_gates_own_words_and_record_who_and_when(self, waiting_log):
        with EventLog(waiting_log) as log:
            ev = decide(log, 1, True, comment="ship it", by="alice")
        assert ev.kind == "input" and ev.inputs == {"decision": "go", "comment": "ship it"}
        assert ev.info["by"] == "alice" and ev.info["comment"] == "ship it" and ev.info["at"] > 0

    def test_a_gate_with_other_words_for_yes_and_no(self, tmp_path):
        from fsmtrain import Machine, action

        @action()
        def end(state):
            return None

        yes_no = gate("check", decision=["yes", "no"], comment=False)
        m = Machine("yn", [yes_no, end], [("check", "end")], entry="check", terminal=["end"])
        with EventLog(tmp_path / "y.db") as log:
            Runner.start(m, log=log).run()
            assert decide(log, 1, False, comment="not yet").inputs == {"decision": "no"}  # no comment input
        with pytest.raises(InvalidDefinition, match="needs at least one input"):
            gate("empty", decision=None, comment=False)

    @pytest.mark.parametrize(("values", "message"), [
        ({"decision": "maybe"}, "must be one of 'go', 'no-go'; got 'maybe'"),
        ({"verdict": "go"}, "has no input named 'verdict'"),
        ({"decision": 1}, "must be str"),
        ({"decision": "go", "scale": 11}, "must be <= 10"),
        ({"decision": "go", "scale": 2.5}, "must be int"),
        ({"comment": "hm"}, "needs input decision"),
    ])
    def test_invalid_input_is_refused_and_nothing_is_written(self, waiting_log, values, message):
        before = file_digest(waiting_log)
        with EventLog(waiting_log) as log, pytest.raises(InvalidInput, match=message):
            give_input(log, 1, values)
        assert file_digest(waiting_log) == before

    def test_the_first_decision_wins_and_a_second_is_refused_naming_it(self, waiting_log):
        with EventLog(waiting_log) as log:
            give_input(log, 1, {"decision": "no-go"}, by="bob")
            with pytest.raises(RunNotRunnable, match=r"answered with decision='no-go' by bob at .* \(event 6\); "
                                                     "the first decision wins"):
                decide(log, 1, True, by="alice")
            Runner.resume(machine, log, 1).run(max_steps=1)  # a worker took the answer and went on
            with pytest.raises(RunNotRunnable, match="running, not waiting for input; its gate `review` was answered"):
                give_input(log, 1, {"decision": "go"})
            with pytest.raises(RunNotFound, match="run 9 does not exist"):
                give_input(log, 9, {"decision": "go"})

    def test_the_user_name_comes_from_the_environment(self, waiting_log, monkeypatch):
        monkeypatch.setenv("FSMTRAIN_USER", "carol")
        with EventLog(waiting_log) as log:
            assert give_input(log, 1, {"decision": "go"}).info["by"] == "carol"

    def test_an_answer_in_the_waiting_process_is_recorded_as_an_input_event(self, tmp_path):
        with EventLog(tmp_path / "g.db") as log:
            r = Runner.start(machine, log=log)
            r.run()
            r.run(inputs={"decision": "no-go"}, max_steps=1)
            kinds = [e.kind for e in log.events(1)]
            assert kinds[-3:] == ["waiting", "input", "step"]
            assert next(e for e in log.events(1) if e.kind == "input").inputs == {"decision": "no-go"}


class TestCommandLine:
    def test_approve_reject_and_input_from_another_process(self, waiting_log, tmp_path):
        p = cli("input", str(waiting_log), "1", "decision=go", "scale=3", "--comment", "fine", cwd=tmp_path,
                env={"FSMTRAIN_USER": "dana"})
        assert p.returncode == 0, p.stderr
        assert "run 1: input for `review` recorded (decision='go', scale=3) by dana" in p.stdout
        with EventLog(waiting_log, readonly=True) as log:
            ev = log.last_event(1)
        assert ev.inputs == {"decision": "go", "scale": 3} and ev.info["comment"] == "fine"

    @pytest.mark.parametrize(("args", "code", "message"), [
        (["input", "1", "decision=maybe"], 2, "must be one of 'go', 'no-go'; got 'maybe'"),
        (["input", "1", "verdict=go"], 2, "has no input named 'verdict'"),
        (["input", "1", "decision=go", "scale=many"], 2, "must be int; cannot read 'many' as one"),
        (["input", "1", "decision=go", "scale=0"], 2, "must be >= 1"),
        (["input", "1", "decision"], 2, "'decision' is not KEY=VALUE"),
        (["input", "1", "decision=go", "decision=no-go"], 2, "decision is given twice"),
        (["input", "1", "comment=x"], 2, "needs input decision"),
        (["input", "7", "decision=go"], 1, "run 7 does not exist"),
        (["approve", "7"], 1, "run 7 does not exist"),
        (["input", "1"], 2, "Missing argument"),
    ])
    def test_bad_input_exits_non_zero_and_leaves_the_log_unchanged(self, waiting_log, tmp_path, args, code, message):
        before = file_digest(waiting_log)
        p = cli(args[0], str(waiting_log), *args[1:], cwd=tmp_path)
        assert p.returncode == code, (p.stdout, p.stderr)
        assert message in p.stderr and "Traceback" not in p.stderr
        assert file_digest(waiting_log) == before

    def test_a_second_decision_is_refused_naming_the_first(self, waiting_log, tmp_path):
        assert cli("reject", str(waiting_log), "1", cwd=tmp_path, env={"FSMTRAIN_USER": "erin"}).returncode == 0
        before = file_digest(waiting_log)
        p = cli("approve", str(waiting_log), "1", cwd=tmp_path)
        assert p.returncode == 1
        assert "answered with decision='no-go' by erin" in p.stderr and "the first decision wins" in p.stderr
        assert file_digest(waiting_log) == before

    def test_a_missing_log_is_not_created(self, tmp_path):
        p = cli("approve", str(tmp_path / "nope.db"), "1", cwd=tmp_path)
        assert p.returncode == 2 and "does not exist" in p.stderr
        assert not (tmp_path / "nope.db").exists()

    def test_a_run_that_is_not_waiting(self, tmp_path):
        with EventLog(tmp_path / "g.db") as log:
            r = Runner.start(machine, log=log)
            r.run(max_steps=1)
        p = cli("approve", str(tmp_path / "g.db"), "1", cwd=tmp_path)
        assert p.returncode == 1 and "run 1 is running, not waiting for input" in p.stderr
