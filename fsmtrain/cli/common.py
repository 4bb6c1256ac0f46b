"""What every command shares: option types, the group that maps errors to one line and an exit code,
how text from a log is echoed (escaped), JSON printing, and opening an existing log to write to.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import click

from .._interrupt import early
from ..errors import FsmtrainError
from ..log import MAX_ID, EventLog
from ..state import dumps, thaw
from ..table import safe

__all__ = ["FINITE_POSITIVE", "RUN_ID", "SEQ", "Finite", "_Group", "_existing_log", "_print_json", "_short", "_when",
           "echo", "home_option", "kept"]


class _Id(click.IntRange):
    """A whole number written in ASCII digits (Python's int() also reads other scripts' digits, as in `--run ١`;
    the page accepts only ASCII, and so does the command line)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.isascii():
            self.fail(f"{value!r} is not a whole number written with the digits 0-9", param, ctx)
        return super().convert(value, param, ctx)


RUN_ID = _Id(1, MAX_ID)
"""A run id on the command line: a whole number SQLite can hold (larger ones are refused cleanly)."""
SEQ = _Id(1, MAX_ID)


class Finite(click.ParamType):  # type: ignore[type-arg]  # (generic only since click 8.2)
    """A finite number in a range (click's FloatRange lets NaN through: every comparison with it is false)."""

    name = "float"

    def __init__(self, low: float, high: float = float("inf"), *, low_open: bool = False) -> None:
        self.low, self.high, self.low_open = low, high, low_open

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        inside = (number > self.low if self.low_open else number >= self.low) and number <= self.high
        if not (inside and abs(number) != float("inf")):
            low = f"> {self.low:g}" if self.low_open else f">= {self.low:g}"
            high = f" and <= {self.high:g}" if self.high != float("inf") else ""
            self.fail(f"{value!r} is not a finite number {low}{high}", param, ctx)
        return number


FINITE_POSITIVE = Finite(0, low_open=True)

_KEPT = "fsmtrain.kept"


def kept(what: str) -> None:
    """Say what a command has committed so far: an interrupt (Ctrl-C) then reports it instead of 'nothing'."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.find_root().meta[_KEPT] = what


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            if signal.getsignal(signal.SIGINT) is early:
                signal.signal(signal.SIGINT, signal.default_int_handler)  # the command answers Ctrl-C from here
        except ValueError:  # not the main thread
            pass
        try:
            return super().invoke(ctx)
        except FsmtrainError as e:
            echo(f"Error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            what = ctx.meta.get(_KEPT, "nothing was written")
            echo(f"\ninterrupted: {what}", err=True)
            ctx.exit(130)
        except sqlite3.DatabaseError as e:
            echo(f"Error: SQLite: {e}", err=True)
            ctx.exit(1)
        except OSError as e:
            where = f" ({e.filename})" if getattr(e, "filename", None) else ""
            echo(f"Error: {e.strerror or e}{where}", err=True)
            ctx.exit(1)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as e:  # a bug of ours: one line, and how to see more
            if os.environ.get("FSMTRAIN_DEBUG"):
                raise
            echo(f"Error: internal error: {type(e).__name__}: {_short(str(e), 300)} "
                       "(set FSMTRAIN_DEBUG=1 for the traceback, and please report it)", err=True)
            ctx.exit(1)


def _when(t: Any) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
    except (TypeError, ValueError, OverflowError, OSError):
        return f"time {_short(repr(t), 30)}"


def _short(value: Any, width: int = 60) -> str:
    try:
        text = value if isinstance(value, str) else dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"




def echo(text: str = "", *, err: bool = False, nl: bool = True) -> None:
    """``click.echo`` for anything that may hold text from a log (see :func:`safe`)."""
    click.echo(safe(text), err=err, nl=nl)


def _print_json(obj: Any) -> None:
    echo(json.dumps(obj, default=lambda o: thaw(o) if not hasattr(o, "to_json") else o.to_json(),
                          allow_nan=True, ensure_ascii=False))


def _existing_log(path: Path, home: str | None = None, home_timeout: float | None = None) -> EventLog:
    """Open an existing log to write to; a missing or empty file is an error, never a new empty log, and
    nothing is written to it (not even its journal mode) unless the command does write.  With a ``home``, a
    log this machine lacks is first pulled from it (a new machine)."""
    if not os.path.lexists(path) and home is None:
        raise click.BadParameter(f"{path} does not exist", param_hint="LOG")
    return EventLog(path, create=False, home=home, home_timeout=home_timeout)


def _export_home(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--home``: also given to the processes this command starts (torchrun's ranks, a study's workers)."""
    if value is not None and not value.strip():
        raise click.BadParameter("is empty: give a directory or a URL such as s3://bucket/prefix")
    if value:
        os.environ["FSMTRAIN_HOME"] = value
    return value or None


home_option = click.option(
    "--home", envvar="FSMTRAIN_HOME", metavar="DIR|URL", callback=_export_home,
    help="The run's home: a shared directory (NFS, Lustre, a mounted volume) or a URL (s3://bucket/prefix, through "
         "fsspec) that receives the log's events and checkpoints at each barrier; the same command on another "
         "machine continues from it. Default: $FSMTRAIN_HOME.")
"""The ``--home`` option of every command that writes."""
