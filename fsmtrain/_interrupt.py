"""The Ctrl-C handler in force until a command runs: one line saying nothing was written, exit 130.

The entry point installs it before importing the command line; the command line recognises it (and takes
Ctrl-C over) when a command starts.  A module of its own so that neither imports the other.
"""

from __future__ import annotations

import os
import sys

__all__ = ["early"]


def early(signum: int, frame: object) -> None:
    sys.stderr.write("\ninterrupted: nothing was written\n")
    sys.stderr.flush()
    os._exit(130)
