"""The pages of ``fsmtrain ui``: the runs list, a run, a study, compare; their live updates, CSV and JSON.

Every page is built with the one escaping builder (:mod:`fsmtrain.markup`), HTML and SVG
alike, so nothing from a log reaches a page unescaped; data comes from the tolerant
readers of :mod:`fsmtrain.logview`, and each part of a page that cannot show what a
forged log holds says so while the rest of the page renders.  The server
(:mod:`fsmtrain.ui`) routes requests here; it owns hosts, tokens and the one write.
One module per page (:mod:`~fsmtrain.pages.runs`, :mod:`~fsmtrain.pages.run`,
:mod:`~fsmtrain.pages.compare`, :mod:`~fsmtrain.pages.study`) on the shared frame of
:mod:`~fsmtrain.pages.layout`; :mod:`~fsmtrain.pages.site` puts them together.
"""

from __future__ import annotations

from .layout import Csv, Request
from .site import Pages

__all__ = ["Csv", "Pages", "Request"]
