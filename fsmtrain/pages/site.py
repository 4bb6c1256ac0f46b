"""Every page of one log in one object, :class:`Pages`, which the server (:mod:`fsmtrain.ui`) routes
requests to: the runs list, a run, compare and a study, each from its own module, on the shared
:class:`~fsmtrain.pages.layout.Layout`.
"""

from __future__ import annotations

from .compare import ComparePages
from .run import RunPages
from .runs import RunsPages
from .study import StudyPages

__all__ = ["Pages"]


class Pages(RunsPages, RunPages, ComparePages, StudyPages):
    """Builds each page of one log: ``Pages(log_path, token)``; ``readonly`` never offers to answer a gate."""
