"""The pages of ``fsmtrain ui``: the runs list, a run, a study, compare; their live updates, CSV and JSON.

Every page is built with the one escaping builder (:mod:`fsmtrain.markup`), HTML and SVG
alike, so nothing from a log reaches a page unescaped; data comes from the tolerant
readers of :mod:`fsmtrain.logview`, and each part of a page that cannot show what a
forged log holds says so while the rest of the page renders.  The server
(:mod:`fsmtrain.ui`) routes requests here; it owns hosts, tokens and the one write.
"""

from __future__ import annotations

import math
import os
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlencode

from .errors import FsmtrainError, RunNotFound
from .log import MAX_ID, EventLog
from .logview import (
    Best,
    Broken,
    Row,
    RunRow,
    as_dict,
    as_list,
    best_of,
    chart_mode,
    clip,
    csv_cell,
    decoded,
    description_of,
    ema,
    fmt_duration,
    fmt_num,
    fmt_time,
    get_run,
    is_history,
    list_runs,
    metrics_of,
    monitored_best,
    refs_of,
    rows_of,
    sort_key,
)
from .markup import Markup, h, join
from .plot import Axis, Line, Series, chart, graph_legend, graph_svg, is_number, parallel
from .replay import state_at
from .state import Ref

__all__ = ["Csv", "Pages", "Request"]

STATUSES = ("running", "waiting", "finished", "failed", "stopped", "pruned")
KINDS = ("start", "step", "resume", "waiting", "input", "error", "failed", "retry", "stopped", "pruned")
TIMELINE_PER_PAGE = 50
RUNS_PER_PAGE = 50
MAX_COMPARE = 12
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


class Pages:
    """Builds each page of one log: ``Pages(log_path, token)``; ``readonly`` never offers to answer a gate."""

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

    # -- the runs list --------------------------------------------------------------------------------------
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

    def _listing(self, log: EventLog, q: dict[str, Any]) -> tuple[list[RunRow], list[RunRow], list[str]]:
        runs = list_runs(log)
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

    # -- one run --------------------------------------------------------------------------------------------
    def _run_view(self, r: Request) -> dict[str, Any]:
        """The page's own settings from its URL: the event looked at, the timeline page, log axes, smoothing."""
        v: dict[str, Any] = {"at": self._int(r, "at", 0, 0) or None, "tpage": self._int(r, "tpage", 0, 0) or None,
                             "log": sorted({m for m in r.query.get("log", "").split(",") if m})[:50]}
        try:
            smooth = float(r.query.get("smooth", "0"))
        except ValueError:
            smooth = 0.0
        v["smooth"] = smooth if 0 < smooth < 1 else 0.0
        return v

    def _view_link(self, run_id: int, v: dict[str, Any], **change: Any) -> str:
        p = {"at": v["at"], "tpage": v["tpage"], "log": ",".join(v["log"]), "smooth": v["smooth"] or None} | change
        if isinstance(p.get("log"), list):
            p["log"] = ",".join(p["log"])
        return self._link(f"/run/{run_id}", **p)

    def run_page(self, run_id: int, r: Request) -> Markup:
        v = self._run_view(r)
        with self._log() as log:
            info = get_run(log, run_id)
            parts = self._run_parts(log, info, v)
        status = info.status
        live = self._link(f"/api/live/run/{run_id}", status=status, **{k: val for k, val in r.query.items()
                                                                        if k in ("at", "tpage", "log", "smooth")}) \
            if status == "running" else None
        body = [h("nav", h("a", "runs", href="/"), " ",
                  h("a", f"study {info.parent_id}", href=f"/study/{info.parent_id}")
                  if info.parent_id is not None and "study" in info.tags else None, " ",
                  h("a", "compare with…", href=self._link("/compare", run=run_id))),
                parts["head"], parts["attention"], parts["charts"], parts["graph"], parts["refs"], parts["state"],
                parts["timeline"]]
        return self.document(f"run {run_id}", body, live=live, since=info.last_seq)

    def _run_parts(self, log: EventLog, info: RunRow, v: dict[str, Any]) -> dict[str, Markup]:
        run_id = info.id
        last_seq = info.last_seq if isinstance(info.last_seq, int) else 0
        at = v["at"] if v["at"] is not None and 1 <= v["at"] <= last_seq else None
        cache: dict[str, Any] = {}

        def final() -> Any:
            if "final" not in cache:
                try:
                    cache["final"] = state_at(log, run_id, last_seq).to_dict()
                except (FsmtrainError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
                    cache["final"] = e
            if isinstance(cache["final"], Exception):
                raise cache["final"]
            return cache["final"]

        def at_state() -> Any:
            return final() if at is None or at == last_seq else state_at(log, run_id, at).to_dict()

        def first_state() -> dict[str, Any]:
            row = log.conn.execute("SELECT snapshot FROM events WHERE run_id = ? AND seq = 1", (run_id,)).fetchone()
            return as_dict(decoded(row[0], "snapshot")) if row else {}

        out = {
            "head": self._section(None, lambda: self._run_head(log, info), id="head"),
            "attention": self._section(None, lambda: self._attention(log, info), id="attention"),
            "charts": self._section("metrics", lambda: self._run_charts(run_id, final(), v, at, at_state, first_state),
                                    id="charts"),
            "graph": self._section("machine", lambda: self._graph(log, info), id="machine"),
            "refs": self._section("checkpoints", lambda: self._refs_table(final()), id="checkpoints"),
            "state": self._section(f"state after event {at or last_seq}", lambda: self._state_table(run_id, at_state(), at
                                                                                                   or last_seq),
                                   id="state-section"),
            "timeline": self._section("timeline", lambda: self._timeline(log, run_id, last_seq, v, at), id="timeline-section"),
        }
        return out

    def _run_head(self, log: EventLog, info: RunRow) -> Markup:
        status = info.status
        resumes = log.conn.execute("SELECT count(*) FROM events WHERE run_id = ? AND kind = 'resume'", (info.id,)).fetchone()[0]
        interrupted = 0
        if resumes:
            (text,) = log.conn.execute("SELECT info FROM events WHERE run_id = ? AND kind = 'resume' ORDER BY seq DESC "
                                       "LIMIT 1", (info.id,)).fetchone()
            n = as_dict(decoded(text, "resume info")).get("interrupted")
            interrupted = n if isinstance(n, int) and not isinstance(n, bool) else 0
        duration = info.last_time - info.created if is_number(info.last_time) and is_number(info.created) else None
        facts: list[Any] = [f"{fmt_num(info.steps)} step(s), {fmt_num(info.last_seq)} event(s)",
                            f"started {fmt_time(info.created)}", f"updated {fmt_time(info.last_time)}",
                            f"wall time {fmt_duration(duration)}"]
        if resumes:
            facts.append(f"resumed {resumes} time(s)" + (f", {interrupted} interruption(s) in a row before the last resume"
                                                          if interrupted else ""))
        if info.parent_id is not None:
            facts.append(join(["forked from ", h("a", f"run {info.parent_id}", href=f"/run/{info.parent_id}"),
                               f" at event {fmt_num(info.parent_seq)}"]) if "study" not in info.tags else
                         join(["trial of ", h("a", f"study {info.parent_id}", href=f"/study/{info.parent_id}")]))
        if status == "running" and info.next:
            facts.append(join(["next: ", h("code", clip(info.next, 60))]))
        tags = [h("span", f"{k}={clip(val, 60)}", class_="tag") for k, val in list(info.tags.items())[:20]]
        return join([h("h1", f"run {info.id} · ", clip(info.machine, 80), " · ",
                       h("span", status, class_=f"status {status}", id="status")),
                     h("p", join(facts, " · "), class_="facts"),
                     h("p", "tags: ", join(tags, " "), class_="tags") if tags else None,
                     h("p", h("a", "metrics as CSV", href=f"/run/{info.id}/metrics.csv"), " · ",
                       h("a", "state as JSON", href=f"/api/run/{info.id}/state"), class_="muted")])

    def _attention(self, log: EventLog, info: RunRow) -> Markup | None:
        """What a person must see first: a failed run's error, who stopped it and why, the gate, what happens next."""
        status = info.status
        last = rows_of(log, info.id, info.last_seq, info.last_seq)[0]
        note = as_dict(last.info)
        if status == "failed":
            error = str(last.error or "").strip() or "(no error text recorded)"
            lines = error.splitlines() or [error]
            return h("div", h("h2", "failed at ", h("code", clip(last.action or "?", 60)),
                              f" (attempt {fmt_num(last.attempt)})" if last.attempt is not None else "",
                              f" at {fmt_time(last.time)}"),
                     h("p", h("strong", clip(lines[-1], 500)), class_="error-line"),
                     h("details", h("summary", "the whole error"), h("pre", clip(error, 20_000))) if len(lines) > 1 else None,
                     h("p", "To continue from its last committed step, record a retry: ",
                       h("code", f"fsmtrain retry {self.log_path.name} {info.id} --comment \"why\""),
                       ", then run the training command again or a worker."),
                     class_="box failed", id="error")
        if status in ("stopped", "pruned"):
            extra = {k: val for k, val in note.items() if k not in ("by", "at", "reason", "comment")}
            why = note.get("reason", note.get("comment"))
            return h("div", h("h2", f"{status} by ", clip(note.get("by", "?"), 80), f" at {fmt_time(note.get('at', last.time))}"),
                     h("p", "why: ", h("strong", clip(why, 2000))) if why is not None else h("p", "no reason recorded"),
                     h("dl", [(h("dt", clip(k, 60)), h("dd", clip(val, 300))) for k, val in list(extra.items())[:30]],
                       class_="details") if extra else None,
                     class_=f"box {status}", id="stop")
        if status == "waiting":
            return self._gate_form(info, last)
        if status == "running" and last.kind in ("input", "retry"):
            given = ", ".join(f"{k}={clip(val, 60)}" for k, val in as_dict(last.inputs).items())
            worker = info.tags.get("worker")
            return h("div", h("p", h("strong", "answered" if last.kind == "input" else "retried"),
                              f" by {clip(note.get('by', '?'), 60)} at {fmt_time(last.time)}",
                              f" ({given})" if given else "", f" — event {fmt_num(last.seq)}."),
                     h("p", "Nothing runs it by itself: a process must continue it, e.g. a worker: ",
                       h("code", f"fsmtrain worker {self.log_path.name} --machine MODULE:ATTR --once"),
                       " (or the script that trains it, run again). This page follows it."),
                     h("p", "The run's tags suggest ", h("code", f"--machine {clip(worker, 100)}"),
                       " (text from the log: check it before you run anything).") if isinstance(worker, str) else None,
                     class_="box note", id="next-step")
        return None

    def _gate_form(self, info: RunRow, waiting: Row) -> Markup:
        note = as_dict(waiting.info)
        needs = [n for n in as_list(note.get("needs")) if isinstance(n, dict) and isinstance(n.get("name"), str)]
        writable = not self.readonly and os.access(self.log_path, os.W_OK) and os.access(self.log_path.parent, os.W_OK)
        decision = next((n for n in needs if n["name"] == "decision" and as_list(n.get("choices"))), None)
        fields = []
        for n in needs:
            if n is decision:
                continue
            name, typ = n["name"], clip(n.get("type", "str"), 20)
            required = n.get("required", True) is not False
            label = h("span", h("code", name), f" ({typ}{'' if required else ', optional'})")
            choices = as_list(n.get("choices"))
            if choices:
                control = h("select", [h("option", "", value="")] if not required else None,
                            [h("option", clip(c, 100), value=clip(c, 1000)) for c in choices], name=name,
                            disabled=not writable)
            elif typ == "bool":
                control = h("select", [h("option", "", value="")] if not required else None,
                            h("option", "true", value="true"), h("option", "false", value="false"), name=name,
                            disabled=not writable)
            else:
                limits = [f"min {fmt_num(n['min'])}" if is_number(n.get("min")) else None,
                          f"max {fmt_num(n['max'])}" if is_number(n.get("max")) else None]
                control = h("input", name=name, required=required, disabled=not writable,
                            inputmode="decimal" if typ in ("int", "float") else None,
                            placeholder=", ".join(x for x in limits if x) or None)
            help_text = n.get("help")
            fields.append(h("div", h("label", label, " ", control), h("div", clip(help_text, 500), class_="help")
                            if help_text else None, class_="field"))
        if decision is not None:
            words = {"go": "Go", "no-go": "No-go"}
            buttons = [h("button", words.get(c, clip(c, 40)) if isinstance(c, str) else clip(c, 40), type="submit",
                         name="decision", value=clip(c, 1000), disabled=not writable,
                         class_="go" if c == "go" else "nogo" if c == "no-go" else None)
                       for c in as_list(decision.get("choices"))]
            fields.append(h("div", h("code", "decision"), ": ", clip(decision.get("help") or "", 500),
                            class_="help decision-help"))
        else:
            buttons = [h("button", "Submit", type="submit", disabled=not writable)]
        summary = as_dict(note.get("summary"))
        metrics = as_dict(summary.get("metrics"))
        table = h("table", h("thead", h("tr", h("th", "metric"), h("th", "n"), h("th", "last"), h("th", "min"),
                                        h("th", "max"))),
                  h("tbody", [h("tr", h("td", clip(k, 60)), h("td", fmt_num(as_dict(m).get("n"))),
                                h("td", fmt_num(as_dict(m).get("last"))), h("td", fmt_num(as_dict(m).get("min"))),
                                h("td", fmt_num(as_dict(m).get("max")))) for k, m in list(metrics.items())[:30]]),
                  class_="summary") if metrics else None
        where = [f"{k} {fmt_num(summary[k])}" for k in ("epoch", "steps") if k in summary]
        missing = [clip(m, 60) for m in as_list(note.get("missing"))]
        disabled_note = None if writable else h(
            "p", h("strong", "Answering is disabled: "), f"this server does not write to {self.log_path.name} (it was "
            "started read-only, or the file or its folder is read-only). Answer where it can be written: ",
            h("code", f"fsmtrain input {self.log_path.name} {info.id} decision=..."), class_="disabled-note")
        return h("div", h("h2", "waiting at ", h("code", clip(waiting.action or "?", 60)), " since ", fmt_time(waiting.time)),
                 h("p", "What it recorded when it stopped here: ", ", ".join(where)) if where else None,
                 table,
                 h("p", "needs: ", ", ".join(missing)) if missing else None,
                 disabled_note,
                 h("form", h("input", type="hidden", name="token", value=self.token), fields,
                   h("div", buttons, class_="buttons"), class_="gate", method="post", action=f"/run/{info.id}/input"),
                 h("p", "Your answer is recorded in the log (who: web, when); then a worker must continue the run.",
                   class_="muted"),
                 class_="box waiting", id="gate")

    def _run_charts(self, run_id: int, final: dict[str, Any], v: dict[str, Any], at: int | None,
                    at_state: Callable[[], dict[str, Any]], first_state: Callable[[], dict[str, Any]]) -> Markup | None:
        metrics = metrics_of(final)
        if not metrics:
            return None
        marks: dict[str, int] = {}
        if at is not None:  # where the event looked at falls on each curve that grew over the run
            snap = at_state()
            first = first_state()
            marks = {m: len(snap[m]) for m in metrics if isinstance(snap.get(m), list) and snap[m]
                     and (len(snap[m]) < len(metrics[m]) or len(as_list(first.get(m))) < len(metrics[m]))}
        smooth = v["smooth"]
        figures: list[Markup] = []
        for m, values in metrics.items():
            log_scale = m in v["log"]
            mode = chart_mode(m)
            series = [Series(m if not smooth else f"{m} (smoothed)", ema(values, smooth) if smooth else values, 0)]
            if smooth:
                series.insert(0, Series(m, values, 0, faint=True))
            svg = chart(series, ylabel=m, log=log_scale, best=mode, mark_x=marks.get(m),
                        mark_label=f"event {at}" if m in marks else "", chart_id=f"chart-{len(figures)}")
            best = best_of(values, mode) if mode else None
            toggled = [x for x in v["log"] if x != m] if log_scale else [*v["log"], m]
            caption = h("figcaption", h("strong", m), f" · {len(values)} value(s)",
                        f" · best ({mode}) {fmt_num(best[0])} at {best[1]}" if best else "",
                        f" · last {fmt_num(values[-1])}", " · ",
                        h("a", "linear scale" if log_scale else "log scale", href=self._view_link(run_id, v, log=toggled)))
            figures.append(h("figure", caption, svg, data_metric=m))
        smoothing = [h("a", label, href=self._view_link(run_id, v, smooth=w or None),
                       aria_current="true" if w == smooth else None)
                     if w != smooth else h("strong", label) for label, w in (("off", 0.0), ("0.6", 0.6), ("0.9", 0.9))]
        return join([h("p", "smoothing: ", join(smoothing, " "), class_="controls"),
                     h("div", figures, class_="charts", id="curves")])

    def _graph(self, log: EventLog, info: RunRow) -> Markup | None:
        description = description_of(log, info.id)
        if description is None:
            return None
        current = info.last_action if info.status == "waiting" else info.next
        return h("div", h("div", graph_svg(description, current if isinstance(current, str) else None), class_="scroll",
                          id="graph"), graph_legend(description), class_="graph-wrap")

    def _refs_table(self, final: dict[str, Any]) -> Markup | None:
        refs = refs_of(final)
        if not refs:
            return None
        return h("div", h("table", h("tbody", [h("tr", h("td", k), h("td", ref.path), h("td", f"{fmt_num(ref.size)} bytes"),
                                                     h("td", h("code", str(ref.sha256)[:16] + "…")))
                                               for k, ref in refs[:200]]), id="refs"), class_="scroll")

    def _state_table(self, run_id: int, state: dict[str, Any], seq: int) -> Markup:
        rows = [h("tr", h("th", clip(k, 80)), h("td", self._compact(val))) for k, val in sorted(state.items(), key=str)]
        return join([h("p", h("a", "the whole state as JSON", href=self._link(f"/api/run/{run_id}/state", at=seq)),
                       class_="muted"),
                     h("div", h("table", h("tbody", rows), id="state", class_="state"), class_="scroll")])

    def _compact(self, value: Any) -> Any:
        """A state value in a line or two: lists of numbers summarised, structures as clipped JSON."""
        if isinstance(value, Ref):
            return join([h("code", value.path), f" ({fmt_num(value.size)} bytes)"])
        if is_history(value):
            n = len(value)
            nums = [(i + 1, x) for i, x in enumerate(value) if is_number(x)]
            head = ", ".join(fmt_num(x) for x in value[:3])
            tail = ", ".join(fmt_num(x) for x in value[-3:]) if n > 6 else ", ".join(fmt_num(x) for x in value[3:])
            text = f"[{head}{', … ' if n > 6 else (', ' if tail else '')}{tail}]"
            lo = min(nums, key=lambda p: p[1]) if nums else None
            hi = max(nums, key=lambda p: p[1]) if nums else None
            stats = f" {n} value(s)" + (f"; min {fmt_num(lo[1])} at {lo[0]}, max {fmt_num(hi[1])} at {hi[0]}"
                                          if lo and hi else "")
            return join([h("code", text), h("span", stats, class_="muted")])
        text = clip(value, 100_000)
        if len(text) <= 160:
            return h("code", text)
        return h("details", h("summary", h("code", text[:120] + "…"), f" ({len(text):,} characters)"),
                 h("pre", text[:4000] + ("…" if len(text) > 4000 else "")))

    def _timeline(self, log: EventLog, run_id: int, last_seq: int, v: dict[str, Any], at: int | None,
                  only_after: int | None = None) -> Markup:
        per = TIMELINE_PER_PAGE
        pages = max(1, math.ceil(last_seq / per))
        page = v["tpage"] or (((last_seq - at) // per + 1) if at else 1)
        page = min(max(page, 1), pages)
        hi = last_seq - (page - 1) * per
        lo = max(1, hi - per + 1)
        rows = [self._timeline_row(run_id, e, v, at) for e in rows_of(log, run_id, lo, hi)]
        pager = self._pager(page, pages, lambda n: self._view_link(run_id, v, tpage=n, at=v["at"]))
        jump = h("form", h("label", "event ", h("input", name="at", size=6, inputmode="numeric", value=at or "")),
                 h("button", "show", type="submit"), method="get", action=f"/run/{run_id}", class_="inline")
        return join([h("p", f"events {lo}–{hi} of {last_seq}, newest first", " · ", jump, class_="controls"),
                     h("div", h("table", h("thead", h("tr", h("th", "seq"), h("th", "time", class_="hide-narrow"),
                                                      h("th", "kind"), h("th", "action"),
                                                      h("th", "next", class_="hide-narrow"), h("th", "details"))),
                                h("tbody", rows, id="timeline-rows", data_max=per if page == 1 else None),
                                id="timeline"), class_="scroll"),
                     pager])

    def _timeline_row(self, run_id: int, e: Row, v: dict[str, Any], at: int | None) -> Markup:
        kind = str(e.kind)
        return h("tr", h("td", h("a", e.seq, href=self._view_link(run_id, v, at=e.seq, tpage=None))),
                 h("td", h("time", fmt_time(e.time)[11:] or "?", title=fmt_time(e.time)), class_="hide-narrow"),
                 h("td", kind, class_=f"kind {kind}" if kind in KINDS else "kind"),
                 h("td", clip(e.action or "", 60)), h("td", clip(e.next or "", 60), class_="hide-narrow"),
                 h("td", self._details(e), class_="details"),
                 data_seq=e.seq, class_="at" if at is not None and e.seq == at else None)

    def _details(self, e: Row) -> str:
        info = e.info
        parts = []
        if isinstance(info, Broken):
            parts.append(str(info))
            info = None
        info = as_dict(info)
        if e.kind == "step" and info.get("condition") not in (None, "default"):
            parts.append(f"[{clip(info.get('condition'), 80)}: {clip(info.get('reason'), 100)}]")
        if e.kind in ("input", "retry", "stopped", "pruned") and "by" in info:
            parts.append(f"by {clip(info['by'], 40)}")
        for k in ("reason", "comment") if e.kind in ("input", "retry", "stopped", "pruned") else ():
            if k in info:
                parts.append(f"{k}: {clip(info[k], 120)}")
        if e.kind == "pruned":
            parts.extend(f"{clip(k, 30)}={clip(val, 40)}" for k, val in list(info.items())[:8]
                         if k not in ("by", "at", "reason", "comment"))
        if e.kind == "resume" and info.get("interrupted"):
            parts.append(f"after {clip(info['interrupted'], 20)} interruption(s) in a row")
        if e.kind == "waiting":
            parts.append("needs " + ", ".join(clip(as_dict(n).get("name"), 40) for n in as_list(info.get("needs"))))
        if e.kind == "start" and isinstance(info.get("forked_from"), dict):
            parts.append(f"forked from {clip(info['forked_from'], 80)}")
        if e.updates is not None:
            parts.append(clip(e.updates, 140))
        if e.inputs:
            parts.append("inputs " + clip(e.inputs, 100))
        if e.error:
            lines = str(e.error).strip().splitlines()
            parts.append(clip(lines[-1] if lines else e.error, 160))
        if e.snapshot:
            parts.append("(snapshot)")
        return " ".join(parts)

    def run_live(self, run_id: int, r: Request) -> dict[str, Any]:
        """What changed on a live run page since event ``since``: new timeline rows, new charts, a new head."""
        v = self._run_view(r)
        with self._log() as log:
            info = get_run(log, run_id)
            since = self._int(r, "since", 0, 0)
            if info.status != r.query.get("status"):
                return {"reload": True}
            if not isinstance(info.last_seq, int) or info.last_seq <= since:
                return {"since": info.last_seq, "live": info.status == "running"}
            parts = self._run_parts(log, info, v)
            out: dict[str, Any] = {"since": info.last_seq, "live": info.status == "running",
                                   "replace": {"head": parts["head"], "charts": parts["charts"],
                                               "state-section": parts["state"]}}
            if not v["at"] and (v["tpage"] or 1) == 1:
                rows = rows_of(log, run_id, max(since + 1, info.last_seq - TIMELINE_PER_PAGE + 1), info.last_seq)
                out["prepend"] = {"timeline-rows": join(self._timeline_row(run_id, e, v, None) for e in rows)}
        return out

    def run_json(self, run_id: int) -> Any:
        with self._log() as log:
            info = get_run(log, run_id)
            state = state_at(log, run_id)
        return {"run": run_id, "status": info.status, "steps": info.steps, "metrics": metrics_of(state)}

    def state_json(self, run_id: int, r: Request) -> Any:
        with self._log() as log:
            info = get_run(log, run_id)
            at = self._int(r, "at", info.last_seq)
            state = state_at(log, run_id, at)
        return {"run": run_id, "seq": at, "state": state.to_dict()}

    def run_csv(self, run_id: int) -> Csv:
        with self._log() as log:
            get_run(log, run_id)
            state = state_at(log, run_id).to_dict()
        lines = ["metric,index,value"] + [f"{csv_cell(m)},{i + 1},{csv_cell(x)}"
                                          for m, values in metrics_of(state).items() for i, x in enumerate(values)]
        return self._csv(f"run-{run_id}-metrics.csv", lines)

    def _csv(self, name: str, lines: list[str]) -> Csv:
        return Csv(name, lines)

    # -- compare --------------------------------------------------------------------------------------------
    def _compare_ids(self, r: Request) -> tuple[list[int], list[str]]:
        texts = [t for v in r.multi.get("run", []) + r.multi.get("runs", []) for t in re.split(r"[,\s]+", v) if t]
        ids: list[int] = []
        bad = []
        for t in texts:
            if ID.match(t) and 1 <= int(t) <= MAX_ID:
                if int(t) not in ids:
                    ids.append(int(t))
            else:
                bad.append(clip(t, 30))
        return sorted(ids[:MAX_COMPARE]), bad

    def _compared(self, log: EventLog, ids: list[int]) -> tuple[list[dict[str, Any]], list[str]]:
        found, problems = [], []
        for rid in ids:
            try:
                info = get_run(log, rid)
                final = state_at(log, rid).to_dict()
            except (FsmtrainError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
                problems.append(f"run {rid}: {clip(str(e), 200)}")
                continue
            row = log.conn.execute("SELECT snapshot FROM events WHERE run_id = ? AND seq = 1", (rid,)).fetchone()
            start = as_dict(decoded(row[0], "snapshot")) if row else {}
            settings = {str(k): val for k, val in start.items() if val is None or isinstance(val, (str, int, float, bool))}
            settings |= {f"tag:{k}": val for k, val in info.tags.items() if isinstance(val, (str, int, float, bool))}
            found.append({"id": rid, "info": info, "final": final, "settings": settings})
        return found, problems

    def compare_page(self, r: Request) -> Markup:
        ids, bad = self._compare_ids(r)
        with self._log() as log:
            found, problems = self._compared(log, ids)
        picker = h("form", h("label", "runs to compare ", h("input", name="runs", value=" ".join(map(str, ids)),
                                                           placeholder="e.g. 1 2 5", size=24)),
                   " ", h("button", "compare", type="submit"), method="get", action="/compare", class_="inline")
        body: list[Any] = [h("nav", h("a", "runs", href="/")), h("h1", "compare runs"), picker]
        body += [h("p", f"not a run id: {t}", class_="box failed") for t in bad]
        body += [h("p", p, class_="box failed") for p in problems]
        if not found:
            body.append(h("p", "Pick runs: tick them in the runs list (or a study's trials) and press compare, "
                               "or type their ids here."))
            return self.document("compare", body)
        keys = sorted({k for f in found for k in f["settings"]})
        differ = [k for k in keys if len({clip(f["settings"].get(k), 200) for f in found}) > 1]
        labels = {}
        for f in found:
            diff = ", ".join(f"{k}={clip(f['settings'].get(k), 24)}" for k in differ[:4])
            labels[f["id"]] = f"run {f['id']}" + (f" · {diff}" if diff else "")
        metrics = sorted({m for f in found for m in metrics_of(f["final"])})
        figures = []
        for m in metrics:
            series = [Series(labels[f["id"]], as_list(f["final"].get(m)), k) for k, f in enumerate(found)]
            figures.append(h("figure", h("figcaption", h("strong", m)),
                             chart(series, ylabel=m, best=chart_mode(m), xlabel="evaluation", height=300), data_metric=m))
        legend = h("div", h("table", h("thead", h("tr", h("th", "run"), h("th", "status"),
                                                  [h("th", k) for k in differ[:20]])),
                            h("tbody", [h("tr", h("td", h("a", labels[f["id"]], href=f"/run/{f['id']}"),
                                                  class_=f"legend-{k % 8}"),
                                          h("td", h("span", f["info"].status, class_=f"status {f['info'].status}")),
                                          [h("td", clip(f["settings"].get(d, "–"), 60)) for d in differ[:20]])
                                        for k, f in enumerate(found)]), id="compare-legend"), class_="scroll")
        body += [h("h2", "settings that differ"), legend if differ else h("p", "The runs have the same settings."),
                 h("p", h("a", "these metrics as CSV", href=self._link("/compare.csv", run=[f["id"] for f in found]))),
                 h("div", figures, class_="charts", id="curves")]
        return self.document("compare", body)

    def compare_csv(self, r: Request) -> Csv:
        ids, _ = self._compare_ids(r)
        with self._log() as log:
            found, _ = self._compared(log, ids)
        lines = ["run,metric,index,value"]
        for f in found:
            for m, values in metrics_of(f["final"]).items():
                lines += [f"{f['id']},{csv_cell(m)},{i + 1},{csv_cell(x)}" for i, x in enumerate(values)]
        return self._csv("compare-" + "-".join(str(f["id"]) for f in found) + ".csv", lines)

    # -- a study --------------------------------------------------------------------------------------------
    def study_page(self, run_id: int, r: Request) -> Markup:
        with self._log() as log:
            info = get_run(log, run_id)
            if not str(info.machine).startswith("study:"):
                raise RunNotFound(f"run {run_id} is a `{clip(info.machine, 60)}` run, not a study; see /run/{run_id}")
            parts = self._study_parts(log, info)
            version = self._version(log)
        live = self._link(f"/api/live/study/{run_id}") if info.status == "running" else None
        body = [h("nav", h("a", "runs", href="/"), " ", h("a", "the study's own run", href=f"/run/{run_id}")),
                parts["head"], parts["trials"], parts["curves"], parts["parallel"]]
        return self.document(f"study {run_id}", body, live=live, since=version)

    def _study_parts(self, log: EventLog, info: RunRow) -> dict[str, Markup]:
        from .tune.study import table, trials_of

        cache: dict[str, Any] = {}

        def state() -> dict[str, Any]:
            if "state" not in cache:
                cache["state"] = state_at(log, info.id).to_dict()
            return dict(cache["state"])

        def trials() -> tuple[list[dict[str, Any]], dict[Any, list[Any]]]:
            if "rows" not in cache:
                s = state()
                if s.get("mode") not in ("min", "max"):
                    s["mode"] = "min"
                cache["rows"] = table(s)
                cache["values"] = {t.index: list(t.values) for t in trials_of(s)}
            return cache["rows"], cache["values"]

        def head() -> Markup:
            s = state()
            metric, mode = s.get("metric"), s.get("mode")
            rows = []
            try:
                rows = trials()[0]
            except (FsmtrainError, ValueError, TypeError, KeyError, IndexError, AttributeError):
                pass
            settings = [f"{k} {clip(s[k], 60)}" for k in ("sampler", "scheduler", "milestones", "max_t",
                                                            "max_concurrent", "seed", "retries") if k in s]
            counts: dict[str, int] = {}
            for row in rows:
                counts[str(row.get("status"))] = counts.get(str(row.get("status")), 0) + 1
            best = as_dict(s.get("best"))
            named = None
            if best:
                params = ", ".join(f"{k}={fmt_num(val)}" for k, val in as_dict(best.get("params")).items())
                named = h("p", h("strong", "best: "), h("a", f"trial {fmt_num(best.get('index'))}",
                                                       href=f"/run/{best.get('run_id')}"),
                          f" (run {fmt_num(best.get('run_id'))}) · {clip(metric, 60)} {fmt_num(best.get('value'))} "
                          f"at epoch {fmt_num(best.get('epoch'))}", f" · {params}" if params else "",
                          class_="box note", id="best")
            return join([h("h1", f"study {info.id} · ", clip(info.machine, 60)[6:], " · ",
                           h("span", info.status, class_=f"status {info.status}", id="status")),
                         h("p", f"{len(rows)} of {fmt_num(s.get('n_trials'))} trials · {clip(metric, 60)} "
                                f"({clip(mode, 10)}) · ",
                           ", ".join(f"{n} {k}" for k, n in sorted(counts.items())), class_="facts"),
                         h("p", " · ".join(settings), class_="facts", id="search") if settings else None,
                         named])

        def trial_table() -> Markup:
            rows, _ = trials()
            s = state()
            metric = clip(s.get("metric"), 60)
            children: dict[Any, RunRow] = {x.id: x for x in list_runs(log, " WHERE r.parent_id = ?", [info.id])}
            best_run = as_dict(s.get("best")).get("run_id")
            out = []
            for row in rows:
                child = children.get(row.get("run_id"))
                status = str(row.get("status"))
                prune = ""
                if child is not None and child.status in ("pruned", "stopped"):
                    last = rows_of(log, child.id, child.last_seq, child.last_seq)[0]
                    note = as_dict(last.info)
                    prune = "; ".join(f"{clip(k, 20)} {clip(val, 40)}" for k, val in list(note.items())[:6]
                                      if k not in ("by", "at"))
                params = ", ".join(f"{clip(k, 30)}={fmt_num(val)}" for k, val in as_dict(row.get("params")).items())
                is_best = row.get("run_id") == best_run and best_run is not None
                out.append(h("tr", h("td", h("input", type="checkbox", name="run", value=clip(row.get("run_id"), 20),
                                             form="compare", aria_label=f"compare trial {fmt_num(row.get('trial'))}")),
                             h("td", fmt_num(row.get("trial")), h("strong", " ★ best", class_="best-mark") if is_best else None),
                             h("td", h("a", fmt_num(row.get("run_id")), href=f"/run/{clip(row.get('run_id'), 20)}")),
                             h("td", params),
                             h("td", h("span", status, class_=f"status {status}" if status in (*STATUSES, "completed",
                                                                                                  "paused", "pending")
                                       else "status")),
                             h("td", fmt_num(row.get("best")), title=f"at epoch {fmt_num(row.get('best_epoch'))}"),
                             h("td", fmt_num(row.get("epochs"))),
                             h("td", fmt_num(row.get("attempts"))),
                             h("td", clip(prune or row.get("error") or "", 160)),
                             class_="best" if is_best else status if status in ("pruned", "failed") else None,
                             data_trial=clip(row.get("trial"), 20)))
            return join([h("form", h("button", "compare selected trials", type="submit"), id="compare", method="get",
                               action="/compare", class_="inline"),
                         h("div", h("table", h("thead", h("tr", h("th", h("span", "compare", class_="sr")), h("th", "trial"),
                                                          h("th", "run"), h("th", "params"), h("th", "status"),
                                                          h("th", f"best {metric}"), h("th", "epochs"),
                                                          h("th", "attempts"), h("th", "note"))),
                                    h("tbody", out), id="trials"), class_="scroll")])

        def styles() -> dict[Any, int]:
            rows, _ = trials()
            ranked = [row for row in rows if is_number(row.get("best"))]
            return {row.get("trial"): k for k, row in enumerate(ranked[:5])}

        def curves() -> Markup | None:
            rows, values = trials()
            s = state()
            metric = clip(s.get("metric"), 60)
            style = styles()
            series = []
            for row in sorted(rows, key=lambda x: sort_key(x.get("trial"))):
                k = style.get(row.get("trial"), -1)
                vals = values.get(row.get("trial"), [])
                if not vals:
                    continue
                label = f"trial {fmt_num(row.get('trial'))}" + (" (best)" if k == 0 else "") + (
                    " (pruned)" if row.get("status") == "pruned" else "")
                series.append(Series(label, vals, k))
            if not series:
                return None
            mode = s.get("mode") if s.get("mode") in ("min", "max") else "min"
            note = h("p", f"The {len(style)} best trial(s) in colour, each with its own dash and marker; the others in "
                          "grey." if len(series) > len(style) else "Each trial in its own colour, dash and marker.",
                     class_="muted")
            return join([note, h("div", chart(series, ylabel=metric, xlabel="epoch", best=mode, height=320,
                                              title=metric), id="curves-chart", class_="scroll wide")])

        def para() -> Markup | None:
            rows, _ = trials()
            s = state()
            space = as_dict(s.get("space"))
            names = sorted({str(k) for row in rows for k in as_dict(row.get("params"))})[:12]
            if not names:
                return None
            axes = []
            for name in names:
                spec = as_dict(space.get(name))
                kind = spec.get("type")
                vals = [as_dict(row.get("params")).get(name) for row in rows]
                if kind == "choice" or any(not is_number(x) for x in vals if x is not None):
                    cats = tuple(dict.fromkeys(clip(x, 40) for x in (as_list(spec.get("values")) or vals)))
                    axes.append(Axis(name, "cat", cats))
                elif kind == "loguniform" or (kind == "int" and spec.get("log") is True):
                    axes.append(Axis(name, "log"))
                else:
                    axes.append(Axis(name, "num"))
            metric = clip(s.get("metric"), 60)
            axes.append(Axis(f"best {metric}"))
            style = styles()
            lines = []
            for row in rows:
                params = as_dict(row.get("params"))
                vals = [(params.get(a.name) if a.kind != "cat" else clip(params.get(a.name), 40))
                        if a.name in params else None for a in axes[:-1]] + [row.get("best")]
                label = f"trial {fmt_num(row.get('trial'))}: " + ", ".join(
                    f"{a.name}={fmt_num(params.get(a.name))}" for a in axes[:-1]) + f" → {metric} {fmt_num(row.get('best'))}"
                lines.append(Line(label, vals, style.get(row.get("trial"), -1), row.get("status") == "pruned"))
            return h("div", parallel(axes, lines, title="parameters against the metric"), class_="scroll wide")

        return {
            "head": self._section(None, head, id="study-head"),
            "trials": self._section("trials", trial_table, id="trials-section"),
            "curves": self._section("curves", curves, id="curves"),
            "parallel": self._section("parameters", para, id="parallel"),
        }

    def study_live(self, run_id: int, r: Request) -> dict[str, Any]:
        with self._log() as log:
            version = self._version(log)
            info = get_run(log, run_id)
            if str(version) == r.query.get("since"):
                return {"since": version, "live": info.status == "running"}
            parts = self._study_parts(log, info)
        return {"since": version, "live": info.status == "running",
                "replace": {"study-head": parts["head"], "trials-section": parts["trials"], "curves": parts["curves"],
                            "parallel": parts["parallel"]}}
