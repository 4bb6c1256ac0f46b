"""``fsmtrain ui``: a local web page over a log — runs, curves, the graph, the timeline, the state, gates.

Served by the standard library's HTTP server, every page rendered here as
HTML and plain SVG (no build step, no CDN, no script).  Pages read the log
read-only; the only write is a gate's input, which needs the server's token
(printed in the URL at start) and goes through the same validation as
``fsmtrain input``.  Nothing from the log is ever executed or imported: every
text is escaped.
"""

from __future__ import annotations

import html
import json
import math
import secrets
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

from .errors import FsmtrainError
from .log import EventLog
from .plot import curves
from .replay import state_at
from .state import Ref, dumps

__all__ = ["UI", "graph_svg"]

E = html.escape
CSS = """body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;font-size:13px}
td,th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
.waiting{color:#b45309}.finished{color:#15803d}.failed{color:#b91c1c}.running{color:#1d4ed8}
pre{background:#f6f6f6;padding:8px;max-height:30em;overflow:auto;font-size:12px}
form.gate{background:#fef3c7;padding:10px;border:1px solid #f59e0b;display:inline-block}
button{font-size:14px;margin-right:8px}.err{background:#fee2e2;padding:8px;border:1px solid #ef4444}"""


def graph_svg(description: dict[str, Any], current: str | None) -> str:
    """The machine as an SVG: actions as boxes in order from the entry, transitions as labelled arrows;
    ``current`` (the action due next) is filled and has ``class="current"``."""
    names = list(description["actions"])
    entry = description["entry"]
    order = [entry]  # in the order a run meets them: breadth first from the entry, in transition order
    for name in order:
        for src, dst, _ in description["transitions"]:
            if src == name and dst not in order:
                order.append(dst)
    order += [n for n in names if n not in order]
    w, h, gap = 120, 34, 90
    pos = {n: (20 + i * (w + gap), 60) for i, n in enumerate(order)}
    width = 40 + len(order) * (w + gap)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="190" font-family="sans-serif" font-size="11">',
           '<defs><marker id="a" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" orient="auto">'
           '<path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>']
    for k, (src, dst, cond) in enumerate(description["transitions"]):
        (x1, y1), (x2, _) = pos[src], pos[dst]
        if src == dst:
            d = f"M{x1 + w / 2 - 10},{y1} C{x1 + w / 2 - 30},{y1 - 40} {x1 + w / 2 + 30},{y1 - 40} {x1 + w / 2 + 10},{y1}"
            lx, ly = float(x1 + w / 2), float(y1 - 34)
        else:
            forward = x2 > x1
            sx, ex = (x1 + w, x2) if forward else (x1, x2 + w)
            sy = ey = y1 + h / 2
            bend: float = -50 - 12 * (k % 3) if forward else 80 + 12 * (k % 3)
            if forward and x2 - x1 == w + gap:
                bend = 0
            d = f"M{sx},{sy} Q{(sx + ex) / 2},{sy + bend} {ex},{ey}"
            lx, ly = float((sx + ex) / 2), float(sy + bend / 2 - 3 if bend else sy - 6)
        out.append(f'<path d="{d}" fill="none" stroke="#555" marker-end="url(#a)"/>')
        if cond != "default":
            out.append(f'<text x="{lx:.0f}" y="{ly:.0f}" text-anchor="middle" fill="#555">{E(_short(cond, 40))}</text>')
    for n in order:
        x, y = pos[n]
        cls = ' class="current"' if n == current else ""
        fill = "#fde68a" if n == current else ("#fff7ed" if description["actions"][n].get("inputs") else "white")
        border = 3 if n in description.get("terminal", []) else 1
        out.append(f'<g data-action="{E(n)}"{cls}><rect x="{x}" y="{y}" width="{w}" height="{h}" rx="8" fill="{fill}" '
                   f'stroke="#333" stroke-width="{border}"/><text x="{x + w / 2}" y="{y + 21}" text-anchor="middle">'
                   f'{E(n)}</text></g>')
    out.append("</svg>")
    return "\n".join(out)


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _metrics(state: Any) -> dict[str, list[float]]:
    out = {}
    for k in sorted(state):
        v = state[k]
        if isinstance(v, Sequence) and not isinstance(v, str) and v and \
                all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            out[k] = [float(x) for x in v]
    return out


def _refs(value: Any, where: str = "") -> list[tuple[str, Ref]]:
    if isinstance(value, Ref):
        return [(where, value)]
    if isinstance(value, dict):
        return [r for k, v in value.items() for r in _refs(v, f"{where}.{k}" if where else k)]
    if isinstance(value, list):
        return [r for i, v in enumerate(value) for r in _refs(v, f"{where}[{i}]")]
    return []


class UI:
    """The server: ``UI(log_path).serve(host, port)``; ``url`` carries the token."""

    def __init__(self, log_path: str | Path, *, token: str | None = None) -> None:
        self.log_path = Path(log_path)
        with EventLog(self.log_path, readonly=True):  # a clear error now if it is not a log
            pass
        self.token = token or secrets.token_urlsafe(16)
        self.server: ThreadingHTTPServer | None = None

    def bind(self, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
        ui = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                ui._handle(self, "GET")

            def do_POST(self) -> None:
                ui._handle(self, "POST")

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        return self.server

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/?token={self.token}"

    def serve_in_thread(self) -> threading.Thread:
        assert self.server is not None
        t = threading.Thread(target=self.server.serve_forever, daemon=True)
        t.start()
        return t

    # -- routing -------------------------------------------------------------------------------------
    def _handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(req.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        authed = secrets.compare_digest(query.get("token", ""), self.token)
        parts = [p for p in url.path.split("/") if p]
        try:
            if method == "GET" and not parts:
                return self._send(req, 200, self._runs_page(authed))
            if method == "GET" and len(parts) == 2 and parts[0] in ("run", "study") and parts[1].isdigit():
                run_id = int(parts[1])
                page = self._run_page(run_id, query, authed) if parts[0] == "run" else self._study_page(run_id, authed)
                return self._send(req, 200, page)
            if method == "GET" and len(parts) == 3 and parts[0] == "api" and parts[1] == "run" and parts[2].isdigit():
                return self._send_json(req, self._run_json(int(parts[2])))
            if method == "POST" and len(parts) == 3 and parts[0] == "run" and parts[1].isdigit() and parts[2] == "input":
                return self._post_input(req, int(parts[1]))
            return self._send(req, 404, self._page("Not found", f"<p>No page {E(url.path)}.</p>"))
        except FsmtrainError as e:
            code = 404 if "does not exist" in str(e) else 400
            return self._send(req, code, self._page("Error", f'<p class="err">{E(str(e))}</p><p><a href="/">runs</a></p>'))
        except Exception as e:  # a bug of ours: say so, keep serving
            return self._send(req, 500, self._page("Error", f'<p class="err">{E(type(e).__name__)}: {E(str(e))}</p>'))

    def _send(self, req: BaseHTTPRequestHandler, code: int, body: str, headers: dict[str, str] | None = None) -> None:
        data = body.encode()
        req.send_response(code)
        req.send_header("Content-Type", "text/html; charset=utf-8")
        req.send_header("Content-Length", str(len(data)))
        req.send_header("Cache-Control", "no-store")
        req.send_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                                                   "form-action 'self'")
        for k, v in (headers or {}).items():
            req.send_header(k, v)
        req.end_headers()
        req.wfile.write(data)

    def _send_json(self, req: BaseHTTPRequestHandler, obj: Any) -> None:
        data = dumps(obj).encode()
        req.send_response(200)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)

    def _page(self, title: str, body: str, *, refresh: bool = False) -> str:
        meta = '<meta http-equiv="refresh" content="2">' if refresh else ""
        return (f"<!doctype html><html><head><meta charset='utf-8'>{meta}<title>{E(title)} · fsmtrain</title>"
                f"<style>{CSS}</style></head><body>{body}</body></html>")

    def _link(self, path: str, authed: bool, **params: Any) -> str:
        q = {**params, **({"token": self.token} if authed else {})}
        return path + ("?" + urlencode(q) if q else "")

    # -- pages -----------------------------------------------------------------------------------------
    def _runs_page(self, authed: bool) -> str:
        with EventLog(self.log_path, readonly=True) as log:
            runs = log.runs()
        rows = []
        for r in runs:
            kind = "study" if r.machine.startswith("study:") else "run"
            parent = f'<a href="{self._link(f"/run/{r.parent_id}", authed)}">{r.parent_id}</a>' if r.parent_id else ""
            rows.append(f'<tr data-run="{r.id}"><td><a href="{self._link(f"/{kind}/{r.id}", authed)}">{r.id}</a></td>'
                        f"<td>{E(r.machine)}</td><td class='{r.status}'>{r.status}</td><td>{r.steps}</td>"
                        f"<td>{E(r.last_action or '')}</td><td>{parent}</td></tr>")
        body = (f"<h1>{E(self.log_path.name)}</h1><table id='runs'><tr><th>run</th><th>machine</th><th>status</th>"
                f"<th>steps</th><th>last action</th><th>parent</th></tr>{''.join(rows)}</table>")
        live = any(r.status == "running" for r in runs)
        return self._page(self.log_path.name, body, refresh=live)

    def _run_page(self, run_id: int, query: dict[str, str], authed: bool) -> str:
        with EventLog(self.log_path, readonly=True) as log:
            info = log.run(run_id)
            events = list(log.events(run_id))
            at = int(query["at"]) if query.get("at", "").isdigit() else info.last_seq
            state = state_at(log, run_id, at)
            final = state if at == info.last_seq else state_at(log, run_id)
        description = next((e.info.get("machine") for e in reversed(events)
                            if isinstance(e.info, dict) and isinstance(e.info.get("machine"), dict)), None)
        last = events[-1]
        current = last.action if info.status == "waiting" else info.next
        parts = [f"<p><a href='{self._link('/', authed)}'>runs</a></p>",
                 f"<h1>run {run_id} · {E(info.machine)} · <span class='{info.status}' id='status'>{info.status}</span></h1>"]
        if info.parent_id:
            parts.append(f"<p>child of <a href='{self._link(f'/study/{info.parent_id}', authed)}'>study {info.parent_id}</a></p>")
        if info.status == "waiting":
            parts.append(self._gate_form(run_id, last, final, authed))
        metrics = _metrics(final)
        if metrics:
            parts.append("<h2>metrics</h2><div id='curves'>" + curves(metrics, title=f"run {run_id}") + "</div>")
        if description is not None:
            parts.append("<h2>machine</h2><div id='graph'>" + graph_svg(description, current) + "</div>")
        refs = _refs(final.to_dict())
        if refs:
            parts.append("<h2>checkpoints</h2><table id='refs'>" + "".join(
                f"<tr><td>{E(k)}</td><td>{E(r.path)}</td><td>{r.size} bytes</td><td><code>{r.sha256[:16]}…</code></td></tr>"
                for k, r in refs) + "</table>")
        parts.append(f"<h2>state after event {at}</h2><pre id='state'>"
                     f"{E(json.dumps(json.loads(state.to_json()), indent=1, sort_keys=True, allow_nan=True))}</pre>")
        rows = []
        for e in events:
            detail = ""
            if e.kind == "step" and isinstance(e.info, dict) and e.info.get("condition") not in (None, "default"):
                detail = f"[{_short(str(e.info.get('reason')), 100)}] "
            if e.updates:
                detail += _short(dumps(e.updates), 120)
            if e.inputs:
                detail += " inputs " + _short(dumps(e.inputs), 80)
            if e.error:
                detail += " " + _short(e.error.strip().splitlines()[-1], 100)
            rows.append(f"<tr data-seq='{e.seq}'><td><a href='{self._link(f'/run/{run_id}', authed, at=e.seq)}'>{e.seq}</a>"
                        f"</td><td>{e.kind}</td><td>{E(e.action or '')}</td><td>{E(e.next or '')}</td><td>{E(detail)}</td></tr>")
        parts.append("<h2>timeline</h2><table id='timeline'><tr><th>seq</th><th>kind</th><th>action</th><th>next</th>"
                     "<th>details</th></tr>" + "".join(rows) + "</table>")
        return self._page(f"run {run_id}", "".join(parts), refresh=info.status == "running")

    def _gate_form(self, run_id: int, waiting: Any, state: Any, authed: bool) -> str:
        needs = (waiting.info or {}).get("needs", [])
        fields = []
        decision = next((n for n in needs if n["name"] == "decision" and n.get("choices")), None)
        for n in needs:
            if n is decision:
                continue
            label = f"{E(n['name'])} ({E(n['type'])}{'' if n.get('required', True) else ', optional'})"
            if n.get("choices"):
                opts = "".join(f"<option>{E(str(c))}</option>" for c in n["choices"])
                fields.append(f"<label>{label} <select name='{E(n['name'])}'>{opts}</select></label><br>")
            else:
                fields.append(f"<label>{label} <input name='{E(n['name'])}'></label><br>")
        if decision is not None:
            buttons = "".join(f"<button type='submit' name='decision' value='{E(str(c))}'>"
                              f"{'Go' if c == 'go' else 'No-go' if c == 'no-go' else E(str(c))}</button>"
                              for c in decision["choices"])
        else:
            buttons = "<button type='submit'>Submit</button>"
        token = f"<input type='hidden' name='token' value='{self.token}'>" if authed else ""
        note = "" if authed else "<p>Open this page from the URL the server printed (with its token) to answer.</p>"
        return (f"<h2>waiting at `{E(waiting.action or '')}`</h2>{note}"
                f"<form class='gate' method='post' action='/run/{run_id}/input'>{token}{''.join(fields)}{buttons}</form>")

    def _study_page(self, run_id: int, authed: bool) -> str:
        from .tune.study import table

        with EventLog(self.log_path, readonly=True) as log:
            info = log.run(run_id)
            if not info.machine.startswith("study:"):
                raise FsmtrainError(f"run {run_id} is a `{info.machine}` run, not a study")
            state = state_at(log, run_id)
        rows = table(state)
        metric = state["metric"]
        body = [f"<p><a href='{self._link('/', authed)}'>runs</a></p>",
                f"<h1>study {run_id} · <span class='{info.status}'>{info.status}</span> · {len(rows)} of "
                f"{state['n_trials']} trials · {E(metric)} ({state['mode']})</h1>",
                "<table id='trials'><tr><th>trial</th><th>run</th><th>params</th><th>status</th>"
                f"<th>best {E(metric)}</th><th>epochs</th></tr>"]
        for r in rows:
            params = ", ".join(f"{E(k)}={_num(v)}" for k, v in r["params"].items())
            best = "-" if r["best"] is None else _num(r["best"])
            href = self._link(f"/run/{r['run_id']}", authed)
            body.append(f"<tr><td>{r['trial']}</td><td><a href='{href}'>"
                        f"{r['run_id']}</a></td><td>{params}</td><td>{r['status']}</td><td>{best}</td>"
                        f"<td>{r['epochs']}</td></tr>")
        body.append("</table>")
        with EventLog(self.log_path, readonly=True) as log:
            series = {f"trial {r['trial']}": [float(v) for v in (state_at(log, r["run_id"]).get(metric) or [])]
                      for r in sorted(rows, key=lambda r: r["trial"])}
        body.append("<h2>curves</h2><div id='curves'>" + curves(series, title=metric, xlabel="epoch") + "</div>")
        return self._page(f"study {run_id}", "".join(body), refresh=info.status == "running")

    def _run_json(self, run_id: int) -> Any:
        with EventLog(self.log_path, readonly=True) as log:
            info = log.run(run_id)
            state = state_at(log, run_id)
        return {"run": run_id, "status": info.status, "steps": info.steps, "metrics": _metrics(state)}

    # -- the one write -------------------------------------------------------------------------------------
    def _post_input(self, req: BaseHTTPRequestHandler, run_id: int) -> None:
        from .runner import give_text_input

        length = int(req.headers.get("Content-Length") or 0)
        if length > 100_000:
            return self._send(req, 413, self._page("Too large", "<p class='err'>The form is too large.</p>"))
        raw = req.rfile.read(length).decode("utf-8", errors="replace")
        if "application/x-www-form-urlencoded" not in (req.headers.get("Content-Type") or ""):
            return self._send(req, 415, self._page("Error", "<p class='err'>Send the form as "
                                                   "application/x-www-form-urlencoded.</p>"))
        form = {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}
        if not secrets.compare_digest(form.pop("token", ""), self.token):
            return self._send(req, 403, self._page("Forbidden", "<p class='err'>This request has no valid token: open "
                                                   "the page from the URL the server printed. Nothing was written.</p>"))
        with EventLog(self.log_path) as log:
            give_text_input(log, run_id, form, by="web", blank_is_absent=True)
        req.send_response(303)
        req.send_header("Location", self._link(f"/run/{run_id}", True))
        req.send_header("Content-Length", "0")
        req.end_headers()


def _num(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return E(str(v))
