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

    try:
        cli()
    finally:
        # What the command did is said by now; a Ctrl-C during the interpreter's shutdown (when Python has put the
        # default handler back) would kill the process silently, so from here on it is ignored.
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        except ValueError:  # not the main thread
            pass
