"""Hooks for the experiment trackers people already use: :class:`MLflowLogger` (needs the optional ``mlflow``).

``Trainer(machine, build, log="runs.db", hooks=[MLflowLogger(tracking_uri="sqlite:///mlflow.db")])`` logs each
value a step records (a ``val_loss`` per evaluation, a ``train_loss`` per chunk or epoch) once, on the step axis
(the state's optimizer ``steps`` where it counts them, else the run's step), the run's settings as params, and,
on request, the best checkpoint as an artifact.  One MLflow run per fsmtrain run, found again by its tags when the
run resumes in another process, so a resumed run's curves continue in the same MLflow run and a step whose hooks
are delivered again after a crash (``replayed``) is not logged twice.

How the hooks map to Lightning's loggers: ``MLflowLogger`` is Lightning's ``MLFlowLogger``,
``fsmtrain.train.tensorboard.TensorBoard`` its ``TensorBoardLogger``, ``JsonlMetrics`` / ``CsvMetrics`` its
``CSVLogger``; each is a hook passed as ``Trainer(..., hooks=[...])`` and each sees only committed steps.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .hooks import Hook, step_metrics
from .state import Ref

__all__ = ["MLflowLogger"]


class MLflowLogger(Hook):
    """Log a run's metrics, settings and (with ``log_best=True`` and ``artifacts``, the folder its checkpoints are
    in: ``trainer.artifacts``) its best checkpoint to MLflow.

    ``tracking_uri`` (default: MLflow's own, ``$MLFLOW_TRACKING_URI``) — recent MLflow refuses a bare file store;
    ``sqlite:///mlflow.db`` is the simplest local one.  ``experiment`` is created when missing.
    """

    external = True  # (a view others read: it shows only steps a power loss cannot take back)

    def __init__(self, tracking_uri: str | None = None, experiment: str = "fsmtrain", *, log_best: bool = False,
                 artifacts: str | os.PathLike[str] | None = None, run_name: str | None = None) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ImportError("MLflowLogger needs mlflow: pip install \"fsmtrain[mlflow]\" (or pip install mlflow)") \
                from None
        if log_best and artifacts is None:
            raise ValueError("log_best=True needs artifacts=, the folder the checkpoints are in (trainer.artifacts)")
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment = experiment
        self.log_best = log_best
        self.artifacts = None if artifacts is None else Path(artifacts)
        self.run_name = run_name
        self._runs: dict[Any, str] = {}  # fsmtrain run -> MLflow run id

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return str(found.experiment_id)
        return str(self.client.create_experiment(self.experiment))

    def _run(self, run_id: Any) -> str:
        """The MLflow run of fsmtrain run ``run_id``: the one tagged with it, else a new one."""
        if run_id not in self._runs:
            exp = self._experiment_id()
            found = self.client.search_runs([exp], filter_string=f"tags.fsmtrain_run = '{run_id}'", max_results=1)
            if found:
                self._runs[run_id] = found[0].info.run_id
            else:
                made = self.client.create_run(exp, tags={"fsmtrain_run": str(run_id)},
                                              run_name=self.run_name or f"run {run_id}")
                self._runs[run_id] = made.info.run_id
        return self._runs[run_id]

    def on_run_start(self, *, run_id: int | None, state: Any, **future_kwargs: Any) -> None:
        from mlflow.entities import Param

        run = self._run(run_id)
        data = state.to_dict() if hasattr(state, "to_dict") else dict(state)
        params = [Param(str(k)[:250], str(v)[:6000]) for k, v in sorted(data.items())
                  if isinstance(v, (str, int, float, bool)) or v is None]
        if params:
            self.client.log_batch(run, params=params)

    def on_step_end(self, *, run_id: int | None, step: int, state: Any, updates: dict[str, Any],
                    replayed: bool = False, **future_kwargs: Any) -> None:
        metrics = step_metrics(updates)
        if not metrics:
            return
        from mlflow.entities import Metric

        run = self._run(run_id)
        steps = state.get("steps") if hasattr(state, "get") else None
        at = steps if isinstance(steps, int) and not isinstance(steps, bool) else step
        out: list[Any] = []
        for k, values in metrics.items():
            if replayed and any(m.step == at for m in self.client.get_metric_history(run, k)):
                continue  # (the process before this one logged it before it died)
            out.extend(Metric(k, float(v), 0, at) for v in values)
        if out:
            self.client.log_batch(run, metrics=out)

    def on_run_end(self, *, run_id: int | None, state: Any, status: str, **future_kwargs: Any) -> None:
        run = self._run(run_id)
        if self.log_best and self.artifacts is not None:
            best = state.get("best") if hasattr(state, "get") else None
            ref = best.get("checkpoint") if best is not None and hasattr(best, "get") else None
            if isinstance(ref, Ref) and (self.artifacts / ref.path).is_file():
                self.client.log_artifact(run, str(self.artifacts / ref.path), artifact_path="best")
        self.client.set_terminated(run, status="FINISHED" if status in ("step", "finished") else "FAILED"
                                   if status == "failed" else "KILLED")
