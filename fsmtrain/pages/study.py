"""A study's page in ``fsmtrain ui`` (``/study/ID``): its head and best trial, the trials table, the trials'
curves and the parameters against the metric, each part drawn from the study's replayed state; and its
live update.
"""

from __future__ import annotations

from typing import Any

from ..errors import FsmtrainError, RunNotFound
from ..log import EventLog
from ..logview import RunRow, as_dict, as_list, clip, fmt_num, get_run, list_runs, rows_of, sort_key
from ..markup import Markup, h, join
from ..plot import Axis, Line, Series, chart, is_number, parallel
from ..replay import state_at
from .layout import STATUSES, Layout, Request

__all__ = ["StudyPages"]


class StudyPages(Layout):
    """A study's page (``/study/ID``) and its live update."""

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
        from ..tune.study import table, trials_of

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
