"""A TensorBoard writer hook (needs the optional ``tensorboard`` package).

``Trainer(machine, build, log="runs.db", hooks=[TensorBoard("tb")])`` writes each
metric a step appends as a scalar (``val_loss``...) at its epoch, one folder per
run (``tb/run3``); ``tensorboard --logdir tb`` shows them.
"""

from __future__ import annotations

import os
from typing import Any

from ..hooks import Hook, step_metrics

__all__ = ["TensorBoard"]


class TensorBoard(Hook):
    external = True  # a live view others read: it shows only steps a power loss cannot take back

    def __init__(self, logdir: str | os.PathLike[str]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError(f"the TensorBoard hook needs tensorboard: pip install tensorboard ({e})") from None
        self._writer_class = SummaryWriter
        self.logdir = os.fspath(logdir)
        self._writers: dict[Any, Any] = {}

    def _writer(self, run_id: Any) -> Any:
        if run_id not in self._writers:
            self._writers[run_id] = self._writer_class(os.path.join(self.logdir, f"run{run_id}"))
        return self._writers[run_id]

    def on_step_end(self, *, run_id: int | None, step: int, state: Any, updates: dict[str, Any],
                    replayed: bool = False, **future_kwargs: Any) -> None:
        metrics = step_metrics(updates)
        if not metrics:
            return
        epoch = state.get("epoch") if hasattr(state, "get") else None
        w = self._writer(run_id)
        for k, values in metrics.items():
            for v in values:
                w.add_scalar(k, v, global_step=epoch if isinstance(epoch, int) else step)
        w.flush()

    def on_run_end(self, *, run_id: int | None, state: Any, status: str, **future_kwargs: Any) -> None:
        w = self._writers.pop(run_id, None)
        if w is not None:
            w.close()
