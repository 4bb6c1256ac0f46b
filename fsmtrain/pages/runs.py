"""The runs list of ``fsmtrain ui`` (``/``): filters, sorting and paging, each run's row with its monitored
best, and the live update of the table while a run is running.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

from ..errors import FsmtrainError
from ..log import EventLog
from ..logview import Best, RunRow, clip, fmt_duration, fmt_num, fmt_time, list_runs, monitored_best, sort_key
from ..markup import Markup, h, join
from ..plot import is_number
from .layout import STATUSES, Layout, Request

__all__ = ["RunsPages"]

RUNS_PER_PAGE = 50


class RunsPages(Layout):
    """The runs list (``/``) and its live update."""

    def _runs_query(self, r: Request) -> dict[str, Any]:
        sort = r.query.get("sort", "id")
        q: dict[str, Any] = {
            "status": r.query.get("status") if r.query.get("status") in STATUSES else None,
            "machine": r.query.get("machine") or None, "tag": r.query.get("tag") or None,
            "sort": sort if sort in ("id", "machine", "status", "steps", "started", "updated", "duration") else "id",
            "order": "asc" if r.query.get("order") == "asc" else "desc",
            "metric": r.query.get("metric") or None,
            "mode": r.query.get("mode") if r.query.get("mode") in ("min", "max") else None}
        q["page"] = self._int(r, "page", 1)
        q["per"] = self._int(r, "per", RUNS_PER_PAGE, 10, 500)
        return q

    def _all_runs(self, log: EventLog) -> list[RunRow]:
        """Every run, read once per version of the log however many requests ask at once (the page under load:
        a list of 10,000 runs costs a fifth of a second to read, and 200 clients would each read it)."""
        lock = self.__dict__.setdefault("_runs_lock", threading.Lock())
        version = self._version(log)
        with lock:
            cached = self.__dict__.get("_runs_cache")
            if cached is not None and cached[0] == version:
                return list(cached[1])
            runs = list_runs(log)
            self.__dict__["_runs_cache"] = (version, runs)
            return list(runs)

    def _listing(self, log: EventLog, q: dict[str, Any]) -> tuple[list[RunRow], list[RunRow], list[str]]:
        runs = self._all_runs(log)
        machines = sorted({str(x.machine) for x in runs})
        chosen = runs
        if q["status"]:
            chosen = [x for x in chosen if x.status == q["status"]]
        if q["machine"]:
            chosen = [x for x in chosen if str(x.machine) == q["machine"]]
        if q["tag"]:
            key, sep, want = q["tag"].partition("=")
            chosen = [x for x in chosen if key in x.tags and (not sep or clip(x.tags[key], 10_000) == want)]
        keys: dict[str, Callable[[RunRow], Any]] = {
            "id": lambda x: (0, x.id), "machine": lambda x: sort_key(x.machine), "status": lambda x: (1, x.status),
            "steps": lambda x: sort_key(x.steps), "started": lambda x: sort_key(x.created),
            "updated": lambda x: sort_key(x.last_time),
            "duration": lambda x: sort_key(x.last_time - x.created if is_number(x.last_time) and is_number(x.created)
                                            else None)}
        chosen = sorted(chosen, key=lambda x: (keys[q["sort"]](x), x.id), reverse=q["order"] == "desc")
        return runs, chosen, machines

    def runs_page(self, r: Request) -> Markup:
        q = self._runs_query(r)
        with self._log() as log:
            runs, chosen, machines = self._listing(log, q)
            version = self._version(log)
            table = self._runs_table(log, chosen, q)
        live = any(x.status == "running" for x in runs)
        filters = h("form", h("label", "status ", h("select", h("option", "any", value=""),
                                                   [h("option", s, value=s, selected=s == q["status"]) for s in STATUSES],
                                                   name="status")), " ",
                    h("label", "machine ", h("select", h("option", "any", value=""),
                                             [h("option", m, value=m, selected=m == q["machine"]) for m in machines[:200]],
                                             name="machine")), " ",
                    h("label", "tag ", h("input", name="tag", value=q["tag"] or "", placeholder="key=value", size=14)), " ",
                    h("label", "best of ", h("input", name="metric", value=q["metric"] or "", placeholder="(monitored)",
                                            size=12)), " ",
                    h("button", "filter", type="submit"),
                    h("input", type="hidden", name="sort", value=q["sort"]),
                    h("input", type="hidden", name="order", value=q["order"]),
                    method="get", action="/", class_="filters")
        body = [h("nav", h("a", "runs", href="/"), " ", h("a", "compare", href="/compare")),
                h("h1", self.log_path.name, " ", h("small", f"{len(runs)} run(s)", class_="muted")),
                filters,
                h("form", h("button", "compare selected runs", type="submit"), id="compare", method="get",
                  action="/compare", class_="inline"),
                h("div", table, id="runs-wrap")]
        live_url = self._link("/api/live/runs", **{k: v for k, v in r.query.items() if k != "token"}) if live else None
        return self.document(self.log_path.name, body, live=live_url, since=version)

    def _runs_table(self, log: EventLog, chosen: list[RunRow], q: dict[str, Any]) -> Markup:
        per, total = q["per"], len(chosen)
        pages = max(1, math.ceil(total / per))
        page = min(q["page"], pages)
        shown = chosen[(page - 1) * per: page * per]
        studies: dict[Any, dict[str, Any]] = {}
        rows = []
        for x in shown:
            try:
                best = monitored_best(log, x, q["metric"], q["mode"], studies)
            except (FsmtrainError, ValueError, TypeError, KeyError, RecursionError):
                best = None
            rows.append(self._run_row(x, best))

        def head(label: str, key: str, narrow: bool = False) -> Markup:
            order = "asc" if q["sort"] == key and q["order"] == "desc" else "desc"
            arrow = (" ▼" if q["order"] == "desc" else " ▲") if q["sort"] == key else ""
            return h("th", h("a", label + arrow, href=self._link("/", **{**self._keep(q), "sort": key, "order": order})),
                     aria_sort=("descending" if q["order"] == "desc" else "ascending") if q["sort"] == key else None,
                     class_="hide-narrow" if narrow else None)

        best_head = f"best {q['metric']}" if q["metric"] else "best (monitored)"
        table = h("div", h("table", h("thead", h("tr", h("th", h("span", "compare", class_="sr")), head("run", "id"),
                                                   head("machine", "machine"), head("status", "status"),
                                                   head("steps", "steps", True), h("th", "last action", class_="hide-narrow"),
                                                   head("started", "started", True), head("updated", "updated"),
                                                   head("duration", "duration", True), h("th", best_head),
                                                   h("th", "tags", class_="hide-narrow"),
                                                   h("th", "parent", class_="hide-narrow"))),
                                  h("tbody", rows, id="runs-body"), id="runs"), class_="scroll")
        return join([h("p", f"{total} run(s) match; page {page} of {pages}, newest first" if q["sort"] == "id" and
                       q["order"] == "desc" else f"{total} run(s) match; page {page} of {pages}", id="runs-count"),
                     table, self._pager(page, pages, lambda n: self._link("/", **{**self._keep(q), "page": n}))])

    @staticmethod
    def _keep(q: dict[str, Any]) -> dict[str, Any]:
        return {k: q[k] for k in ("status", "machine", "tag", "sort", "order", "metric", "mode")} | (
            {"per": q["per"]} if q["per"] != RUNS_PER_PAGE else {})

    def _run_row(self, x: RunRow, best: Best | None) -> Markup:
        machine = str(x.machine)
        kind = "study" if machine.startswith("study:") else "run"
        status = x.status
        duration = x.last_time - x.created if is_number(x.last_time) and is_number(x.created) else None
        tags = ", ".join(f"{k}={clip(v, 40)}" for k, v in list(x.tags.items())[:6])
        return h("tr",
                 h("td", h("input", type="checkbox", name="run", value=x.id, form="compare",
                           aria_label=f"compare run {x.id}")),
                 h("td", h("a", x.id, href=f"/{kind}/{x.id}")),
                 h("td", clip(machine, 60)),
                 h("td", h("span", status, class_=f"status {status}")),
                 h("td", fmt_num(x.steps), class_="hide-narrow"),
                 h("td", clip(x.last_action or "", 40), class_="hide-narrow"),
                 h("td", h("time", fmt_time(x.created)[:16], title=fmt_time(x.created)), class_="hide-narrow when"),
                 h("td", h("time", fmt_time(x.last_time)[:16], title=fmt_time(x.last_time)), class_="when"),
                 h("td", fmt_duration(duration), class_="hide-narrow"),
                 h("td", h("span", fmt_num(best.value), title=f"{best.metric} ({best.mode}) at {fmt_num(best.epoch)}",
                           class_="best") if best else "–",
                   " ", h("small", best.metric, class_="muted hide-narrow") if best else None),
                 h("td", clip(tags, 120), class_="hide-narrow"),
                 h("td", h("a", x.parent_id, href=f"/run/{x.parent_id}") if x.parent_id is not None else "",
                   class_="hide-narrow"),
                 data_run=x.id, data_status=status)

    def runs_live(self, r: Request) -> dict[str, Any]:
        q = self._runs_query(r)
        with self._log() as log:
            version = self._version(log)
            if str(version) == r.query.get("since"):
                return {"since": version, "live": True}
            runs, chosen, _ = self._listing(log, q)
            table = self._runs_table(log, chosen, q)
        return {"since": version, "live": any(x.status == "running" for x in runs),
                "replace": {"runs-wrap": h("div", table, id="runs-wrap")}}
