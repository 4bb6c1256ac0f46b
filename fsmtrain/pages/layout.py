"""The frame every page of ``fsmtrain ui`` shares: :class:`Layout` holds the log's path and the server's
token and builds the document around a page (style sheet and script from this server only), the sections
that say what they cannot show of a forged log while the rest renders, links, pagers and numbers read from
a query; with the one escaping builder (:mod:`fsmtrain.markup`), so nothing from a log reaches a page
unescaped.  The shapes of a request and of a CSV download that the server hands in and takes back are here too.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlencode

from ..errors import FsmtrainError
from ..log import MAX_ID, EventLog
from ..logview import clip
from ..markup import Markup, h

__all__ = ["ID", "STATUSES", "Csv", "Layout", "Request"]

STATUSES = ("running", "waiting", "finished", "failed", "stopped", "pruned")
ID = re.compile(r"[0-9]{1,19}\Z")  # ASCII digits only: str.isdigit() also takes '١٢'


class Request(NamedTuple):
    """What a page needs of a request: its path, the parts of the path, and the query (last value, and all)."""

    method: str
    path: str
    parts: list[str]
    query: dict[str, str]
    multi: dict[str, list[str]]


class Csv(NamedTuple):
    """A CSV download: its file name and lines."""

    name: str
    lines: list[str]


class Layout:
    """What every page builds on: ``Layout(log_path, token)``; ``readonly`` never offers to answer a gate."""

    def __init__(self, log_path: Path, token: str, *, readonly: bool = False) -> None:
        self.log_path, self.token, self.readonly = log_path, token, readonly

    def document(self, title: str, body: Any, *, live: str | None = None, since: Any = None) -> Markup:
        """The page around ``body``: one builder, the style sheet and script from this server only."""
        head = [h("meta", charset="utf-8"), h("meta", name="viewport", content="width=device-width, initial-scale=1"),
                h("title", f"{title} · fsmtrain"), h("link", rel="stylesheet", href="/static/ui.css"),
                h("script", src="/static/ui.js", defer=True)]
        if live:  # without scripts, the page refreshes itself; with them, ui.js updates it in place
            head.append(h("noscript", h("meta", http_equiv="refresh", content="2")))
        return Markup("<!doctype html>\n" + h("html", h("head", head), h("body", body, data_live=live, data_since=since),
                                                lang="en"))

    def _log(self) -> EventLog:
        return EventLog(self.log_path, readonly=True)

    def _version(self, log: EventLog) -> int:
        """Grows with every event written to the log (for a live page to ask whether anything changed)."""
        row = log.conn.execute("SELECT max(rowid) FROM events").fetchone()
        return int(row[0]) if row and isinstance(row[0], int) else 0

    @staticmethod
    def _link(path: str, **params: Any) -> str:
        q = {k: v for k, v in params.items() if v not in (None, "", False)}
        return path + ("?" + urlencode(q, doseq=True) if q else "")

    @staticmethod
    def _int(r: Request, name: str, default: int, lo: int = 1, hi: int = MAX_ID) -> int:
        text = r.query.get(name, "")
        return min(max(int(text), lo), hi) if ID.match(text) else default

    @staticmethod
    def _section(title: str | None, build: Callable[[], Any], **attrs: Any) -> Markup:
        """A part of a page; if the log holds something it cannot show, the part says so and the page goes on."""
        try:
            content = build()
        except (FsmtrainError, sqlite3.Error, ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError,
                OverflowError, ZeroDivisionError) as e:
            content = h("p", f"This part cannot be shown: {clip(str(e) or type(e).__name__, 400)}", class_="box failed")
        if content is None:
            return h("section", **attrs)  # (empty, so that a live update can fill it)
        return h("section", h("h2", title) if title else None, content, **attrs)

    @staticmethod
    def _pager(page: int, pages: int, link: Callable[[int], str], labels: tuple[str, str] = ("newer", "older")) -> Markup:
        if pages <= 1:
            return Markup()
        near = sorted({1, 2, page - 2, page - 1, page, page + 1, page + 2, pages - 1, pages} & set(range(1, pages + 1)))
        items: list[Any] = [h("a", "« " + labels[0], href=link(page - 1), rel="prev") if page > 1 else None]
        last = 0
        for n in near:
            if n > last + 1:
                items.append(h("span", "…"))
            items.append(h("span", n, class_="current", aria_current="page") if n == page else h("a", n, href=link(n)))
            last = n
        items.append(h("a", labels[1] + " »", href=link(page + 1), rel="next") if page < pages else None)
        return h("nav", items, class_="pager", aria_label="pages")


    def _csv(self, name: str, lines: list[str]) -> Csv:
        return Csv(name, lines)
