"""The one HTML/SVG builder every page of ``fsmtrain ui`` (and every SVG of ``fsmtrain plot``) goes through.

Text is escaped by default: a child or an attribute value that is not already
:class:`Markup` is escaped, so a page cannot forget to escape what a log holds.
:class:`Markup` comes only from :func:`h` (and the page's constant style sheet):
nothing from a log is ever wrapped in it unescaped.

>>> str(h("td", "<script>", class_="x", data_seq=3))
'<td class="x" data-seq="3">&lt;script&gt;</td>'
>>> str(h("a", "runs", href="javascript:alert(1)"))
Traceback (most recent call last):
...
ValueError: href must be a path on this server (/..., ?... or #...), got 'javascript:alert(1)'
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from html import escape as _escape
from typing import Any

__all__ = ["Markup", "escape", "h", "join"]


class Markup(str):
    """Text that is HTML already: made by :func:`h`, :func:`escape` and :func:`join`, never from log text."""

    __slots__ = ()


def escape(value: Any) -> Markup:
    """``value`` as HTML text: Markup as it is, ``None`` as nothing, anything else ``str()``-ed and escaped."""
    if isinstance(value, Markup):
        return value
    if value is None:
        return Markup()
    return Markup(_escape(value if isinstance(value, str) else str(value), quote=True))


def join(children: Iterable[Any], sep: Any = "") -> Markup:
    """The children (escaped unless Markup; nested iterables flattened; None and False left out), joined by ``sep``."""
    return Markup(escape(sep).join(_flatten(children)))


def _flatten(children: Iterable[Any]) -> Iterable[Markup]:
    for c in children:
        if c is None or c is False:
            continue
        if isinstance(c, str) or not isinstance(c, Iterable):
            yield escape(c)
        else:
            yield from _flatten(c)


_NAME = re.compile(r"[A-Za-z][A-Za-z0-9:-]*\Z")
_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"})
_SVG_EMPTY = frozenset({"circle", "ellipse", "line", "path", "polygon", "polyline", "rect", "stop", "use"})
_URL_ATTRS = frozenset({"href", "src", "action", "formaction", "xlink:href"})
_RAW_TEXT = frozenset({"script", "style"})  # their content is not parsed as HTML: escaping cannot protect it


def _attr_name(key: str) -> str:
    name = key.rstrip("_").replace("_", "-")
    if not _NAME.match(name) or name.lower().startswith("on"):
        raise ValueError(f"{key!r} is not an attribute the builder writes")
    return name


def h(tag: str, *children: Any, **attrs: Any) -> Markup:
    """The element ``<tag attrs>children</tag>``, every text escaped.

    Attribute keywords: a trailing ``_`` is dropped (``class_``) and ``_`` becomes ``-``
    (``data_seq``, ``stroke_width``); ``True`` writes a bare attribute, ``None``/``False``
    leaves it out.  URL attributes (``href``, ``src``, ``action``) must be paths on this
    server, event-handler attributes (``on...``) and ``<script>``/``<style>`` content are
    refused: the builder cannot make them safe.
    """
    if not _NAME.match(tag) or tag.lower() in _RAW_TEXT and children:
        raise ValueError(f"the builder does not write <{tag}> with content")
    parts = ["<", tag]
    for key, value in attrs.items():
        if value is None or value is False:
            continue
        name = _attr_name(key)
        if value is True:
            parts += [" ", name]
            continue
        text = value if isinstance(value, str) else str(value)
        if name in _URL_ATTRS and (not text.startswith(("/", "?", "#")) or text.startswith(("//", "/\\"))):
            raise ValueError(f"{name} must be a path on this server (/..., ?... or #...), got {text!r}")
        parts += [" ", name, '="', _escape(text, quote=True), '"']  # (Markup too: it may hold quotes)
    if tag in _VOID:
        if children:
            raise ValueError(f"<{tag}> has no content")
        parts.append(">")
        return Markup("".join(parts))
    body = join(children)
    if not body and tag in _SVG_EMPTY:
        parts.append("/>")
        return Markup("".join(parts))
    parts += [">", body, "</", tag, ">"]
    return Markup("".join(parts))
