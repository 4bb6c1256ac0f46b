"""The ``fsmtrain`` command line: the click group ``main``, with every command registered on it.

Commands are thin wrappers that parse, call the library, and format; they live in this package's
modules, one per group of commands.  Library errors become one-line messages and stable exit codes,
never tracebacks.  ``replay`` and ``verify`` open the log read-only and never import code named in it.
"""

from __future__ import annotations

import click

from . import about, demo, gates, home, runs, ui, worker
from .common import _Group

__all__ = ["main"]


@click.group(cls=_Group)
@click.version_option(package_name="fsmtrain")
def main() -> None:
    """fsmtrain: machine-learning training as a resumable state machine.

    \b
    Example:
        fsmtrain demo --log runs.db && fsmtrain replay runs.db

    \b
    Exit codes:
        0    done
        1    an error: a run or event that does not exist, a run that is not
             in a state to do that, a failed run, a log that is not a log or
             fails verification, storage that is full or read-only
        2    a usage error or invalid input (nothing was written)
        3    a log that lost what its witness saw: `fsmtrain recover` continues
        4    another writer holds the run in its home (nothing more was sent)
        75   the run is done locally, but its home lacks the tail: `fsmtrain sync`
        130  interrupted (Ctrl-C); the message says what was kept
    """


for _command in (runs.replay, runs.verify, runs.whatif, runs.study, runs.watch, runs.plot, ui.ui, gates.input_,
                 gates.retry_, gates.stop_, gates.approve, gates.reject, worker.worker, about.graph, demo.demo,
                 about.doctor, home.recover, home.pull, home.sync):
    main.add_command(_command)
