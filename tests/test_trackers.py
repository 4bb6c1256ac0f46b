"""The MLflow hook against a real local tracking store (sqlite): each recorded value once, on the step axis,
settings as params, the best checkpoint as an artifact, and a resumed run continuing the same MLflow run."""

from __future__ import annotations

import pytest

from fsmtrain import EventLog, MLflowLogger, state_at
from fsmtrain.train import Trainer
from tests.machines.training import tiny_build, tiny_machine

mlflow = pytest.importorskip("mlflow", reason="the optional `mlflow` extra (installed by CI)")


def test_metrics_params_and_the_best_checkpoint_reach_mlflow_once_even_across_a_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    monkeypatch.chdir(tmp_path)  # (a sqlite store keeps artifacts in ./mlruns: here, not in the checkout)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = tmp_path / "runs.db"
    hook = MLflowLogger(tracking_uri=uri, experiment="tiny")
    with Trainer(tiny_machine(4), tiny_build, log=log, hooks=[hook]) as t:
        runner = t.start({})
        with runner:
            runner.step()
            runner.step()
            runner.step()
    second = MLflowLogger(tracking_uri=uri, experiment="tiny", log_best=True, artifacts=f"{log}.artifacts")
    with Trainer(tiny_machine(4), tiny_build, log=log, hooks=[second]) as t:  # (another process, say)
        state = t.fit().state
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["fsmtrain_run"] == "1" and runs[0].info.status == "FINISHED"
    run = runs[0].info.run_id
    history = client.get_metric_history(run, "val_loss")
    assert [m.value for m in history] == pytest.approx(list(state["val_loss"]))  # each value once, in order
    assert [m.step for m in history] == sorted({m.step for m in history})  # on the (optimizer) step axis
    assert runs[0].data.params["lr"] == "0.01"
    best = state["best"]["checkpoint"]
    assert [a.path for a in client.list_artifacts(run, "best")] == [f"best/{best.path.rsplit('/', 1)[-1]}"]
    with EventLog(log, readonly=True) as lg:
        assert state_at(lg, 1)["epoch"] == 4


def test_without_mlflow_the_import_works_and_the_hook_says_what_to_install(monkeypatch):
    import sys

    import fsmtrain

    assert fsmtrain.MLflowLogger is MLflowLogger
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(ImportError, match=r"pip install \"fsmtrain\[mlflow\]\""):
        MLflowLogger()
