"""One run's page in ``fsmtrain ui`` (``/run/ID``): its head, what needs attention first (an error, a stop,
a gate's form), the metric charts, the machine's graph, checkpoints, the state after an event and the
timeline; its live update, its state as JSON and its metrics as CSV.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

from ..errors import FsmtrainError
from ..log import EventLog
from ..logview import (
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
    metrics_of,
    refs_of,
    rows_of,
    step_axes,
)
from ..markup import Markup, h, join
from ..plot import Series, chart, graph_legend, graph_svg, is_number
from ..replay import state_at
from ..state import Ref
from .layout import Csv, Layout, Request

__all__ = ["RunPages"]

TIMELINE_PER_PAGE = 50
KINDS = ("start", "step", "resume", "waiting", "input", "error", "failed", "retry", "stopped", "pruned")


class RunPages(Layout):
    """A run's page (``/run/ID``), its live update, its state as JSON and its metrics as CSV."""

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
            "charts": self._section("metrics", lambda: self._run_charts(run_id, final(), v, at, at_state, first_state,
                                                                             lambda keys: step_axes(log, run_id, keys)),
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
                    at_state: Callable[[], dict[str, Any]], first_state: Callable[[], dict[str, Any]],
                    axes_of: Callable[[list[str]], Any]) -> Markup | None:
        metrics = metrics_of(final)
        if not metrics:
            return None
        # train curves (a point per chunk or epoch) on the optimizer-step axis; evaluations per evaluation
        steps = final.get("steps")
        axes = axes_of(list(metrics)) if isinstance(steps, int) and not isinstance(steps, bool) else None
        xs_of = {m: axes.xs[m] for m in axes.trained if len(axes.xs[m]) == len(metrics[m])} if axes else {}
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
            xs = xs_of.get(m)
            series = [Series(m if not smooth else f"{m} (smoothed)", ema(values, smooth) if smooth else values, 0,
                             xs=xs)]
            if smooth:
                series.insert(0, Series(m, values, 0, faint=True, xs=xs))
            mark = marks.get(m)
            svg = chart(series, ylabel=m, log=log_scale, best=mode, mark_x=xs[mark - 1] if xs and mark else mark,
                        mark_label=f"event {at}" if m in marks else "", chart_id=f"chart-{len(figures)}",
                        xlabel="step" if xs else "evaluation")
            best = best_of(values, mode) if mode else None
            best_at = (f"step {xs[best[1] - 1]}" if xs else best[1]) if best else None
            toggled = [x for x in v["log"] if x != m] if log_scale else [*v["log"], m]
            caption = h("figcaption", h("strong", m), f" · {len(values)} value(s)",
                        f" · best ({mode}) {fmt_num(best[0])} at {best_at}" if best else "",
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
