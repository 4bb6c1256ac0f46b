"""Processes that die with the process that made them: a torchrun worker with torchrun, a DataLoader worker with
its training process, so that a SIGKILLed parent leaves no child holding the log, its lock or the witness open."""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
from collections.abc import Callable

__all__ = ["die_with_parent", "loader_worker_init"]


def die_with_parent(parent: int | None = None) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux ``PR_SET_PDEATHSIG``; elsewhere nothing);
    exit at once if the parent (``parent``, default: the current one) is already gone."""
    if not sys.platform.startswith("linux"):
        return
    expected = os.getppid() if parent is None else parent
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != expected:  # the parent was gone before the call took effect
        os._exit(1)


def _init(user: Callable[[int], None] | None, parent: int, worker_id: int) -> None:
    die_with_parent(parent)
    if user is not None:
        user(worker_id)


def loader_worker_init(user: Callable[[int], None] | None = None) -> Callable[[int], None]:
    """A DataLoader ``worker_init_fn``: the worker dies with the process that made the loader, then ``user`` (the
    caller's own ``worker_init_fn``, if any) runs.  Picklable, for any start method."""
    return functools.partial(_init, user, os.getpid())
