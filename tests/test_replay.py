import pytest

from fsmtrain import EventLog, Runner, fork, state_at
from fsmtrain.errors import EventNotFound, RunNotRunnable
from fsmtrain.replay import position
from tests.machines import counter, gated


class TestStateAt:
    def test_every_prefix_folds_to_the_state_the_runner_had(self, log_path):
        """state_at(seq) equals the runner's state right after that event, for every event."""
        with EventLog(log_path) as log:
            r = Runner.start(counter(12), log=log, snapshot_every=5)
            seen = {1: r.state.to_json()}
            for result in r.iterate():
                seen[result.seq] = result.state.to_json()
            for seq, expected in seen.items():
                assert state_at(log, r.run_id, seq).to_json() == expected

    def test_beyond_the_end_is_a_clear_error(self, log_path):
        with EventLog(log_path) as log:
            r = Runner.start(counter(2), log=log)
            r.run()
            with pytest.raises(EventNotFound, match="run 1 has no event 99 \\(its events are 1..4\\)"):
                state_at(log, r.run_id, 99)


class TestPosition:
    def test_position_of_a_waiting_run_names_what_it_needs(self, log_path):
        with EventLog(log_path) as log:
            r = Runner.start(gated(), log=log)
            r.run()
            pos = position(log, r.run_id)
            assert pos.status == "waiting" and pos.next_action == "review"
            assert [n["name"] for n in pos.waiting_for] == ["decision", "comment"]


class TestFork:
    def test_a_fork_continues_from_the_chosen_step_and_points_at_its_parent(self, log_path):
        with EventLog(log_path) as log:
            r = Runner.start(counter(6), log=log)
            r.run()
            child = fork(log, r.run_id, 4, updates={"limit": 3})
            info = log.run(child)
            assert (info.parent_id, info.parent_seq) == (r.run_id, 4)
            start = next(log.events(child))
            assert start.info == {"forked_from": {"run": r.run_id, "seq": 4}, "updates": {"limit": 3}}
            c = Runner.resume(counter(6), log, child)
            assert c.state["n"] == 3 and c.next_action == "tick"
            c.run()
            assert c.state["result"] == 40 and list(c.state["history"]) == [0, 1.5, 3.0, 4.5]
            assert log.verify() == []
            assert state_at(log, r.run_id)["result"] == 60  # the parent is untouched

    def test_forking_after_the_end_is_refused(self, log_path):
        with EventLog(log_path) as log:
            r = Runner.start(counter(1), log=log)
            r.run()
            with pytest.raises(RunNotRunnable, match="had finished"):
                fork(log, r.run_id)
