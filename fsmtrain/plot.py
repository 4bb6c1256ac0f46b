"""Charts and the machine graph as plain SVG, drawn by us (no plotting library, nothing fetched).

Everything is built with :func:`fsmtrain.markup.h`, so every text that came from a log is escaped.
Series differ by more than colour: each has its own dash pattern and marker shape.

>>> svg = curves({"val_loss": [1.0, 0.5, 0.25]}, title="run 1")
>>> svg.startswith("<svg") and svg.count("<circle") == 3
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from .markup import Markup, h

__all__ = ["GREY", "PALETTE", "Axis", "Line", "Series", "chart", "curves", "graph_legend", "graph_svg", "is_number",
           "parallel"]

# Text in these colours has a contrast of at least 5:1 on white (WCAG AA asks 4.5:1).
PALETTE = ["#1d4ed8", "#b91c1c", "#15803d", "#7e22ce", "#c2410c", "#0e7490", "#be185d", "#92400e"]
DASHES = ["", "7 3", "2 3", "9 3 2 3", "14 4", "4 2 1 2", "1 4", "10 2"]
MARKERS = ["circle", "square", "triangle", "diamond"]
GREY = "#a3a3a3"  # background series (lines only; their text is drawn in TEXT_GREY)
TEXT_GREY = "#666666"
COLORS = PALETTE  # (the name before 0.2)
MAX_TITLED = 2000  # a series drawn with every point titled (``point_titles=None``) up to this long
POINT_TITLES = 150  # series up to this long get a hover title per point; longer ones sparse markers only


def is_number(v: Any) -> bool:
    """A finite int or float (not a bool): what a chart can place."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class Series(NamedTuple):
    """One line of a chart: ``style`` picks colour, dash and marker (``-1``: grey, in the background)."""

    label: str
    values: Sequence[Any]
    style: int = 0
    faint: bool = False  # drawn thin and light (the raw values under a smoothed line)
    xs: Sequence[int] | None = None  # each value's place on the x axis (e.g. the optimizer step); None: 1, 2, ...


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = hi - lo
    if not span > 0 or not math.isfinite(span):
        return [lo]
    raw = span / max(1, n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    out: list[float] = []
    v = first
    while v <= hi + step * 1e-9 and len(out) < 12:
        out.append(0.0 if abs(v) < step * 1e-9 else v)
        v += step
    return out or [lo]


def _marker(kind: str, x: float, y: float, color: str, r: float = 3.0, title: str | None = None,
            hollow: bool = False) -> Markup:
    fill = "white" if hollow else color
    t = h("title", title) if title is not None else None
    common = {"fill": fill, "stroke": color, "stroke_width": 1.2}
    if kind == "square":
        return h("rect", t, x=f"{x - r:.1f}", y=f"{y - r:.1f}", width=f"{2 * r:.1f}", height=f"{2 * r:.1f}", **common)
    if kind == "triangle":
        pts = f"{x:.1f},{y - r * 1.2:.1f} {x + r * 1.1:.1f},{y + r * .8:.1f} {x - r * 1.1:.1f},{y + r * .8:.1f}"
        return h("polygon", t, points=pts, **common)
    if kind == "diamond":
        pts = f"{x:.1f},{y - r * 1.3:.1f} {x + r * 1.1:.1f},{y:.1f} {x:.1f},{y + r * 1.3:.1f} {x - r * 1.1:.1f},{y:.1f}"
        return h("polygon", t, points=pts, **common)
    return h("circle", t, cx=f"{x:.1f}", cy=f"{y:.1f}", r=f"{r:.1f}", **common)


def _style(style: int) -> tuple[str, str, str]:
    if style < 0:
        return GREY, "", "circle"
    return PALETTE[style % len(PALETTE)], DASHES[style % len(DASHES)], MARKERS[style % len(MARKERS)]


def _envelope(pts: list[tuple[int, float]], columns: float) -> list[tuple[int, float]]:
    """``pts`` (in index order) thinned to what ``columns`` pixel columns can show: for each column, its first,
    lowest, highest and last point, in order; the whole list when it is short enough already."""
    n_cols = max(1, int(columns))
    if len(pts) <= 4 * n_cols:
        return pts
    first, last = pts[0][0], pts[-1][0]
    span = max(1, last - first)
    out: list[tuple[int, float]] = []
    bucket: list[tuple[int, float]] = []
    col = 0
    for p in pts:
        c = min(n_cols - 1, (p[0] - first) * n_cols // span)
        if c != col and bucket:
            out.extend(_corners(bucket))
            bucket = []
        col = c
        bucket.append(p)
    if bucket:
        out.extend(_corners(bucket))
    return out


def _corners(bucket: list[tuple[int, float]]) -> list[tuple[int, float]]:
    lo = min(bucket, key=lambda p: p[1])
    hi = max(bucket, key=lambda p: p[1])
    return sorted({bucket[0], lo, hi, bucket[-1]})


def chart(series: Sequence[Series], *, title: str = "", ylabel: str = "", xlabel: str = "evaluation",
          log: bool = False, best: str | None = None, mark_x: float | None = None, mark_label: str = "",
          width: int = 600, height: int = 270, legend: bool = True, chart_id: str | None = None,
          point_titles: int | None = POINT_TITLES) -> Markup:
    """A line chart of each series against its index (1, 2, ...), or its ``xs`` where it has them (a step axis),
    with its own labelled axes.

    Non-numbers and non-finite values are left out (and, with ``log``, values <= 0).  ``best``
    (``"min"`` or ``"max"``) marks each coloured series' best point; ``mark_x`` draws a
    vertical line at that x (an event the page points at).  Points of short series carry
    a hover ``<title>`` ``"<label> <index>: <value>"`` (with ``xs``: ``"<label> at <xlabel> <x>: <value>"``;
    series up to ``point_titles`` long; None: all).
    """
    left, right, top, bottom = 70, 14, 26 if title else 10, 44
    shown = [s for s in series if not s.faint and s.style >= 0][:16] if legend else []
    if len(shown) < 2:
        shown = []
    base = height  # the legend goes under the chart, two entries a row
    height += 16 * math.ceil(len(shown) / 2) + (6 if shown else 0)
    pw, ph = width - left - right, base - top - bottom
    placed: list[list[tuple[int, float]]] = []
    dropped = 0
    for s in series:
        pts = []
        xs = s.xs if s.xs is not None and len(s.xs) == len(s.values) else range(1, len(s.values) + 1)
        for xv, v in zip(xs, s.values, strict=True):
            if is_number(v) and (not log or v > 0):
                pts.append((int(xv), float(v)))
            elif not s.faint:
                dropped += 1
        placed.append(pts)
    ys = [math.log10(v) if log else v for pts in placed for _, v in pts]
    stepped = any(s.xs is not None and len(s.xs) == len(s.values) for s in series)
    x0, n = 1, max((len(s.values) for s in series), default=0)
    if stepped:  # the axis spans the x values drawn
        every_x = [xv for pts in placed for xv, _ in pts]
        x0, n = (min(every_x), max(every_x)) if every_x else (1, 0)
    lo, hi = (min(ys), max(ys)) if ys else (0.0, 1.0)
    if hi == lo:
        lo, hi = lo - (abs(lo) * 0.1 or 0.5), hi + (abs(hi) * 0.1 or 0.5)
    pad = (hi - lo) * 0.04
    lo, hi = lo - pad, hi + pad

    def x(i: float) -> float:
        return left + (pw * (i - x0) / (n - x0) if n > x0 else pw / 2)

    def y(v: float) -> float:
        u = math.log10(v) if log else v
        return top + ph * (hi - u) / (hi - lo)

    out: list[Any] = [h("rect", width=width, height=height, fill="white")]
    if title:
        out.append(h("text", title, x=left, y=17, font_size=13, font_weight="bold", fill="#1f2937"))
    out.append(h("line", x1=left, y1=top + ph, x2=left + pw, y2=top + ph, stroke="#444"))
    out.append(h("line", x1=left, y1=top, x2=left, y2=top + ph, stroke="#444"))
    if log:
        ticks = [10.0 ** k for k in range(math.ceil(lo), math.floor(hi) + 1)]
        if len(ticks) < 2:
            ticks = [10 ** lo, 10 ** ((lo + hi) / 2), 10 ** hi]
    else:
        ticks = _nice_ticks(lo, hi)
    for t in ticks:
        ty = y(t)
        out.append(h("line", x1=left, y1=f"{ty:.1f}", x2=left + pw, y2=f"{ty:.1f}", stroke="#e5e5e5"))
        out.append(h("text", _fmt(t), x=left - 6, y=f"{ty + 4:.1f}", text_anchor="end", fill="#444"))
    xticks: set[float] = {float(x0), float(n), *(_nice_ticks(x0, n, 6) if n > x0 + 1 else [])} if n else set()
    close = [t for t in xticks if t not in (n, x0) and (n - t < (n - x0) / 12 or t - x0 < (n - x0) / 12)]
    xticks -= set(close)  # a nice tick crowding the first or the last one
    for xt in sorted(xticks):
        if float(xt).is_integer() and x0 <= xt <= n:
            out.append(h("text", int(xt), x=f"{x(xt):.1f}", y=top + ph + 15, text_anchor="middle", fill="#444"))
    out.append(h("text", xlabel, x=f"{left + pw / 2:.0f}", y=base - 8, text_anchor="middle", fill="#444"))
    if ylabel:
        room = max(8, int(ph / 7))
        label = ylabel if len(ylabel) <= room else ylabel[: room - 1] + "…"
        out.append(h("text", label + (" (log)" if log else ""), x=14, y=f"{top + ph / 2:.0f}", text_anchor="middle",
                     fill="#444", transform=f"rotate(-90 14 {top + ph / 2:.0f})", class_="ylabel"))
    if mark_x is not None and n and x0 <= mark_x <= n:
        mx = x(mark_x)
        out.append(h("line", h("title", mark_label), x1=f"{mx:.1f}", y1=top, x2=f"{mx:.1f}", y2=top + ph,
                     stroke="#92400e", stroke_width=1.5, stroke_dasharray="4 3", class_="at-mark"))
        if mark_label:
            out.append(h("text", mark_label, x=f"{min(mx + 4, left + pw - 4):.1f}", y=top + 12,
                         text_anchor="start" if mx + 80 < left + pw else "end", fill="#92400e"))
    order = sorted(range(len(series)), key=lambda k: (series[k].style >= 0, not series[k].faint))  # grey first
    for k in order:
        s, every_pt = series[k], placed[k]
        pts = _envelope(every_pt, pw)  # (what a pixel column can show: a million points draw as a few thousand)
        color, dash, marker = _style(s.style)
        if s.faint:
            color, dash = "#c4c4c4" if s.style < 0 else color, ""
        if len(pts) > 1:
            out.append(h("polyline", h("title", s.label), fill="none", stroke=color,
                         stroke_width=1 if s.faint or s.style < 0 else 2, stroke_dasharray=dash or None,
                         stroke_opacity=0.35 if s.faint else None,
                         points=" ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in pts), data_series=s.label))
        if s.faint:
            continue
        if (point_titles is None and len(pts) == len(every_pt) <= MAX_TITLED) or \
                (point_titles is not None and len(pts) <= point_titles):
            where = f" at {xlabel} " if stepped else " "
            out.extend(_marker(marker, x(i), y(v), color, 2.5 if s.style >= 0 else 1.5, f"{s.label}{where}{i}: {v!r}")
                       for i, v in pts)
        else:
            every = max(1, len(pts) // 12)
            out.extend(_marker(marker, x(i), y(v), color) for i, v in pts[::every])
        if best in ("min", "max") and every_pt and s.style >= 0:
            bi, bv = (min if best == "min" else max)(every_pt, key=lambda p: p[1])
            out.append(h("g", _marker(marker, x(bi), y(bv), color, 6.0, f"best of {s.label}: {bv!r} at {bi}",
                                      hollow=True), class_="best", data_index=bi, data_value=repr(bv)))
    if shown:  # below the axes: it never hides a point
        for j, s in enumerate(shown):
            color, dash, marker = _style(s.style)
            ly = base + 16 * (j // 2) + 12
            lx = left + (pw / 2) * (j % 2)
            out.append(h("line", x1=f"{lx:.0f}", y1=ly - 4, x2=f"{lx + 24:.0f}", y2=ly - 4, stroke=color, stroke_width=2,
                         stroke_dasharray=dash or None))
            out.append(_marker(marker, lx + 12, ly - 4, color))
            out.append(h("text", s.label[:60], x=f"{lx + 30:.0f}", y=ly, fill=color, class_="legend"))
    if dropped and log:
        out.append(h("text", f"{dropped} value(s) <= 0 or not finite left out", x=left + 6, y=top + ph - 6, fill="#444"))
    elif dropped:
        out.append(h("text", f"{dropped} value(s) not finite left out", x=left + 6, y=top + ph - 6, fill="#444"))
    return h("svg", out, xmlns="http://www.w3.org/2000/svg", width=width, height=height,
             viewBox=f"0 0 {width} {height}", font_family="sans-serif", font_size=12, class_="chart", id=chart_id,
             role="img", aria_label=f"{title or ylabel}: line chart")


def curves(series: Mapping[str, Sequence[float]], *, title: str = "", width: int = 640, height: int = 360,
           xlabel: str = "evaluation", xs: Mapping[str, Sequence[int]] | None = None) -> str:
    """An SVG line chart of each series against its index (1, 2, ...), or against ``xs[name]`` where given (then
    ``xlabel`` names that axis, e.g. ``"step"``); non-finite points are left out.

    Each point is marked (a ``<circle>``, a square, ... per series) with a ``<title>``
    ``"<name> <index>: <value>"`` (hover to read it).  (``fsmtrain plot``'s image.)
    """
    lines = [Series(str(name), list(values), k, xs=(xs or {}).get(name))
             for k, (name, values) in enumerate(series.items())]
    svg = chart(lines, title=title, xlabel=xlabel, width=width, height=height, point_titles=None,
                ylabel=lines[0].label if len(lines) == 1 else "")
    return svg + "\n"


# -- parallel coordinates ------------------------------------------------------------------------------
class Axis(NamedTuple):
    """One vertical axis: ``kind`` is ``"num"``, ``"log"`` or ``"cat"`` (``categories`` in order)."""

    name: str
    kind: str = "num"
    categories: tuple[str, ...] = ()


class Line(NamedTuple):
    """One trial across the axes (``None`` where it has no value); ``style`` as in :class:`Series`."""

    label: str
    values: Sequence[Any]
    style: int = -1
    dashed: bool = False


def parallel(axes: Sequence[Axis], lines: Sequence[Line], *, width: int = 720, height: int = 300,
             title: str = "") -> Markup:
    """Parallel coordinates: one axis per parameter (and the metric last), one polyline per trial."""
    left, right, top, bottom = 40, 70, 50 if title else 26, 30
    pw, ph = width - left - right, height - top - bottom
    n = len(axes)

    def ax_x(j: int) -> float:
        return left + (pw * j / (n - 1) if n > 1 else pw / 2)

    scales: list[Any] = []
    for j, a in enumerate(axes):
        if a.kind == "cat":
            cats = list(a.categories)
            scales.append(("cat", cats))
            continue
        vals = [float(ln.values[j]) for ln in lines if j < len(ln.values) and is_number(ln.values[j])
                and (a.kind != "log" or ln.values[j] > 0)]
        if a.kind == "log":
            vals = [math.log10(v) for v in vals]
        lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
        scales.append((a.kind, (lo, hi)))

    def pos(j: int, v: Any) -> float | None:
        kind, sc = scales[j]
        if kind == "cat":
            key = str(v)
            if key not in sc:
                return None
            k = sc.index(key)
            return float(top + ph * (1 - (k + 0.5) / len(sc)))
        if not is_number(v) or (kind == "log" and v <= 0):
            return None
        u = math.log10(v) if kind == "log" else float(v)
        lo, hi = sc
        return float(top + ph * (hi - u) / (hi - lo))

    out: list[Any] = [h("rect", width=width, height=height, fill="white")]
    if title:
        out.append(h("text", title, x=4, y=16, font_size=13, font_weight="bold", fill="#1f2937"))
    order = sorted(range(len(lines)), key=lambda k: lines[k].style >= 0)  # grey ones underneath
    for k in order:
        ln = lines[k]
        color = GREY if ln.style < 0 else PALETTE[ln.style % len(PALETTE)]
        segs: list[list[str]] = [[]]
        for j in range(n):
            p = pos(j, ln.values[j]) if j < len(ln.values) else None
            if p is None:
                segs.append([])
            else:
                segs[-1].append(f"{ax_x(j):.1f},{p:.1f}")
        for seg in segs:
            if len(seg) > 1:
                out.append(h("polyline", h("title", ln.label), points=" ".join(seg), fill="none", stroke=color,
                             stroke_width=2.2 if ln.style >= 0 else 1.2,
                             stroke_dasharray="5 3" if ln.dashed else (DASHES[ln.style % len(DASHES)] or None)
                             if ln.style >= 0 else None, class_="pline", data_label=ln.label))
            elif len(seg) == 1:
                cx, cy = seg[0].split(",")
                out.append(h("circle", h("title", ln.label), cx=cx, cy=cy, r=2.5, fill=color))
    for j, a in enumerate(axes):
        xx = ax_x(j)
        out.append(h("line", x1=f"{xx:.1f}", y1=top, x2=f"{xx:.1f}", y2=top + ph, stroke="#444"))
        out.append(h("text", a.name + (" (log)" if a.kind == "log" else ""), x=f"{xx:.1f}", y=top - 10,
                     text_anchor="middle", fill="#1f2937", class_="axis"))
        kind, sc = scales[j]
        if kind == "cat":
            labels = [(c, top + ph * (1 - (k + 0.5) / len(sc))) for k, c in enumerate(sc)][:12]
        else:
            lo, hi = sc
            labels = [(_fmt(10 ** u if kind == "log" else u), top + ph * (hi - u) / (hi - lo)) for u in (lo, hi)]
        for text, yy in labels:
            out.append(h("text", text[:14], x=f"{xx + 5:.1f}", y=f"{yy + 4:.1f}", fill="#444", font_size=10,
                         stroke="white", stroke_width=3, paint_order="stroke"))
    return h("svg", out, xmlns="http://www.w3.org/2000/svg", width=width, height=height,
             viewBox=f"0 0 {width} {height}", font_family="sans-serif", font_size=11, class_="chart parallel",
             role="img", aria_label=f"{title}: parallel coordinates")


# -- the machine graph ---------------------------------------------------------------------------------
def _order(description: Mapping[str, Any]) -> tuple[list[str], list[tuple[str, str, str]]]:
    """Actions in the order a run meets them (breadth first from the entry), and the well-formed transitions."""
    actions = description.get("actions")
    names = [str(n) for n in actions] if isinstance(actions, (dict, list)) else []
    edges = []
    for t in description.get("transitions") or []:
        if isinstance(t, (list, tuple)) and len(t) == 3:
            edges.append((str(t[0]), str(t[1]), str(t[2])))
    entry = str(description.get("entry"))
    order = [entry] if entry in names or not names else []
    for name in order:
        for src, dst, _ in edges:
            if src == name and dst not in order:
                order.append(dst)
    order += [n for n in names if n not in order]
    for src, dst, _ in edges:
        for n in (src, dst):
            if n not in order:
                order.append(n)
    return order, edges


def graph_svg(description: Mapping[str, Any], current: str | None) -> Markup:
    """The machine as an SVG: actions as boxes in order from the entry, transitions as arrows.

    Each conditional transition carries a numbered badge (hover: its condition); the full
    conditions are listed, numbered alike, by :func:`graph_legend`.  ``current`` (the action
    due next) is filled and has ``class="current"``.
    """
    order, edges = _order(description)
    actions = description.get("actions") if isinstance(description.get("actions"), dict) else {}
    terminal = description.get("terminal") or []
    terminal = terminal if isinstance(terminal, list) else []
    widths = {n: max(80, min(190, 7 * len(n) + 22)) for n in order}
    gap, bh = 70, 34
    xs: dict[str, float] = {}
    cursor = 20.0
    for n in order:
        xs[n] = cursor
        cursor += widths[n] + gap
    index = {n: i for i, n in enumerate(order)}
    above = below = 0
    shapes = []
    for k, (src, dst, cond) in enumerate(edges):
        span = index[dst] - index[src]
        if span == 0:
            kind, lane = "self", 0
        elif span == 1:
            kind, lane = "next", 0
        elif span > 1:
            above += 1
            kind, lane = "up", above
        else:
            below += 1
            kind, lane = "down", below
        shapes.append((k, src, dst, cond, kind, lane))
    top: float = 40 + 26 * above
    height = top + bh + 40 + 26 * below
    out: list[Any] = [h("defs", h("marker", h("path", d="M0,0 L10,5 L0,10 z", fill="#444"), id="arrow",
                                  viewBox="0 0 10 10", refX=9, refY=5, markerWidth=6, markerHeight=6,
                                  orient="auto"))]
    badges = []
    number = 0
    for k, src, dst, cond, kind, lane in shapes:
        x1, x2 = xs[src], xs[dst]
        w1, w2 = widths[src], widths[dst]
        cy = top + bh / 2
        if kind == "self":
            cx = x1 + w1 / 2
            d = f"M{cx - 12},{top} C{cx - 34},{top - 40} {cx + 34},{top - 40} {cx + 12},{top}"
            bx, by = cx, top - 32
        elif kind == "next":
            d = f"M{x1 + w1},{cy} L{x2},{cy}"
            bx, by = (x1 + w1 + x2) / 2, cy - 12
        elif kind == "up":
            sx, ex = x1 + w1 * 0.75, x2 + w2 * 0.25
            lift = 30 + 26 * lane
            d = f"M{sx},{top} C{sx},{top - lift} {ex},{top - lift} {ex},{top}"
            bx, by = (sx + ex) / 2, top - lift * 0.75
        else:
            sx, ex = x1 + w1 * 0.25, x2 + w2 * 0.75
            drop = 30 + 26 * lane
            d = f"M{sx},{top + bh} C{sx},{top + bh + drop} {ex},{top + bh + drop} {ex},{top + bh}"
            bx, by = (sx + ex) / 2, top + bh + drop * 0.75
        label = f"{src} → {dst}" + ("" if cond == "default" else f": {cond}")
        out.append(h("path", h("title", label), d=d, fill="none", stroke="#444", marker_end="url(#arrow)",
                     data_edge=k))
        if cond != "default":
            number += 1
            badges.append(h("g", h("title", label), h("circle", cx=f"{bx:.1f}", cy=f"{by:.1f}", r=9, fill="white",
                                                      stroke="#444"),
                            h("text", number, x=f"{bx:.1f}", y=f"{by + 4:.1f}", text_anchor="middle", fill="#1f2937"),
                            class_="badge", data_edge=k))
    out.extend(badges)
    for n in order:
        x, w = xs[n], widths[n]
        spec = actions.get(n) if isinstance(actions, dict) else None
        gated = isinstance(spec, dict) and bool(spec.get("inputs"))
        fill = "#fde68a" if n == current else ("#fff7ed" if gated else "white")
        shown = n if len(n) * 7 + 16 <= w else n[: max(1, (w - 16) // 7 - 1)] + "…"
        out.append(h("g", h("title", n + (" (gate)" if gated else "") + (" (due next)" if n == current else "")),
                     h("rect", x=x, y=top, width=w, height=bh, rx=8, fill=fill, stroke="#1f2937",
                       stroke_width=3 if n in terminal else 1),
                     h("text", shown, x=f"{x + w / 2:.1f}", y=top + 21, text_anchor="middle", fill="#1f2937"),
                     data_action=n, class_="current" if n == current else None))
    return h("svg", out, xmlns="http://www.w3.org/2000/svg", width=f"{cursor - gap + 20:.0f}", height=height,
             viewBox=f"0 0 {cursor - gap + 20:.0f} {height}", font_family="sans-serif", font_size=12, class_="graph",
             role="img", aria_label="the machine's graph")


def graph_legend(description: Mapping[str, Any]) -> Markup:
    """Every transition, numbered as the badges of :func:`graph_svg`, with its whole condition (wrapped)."""
    _, edges = _order(description)
    items = []
    number = 0
    for k, (src, dst, cond) in enumerate(edges):
        if cond == "default":
            badge: Any = h("span", "–", class_="nobadge")
            text: Any = "otherwise"
        else:
            number += 1
            badge, text = h("span", number, class_="badge"), h("code", cond)
        items.append(h("li", badge, " ", h("code", src), " → ", h("code", dst), ": ", text, data_edge=k))
    return h("ol", items, class_="conditions")
