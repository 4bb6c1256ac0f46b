"""Code the operator names on the command line (``MODULE:ATTR``, never taken from a log): importing it,
checking its type before anything is called, and calling it with its errors made clear.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from ..errors import FsmtrainError, InvalidDefinition
from ..log import EventLog
from .common import _short

__all__ = ["_calling", "_cwd_on_path", "import_target", "load_machine"]


def load_machine(target: str) -> Any:
    """The Machine ``module:attr`` names (the operator names it; never taken from a log).

    The object must be a Machine, a function that builds one (called with no argument), or a
    worker target (a function taking the log, e.g. returning a Trainer: called with a throwaway
    log in a temporary folder, so nothing is created beside you).  Its type is checked before
    anything is called: ``os:system`` is refused, not run.
    """
    import tempfile

    from ..machine import Machine

    obj = import_target(target)
    if isinstance(obj, Machine):
        return obj
    params = _plain_function(obj, target)
    with _calling(target):
        if params == 0 and not _takes_log(obj):
            made = obj()
        else:
            with tempfile.TemporaryDirectory(prefix="fsmtrain-graph-") as scratch:
                log = EventLog(Path(scratch) / "graph.db")
                try:
                    made = obj(log)
                    made = getattr(made, "machine", made)
                finally:
                    log.close()
    if not isinstance(made, Machine):
        raise InvalidDefinition(target, [f"gave a {type(made).__name__}, not an fsmtrain Machine"])
    return made


@contextlib.contextmanager
def _calling(target: str) -> Iterator[None]:
    """Calling the operator's function: whatever it raises is a clear error naming it."""
    try:
        yield
    except (FsmtrainError, click.ClickException):
        raise
    except Exception as e:
        raise InvalidDefinition(target, [f"raised {type(e).__name__} when called: {_short(str(e), 200)}"]) from None


def _takes_log(fn: Any) -> bool:
    """Whether ``fn`` has a parameter named ``log`` (a worker target such as ``def trainer(log="x.db")``)."""
    import inspect

    return "log" in inspect.signature(fn).parameters


def _plain_function(obj: Any, target: str) -> int:
    """How many arguments the Python function ``obj`` needs (0 or 1); anything else is refused unrun."""
    import inspect

    if not (inspect.isfunction(obj) or inspect.ismethod(obj)):
        raise InvalidDefinition(target, [
            f"is a {type(obj).__name__}, not an fsmtrain Machine or a Python function returning one "
            "(e.g. fsmtrain.train.demo:machine)"])
    required = [p for p in inspect.signature(obj).parameters.values()
                if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(required) > 1:
        raise InvalidDefinition(target, [f"is a function needing {len(required)} arguments; name a Machine, a "
                                         "function of no argument returning one, or a function taking the log"])
    return len(required)


def import_target(target: str) -> Any:
    """The object ``module:attr`` names (imported from the operator's command line, never from a log).

    The current folder is on the import path, as for ``python -m``.
    """
    mod_name, sep, attr = target.partition(":")
    if not sep or not mod_name or not attr or not all(p.isidentifier() for p in mod_name.split(".")) \
            or not all(p.isidentifier() for p in attr.split(".")):
        raise click.BadParameter(f"{target!r} must be MODULE:ATTR, e.g. fsmtrain.train.demo:machine")
    _cwd_on_path()
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise click.BadParameter(f"cannot import module {mod_name!r}: {e}") from None
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise click.BadParameter(f"module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _cwd_on_path() -> None:
    if "" not in sys.path and "." not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, "")
