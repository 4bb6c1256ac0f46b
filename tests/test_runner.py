
import errno

import pytest

from fsmtrain import EventLog, Hook, Machine, Runner, action, give_input, when
from fsmtrain.errors import (
    ActionFailed,
    HookFailed,
    InvalidInput,
    MachineMismatch,
    RunNotRunnable,
    StorageError,
    UndeclaredWrite,
    WriteConflict,
)
from fsmtrain.hooks import HookWarning
from fsmtrain.replay import position
from fsmtrain.runner import retry
from tests.conftest import file_digest
from tests.machines import FAIL_FILE, counter, done, flaky_machine, gated


class Recorder(Hook):
    def __init__(self):
        self.calls = []

    def on_run_start(self, *, run_id, **kw):
        self.calls.append(("run_start", run_id))

    def on_step_end(self, *, action, step, **kw):
        self.calls.append(("step_end", action, step))

    def on_waiting(self, *, action, needs, **kw):
        self.calls.append(("waiting", action, [n["name"] for n in needs]))

    def on_input(self, *, action, inputs, **kw):
        self.calls.append(("input", action, inputs))

    def on_run_end(self, *, status, **kw):
        self.calls.append(("run_end", status))


class TestRunInMemory:
    def test_runs_to_the_terminal_action(self):
        r = Runner.start(counter(3))
        halt = r.run()
        assert halt.reason == "finished" and r.status == "finished"
        assert r.state["n"] == 3 and r.state["result"] == 30 and list(r.state["history"]) == [0, 1.5, 3.0]
        assert r.steps == 4

    def test_step_after_finish_is_refused(self):
        r = Runner.start(counter(1))
        r.run()
        with pytest.raises(RunNotRunnable, match="finished"):
            r.step()

    def test_halt_before_and_after(self):
        r = Runner.start(counter(3))
        assert r.run(halt_after=["tick"]).reason == "halt_after" and r.state["n"] == 1
        halt = r.run(halt_before=["done"])
        assert halt.reason == "halt_before" and halt.action == "done" and r.state["n"] == 3
        assert r.run(halt_before=["done"]).steps == 0  # still before `done`
        assert r.step().action == "done"

    def test_iterate_yields_every_step(self):
        assert [s.action for s in Runner.start(counter(2)).iterate()] == ["tick", "tick", "done"]

    def test_max_steps(self):
        r = Runner.start(counter(10))
        assert r.run(max_steps=4).reason == "max_steps" and r.steps == 4

    def test_unknown_halt_name_is_an_error(self):
        with pytest.raises(Exception, match="no action `nope`"):
            Runner.start(counter(2)).run(halt_before=["nope"])

    def test_hooks_see_the_lifecycle(self):
        rec = Recorder()
        Runner.start(counter(1), hooks=[rec]).run()
        assert rec.calls == [("run_start", None), ("step_end", "tick", 1), ("step_end", "done", 2), ("run_end", "finished")]


class TestGates:
    def test_a_gate_without_input_waits_and_input_continues_it(self, log_path):
        rec = Recorder()
        with EventLog(log_path) as log:
            r = Runner.start(gated(), log=log, hooks=[rec])
            halt = r.run()
            assert halt.reason == "waiting" and halt.action == "review" and r.status == "waiting"
            assert ("waiting", "review", ["decision", "comment"]) in rec.calls
            assert log.run(r.run_id).status == "waiting"
            before = log.run(r.run_id).last_seq
            assert r.run().reason == "waiting"
            assert log.run(r.run_id).last_seq == before  # nothing new written while still waiting
            halt = r.run(inputs={"decision": "no-go"})
            assert r.state["decision"] == "no-go" and halt.reason == "waiting"
            assert ("input", "review", {"decision": "no-go"}) in rec.calls
            r.run(inputs={"decision": "go", "comment": "ship it"})
            assert r.status == "finished" and r.state["shipped"] is True and r.state["comment"] == "ship it"

    def test_input_from_another_process_is_validated_then_resumed(self, log_path):
        with EventLog(log_path) as log:
            run_id = Runner.start(gated(), log=log).run() and log.runs()[0].id
            digest = file_digest(log_path)
            for bad, msg in [({"decision": "maybe"}, "must be one of"), ({"verdict": "go"}, "no input named 'verdict'"),
                             ({}, "needs input decision"), ({"decision": 1}, "must be str")]:
                with pytest.raises(InvalidInput, match=msg):
                    give_input(log, run_id, bad)
            assert file_digest(log_path) == digest
            ev = give_input(log, run_id, {"decision": "go"}, by="alice")
            assert ev.kind == "input" and ev.info["by"] == "alice"
            with pytest.raises(RunNotRunnable, match="first decision wins"):
                give_input(log, run_id, {"decision": "no-go"})
            r = Runner.resume(gated(), log, run_id)
            assert r.run().reason == "finished" and r.state["decision"] == "go"
            with pytest.raises(RunNotRunnable, match="finished, not waiting"):
                give_input(log, run_id, {"decision": "go"})

    def test_invalid_in_process_input_writes_nothing(self, log_path):
        with EventLog(log_path) as log:
            r = Runner.start(gated(), log=log)
            r.run()
            digest = file_digest(log_path)
            with pytest.raises(InvalidInput):
                r.run(inputs={"decision": "perhaps"})
            assert file_digest(log_path) == digest and r.status == "waiting"


@pytest.fixture
def failures(tmp_path, monkeypatch):
    """``failures(n)``: the `flaky` action raises on its next n calls; returns the counter file."""
    def arm(n):
        fail = tmp_path / "fail"
        fail.write_text(str(n))
        monkeypatch.setenv(FAIL_FILE, str(fail))
        return fail
    return arm


class TestFailures:
    def test_an_action_that_raises_is_retried_then_succeeds(self, log_path, failures):
        failures(2)
        with EventLog(log_path) as log:
            r = Runner.start(flaky_machine(), log=log, max_attempts=3)
            assert r.run().reason == "finished"
            kinds = [(e.kind, e.attempt) for e in log.events(r.run_id)]
            assert kinds[:4] == [("start", None), ("error", 1), ("error", 2), ("step", 3)]

    def test_an_action_failing_every_attempt_marks_the_run_failed(self, log_path, failures):
        fail = failures(100)
        with EventLog(log_path) as log:
            r = Runner.start(flaky_machine(), log=log, max_attempts=3)
            with pytest.raises(ActionFailed, match="failed on attempt 3/3.*flaky failure"):
                r.run()
            assert r.status == "failed" and log.run(r.run_id).status == "failed"
            last = log.last_event(r.run_id)
            assert last.kind == "failed" and "RuntimeError: flaky failure" in last.error
            assert fail.read_text() == "97"  # exactly three attempts ran
            with pytest.raises(RunNotRunnable):
                Runner.resume(flaky_machine(), log, r.run_id).step()

    def test_failure_hooks_run_after_the_failure_is_committed(self, log_path, failures):
        failures(100)
        seen = []

        class Watch:
            def on_step_failed(self, *, attempt, will_retry, **kw):
                seen.append((attempt, will_retry, log.last_event(1).kind))

            def on_run_end(self, *, status, **kw):
                seen.append(status)

        with EventLog(log_path) as log, pytest.raises(ActionFailed):
            Runner.start(flaky_machine(), log=log, max_attempts=2, hooks=[Watch()]).run()
        assert seen == [(1, True, "error"), (2, False, "failed"), "failed"]

    def test_a_process_that_died_is_an_interruption_not_a_failed_attempt(self, log_path):
        """Five processes resume `tick` and die without a trace: the run is not failed, and each is counted."""
        with EventLog(log_path) as log:
            run_id = Runner.start(counter(3), log=log).run_id
            for _ in range(5):  # simulated deaths: a resume event, then nothing
                Runner.resume(counter(3), log, run_id, max_attempts=1)._write_resume_event()
            r = Runner.resume(counter(3), log, run_id, max_attempts=1)
            assert r.run().reason == "finished"
            resumes = [e.info["interrupted"] for e in log.events(run_id) if e.kind == "resume"]
            assert resumes == [0, 1, 2, 3, 4, 5]

    def test_a_crash_loop_is_bounded_by_max_interruptions_and_can_be_retried(self, log_path):
        with EventLog(log_path) as log:
            run_id = Runner.start(counter(3), log=log).run_id
            for _ in range(3):
                Runner.resume(counter(3), log, run_id, max_interruptions=3)._write_resume_event()
            with pytest.raises(ActionFailed, match="crash loop: `tick` was interrupted 3 times in a row"):
                Runner.resume(counter(3), log, run_id, max_interruptions=3).step()
            assert log.run(run_id).status == "failed"
            ev = retry(log, run_id, by="ops", comment="more memory now")
            assert (ev.kind, ev.info["by"], ev.info["comment"]) == ("retry", "ops", "more memory now")
            r = Runner.resume(counter(3), log, run_id, max_interruptions=3)
            assert r.run().reason == "finished" and r.state["result"] == 30

    def test_failed_attempts_and_interruptions_are_counted_apart(self, log_path, failures):
        """error, death, death, error, death: two failed attempts so far; the third one that raises fails the run."""
        failures(100)
        with EventLog(log_path) as log:
            start = log.create_run("flaky", flaky_machine().fingerprint, snapshot=dict(flaky_machine().initial),
                                   next_action="flaky")
            seq = start.seq
            for kind, attempt in [("error", 1), ("resume", 2), ("resume", 2), ("error", 2), ("resume", 3)]:
                seq = log.append(1, seq, kind=kind, step=0, action="flaky", attempt=attempt,
                                 info={} if kind == "resume" else None, error="x" if kind == "error" else None).seq
            pos = position(log, 1)
            assert (pos.attempts, pos.interrupted) == (2, 1)
            with pytest.raises(ActionFailed, match="failed on attempt 3/3"):
                Runner.resume(flaky_machine(), log, 1, max_attempts=3).run()

    def test_the_environment_stopping_an_action_fails_nothing_and_writes_nothing(self, log_path):
        """A full disk is not the action's fault: StorageError, no event, the run resumable."""
        calls = []

        @action(reads=["n"], writes=["n"])
        def write_file(state):
            calls.append(1)
            if len(calls) == 1:
                raise OSError(errno.ENOSPC, "No space left on device", "/data/ckpt.pt")
            return {"n": state["n"] + 1}

        m = Machine("disk", [write_file, done], [("write_file", "done")], entry="write_file", terminal=["done"],
                    initial={"n": 0})
        with EventLog(log_path) as log:
            r = Runner.start(m, log=log, max_attempts=1)
            digest = file_digest(log_path)
            with pytest.raises(StorageError, match=r"the disk is full \(/data/ckpt.pt\).*stays resumable"):
                r.run()
            assert file_digest(log_path) == digest and log.run(r.run_id).status == "running"
            r.close()
            assert Runner.resume(m, log, r.run_id, max_attempts=1).run().reason == "finished"

    def test_an_undeclared_write_raises_and_writes_nothing(self, log_path):
        @action(reads=[], writes=["a"])
        def sneaky(state):
            return {"a": 1, "b": 2}

        m = Machine("sneaky", [sneaky], [], entry="sneaky", terminal=["sneaky"])
        with EventLog(log_path) as log:
            r = Runner.start(m, log=log)
            digest = file_digest(log_path)
            with pytest.raises(UndeclaredWrite, match="`b`"):
                r.step()
            assert file_digest(log_path) == digest and r.status == "running"


class TestHooks:
    def test_a_failing_hook_warns_and_the_run_goes_on(self, log_path):
        class Broken(Hook):
            def on_step_end(self, **kw):
                raise ValueError("boom")

        with EventLog(log_path) as log:
            r = Runner.start(counter(2), log=log, hooks=[Broken()])
            with pytest.warns(HookWarning, match="Broken.on_step_end failed: ValueError: boom"):
                r.run()
            assert r.status == "finished" and len(r.hooks.failures) == 3
            assert log.verify() == []

    def test_a_fatal_hook_stops_the_run_after_the_commit(self, log_path):
        class Strict(Hook):
            fatal = True

            def on_step_end(self, *, step, **kw):
                if step == 2:
                    raise ValueError("stop here")

        with EventLog(log_path) as log:
            r = Runner.start(counter(5), log=log, hooks=[Strict()])
            with pytest.raises(HookFailed, match="stop here"):
                r.run()
            assert log.run(r.run_id).steps == 2 and log.verify() == []
            r2 = Runner.resume(counter(5), log, r.run_id)
            r2.run()
            assert r2.state["n"] == 5

    def test_hooks_accept_future_keyword_arguments(self):
        seen = []

        class Minimal:
            def on_step_end(self, *, action, **future_kwargs):
                seen.append(action)

        Runner.start(counter(1), hooks=[Minimal()]).run()
        assert seen == ["tick", "done"]


class TestResume:
    def test_resume_continues_where_the_run_stopped(self, log_path):
        with EventLog(log_path) as log:
            r = Runner.start(counter(5), log=log)
            r.run(max_steps=2)
            r2 = Runner.resume(counter(5), log, r.run_id)
            assert r2.state == r.state and r2.next_action == "tick" and r2.steps == 2
            r2.run()
            assert r2.state["n"] == 5 and r2.state["result"] == 50

    def test_a_changed_machine_is_refused_unless_allowed(self, log_path):
        changed = Machine("counter", counter().actions.values(),
                          [("tick", "done", when(n=2)), ("tick", "tick")], entry="tick", terminal=["done"])
        with EventLog(log_path) as log:
            r = Runner.start(counter(5), log=log)
            r.run(max_steps=1)
            with pytest.raises(MachineMismatch, match="actions or transitions changed"):
                Runner.resume(changed, log, r.run_id)
            r2 = Runner.resume(changed, log, r.run_id, allow_changed_machine=True)
            r2.run()
            assert r2.state["n"] == 2
            resumes = [e for e in log.events(r.run_id) if e.kind == "resume"]
            assert resumes[0].info["changed_from"] == counter().fingerprint

    def test_another_machine_name_is_refused(self, log_path):
        with EventLog(log_path) as log:
            run_id = Runner.start(counter(5), log=log).run_id
            with pytest.raises(MachineMismatch, match="recorded by machine `counter`"):
                Runner.resume(gated(), log, run_id)

    def test_two_runners_on_one_run_get_one_conflict(self, log_path):
        """The stale writer is refused; the history stays gapless and verifiable."""
        with EventLog(log_path) as log:
            run_id = Runner.start(counter(5), log=log).run_id
            a = Runner.resume(counter(5), log, run_id)
            b = Runner.resume(counter(5), log, run_id)
            a.step()
            with pytest.raises(WriteConflict, match="another process wrote to it"):
                b.step()
            a.run()
            assert log.verify() == [] and log.run(run_id).status == "finished"
            assert [e.seq for e in log.events(run_id)] == list(range(1, log.run(run_id).last_seq + 1))

    def test_resume_delivers_the_last_steps_hooks_again_marked_replayed(self, log_path):
        """A crash between a commit and its hooks loses nothing: hooks are at-least-once."""
        class Seen:
            def __init__(self):
                self.calls = []

            def on_step_end(self, *, step, action, updates, replayed=False, **kw):
                self.calls.append((step, action, dict(updates), replayed))

        with EventLog(log_path) as log:
            r = Runner.start(counter(5), log=log)
            r.run(max_steps=2)
            seen = Seen()
            r2 = Runner.resume(counter(5), log, r.run_id, hooks=[seen])
            r2.step()
            assert [c[:2] + (c[3],) for c in seen.calls] == [(2, "tick", True), (3, "tick", False)]
            assert seen.calls[0][2]["n"] == 2 and list(seen.calls[0][2]["history"].items) == [1.5]

    def test_latest_finds_the_newest_unfinished_run(self, log_path):
        with EventLog(log_path) as log:
            Runner.start(counter(1), log=log).run()
            open_id = Runner.start(counter(3), log=log).run_id
            assert Runner.latest(counter(), log).run_id == open_id
