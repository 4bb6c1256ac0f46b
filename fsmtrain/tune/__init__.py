"""Hyperparameter search as a state machine: spaces, samplers, schedulers, and the study.

::

    Study("runs.db", "mypkg.train:trainer", {"lr": LogUniform(1e-4, 1e-1)}, n_trials=20,
          max_concurrent=2, scheduler=ASHA(max_t=27)).run()

See ``spec/tuning.md``.
"""

from __future__ import annotations

from .samplers import GridSampler, OptunaSampler, RandomSampler
from .schedulers import ASHA, MedianStopping, NoScheduler
from .space import Choice, IntRange, LogUniform, Space, Uniform
from .study import InlineExecutor, Study, Trial, table, trials_of

__all__ = [
    "ASHA",
    "Choice",
    "GridSampler",
    "InlineExecutor",
    "IntRange",
    "LogUniform",
    "MedianStopping",
    "NoScheduler",
    "OptunaSampler",
    "RandomSampler",
    "Space",
    "Study",
    "Trial",
    "Uniform",
    "table",
    "trials_of",
]
