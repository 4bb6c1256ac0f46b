"""Metric curves as a plain SVG image, drawn by us (no plotting library, nothing fetched).

>>> svg = curves({"val_loss": [1.0, 0.5, 0.25]}, title="run 1")
>>> svg.startswith("<svg") and svg.count("<circle") == 3
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

__all__ = ["curves"]

COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"]


def curves(series: Mapping[str, Sequence[float]], *, title: str = "", width: int = 640, height: int = 360,
           xlabel: str = "evaluation") -> str:
    """An SVG line chart of each series against its index (1, 2, ...); non-finite points are left out.

    Each point is a ``<circle>`` whose ``<title>`` is ``"<name> <index>: <value>"`` (hover to read it).
    """
    left, right, top, bottom = 64, 16, 28 if title else 12, 40
    finite = [v for vs in series.values() for v in vs if isinstance(v, (int, float)) and math.isfinite(v)]
    n = max((len(vs) for vs in series.values()), default=0)
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    pw, ph = width - left - right, height - top - bottom

    def x(i: int) -> float:
        return left + (pw * (i - 1) / (n - 1) if n > 1 else pw / 2)

    def y(v: float) -> float:
        return top + ph * (hi - v) / (hi - lo)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>']
    if title:
        out.append(f'<text x="{left}" y="18" font-size="13">{escape(title)}</text>')
    out.append(f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#444"/>')
    out.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#444"/>')
    for v in (lo, (lo + hi) / 2, hi):
        out.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.4g}</text>')
        out.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{left + pw}" y2="{y(v):.1f}" stroke="#eee"/>')
    for i in sorted({1, n, (n + 1) // 2}) if n else []:
        out.append(f'<text x="{x(i):.1f}" y="{top + ph + 16}" text-anchor="middle">{i}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle">{escape(xlabel)}</text>')
    for k, (name, values) in enumerate(series.items()):
        color = COLORS[k % len(COLORS)]
        pts = [(i + 1, v) for i, v in enumerate(values) if isinstance(v, (int, float)) and math.isfinite(v)]
        if len(pts) > 1:
            coords = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in pts)
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{coords}" '
                       f'data-metric="{escape(name)}"/>')
        for i, v in pts:
            out.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" fill="{color}">'
                       f'<title>{escape(name)} {i}: {v!r}</title></circle>')
        out.append(f'<text x="{left + pw - 4}" y="{top + 14 + 14 * k}" text-anchor="end" fill="{color}">'
                   f'{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
