"""Studies: spaces, samplers, schedulers, and a study as a resumable run with trials as child runs."""

import math
import os
import random
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fsmtrain import EventLog, state_at
from fsmtrain.errors import InvalidDefinition
from fsmtrain.tune import (
    ASHA,
    Choice,
    GridSampler,
    IntRange,
    LogUniform,
    MedianStopping,
    RandomSampler,
    Space,
    Study,
    Uniform,
    table,
    trials_of,
)
from tests.conftest import ROOT
from tests.test_crash import kill_until_done

SPACE = {"lr": LogUniform(0.01, 0.5), "hidden": IntRange(4, 16)}
TARGET = "tests.machines.trials:trainer"


class TestSpaces:
    def test_samples_stay_inside_and_round_trip_through_json(self):
        space = Space({"lr": LogUniform(1e-4, 1e-1), "wd": Uniform(0, 0.1), "h": IntRange(8, 64, log=True),
                       "act": Choice(["relu", "tanh"])})
        rng = random.Random(3)
        for _ in range(200):
            p = space.sample(rng)
            assert 1e-4 <= p["lr"] <= 1e-1 and 0 <= p["wd"] <= 0.1 and 8 <= p["h"] <= 64 and p["act"] in ("relu", "tanh")
        assert Space.from_json(space.to_json()) == space

    @pytest.mark.parametrize(("dims", "message"), [
        ({}, "it is empty"),
        ({"lr": LogUniform(0.1, 0.01)}, "lr: LogUniform needs finite numbers 0 < low < high"),
        ({"lr": LogUniform(0, 1)}, "0 < low < high"),
        ({"x": Uniform(1, 1)}, "x: Uniform needs finite numbers low < high"),
        ({"n": IntRange(5, 2)}, "n: IntRange needs ints low <= high"),
        ({"a": Choice([])}, "a: Choice needs at least one value"),
        ({"a": Choice([1, 1])}, "repeated values"),
        ({"a": (0, 1)}, "is not a dimension"),
        ({"not valid": Uniform(0, 1)}, "must be an identifier"),
    ])
    def test_empty_or_contradictory_spaces_are_refused(self, dims, message):
        with pytest.raises(InvalidDefinition, match=message):
            Space(dims)

    def test_samplers_are_reproducible_by_index(self):
        space = Space(SPACE)
        a, b = RandomSampler(5), RandomSampler(5)
        assert [a.propose(space, i, []) for i in range(5)] == [b.propose(space, i, []) for i in (0, 1, 2, 3, 4)]
        assert a.propose(space, 3, []) == b.propose(space, 3, [{"params": {}, "value": 1.0}])
        assert a.propose(space, 0, []) != RandomSampler(6).propose(space, 0, [])
        grid = GridSampler(points=2)
        points = [grid.propose(Space({"x": Uniform(0, 1), "c": Choice(["a", "b"])}), i, []) for i in range(5)]
        assert points == [{"x": 0.0, "c": "a"}, {"x": 0.0, "c": "b"}, {"x": 1.0, "c": "a"}, {"x": 1.0, "c": "b"}, None]

    def test_optuna_samplers_decide_through_ask_and_tell(self):
        optuna = pytest.importorskip("optuna")
        from fsmtrain.tune import OptunaSampler

        s = OptunaSampler(optuna.samplers.TPESampler(seed=0, n_startup_trials=2))
        space = Space(SPACE)
        history = [{"params": {"lr": 0.1, "hidden": 8}, "value": 0.5}, {"params": {"lr": 0.02, "hidden": 12}, "value": 0.9}]
        p = s.propose(space, 2, history)
        assert 0.01 <= p["lr"] <= 0.5 and 4 <= p["hidden"] <= 16


values = st.floats(0, 10, allow_nan=False) | st.sampled_from([math.nan, math.inf])


class TestSchedulers:
    @given(values, st.lists(values, max_size=30), st.integers(2, 5), st.sampled_from(["min", "max"]))
    def test_asha_stops_a_trial_only_outside_the_top_fraction_at_its_rung(self, value, others, rf, mode):
        keep = ASHA(reduction_factor=rf, max_t=100).keeps(value, others, mode=mode)
        n = len(others) + 1
        finite = math.isfinite(value)
        better = sum(1 for o in others if math.isfinite(o) and (o < value if mode == "min" else o > value))
        if not keep:
            assert not finite or better >= math.ceil(n / rf)  # outside the top 1/rf
        else:
            assert finite and better < math.ceil(n / rf)

    @given(st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=30), st.integers(2, 4))
    def test_asha_always_keeps_the_best_trial_at_a_rung(self, vals, rf):
        best = min(vals)
        others = list(vals)
        others.remove(best)
        assert ASHA(reduction_factor=rf, max_t=10).keeps(best, others, mode="min")

    def test_rungs_and_median_stopping(self):
        assert ASHA(grace_period=2, reduction_factor=2, max_t=16).milestones() == [2, 4, 8]
        med = MedianStopping(grace_period=2, interval=2, min_samples=2, max_t=8)
        assert med.milestones() == [2, 4, 6]
        assert med.keeps(0.5, [0.4], mode="min")  # too few samples yet
        assert not med.keeps(0.5, [0.4, 0.45, 0.6], mode="min") and med.keeps(0.44, [0.4, 0.45, 0.6], mode="min")
        with pytest.raises(InvalidDefinition, match="reduction_factor must be an int >= 2"):
            ASHA(reduction_factor=1)
        with pytest.raises(InvalidDefinition, match="must not exceed max_t"):
            ASHA(grace_period=5, max_t=3)


def own_best(log, run_id):
    v = [x for x in state_at(log, run_id)["val_loss"]]
    return min(v)


class TestStudies:
    def test_a_study_keeps_max_concurrent_trials_running_and_picks_the_best(self, tmp_path):
        with EventLog(tmp_path / "s.db") as log:
            runner = Study(log, TARGET, SPACE, n_trials=5, max_concurrent=2, seed=1, config={"max_epochs": 3}).run()
            assert runner.status == "finished"
            trials = trials_of(runner.state)
            assert [t.index for t in trials] == [0, 1, 2, 3, 4] and all(t.status == "completed" for t in trials)
            children = log.runs(parent_id=runner.run_id)
            assert sorted(c.id for c in children) == sorted(t.run_id for t in trials)  # every trial once, a child run
            assert all(c.status == "finished" and c.tags["study"] == runner.run_id for c in children)
            # after every launch, exactly max_concurrent trials run while that many are left to finish
            for e in log.events(runner.run_id):
                if e.kind == "step" and e.action == "propose":  # (which launches)
                    after = state_at(log, runner.run_id, e.seq)
                    left = 5 - sum(t.status in ("completed", "pruned", "failed") for t in trials_of(after))
                    assert len(after["running"]) == min(2, left)
            best = runner.state["best"]
            ours = {t.run_id: own_best(log, t.run_id) for t in trials}
            assert best["run_id"] == min(ours, key=ours.get) and best["value"] == min(ours.values())
            assert table(runner.state)[0]["run_id"] == best["run_id"]
            again = Study(log, TARGET, SPACE, n_trials=5, max_concurrent=2, seed=1, config={"max_epochs": 3}).run()
            assert again.run_id == runner.run_id and len(log.runs(parent_id=runner.run_id)) == 5  # nothing re-run

    def test_asha_prunes_trials_at_rungs(self, tmp_path):
        with EventLog(tmp_path / "s.db") as log:
            runner = Study(log, TARGET, SPACE, n_trials=6, max_concurrent=2, seed=1,
                           scheduler=ASHA(grace_period=1, reduction_factor=2, max_t=4)).run()
            rows = table(runner.state)
        assert {r["status"] for r in rows} <= {"completed", "pruned"} and any(r["pruned"] for r in rows)
        assert all(r["epochs"] in (1, 2) for r in rows if r["pruned"]) and all(
            r["epochs"] == 4 for r in rows if r["status"] == "completed")

    def test_a_failing_trial_is_recorded_retried_and_the_study_goes_on(self, tmp_path, monkeypatch):
        monkeypatch.setenv("FSMTRAIN_TEST_BAD_LR", "0.2")
        with EventLog(tmp_path / "s.db") as log:
            runner = Study(log, TARGET, SPACE, n_trials=5, max_concurrent=2, seed=1, retries=1,
                           config={"max_epochs": 2}).run()
            trials = trials_of(runner.state)
            failed = [t for t in trials if t.status == "failed"]
            assert failed and all(t.params["lr"] > 0.2 and t.attempts == 2 and "too high" in t.error for t in failed)
            assert all(t.status == "completed" for t in trials if t.params["lr"] <= 0.2)
            assert len(log.runs(parent_id=runner.run_id)) == 5 + len(failed)  # one new child run per retry
            assert runner.state["best"]["params"]["lr"] <= 0.2

    @pytest.mark.parametrize(("kwargs", "message"), [
        ({"space": {}}, "it is empty"),
        ({"space": {"lr": LogUniform(1, 0.1)}}, "0 < low < high"),
        ({"max_concurrent": 0}, "max_concurrent must be an int >= 1"),
        ({"n_trials": 0}, "n_trials must be an int >= 1"),
        ({"sampler": "bayes"}, "unknown sampler 'bayes'"),
        ({"trial": "tests.machines.trials:nothing"}, "cannot be imported"),
        ({"trial": "no_such_module:trainer"}, "cannot be imported"),
        ({"trial": lambda log: None}, "not importable by the worker processes"),
        ({"mode": "up"}, "mode must be 'min' or 'max'"),
        ({"config": {"lr": 0.1}}, "lr are both searched and fixed"),
    ])
    def test_bad_input_is_refused_before_anything_runs(self, tmp_path, kwargs, message):
        args = {"trial": TARGET, "space": SPACE, "n_trials": 3, **kwargs}
        with EventLog(tmp_path / "s.db") as log:
            with pytest.raises(InvalidDefinition, match=message):
                Study(log, args.pop("trial"), args.pop("space"), **args)
            assert log.runs() == []

    def test_detached_trials_write_nothing_but_checkpoints_and_the_study_writes_their_events(self, tmp_path):
        """For workers on other machines: the study process alone writes the log, checkpoints go to a given path."""
        settings = dict(n_trials=4, max_concurrent=2, seed=3, config={"max_epochs": 3})
        with EventLog(tmp_path / "pool.db") as log:
            attached = table(Study(log, TARGET, SPACE, **settings).run().state)
        with EventLog(tmp_path / "det.db") as log:
            runner = Study(log, TARGET, SPACE, artifacts=tmp_path / "shared", **settings).run()
            detached = table(runner.state)
            children = log.runs(parent_id=runner.run_id)
            assert log.verify() == [] and all(c.status == "finished" for c in children)
            for c in children:  # each child is a complete training run, its checkpoints in the shared folder
                state = state_at(log, c.id)
                assert (tmp_path / "shared" / state["checkpoint"].path).is_file()
        beside = tmp_path / "det.db.artifacts"  # the study's own folder holds the runs' locks and the log's
        assert {str(p.relative_to(beside).parent) for p in beside.rglob("*") if p.is_file() and  # witness, no checkpoint
                p.name != "witness.jsonl"} <= {"locks"}
        assert [(r["params"], r["best"], r["epochs"]) for r in detached] == \
            [(r["params"], r["best"], r["epochs"]) for r in attached]

    @pytest.mark.slow
    def test_the_same_study_on_dask_gives_the_same_result(self, tmp_path):
        distributed = pytest.importorskip("distributed", reason="dask.distributed is the optional `tune` extra")
        settings = dict(n_trials=4, max_concurrent=2, seed=3, config={"max_epochs": 2})
        with EventLog(tmp_path / "pool.db") as log:
            pool = table(Study(log, TARGET, SPACE, **settings).run().state)
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                distributed.Client(cluster) as client:
            with EventLog(tmp_path / "dask.db") as log:
                on_dask = table(Study(log, TARGET, SPACE, executor=client.get_executor(), **settings).run().state)
            with EventLog(tmp_path / "dask-detached.db") as log:  # as workers on other machines would run them
                detached = table(Study(log, TARGET, SPACE, executor=client.get_executor(), artifacts=tmp_path / "ck",
                                       **settings).run().state)
        for other in (on_dask, detached):
            assert [(r["params"], r["best"], r["epochs"], r["status"]) for r in other] == \
                [(r["params"], r["best"], r["epochs"], r["status"]) for r in pool]


STUDY_SCRIPT = """
import sys
from fsmtrain import EventLog
from fsmtrain.tune import Study, LogUniform, IntRange
if __name__ == "__main__":
    with EventLog(sys.argv[1]) as log:
        Study(log, "tests.machines.trials:trainer", {"lr": LogUniform(0.01, 0.5), "hidden": IntRange(4, 16)},
              n_trials=6, max_concurrent=2, seed=7, config={"max_epochs": 3}).run()
"""


@pytest.mark.slow
def test_a_study_killed_at_random_moments_ends_as_an_uninterrupted_one(tmp_path):
    script = tmp_path / "study.py"
    script.write_text(STUDY_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FSMTRAIN_TEST_BUILDS": str(tmp_path / "builds.txt")}
    ref = subprocess.run([sys.executable, str(script), str(tmp_path / "ref.db")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    # Each kill lands after the study (or a trial) committed something new: never a blind wall-clock guess.
    kills, _ = kill_until_done([sys.executable, str(script), str(tmp_path / "k.db")], tmp_path / "k.db",
                               random.Random(11), 8, 0.15, env=env, group=True)
    assert kills >= 3
    with EventLog(tmp_path / "k.db", readonly=True) as got, EventLog(tmp_path / "ref.db", readonly=True) as want:
        study_id = next(r.id for r in got.runs() if r.machine.startswith("study:"))
        ref_id = next(r.id for r in want.runs() if r.machine.startswith("study:"))
        a, b = table(state_at(got, study_id)), table(state_at(want, ref_id))
        assert [(r["trial"], r["params"], r["best"], r["epochs"], r["status"]) for r in a] == \
            [(r["trial"], r["params"], r["best"], r["epochs"], r["status"]) for r in b]
        assert state_at(got, study_id)["best"]["value"] == state_at(want, ref_id)["best"]["value"]
        children = got.runs(parent_id=study_id)
        assert sorted(c.tags["trial"] for c in children) == [0, 1, 2, 3, 4, 5]  # no trial started twice
        assert got.verify() == []
        before = (tmp_path / "builds.txt").read_text()
    # started again, the finished study re-runs nothing
    subprocess.run([sys.executable, str(script), str(tmp_path / "k.db")], env=env, check=True, timeout=300)
    assert (tmp_path / "builds.txt").read_text() == before


def test_the_study_command_shows_the_trial_table(tmp_path):
    with EventLog(tmp_path / "s.db") as log:
        Study(log, TARGET, SPACE, n_trials=3, max_concurrent=2, seed=1, config={"max_epochs": 2}).run()
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    p = subprocess.run([sys.executable, "-m", "fsmtrain", "study", str(tmp_path / "s.db")], capture_output=True,
                       text=True, env=env)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("study 1 (study) · finished · 3 of 3 trials · val_loss (min)")
    assert lines[1].split()[:2] == ["trial", "run"] and lines[-1].startswith("best: trial ")
    p = subprocess.run([sys.executable, "-m", "fsmtrain", "study", str(tmp_path / "s.db"), "--id", "2"],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 1 and "run 2 is a `trial` run, not a study" in p.stderr


class TestPrunedTrialsEnd:
    def test_a_pruned_trial_ends_saying_why_and_nothing_continues_it(self, tmp_path):
        with EventLog(tmp_path / "p.db") as log:
            runner = Study(log, TARGET, SPACE, n_trials=6, max_concurrent=2, seed=3,
                           scheduler=ASHA(grace_period=1, reduction_factor=2, max_t=4)).run(on_interrupt="raise")
            rows = table(runner.state)
            pruned = [r for r in rows if r["status"] == "pruned"]
            assert pruned, rows
            for r in rows:
                assert log.run(r["run_id"]).status == {"completed": "finished", "pruned": "pruned"}[r["status"]]
            for r in pruned:
                last = log.last_event(r["run_id"])
                assert last.kind == "pruned" and last.info["by"] == f"study {runner.run_id}"
                assert last.info["rule"] == "asha" and last.info["rung"] == r["epochs"] and last.info["trial"] == r["trial"]
                assert last.info["reason"].startswith(f"pruned by asha at epoch {r['epochs']}: val_loss ")
            before = {r["run_id"]: log.run(r["run_id"]).last_seq for r in rows}
        env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
        p = subprocess.run([sys.executable, "-m", "fsmtrain", "worker", str(tmp_path / "p.db"), "--machine", TARGET,
                            "--once"], capture_output=True, text=True, env=env, timeout=300)
        assert p.returncode == 0 and "nothing to do" in p.stdout, (p.stdout, p.stderr)
        p = subprocess.run([sys.executable, "-m", "fsmtrain", "replay", str(tmp_path / "p.db")], capture_output=True,
                           text=True, env=env)
        assert sum(" pruned " in line for line in p.stdout.splitlines()) == len(pruned)
        with EventLog(tmp_path / "p.db", readonly=True) as log:
            assert {r: log.run(r).last_seq for r in before} == before  # the worker ran nothing
            assert log.verify() == []
            from fsmtrain.whatif import whatif

            result = whatif(log, ["max_epochs(2)"])
            assert {r.run_id for r in result.runs} == set(before)  # pruned trials included, marked
            assert {r.run_id for r in result.runs if r.status == "pruned"} == {r["run_id"] for r in pruned}

    def test_a_person_stopping_a_trial_ends_it_and_the_study_goes_on(self, tmp_path):
        """A trial run stopped from outside (fsmtrain stop) between its segments is not run again and shows as
        stopped (whatever ASHA would have decided at its rung); the study finishes the others."""
        from fsmtrain.runner import stop

        with EventLog(tmp_path / "s.db") as log:
            study = Study(log, TARGET, SPACE, n_trials=3, max_concurrent=1, seed=1, config={"max_epochs": 3},
                          scheduler=ASHA(grace_period=1, reduction_factor=2, max_t=3))

            class StopTheSecond:
                stopped = False

                def on_step_end(self, *, action, state, **kw):
                    trials = state["trials"]
                    # one trial at a time runs in this process: trial 1 has run its first segment, to its rung
                    if action == "propose" and len(trials) == 2 and log.run(trials[1]["run_id"]).status == "running":
                        stop(log, trials[1]["run_id"], reason="looks wrong", by="ann")
                        self.stopped = True

            stopper = StopTheSecond()

            study.hooks.append(stopper)
            runner = study.run(on_interrupt="raise")
            assert stopper.stopped
            rows = {r["trial"]: r for r in table(runner.state)}
            assert rows[1]["status"] == "stopped" and log.last_event(rows[1]["run_id"]).info["by"] == "ann"
            assert runner.status == "finished" and rows[0]["status"] != "stopped" and rows[2]["status"] != "stopped"

    @given(st.lists(st.floats(0.1, 10, allow_nan=False), min_size=1, max_size=8), st.integers(1, 8))
    def test_asha_can_compare_each_trials_best_so_far(self, values, at):
        """compare="best": a trial is judged by its best value up to the rung, not by one noisy epoch there."""
        asha = ASHA(max_t=20, compare="best")
        got = asha.value_at(values, at, "min")
        if len(values) < at:
            assert math.isnan(got)
        else:
            assert got == min(values[:at])
            assert ASHA(max_t=20).value_at(values, at, "min") == values[at - 1]
        with pytest.raises(InvalidDefinition, match="compare must be one of milestone, best"):
            ASHA(compare="worst")


class TestSpeedChoices:
    def test_one_trial_at_a_time_runs_in_this_process(self, tmp_path):
        """max_concurrent=1 starts no process: the trials run in the study's own process."""
        import multiprocessing

        with EventLog(tmp_path / "i.db") as log:
            before = len(multiprocessing.active_children())
            runner = Study(log, TARGET, SPACE, n_trials=2, max_concurrent=1, seed=2, config={"max_epochs": 2}).run()
            assert runner.state["summary"] == {"completed": 2}
            assert len(multiprocessing.active_children()) == before


@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=30, unique=True), st.integers(2, 5),
       st.sampled_from(["ceil", "floor"]))
def test_asha_keeps_the_count_its_rule_says_at_a_rung(values, factor, keep):
    """ceil(n / factor) of n distinct values go on, or the ASHA paper's and Optuna's max(floor(n / factor), 1)."""
    asha = ASHA(reduction_factor=factor, keep=keep)
    kept = [v for i, v in enumerate(values) if asha.keeps(v, values[:i] + values[i + 1:], mode="min")]
    n = len(values)
    assert len(kept) == (math.ceil(n / factor) if keep == "ceil" else max(n // factor, 1))
    assert sorted(kept) == sorted(values)[:len(kept)]
