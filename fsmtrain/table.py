"""Text from a log as a terminal may show it: :func:`safe` escapes control characters, :func:`table` lays rows
out as plain-text columns (what the command line and ``fsmtrain whatif`` print)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["safe", "table"]

_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x20), *range(0x7f, 0xa0)) if c not in (0x09, 0x0A)}


def safe(text: str) -> str:
    """Text from a log as a terminal may show it: control characters (escape sequences that would
    retitle the terminal, move the cursor or hide text) are written as ``\\xNN``; lone surrogates
    (bytes that were not UTF-8) as ``\\udcNN``."""
    out = text.translate(_CONTROL)
    try:
        out.encode("utf-8")
    except UnicodeEncodeError:
        out = out.encode("utf-8", "backslashreplace").decode("utf-8")
    return out


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows under headers in plain-text columns, each cell :func:`safe` and on one line."""
    cells = [[safe(str(c)).replace("\n", "\\n") for c in headers]] + \
        [[("" if c is None else safe(str(c)).replace("\n", "\\n")) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)
