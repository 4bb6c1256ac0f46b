"""What replay and whatif say in words: interruptions are processes that died (a gate is not one), and counts
take the right plural (issue 28, *Counting*)."""

from __future__ import annotations

import os
import subprocess
import sys

from fsmtrain import EventLog, Machine, Runner, action, append, give_input
from fsmtrain.stopping import max_epochs
from fsmtrain.whatif import _count, whatif
from tests.conftest import ROOT
from tests.machines import counter, gated


def replay(*args):
    return subprocess.run([sys.executable, "-m", "fsmtrain", "replay", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_gate_answered_and_resumed_is_not_an_interruption_but_a_process_that_died_is(tmp_path):
    path = tmp_path / "g.db"
    with EventLog(path) as log:
        r = Runner.start(gated(), log=log)
        assert r.run().reason == "waiting"
        r.close()
        give_input(log, r.run_id, {"decision": "go"}, by="ana")
        Runner.resume(gated(), log, r.run_id).run()
    p = replay(path, "--run", "1")
    assert p.returncode == 0 and "interruption" not in p.stdout.splitlines()[0], p.stdout
    with EventLog(path) as log:
        r = Runner.start(counter(6), log=log)
        r.run(max_steps=2)
        r.close()  # (as a killed process leaves it: no halt recorded)
        r = Runner.resume(counter(6), log, r.run_id)
        r.run(max_steps=1)
        r.close()
        Runner.resume(counter(6), log, r.run_id).run()
    p = replay(path, "--run", "2")
    assert "resumed after 2 interruptions" in p.stdout.splitlines()[0], p.stdout


@action(reads=["epoch"], writes=["epoch", "loss"])
def train(state):
    return {"epoch": state["epoch"] + 1, "loss": append(1.0 / (state["epoch"] + 1))}


@action(reads=["epoch"], writes=["wrapped"])
def wrapup(state):
    return {"wrapped": True}


@action(reads=[], writes=[])
def finish(state):
    return {}


def test_whatif_counts_in_words_and_names_the_stop_of_a_condition_followed_by_defaults(tmp_path):
    machine = Machine("m", [train, wrapup, finish],
                      [("train", "wrapup", max_epochs(3)), ("train", "train"), ("wrapup", "finish")],
                      entry="train", terminal=["finish"], initial={"epoch": 0, "loss": [], "wrapped": False})
    with EventLog(tmp_path / "c.db") as log:
        Runner.start(machine, log=log).run()
        text = whatif(log, ["max_epochs(2)", "max_epochs(9)"], metric="loss").to_text()
    assert "3 epochs, stopped by" in text and "no stop decision recorded" not in text, text
    assert "epochss" not in text and "did not fire in 3 epochs" in text, text
    assert _count(1, "epoch") == "1 epoch" and _count(207, "steps") == "207 steps"


def test_a_studys_bookkeeping_is_not_charted_as_a_metric(tmp_path):
    from fsmtrain.logview import metrics_of
    from fsmtrain.replay import state_at
    from fsmtrain.tune import ASHA, LogUniform, Study

    with EventLog(tmp_path / "s.db") as log:
        runner = Study(log, "tests.machines.trials:trainer", {"lr": LogUniform(0.01, 0.5)}, n_trials=2, max_concurrent=1,
                       seed=1, config={"max_epochs": 3}, scheduler=ASHA(max_t=3)).run()
        state = state_at(log, runner.run_id).to_dict()
    assert "milestones" in state and "running" in state
    assert not {"milestones", "running"} & set(metrics_of(state))


def test_a_metric_or_loss_that_raises_is_named_with_the_shapes_and_not_retried(tmp_path):
    """Issue 28: a metric failing on (B, T, V) outputs was retried three times, then the run was marked failed."""
    import pytest
    import torch

    from fsmtrain.errors import MetricError
    from fsmtrain.stopping import max_epochs
    from fsmtrain.train import Resources, Trainer, training_machine
    from tests.machines.training import tiny_build

    def broken(outputs, targets):
        return (outputs.argmax(dim=2) == targets).float().mean()  # (dim 2 does not exist for (N, C) outputs)

    machine = training_machine(max_epochs(2), name="tiny", initial={"lr": 0.01}, metrics={"acc": broken})
    with pytest.raises(MetricError, match=r"metric `acc` raised IndexError.*outputs of shape \(\d+, 3\).*targets of "
                                          r"shape \(\d+,\)"):
        Trainer(machine, tiny_build, log=tmp_path / "m.db").fit()
    with EventLog(tmp_path / "m.db", readonly=True) as log:
        kinds = [e.kind for e in log.events(1)]
    assert "error" not in kinds and "failed" not in kinds  # not retried, not a failed run: fix it and run again

    def eval_fails(state):  # a loss that trains but cannot be computed on the validation batches' shape
        r = tiny_build(state)
        return Resources(model=r.model, optimizer=r.optimizer, train_data=r.train_data, val_data=r.val_data,
                         batch_size=32, loss_fn=lambda out, y: torch.nn.functional.cross_entropy(out, y)
                         if out.shape[0] <= 32 else out.loss)  # (training batches: 32 and 16; validation: 48)
    with pytest.raises(MetricError, match=r"the loss \(Resources.loss_fn\) raised AttributeError.*outputs of shape "):
        Trainer(training_machine(max_epochs(1), name="t2", initial={"lr": 0.01}), eval_fails,
                log=tmp_path / "l.db").fit()
