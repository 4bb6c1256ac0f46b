"""The ``fsmtrain`` command's entry point: Ctrl-C is answered in one line from the very start.

Importing the command line takes a few hundred milliseconds; an interrupt in that time would
otherwise print a traceback.  Until a command runs (and takes over Ctrl-C), nothing has been
written, and that is what an interrupt says.
"""

from __future__ import annotations

import signal

from ._interrupt import early


def main() -> None:
    try:
        signal.signal(signal.SIGINT, early)
    except ValueError:  # not the main thread
        pass
    from .cli import main as cli

    cli()
