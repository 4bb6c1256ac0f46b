"""The compare page of ``fsmtrain ui`` (``/compare``): chosen runs side by side, the settings in which they
differ and each metric's curves; and the same metrics as CSV.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import FsmtrainError
from ..log import MAX_ID, EventLog
from ..logview import as_dict, as_list, chart_mode, clip, csv_cell, decoded, get_run, metrics_of
from ..markup import Markup, h
from ..plot import Series, chart
from ..replay import state_at
from .layout import ID, Csv, Layout, Request

__all__ = ["ComparePages"]

MAX_COMPARE = 12


class ComparePages(Layout):
    """The compare page (``/compare``) and its CSV."""

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
