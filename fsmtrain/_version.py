"""fsmtrain's version, in a module of its own: importing it imports nothing else of the package."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
