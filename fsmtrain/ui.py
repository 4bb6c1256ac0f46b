"""``fsmtrain ui``: a local web page over a log — runs, curves, the graph, the timeline, the state, gates.

Served by the standard library's HTTP server; every page is built with the one
escaping builder of :mod:`fsmtrain.markup` (HTML and SVG alike, no template
that could forget to escape), so nothing from a log reaches the page
unescaped.  Pages read the log read-only; the only write is a gate's input,
which goes through the same validation as ``fsmtrain input``.

Security: the server answers only to loopback ``Host`` names (a page elsewhere
cannot read it through a rebinding DNS name), every request needs the token the
server printed (the token URL sets a cookie once, so links do not carry it),
and every response carries a strict Content-Security-Policy (scripts only from
this server: the small ``ui.js`` that updates a live page in place; with
scripts off, live pages refresh themselves) and ``nosniff``.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlencode, urlsplit

from .errors import CorruptLog, EventNotFound, FsmtrainError, LogBusy, RunNotFound
from .log import MAX_ID, EventLog, RunInfo, decode
from .markup import Markup, h, join
from .plot import Axis, Line, Series, chart, graph_legend, graph_svg, is_number, parallel
from .replay import state_at
from .state import Ref, dumps, loads

__all__ = ["UI", "graph_svg", "is_loopback"]

STATUSES = ("running", "waiting", "finished", "failed", "stopped", "pruned")
KINDS = ("start", "step", "resume", "waiting", "input", "error", "failed", "retry", "stopped", "pruned")
TIMELINE_PER_PAGE = 50
RUNS_PER_PAGE = 50
MAX_COMPARE = 12
MAX_FORM = 100_000
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
STATIC = {"ui.js": "text/javascript; charset=utf-8", "ui.css": "text/css; charset=utf-8"}
_ID = re.compile(r"[0-9]{1,19}\Z")  # ASCII digits only: str.isdigit() also takes '١٢'
_MAX_MODE = re.compile(r"acc|auc|f1|precision|recall|score|iou|map|bleu|r2|reward|return", re.I)
_NO_BEST = re.compile(r"(^|_)(lr|learning_rate|momentum|wd|weight_decay|beta\d?|temperature|grad_norm|epochs?|steps?|"
                      r"time|elapsed|throughput)($|_)", re.I)  # settings and counters: no "best" to mark


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``), with or without brackets."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


class Response(NamedTuple):
    code: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


class Request(NamedTuple):
    method: str
    path: str
    parts: list[str]
    query: dict[str, str]
    multi: dict[str, list[str]]


# -- small tolerant readers: a forged log may hold anything ---------------------------------------------
def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, (list, tuple)) else []


def _text(v: Any, width: int = 200) -> str:
    """Any value as short text (JSON for structures), clipped to ``width``."""
    if isinstance(v, str):
        text = v
    else:
        try:
            text = dumps(v)
        except (TypeError, ValueError, RecursionError):
            text = repr(v)
    return text if len(text) <= width else text[: width - 1] + "…"


def _num(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return _text(v)
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    if isinstance(v, int):
        return str(v)
    return _text(v, 60)


def _when(t: Any) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def _duration(seconds: Any) -> str:
    if not is_number(seconds) or seconds < 0:
        return "?"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400 * 3:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _mode(metric: str) -> str:
    """Whether a metric is better high (accuracy, F1, reward, ...) or low (losses, errors): ``"max"`` or ``"min"``."""
    return "max" if _MAX_MODE.search(metric) else "min"


def _chart_mode(metric: str) -> str | None:
    """The best point a chart of ``metric`` marks: none for a setting or a counter (a learning rate's minimum is
    not its best)."""
    return None if _NO_BEST.search(metric) else _mode(metric)


def _numbers(v: Any) -> bool:
    """A metric history: a non-empty list holding at least one number."""
    return isinstance(v, (list, tuple)) and bool(v) and any(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)


def _metrics(state: Mapping[str, Any]) -> dict[str, list[Any]]:
    return {str(k): list(state[k]) for k in sorted(state, key=str) if _numbers(state[k])}


def _refs(value: Any, where: str = "") -> list[tuple[str, Ref]]:
    if isinstance(value, Ref):
        return [(where, value)]
    if isinstance(value, dict):
        return [r for k, v in value.items() for r in _refs(v, f"{where}.{k}" if where else str(k))]
    if isinstance(value, list):
        return [r for i, v in enumerate(value) for r in _refs(v, f"{where}[{i}]")]
    return []


def _smooth(values: Sequence[Any], weight: float) -> list[Any]:
    """TensorBoard's smoothing: an exponential moving average, debiased at the start; non-numbers kept out."""
    out: list[Any] = []
    last, n = 0.0, 0
    for v in values:
        if not is_number(v):
            out.append(None)
            continue
        n += 1
        last = last * weight + (1 - weight) * float(v)
        out.append(last / (1 - weight ** n))
    return out


def _best_of(values: Sequence[Any], mode: str) -> tuple[float, int] | None:
    best: tuple[float, int] | None = None
    for i, v in enumerate(values):
        if is_number(v) and (best is None or (v < best[0] if mode == "min" else v > best[0])):
            best = (float(v), i + 1)
    return best


def _safe_key(v: Any) -> tuple[int, Any]:
    """A sort key for values of any type (a forged column may hold text where numbers belong)."""
    if is_number(v):
        return (0, float(v))
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return (2, 0)
    return (1, str(v))


def _csv_cell(v: Any) -> str:
    """A CSV cell; text that a spreadsheet would run as a formula is quoted with a leading '."""
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    text = _text(v, 10_000)
    if text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        text = "'" + text
    if any(c in text for c in ',"\n\r'):
        text = '"' + text.replace('"', '""') + '"'
    return text


# -- reading the log (tolerantly; never one fold per run for a listing) -----------------------------------
_RUNS_SQL = """
    SELECT r.id, r.machine, r.fingerprint, r.created, r.parent_id, r.parent_seq, r.tags,
           e.seq, e.step, e.time, e.kind, e.action, e.next
    FROM runs r JOIN events e ON e.run_id = r.id AND e.seq = (SELECT max(seq) FROM events WHERE run_id = r.id)
"""
_ROWS_SQL = ("SELECT seq, step, time, kind, action, attempt, inputs, updates, next, info, snapshot IS NOT NULL, error "
             "FROM events WHERE run_id = ? AND seq >= ? AND seq <= ? ORDER BY seq DESC")


def _tags(text: Any) -> dict[str, Any]:
    try:
        tags = loads(text) if isinstance(text, str) else text
    except (ValueError, TypeError, RecursionError):
        return {"(unreadable tags)": _text(text, 80)}
    return tags if isinstance(tags, dict) else {"tags": tags}


def _runs(log: EventLog, where: str = "", params: Sequence[Any] = ()) -> list[RunInfo]:
    """Every run (or those ``where`` selects) with what its last event says, oldest first."""
    out = []
    for row in log.conn.execute(_RUNS_SQL + where + " ORDER BY r.id", list(params)):
        r = list(row)
        r[6] = _tags(r[6])
        out.append(RunInfo(*r))
    return out


def _run(log: EventLog, run_id: int) -> RunInfo:
    found = _runs(log, " WHERE r.id = ?", [run_id])
    if not found:
        n = log.conn.execute("SELECT count(*) FROM runs").fetchone()[0]
        raise RunNotFound(f"run {run_id} does not exist in {log.path.name} ({n} run(s) in the log)")
    return found[0]


class Row(NamedTuple):
    """One event as the timeline shows it (JSON columns decoded; a broken one becomes a :class:`Broken`)."""

    seq: Any
    step: Any
    time: Any
    kind: Any
    action: Any
    attempt: Any
    inputs: Any
    updates: Any
    next: Any
    info: Any
    snapshot: bool
    error: Any


class Broken(str):
    """A JSON column that could not be read (its text says why)."""


def _decode(text: Any, where: str) -> Any:
    if text is None:
        return None
    try:
        return decode(text, where)
    except CorruptLog as e:
        return Broken(str(e))


def _rows(log: EventLog, run_id: int, lo: int, hi: int) -> list[Row]:
    """Events ``lo..hi`` of a run, newest first, without their snapshots."""
    out = []
    for r in log.conn.execute(_ROWS_SQL, (run_id, lo, hi)):
        where = f"run {run_id} event {r[0]}"
        out.append(Row(r[0], r[1], r[2], r[3], r[4], r[5], _decode(r[6], where + " inputs"),
                       _decode(r[7], where + " updates"), r[8], _decode(r[9], where + " info"), bool(r[10]), r[11]))
    return out


def _description(log: EventLog, run_id: int) -> dict[str, Any] | None:
    """The machine graph the run recorded last: its start event's, or a later resume's with a changed machine."""
    for (text,) in log.conn.execute(
            "SELECT info FROM events WHERE run_id = ? AND (seq = 1 OR (kind = 'resume' AND instr(info, '\"machine\":') > 0)) "
            "ORDER BY seq DESC", (run_id,)):
        info = _decode(text, f"run {run_id} info")
        if isinstance(info, dict) and isinstance(info.get("machine"), dict):
            machine: dict[str, Any] = info["machine"]
            return machine
    return None


def _best_record(log: EventLog, run_id: int) -> Any:
    """The run's ``best`` state key (what a checkpoint monitors) without folding: the newest update that sets it
    after the last snapshot, else that snapshot's."""
    row = log.conn.execute("SELECT max(seq) FROM events WHERE run_id = ? AND snapshot IS NOT NULL", (run_id,)).fetchone()
    snap_seq = row[0] if row and isinstance(row[0], int) else 0
    for (text,) in log.conn.execute("SELECT updates FROM events WHERE run_id = ? AND seq > ? AND updates IS NOT NULL "
                                    "ORDER BY seq DESC", (run_id, snap_seq)):
        if isinstance(text, str) and '"best"' in text:
            u = _decode(text, "updates")
            if isinstance(u, dict) and isinstance(u.get("set"), dict) and "best" in u["set"]:
                return u["set"]["best"]
    if snap_seq:
        (text,) = log.conn.execute("SELECT snapshot FROM events WHERE run_id = ? AND seq = ?", (run_id, snap_seq)).fetchone()
        if isinstance(text, str) and '"best"' in text:
            return _dict(_decode(text, "snapshot")).get("best")
    return None


def _series(log: EventLog, run_id: int, key: str) -> list[Any]:
    """One state key's list as of the run's last event: the last snapshot's and what was appended since."""
    row = log.conn.execute("SELECT max(seq) FROM events WHERE run_id = ? AND snapshot IS NOT NULL", (run_id,)).fetchone()
    snap_seq = row[0] if row and isinstance(row[0], int) else 0
    values: list[Any] = []
    if snap_seq:
        (text,) = log.conn.execute("SELECT snapshot FROM events WHERE run_id = ? AND seq = ?", (run_id, snap_seq)).fetchone()
        values = _list(_dict(_decode(text, "snapshot")).get(key))
    needle = dumps(key)
    for (text,) in log.conn.execute("SELECT updates FROM events WHERE run_id = ? AND seq > ? AND updates IS NOT NULL "
                                    "ORDER BY seq", (run_id, snap_seq)):
        if isinstance(text, str) and needle in text:
            u = _dict(_decode(text, "updates"))
            if key in _dict(u.get("set")):
                values = _list(u["set"][key])
            values = values + _list(_dict(u.get("append")).get(key))
    return values


def _study_settings(log: EventLog, study_id: Any, cache: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    """A study's settings (metric, mode, ...) from its start event's snapshot (read once per request)."""
    if study_id not in cache:
        cache[study_id] = {}
        if isinstance(study_id, int) and not isinstance(study_id, bool) and 1 <= study_id <= MAX_ID:
            row = log.conn.execute("SELECT snapshot FROM events WHERE run_id = ? AND seq = 1", (study_id,)).fetchone()
            if row is not None:
                cache[study_id] = _dict(_decode(row[0], "snapshot"))
    return cache[study_id]


class Best(NamedTuple):
    metric: str
    value: float
    epoch: Any
    mode: str


def _monitored_best(log: EventLog, r: RunInfo, metric: str | None, mode: str | None,
                    studies: dict[Any, dict[str, Any]]) -> Best | None:
    """The best value of the run's monitored metric: ``metric`` when asked for, else its ``best`` record
    (a checkpoint's monitor), else (a study's trial) the study's metric."""
    if metric is None:
        rec = _best_record(log, r.id)
        if isinstance(rec, dict) and is_number(rec.get("value")):
            m = str(rec.get("metric") or "best")
            return Best(m, float(rec["value"]), rec.get("epoch"), _mode(m))
        settings = _study_settings(log, r.tags.get("study"), studies) if "study" in r.tags else {}
        if not isinstance(settings.get("metric"), str):
            return None
        metric, mode = settings["metric"], settings.get("mode") if settings.get("mode") in ("min", "max") else None
    assert metric is not None
    mode = mode or _mode(metric)
    found = _best_of(_series(log, r.id, metric), mode)
    return None if found is None else Best(metric, found[0], found[1], mode)


# -- the server -----------------------------------------------------------------------------------------------
class UI:
    """The server: ``UI(log_path).bind(host, port)``, then ``serve_forever`` (or ``serve_in_thread``);
    ``url`` carries the token.  A host that is not loopback is refused unless ``allow_remote``."""

    def __init__(self, log_path: str | os.PathLike[str], *, token: str | None = None, allow_remote: bool = False,
                 readonly: bool = False) -> None:
        self.log_path = Path(log_path)
        self.readonly = readonly  # never answer a gate (also when the log cannot be written)
        with EventLog(self.log_path, readonly=True):  # a clear error now if it is not a log
            pass
        self.token = token or secrets.token_urlsafe(16)
        self.allow_remote = allow_remote
        self.server: ThreadingHTTPServer | None = None
        self._hosts: set[str] = {"127.0.0.1", "localhost", "::1"}

    def bind(self, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
        """Listen on ``host:port`` (``port=0``: any free port); refuses a non-loopback host unless ``allow_remote``."""
        if not is_loopback(host) and not self.allow_remote:
            raise FsmtrainError(f"--host {host} would serve the log to other machines; the page is meant for this one. "
                                "Pass --allow-remote to do so deliberately (anyone who gets the URL can read the log "
                                "and answer gates, over plain HTTP)")
        ui = self
        bare = host.strip("[]")

        class Handler(BaseHTTPRequestHandler):
            timeout = 30  # a client that stops sending holds a thread no longer than this
            server_version = "fsmtrain-ui"
            sys_version = ""

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def end_headers(self) -> None:  # every response, error pages of the standard library included
                self.send_header("X-Content-Type-Options", "nosniff")
                self.send_header("Content-Security-Policy", CSP)
                self.send_header("Referrer-Policy", "no-referrer")
                self.send_header("Cache-Control", "no-store")
                super().end_headers()

            def do_GET(self) -> None:
                ui._handle(self, "GET")

            def do_POST(self) -> None:
                ui._handle(self, "POST")

        server_class = ThreadingHTTPServer
        if ":" in bare:
            class Server6(ThreadingHTTPServer):
                address_family = socket.AF_INET6
            server_class = Server6
        self.server = server_class((bare, port), Handler)
        self.server.daemon_threads = True
        self._hosts.add(bare.lower())
        if self.allow_remote and bare in ("0.0.0.0", "::", ""):
            self._hosts |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        return self.server

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        """The address to open, with the token (it sets a cookie; later links do not carry it)."""
        assert self.server is not None
        host = str(self.server.server_address[0])
        if host in ("0.0.0.0", "::"):
            host = socket.gethostname()
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/?token={self.token}"

    def serve_in_thread(self) -> threading.Thread:
        assert self.server is not None
        t = threading.Thread(target=self.server.serve_forever, daemon=True)
        t.start()
        return t

    # -- requests ----------------------------------------------------------------------------------------
    def _handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        try:
            resp = self._respond(req, method)
        except FsmtrainError as e:
            resp = self._error(e)
        except Exception as e:  # a bug of ours: say so, keep serving
            resp = self._message(500, "Error", f"The page failed ({type(e).__name__}: {e}). This is a bug in "
                                               "fsmtrain ui; the log is unchanged.")
        req.send_response(resp.code)
        req.send_header("Content-Type", resp.content_type)
        req.send_header("Content-Length", str(len(resp.body)))
        for k, v in resp.headers:
            req.send_header(k, v)
        req.end_headers()
        if resp.body:
            req.wfile.write(resp.body)

    def _error(self, e: FsmtrainError) -> Response:
        code = 404 if isinstance(e, (RunNotFound, EventNotFound)) else 503 if isinstance(e, LogBusy) else 400
        return self._message(code, "Not found" if code == 404 else "Error", str(e), back=True)

    def _host_ok(self, host: str | None) -> bool:
        if not host:
            return False
        host = host.strip().lower()
        m = re.fullmatch(r"(\[[0-9a-f:.]+\]|[^:\[\]]+)(?::[0-9]{1,5})?", host)
        if not m:
            return False
        name = m.group(1).strip("[]")
        return name in self._hosts or is_loopback(name) or (self.allow_remote and _ip_literal(name))

    def _authed(self, req: BaseHTTPRequestHandler, given: str | None) -> bool:
        want = self.token.encode()
        if given is not None:
            return hmac.compare_digest(given.encode("utf-8", "replace"), want)
        for part in (req.headers.get("Cookie") or "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == self._cookie and hmac.compare_digest(value.strip().encode("utf-8", "replace"), want):
                return True
        return False

    @property
    def _cookie(self) -> str:
        return f"fsmtrain_ui_{self.port}"

    def _respond(self, req: BaseHTTPRequestHandler, method: str) -> Response:
        if not self._host_ok(req.headers.get("Host")):
            return self._message(421, "Wrong host", f"This fsmtrain ui answers only to this machine's loopback "
                                 f"names (http://127.0.0.1:{self.port}/); Host {_text(req.headers.get('Host'), 80)!r} "
                                 "is not one of them.")
        url = urlsplit(req.path)
        multi = parse_qs(url.query, keep_blank_values=True)
        query = {k: v[-1] for k, v in multi.items()}
        parts = [p for p in url.path.split("/") if p]
        r = Request(method, url.path, parts, query, multi)
        if method == "GET" and len(parts) == 2 and parts[0] == "static" and parts[1] in STATIC:
            data = (Path(__file__).with_name(parts[1])).read_bytes()
            return Response(200, data, STATIC[parts[1]])
        if method == "GET" and parts == ["favicon.ico"]:
            return Response(204, b"", "image/x-icon")
        if method == "POST":
            if len(parts) == 3 and parts[0] == "run" and parts[2] == "input":
                return self._post_input(req, self._id(parts[1]))
            return self._message(404, "Not found", f"Nothing to post to at {_text(url.path, 100)}.", back=True)
        token = query.get("token")
        if not self._authed(req, token):
            if token is not None:
                return self._message(403, "Wrong token", "This is not the token this server printed (a restarted "
                                     "server prints a new one). Open the URL `fsmtrain ui` printed when it started.")
            return self._message(401, "Token needed", "This page shows a training log, so it needs the token the "
                                 "server printed when it started: open the URL from that line "
                                 f"(http://127.0.0.1:{self.port}/?token=…) once, and this browser keeps it (a cookie). "
                                 "Lost it? Stop `fsmtrain ui` and start it again for a new URL.")
        if token is not None and parts[:1] != ["api"] and not url.path.endswith(".csv"):
            rest = {k: v for k, v in multi.items() if k != "token"}
            location = url.path + ("?" + urlencode(rest, doseq=True) if rest else "")
            return Response(303, b"", headers=(("Location", location), (
                "Set-Cookie", f"{self._cookie}={self.token}; Path=/; HttpOnly; SameSite=Strict")))
        return self._route(r)

    def _id(self, text: str) -> int:
        """A run id from a URL: ASCII digits within SQLite's range, else RunNotFound (a 404)."""
        if not _ID.match(text) or not 1 <= int(text) <= MAX_ID:
            raise RunNotFound(f"run {_text(text, 40)!r} does not exist (run ids are whole numbers from 1 to {MAX_ID})")
        return int(text)

    def _route(self, r: Request) -> Response:
        p = r.parts
        pages: dict[tuple[str, ...], Callable[[], Response]] = {
            (): lambda: self._html(self._runs_page(r)),
            ("compare",): lambda: self._html(self._compare_page(r)),
            ("compare.csv",): lambda: self._compare_csv(r),
        }
        if tuple(p) in pages:
            return pages[tuple(p)]()
        if len(p) == 2 and p[0] == "run":
            return self._html(self._run_page(self._id(p[1]), r))
        if len(p) == 3 and p[0] == "run" and p[2] == "metrics.csv":
            return self._run_csv(self._id(p[1]))
        if len(p) == 2 and p[0] == "study":
            return self._html(self._study_page(self._id(p[1]), r))
        if len(p) == 3 and p[:2] == ["api", "run"]:
            return self._json(self._run_json(self._id(p[2])))
        if len(p) == 4 and p[:2] == ["api", "run"] and p[3] == "state":
            return self._json(self._state_json(self._id(p[2]), r))
        if len(p) == 3 and p[:2] == ["api", "live"] and p[2] == "runs":
            return self._json(self._runs_live(r))
        if len(p) == 4 and p[:2] == ["api", "live"] and p[2] in ("run", "study"):
            rid = self._id(p[3])
            return self._json(self._run_live(rid, r) if p[2] == "run" else self._study_live(rid, r))
        return self._message(404, "Not found", f"No page {_text(r.path, 100)}.", back=True)

    # -- responses ---------------------------------------------------------------------------------------
    def _html(self, page: Markup, code: int = 200) -> Response:
        return Response(code, page.encode("utf-8", "replace"))

    def _json(self, obj: Any) -> Response:
        return Response(200, dumps(obj).encode("utf-8", "replace"), "application/json")

    def _message(self, code: int, title: str, text: str, back: bool = False) -> Response:
        body = [h("h1", title), h("p", text, class_="box failed" if code >= 400 else "box note")]
        if back:
            body.append(h("p", h("a", "all runs", href="/")))
        return self._html(self._document(title, body), code)

    def _document(self, title: str, body: Any, *, live: str | None = None, since: Any = None) -> Markup:
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
        return min(max(int(text), lo), hi) if _ID.match(text) else default

    @staticmethod
    def _section(title: str | None, build: Callable[[], Any], **attrs: Any) -> Markup:
        """A part of a page; if the log holds something it cannot show, the part says so and the page goes on."""
        try:
            content = build()
        except (FsmtrainError, ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError,
                OverflowError, ZeroDivisionError) as e:
            content = h("p", f"This part cannot be shown: {_text(str(e) or type(e).__name__, 400)}", class_="box failed")
        if content is None:
            return h("section", **attrs)  # (empty, so that a live update can fill it)
        return h("section", h("h2", title) if title else None, content, **attrs)

    # -- the runs list --------------------------------------------------------------------------------------
    def _runs_query(self, r: Request) -> dict[str, Any]:
        sort = r.query.get("sort", "id")
        q: dict[str, Any] = {"status": r.query.get("status") if r.query.get("status") in STATUSES else None,
             "machine": r.query.get("machine") or None, "tag": r.query.get("tag") or None,
             "sort": sort if sort in ("id", "machine", "status", "steps", "started", "updated", "duration") else "id",
             "order": "asc" if r.query.get("order") == "asc" else "desc",
             "metric": r.query.get("metric") or None,
             "mode": r.query.get("mode") if r.query.get("mode") in ("min", "max") else None}
        q["page"] = self._int(r, "page", 1)
        q["per"] = self._int(r, "per", RUNS_PER_PAGE, 10, 500)
        return q

    def _listing(self, log: EventLog, q: dict[str, Any]) -> tuple[list[RunInfo], list[RunInfo], list[str]]:
        runs = _runs(log)
        machines = sorted({str(x.machine) for x in runs})
        chosen = runs
        if q["status"]:
            chosen = [x for x in chosen if x.status == q["status"]]
        if q["machine"]:
            chosen = [x for x in chosen if str(x.machine) == q["machine"]]
        if q["tag"]:
            key, sep, want = q["tag"].partition("=")
            chosen = [x for x in chosen if key in x.tags and (not sep or _text(x.tags[key], 10_000) == want)]
        keys: dict[str, Callable[[RunInfo], Any]] = {
            "id": lambda x: (0, x.id), "machine": lambda x: _safe_key(x.machine), "status": lambda x: (1, x.status),
            "steps": lambda x: _safe_key(x.steps), "started": lambda x: _safe_key(x.created),
            "updated": lambda x: _safe_key(x.last_time),
            "duration": lambda x: _safe_key(x.last_time - x.created if is_number(x.last_time) and is_number(x.created)
                                            else None)}
        chosen = sorted(chosen, key=lambda x: (keys[q["sort"]](x), x.id), reverse=q["order"] == "desc")
        return runs, chosen, machines

    def _runs_page(self, r: Request) -> Markup:
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
        return self._document(self.log_path.name, body, live=live_url, since=version)

    def _runs_table(self, log: EventLog, chosen: list[RunInfo], q: dict[str, Any]) -> Markup:
        per, total = q["per"], len(chosen)
        pages = max(1, math.ceil(total / per))
        page = min(q["page"], pages)
        shown = chosen[(page - 1) * per: page * per]
        studies: dict[Any, dict[str, Any]] = {}
        rows = []
        for x in shown:
            try:
                best = _monitored_best(log, x, q["metric"], q["mode"], studies)
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

    def _run_row(self, x: RunInfo, best: Best | None) -> Markup:
        machine = str(x.machine)
        kind = "study" if machine.startswith("study:") else "run"
        status = x.status
        duration = x.last_time - x.created if is_number(x.last_time) and is_number(x.created) else None
        tags = ", ".join(f"{k}={_text(v, 40)}" for k, v in list(x.tags.items())[:6])
        return h("tr",
                 h("td", h("input", type="checkbox", name="run", value=x.id, form="compare",
                           aria_label=f"compare run {x.id}")),
                 h("td", h("a", x.id, href=f"/{kind}/{x.id}")),
                 h("td", _text(machine, 60)),
                 h("td", h("span", status, class_=f"status {status}")),
                 h("td", _num(x.steps), class_="hide-narrow"),
                 h("td", _text(x.last_action or "", 40), class_="hide-narrow"),
                 h("td", h("time", _when(x.created)), class_="hide-narrow when"),
                 h("td", h("time", _when(x.last_time)), class_="when"),
                 h("td", _duration(duration), class_="hide-narrow"),
                 h("td", h("span", _num(best.value), title=f"{best.metric} ({best.mode}) at {_num(best.epoch)}",
                           class_="best") if best else "–",
                   " ", h("small", best.metric, class_="muted") if best else None),
                 h("td", _text(tags, 120), class_="hide-narrow"),
                 h("td", h("a", x.parent_id, href=f"/run/{x.parent_id}") if x.parent_id is not None else "",
                   class_="hide-narrow"),
                 data_run=x.id, data_status=status)

    def _runs_live(self, r: Request) -> dict[str, Any]:
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

    def _run_page(self, run_id: int, r: Request) -> Markup:
        v = self._run_view(r)
        with self._log() as log:
            info = _run(log, run_id)
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
        return self._document(f"run {run_id}", body, live=live, since=info.last_seq)

    def _run_parts(self, log: EventLog, info: RunInfo, v: dict[str, Any]) -> dict[str, Markup]:
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
            return _dict(_decode(row[0], "snapshot")) if row else {}

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

    def _run_head(self, log: EventLog, info: RunInfo) -> Markup:
        status = info.status
        resumes = log.conn.execute("SELECT count(*) FROM events WHERE run_id = ? AND kind = 'resume'", (info.id,)).fetchone()[0]
        interrupted = 0
        if resumes:
            (text,) = log.conn.execute("SELECT info FROM events WHERE run_id = ? AND kind = 'resume' ORDER BY seq DESC "
                                       "LIMIT 1", (info.id,)).fetchone()
            n = _dict(_decode(text, "resume info")).get("interrupted")
            interrupted = n if isinstance(n, int) and not isinstance(n, bool) else 0
        duration = info.last_time - info.created if is_number(info.last_time) and is_number(info.created) else None
        facts: list[Any] = [f"{_num(info.steps)} step(s), {_num(info.last_seq)} event(s)",
                            f"started {_when(info.created)}", f"updated {_when(info.last_time)}",
                            f"wall time {_duration(duration)}"]
        if resumes:
            facts.append(f"resumed {resumes} time(s)" + (f", {interrupted} interruption(s) in a row before the last resume"
                                                          if interrupted else ""))
        if info.parent_id is not None:
            facts.append(join(["forked from ", h("a", f"run {info.parent_id}", href=f"/run/{info.parent_id}"),
                               f" at event {_num(info.parent_seq)}"]) if "study" not in info.tags else
                         join(["trial of ", h("a", f"study {info.parent_id}", href=f"/study/{info.parent_id}")]))
        if status == "running" and info.next:
            facts.append(join(["next: ", h("code", _text(info.next, 60))]))
        tags = [h("span", f"{k}={_text(val, 60)}", class_="tag") for k, val in list(info.tags.items())[:20]]
        return join([h("h1", f"run {info.id} · ", _text(info.machine, 80), " · ",
                       h("span", status, class_=f"status {status}", id="status")),
                     h("p", join(facts, " · "), class_="facts"),
                     h("p", "tags: ", join(tags, " "), class_="tags") if tags else None,
                     h("p", h("a", "metrics as CSV", href=f"/run/{info.id}/metrics.csv"), " · ",
                       h("a", "state as JSON", href=f"/api/run/{info.id}/state"), class_="muted")])

    def _attention(self, log: EventLog, info: RunInfo) -> Markup | None:
        """What a person must see first: a failed run's error, who stopped it and why, the gate, what happens next."""
        status = info.status
        last = _rows(log, info.id, info.last_seq, info.last_seq)[0]
        note = _dict(last.info)
        if status == "failed":
            error = str(last.error or "").strip() or "(no error text recorded)"
            lines = error.splitlines() or [error]
            return h("div", h("h2", "failed at ", h("code", _text(last.action or "?", 60)),
                              f" (attempt {_num(last.attempt)})" if last.attempt is not None else "",
                              f" at {_when(last.time)}"),
                     h("p", h("strong", _text(lines[-1], 500)), class_="error-line"),
                     h("details", h("summary", "the whole error"), h("pre", _text(error, 20_000))) if len(lines) > 1 else None,
                     h("p", "To continue from its last committed step, record a retry: ",
                       h("code", f"fsmtrain retry {self.log_path.name} {info.id} --comment \"why\""),
                       ", then run the training command again or a worker."),
                     class_="box failed", id="error")
        if status in ("stopped", "pruned"):
            extra = {k: val for k, val in note.items() if k not in ("by", "at", "reason", "comment")}
            why = note.get("reason", note.get("comment"))
            return h("div", h("h2", f"{status} by ", _text(note.get("by", "?"), 80), f" at {_when(note.get('at', last.time))}"),
                     h("p", "why: ", h("strong", _text(why, 2000))) if why is not None else h("p", "no reason recorded"),
                     h("dl", [(h("dt", _text(k, 60)), h("dd", _text(val, 300))) for k, val in list(extra.items())[:30]],
                       class_="details") if extra else None,
                     class_=f"box {status}", id="stop")
        if status == "waiting":
            return self._gate_form(info, last)
        if status == "running" and last.kind in ("input", "retry"):
            given = ", ".join(f"{k}={_text(val, 60)}" for k, val in _dict(last.inputs).items())
            worker = info.tags.get("worker")
            return h("div", h("p", h("strong", "answered" if last.kind == "input" else "retried"),
                              f" by {_text(note.get('by', '?'), 60)} at {_when(last.time)}",
                              f" ({given})" if given else "", f" — event {_num(last.seq)}."),
                     h("p", "Nothing runs it by itself: a process must continue it, e.g. a worker: ",
                       h("code", f"fsmtrain worker {self.log_path.name} --machine MODULE:ATTR --once"),
                       " (or the script that trains it, run again). This page follows it."),
                     h("p", "The run's tags suggest ", h("code", f"--machine {_text(worker, 100)}"),
                       " (text from the log: check it before you run anything).") if isinstance(worker, str) else None,
                     class_="box note", id="next-step")
        return None

    def _gate_form(self, info: RunInfo, waiting: Row) -> Markup:
        note = _dict(waiting.info)
        needs = [n for n in _list(note.get("needs")) if isinstance(n, dict) and isinstance(n.get("name"), str)]
        writable = not self.readonly and os.access(self.log_path, os.W_OK) and os.access(self.log_path.parent, os.W_OK)
        decision = next((n for n in needs if n["name"] == "decision" and _list(n.get("choices"))), None)
        fields = []
        for n in needs:
            if n is decision:
                continue
            name, typ = n["name"], _text(n.get("type", "str"), 20)
            required = n.get("required", True) is not False
            label = h("span", h("code", name), f" ({typ}{'' if required else ', optional'})")
            choices = _list(n.get("choices"))
            if choices:
                control = h("select", [h("option", "", value="")] if not required else None,
                            [h("option", _text(c, 100), value=_text(c, 1000)) for c in choices], name=name,
                            disabled=not writable)
            elif typ == "bool":
                control = h("select", [h("option", "", value="")] if not required else None,
                            h("option", "true", value="true"), h("option", "false", value="false"), name=name,
                            disabled=not writable)
            else:
                limits = [f"min {_num(n['min'])}" if is_number(n.get("min")) else None,
                          f"max {_num(n['max'])}" if is_number(n.get("max")) else None]
                control = h("input", name=name, required=required, disabled=not writable,
                            inputmode="decimal" if typ in ("int", "float") else None,
                            placeholder=", ".join(x for x in limits if x) or None)
            help_text = n.get("help")
            fields.append(h("div", h("label", label, " ", control), h("div", _text(help_text, 500), class_="help")
                            if help_text else None, class_="field"))
        if decision is not None:
            words = {"go": "Go", "no-go": "No-go"}
            buttons = [h("button", words.get(c, _text(c, 40)) if isinstance(c, str) else _text(c, 40), type="submit",
                         name="decision", value=_text(c, 1000), disabled=not writable,
                         class_="go" if c == "go" else "nogo" if c == "no-go" else None)
                       for c in _list(decision.get("choices"))]
            fields.append(h("div", h("code", "decision"), ": ", _text(decision.get("help") or "", 500),
                            class_="help decision-help"))
        else:
            buttons = [h("button", "Submit", type="submit", disabled=not writable)]
        summary = _dict(note.get("summary"))
        metrics = _dict(summary.get("metrics"))
        table = h("table", h("thead", h("tr", h("th", "metric"), h("th", "n"), h("th", "last"), h("th", "min"),
                                        h("th", "max"))),
                  h("tbody", [h("tr", h("td", _text(k, 60)), h("td", _num(_dict(m).get("n"))),
                                h("td", _num(_dict(m).get("last"))), h("td", _num(_dict(m).get("min"))),
                                h("td", _num(_dict(m).get("max")))) for k, m in list(metrics.items())[:30]]),
                  class_="summary") if metrics else None
        where = [f"{k} {_num(summary[k])}" for k in ("epoch", "steps") if k in summary]
        missing = [_text(m, 60) for m in _list(note.get("missing"))]
        disabled_note = None if writable else h(
            "p", h("strong", "Answering is disabled: "), f"this server does not write to {self.log_path.name} (it was "
            "started read-only, or the file or its folder is read-only). Answer where it can be written: ",
            h("code", f"fsmtrain input {self.log_path.name} {info.id} decision=..."), class_="disabled-note")
        return h("div", h("h2", "waiting at ", h("code", _text(waiting.action or "?", 60)), " since ", _when(waiting.time)),
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
        metrics = _metrics(final)
        if not metrics:
            return None
        marks: dict[str, int] = {}
        if at is not None:  # where the event looked at falls on each curve that grew over the run
            snap = at_state()
            first = first_state()
            marks = {m: len(snap[m]) for m in metrics if isinstance(snap.get(m), list) and snap[m]
                     and (len(snap[m]) < len(metrics[m]) or len(_list(first.get(m))) < len(metrics[m]))}
        smooth = v["smooth"]
        figures: list[Markup] = []
        for m, values in metrics.items():
            log_scale = m in v["log"]
            mode = _chart_mode(m)
            series = [Series(m if not smooth else f"{m} (smoothed)", _smooth(values, smooth) if smooth else values, 0)]
            if smooth:
                series.insert(0, Series(m, values, 0, faint=True))
            svg = chart(series, ylabel=m, log=log_scale, best=mode, mark_x=marks.get(m),
                        mark_label=f"event {at}" if m in marks else "", chart_id=f"chart-{len(figures)}")
            best = _best_of(values, mode) if mode else None
            toggled = [x for x in v["log"] if x != m] if log_scale else [*v["log"], m]
            caption = h("figcaption", h("strong", m), f" · {len(values)} value(s)",
                        f" · best ({mode}) {_num(best[0])} at {best[1]}" if best else "",
                        f" · last {_num(values[-1])}", " · ",
                        h("a", "linear scale" if log_scale else "log scale", href=self._view_link(run_id, v, log=toggled)))
            figures.append(h("figure", caption, svg, data_metric=m))
        smoothing = [h("a", label, href=self._view_link(run_id, v, smooth=w or None),
                       aria_current="true" if w == smooth else None)
                     if w != smooth else h("strong", label) for label, w in (("off", 0.0), ("0.6", 0.6), ("0.9", 0.9))]
        return join([h("p", "smoothing: ", join(smoothing, " "), class_="controls"),
                     h("div", figures, class_="charts", id="curves")])

    def _graph(self, log: EventLog, info: RunInfo) -> Markup | None:
        description = _description(log, info.id)
        if description is None:
            return None
        current = info.last_action if info.status == "waiting" else info.next
        return h("div", h("div", graph_svg(description, current if isinstance(current, str) else None), class_="scroll",
                          id="graph"), graph_legend(description), class_="graph-wrap")

    def _refs_table(self, final: dict[str, Any]) -> Markup | None:
        refs = _refs(final)
        if not refs:
            return None
        return h("div", h("table", h("tbody", [h("tr", h("td", k), h("td", ref.path), h("td", f"{_num(ref.size)} bytes"),
                                                     h("td", h("code", str(ref.sha256)[:16] + "…")))
                                               for k, ref in refs[:200]]), id="refs"), class_="scroll")

    def _state_table(self, run_id: int, state: dict[str, Any], seq: int) -> Markup:
        rows = [h("tr", h("th", _text(k, 80)), h("td", self._compact(val))) for k, val in sorted(state.items(), key=str)]
        return join([h("p", h("a", "the whole state as JSON", href=self._link(f"/api/run/{run_id}/state", at=seq)),
                       class_="muted"),
                     h("div", h("table", h("tbody", rows), id="state", class_="state"), class_="scroll")])

    def _compact(self, value: Any) -> Any:
        """A state value in a line or two: lists of numbers summarised, structures as clipped JSON."""
        if isinstance(value, Ref):
            return join([h("code", value.path), f" ({_num(value.size)} bytes)"])
        if _numbers(value):
            n = len(value)
            nums = [(i + 1, x) for i, x in enumerate(value) if is_number(x)]
            head = ", ".join(_num(x) for x in value[:3])
            tail = ", ".join(_num(x) for x in value[-3:]) if n > 6 else ", ".join(_num(x) for x in value[3:])
            text = f"[{head}{', … ' if n > 6 else (', ' if tail else '')}{tail}]"
            lo = min(nums, key=lambda p: p[1]) if nums else None
            hi = max(nums, key=lambda p: p[1]) if nums else None
            stats = f" {n} value(s)" + (f"; min {_num(lo[1])} at {lo[0]}, max {_num(hi[1])} at {hi[0]}" if lo and hi else "")
            return join([h("code", text), h("span", stats, class_="muted")])
        text = _text(value, 100_000)
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
        rows = [self._timeline_row(run_id, e, v, at) for e in _rows(log, run_id, lo, hi)]
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
                 h("td", h("time", _when(e.time)[11:] or "?", title=_when(e.time)), class_="hide-narrow"),
                 h("td", kind, class_=f"kind {kind}" if kind in KINDS else "kind"),
                 h("td", _text(e.action or "", 60)), h("td", _text(e.next or "", 60), class_="hide-narrow"),
                 h("td", self._details(e), class_="details"),
                 data_seq=e.seq, class_="at" if at is not None and e.seq == at else None)

    def _details(self, e: Row) -> str:
        info = e.info
        parts = []
        if isinstance(info, Broken):
            parts.append(str(info))
            info = None
        info = _dict(info)
        if e.kind == "step" and info.get("condition") not in (None, "default"):
            parts.append(f"[{_text(info.get('condition'), 80)}: {_text(info.get('reason'), 100)}]")
        if e.kind in ("input", "retry", "stopped", "pruned") and "by" in info:
            parts.append(f"by {_text(info['by'], 40)}")
        for k in ("reason", "comment") if e.kind in ("input", "retry", "stopped", "pruned") else ():
            if k in info:
                parts.append(f"{k}: {_text(info[k], 120)}")
        if e.kind == "pruned":
            parts.extend(f"{_text(k, 30)}={_text(val, 40)}" for k, val in list(info.items())[:8]
                         if k not in ("by", "at", "reason", "comment"))
        if e.kind == "resume" and info.get("interrupted"):
            parts.append(f"after {_text(info['interrupted'], 20)} interruption(s) in a row")
        if e.kind == "waiting":
            parts.append("needs " + ", ".join(_text(_dict(n).get("name"), 40) for n in _list(info.get("needs"))))
        if e.kind == "start" and isinstance(info.get("forked_from"), dict):
            parts.append(f"forked from {_text(info['forked_from'], 80)}")
        if e.updates is not None:
            parts.append(_text(e.updates, 140))
        if e.inputs:
            parts.append("inputs " + _text(e.inputs, 100))
        if e.error:
            lines = str(e.error).strip().splitlines()
            parts.append(_text(lines[-1] if lines else e.error, 160))
        if e.snapshot:
            parts.append("(snapshot)")
        return " ".join(parts)

    def _run_live(self, run_id: int, r: Request) -> dict[str, Any]:
        """What changed on a live run page since event ``since``: new timeline rows, new charts, a new head."""
        v = self._run_view(r)
        with self._log() as log:
            info = _run(log, run_id)
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
                rows = _rows(log, run_id, max(since + 1, info.last_seq - TIMELINE_PER_PAGE + 1), info.last_seq)
                out["prepend"] = {"timeline-rows": join(self._timeline_row(run_id, e, v, None) for e in rows)}
        return out

    def _run_json(self, run_id: int) -> Any:
        with self._log() as log:
            info = _run(log, run_id)
            state = state_at(log, run_id)
        return {"run": run_id, "status": info.status, "steps": info.steps, "metrics": _metrics(state)}

    def _state_json(self, run_id: int, r: Request) -> Any:
        with self._log() as log:
            info = _run(log, run_id)
            at = self._int(r, "at", info.last_seq)
            state = state_at(log, run_id, at)
        return {"run": run_id, "seq": at, "state": state.to_dict()}

    def _run_csv(self, run_id: int) -> Response:
        with self._log() as log:
            _run(log, run_id)
            state = state_at(log, run_id).to_dict()
        lines = ["metric,index,value"] + [f"{_csv_cell(m)},{i + 1},{_csv_cell(x)}"
                                          for m, values in _metrics(state).items() for i, x in enumerate(values)]
        return self._csv(f"run-{run_id}-metrics.csv", lines)

    def _csv(self, name: str, lines: list[str]) -> Response:
        return Response(200, ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace"), "text/csv; charset=utf-8",
                        (("Content-Disposition", f'attachment; filename="{name}"'),))

    # -- compare --------------------------------------------------------------------------------------------
    def _compare_ids(self, r: Request) -> tuple[list[int], list[str]]:
        texts = [t for v in r.multi.get("run", []) + r.multi.get("runs", []) for t in re.split(r"[,\s]+", v) if t]
        ids: list[int] = []
        bad = []
        for t in texts:
            if _ID.match(t) and 1 <= int(t) <= MAX_ID:
                if int(t) not in ids:
                    ids.append(int(t))
            else:
                bad.append(_text(t, 30))
        return sorted(ids[:MAX_COMPARE]), bad

    def _compared(self, log: EventLog, ids: list[int]) -> tuple[list[dict[str, Any]], list[str]]:
        found, problems = [], []
        for rid in ids:
            try:
                info = _run(log, rid)
                final = state_at(log, rid).to_dict()
            except (FsmtrainError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
                problems.append(f"run {rid}: {_text(str(e), 200)}")
                continue
            row = log.conn.execute("SELECT snapshot FROM events WHERE run_id = ? AND seq = 1", (rid,)).fetchone()
            start = _dict(_decode(row[0], "snapshot")) if row else {}
            settings = {str(k): val for k, val in start.items() if val is None or isinstance(val, (str, int, float, bool))}
            settings |= {f"tag:{k}": val for k, val in info.tags.items() if isinstance(val, (str, int, float, bool))}
            found.append({"id": rid, "info": info, "final": final, "settings": settings})
        return found, problems

    def _compare_page(self, r: Request) -> Markup:
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
            return self._document("compare", body)
        keys = sorted({k for f in found for k in f["settings"]})
        differ = [k for k in keys if len({_text(f["settings"].get(k), 200) for f in found}) > 1]
        labels = {}
        for f in found:
            diff = ", ".join(f"{k}={_text(f['settings'].get(k), 24)}" for k in differ[:4])
            labels[f["id"]] = f"run {f['id']}" + (f" · {diff}" if diff else "")
        metrics = sorted({m for f in found for m in _metrics(f["final"])})
        figures = []
        for m in metrics:
            series = [Series(labels[f["id"]], _list(f["final"].get(m)), k) for k, f in enumerate(found)]
            figures.append(h("figure", h("figcaption", h("strong", m)),
                             chart(series, ylabel=m, best=_chart_mode(m), xlabel="evaluation", height=300), data_metric=m))
        legend = h("div", h("table", h("thead", h("tr", h("th", "run"), h("th", "status"),
                                                  [h("th", k) for k in differ[:20]])),
                            h("tbody", [h("tr", h("td", h("a", labels[f["id"]], href=f"/run/{f['id']}"),
                                                  class_=f"legend-{k % 8}"),
                                          h("td", h("span", f["info"].status, class_=f"status {f['info'].status}")),
                                          [h("td", _text(f["settings"].get(d, "–"), 60)) for d in differ[:20]])
                                        for k, f in enumerate(found)]), id="compare-legend"), class_="scroll")
        body += [h("h2", "settings that differ"), legend if differ else h("p", "The runs have the same settings."),
                 h("p", h("a", "these metrics as CSV", href=self._link("/compare.csv", run=[f["id"] for f in found]))),
                 h("div", figures, class_="charts", id="curves")]
        return self._document("compare", body)

    def _compare_csv(self, r: Request) -> Response:
        ids, _ = self._compare_ids(r)
        with self._log() as log:
            found, _ = self._compared(log, ids)
        lines = ["run,metric,index,value"]
        for f in found:
            for m, values in _metrics(f["final"]).items():
                lines += [f"{f['id']},{_csv_cell(m)},{i + 1},{_csv_cell(x)}" for i, x in enumerate(values)]
        return self._csv("compare-" + "-".join(str(f["id"]) for f in found) + ".csv", lines)

    # -- a study --------------------------------------------------------------------------------------------
    def _study_page(self, run_id: int, r: Request) -> Markup:
        with self._log() as log:
            info = _run(log, run_id)
            if not str(info.machine).startswith("study:"):
                raise RunNotFound(f"run {run_id} is a `{_text(info.machine, 60)}` run, not a study; see /run/{run_id}")
            parts = self._study_parts(log, info)
            version = self._version(log)
        live = self._link(f"/api/live/study/{run_id}") if info.status == "running" else None
        body = [h("nav", h("a", "runs", href="/"), " ", h("a", "the study's own run", href=f"/run/{run_id}")),
                parts["head"], parts["trials"], parts["curves"], parts["parallel"]]
        return self._document(f"study {run_id}", body, live=live, since=version)

    def _study_parts(self, log: EventLog, info: RunInfo) -> dict[str, Markup]:
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
            settings = [f"{k} {_text(s[k], 60)}" for k in ("sampler", "scheduler", "milestones", "max_t",
                                                            "max_concurrent", "seed", "retries") if k in s]
            counts: dict[str, int] = {}
            for row in rows:
                counts[str(row.get("status"))] = counts.get(str(row.get("status")), 0) + 1
            best = _dict(s.get("best"))
            named = None
            if best:
                params = ", ".join(f"{k}={_num(val)}" for k, val in _dict(best.get("params")).items())
                named = h("p", h("strong", "best: "), h("a", f"trial {_num(best.get('index'))}",
                                                       href=f"/run/{best.get('run_id')}"),
                          f" (run {_num(best.get('run_id'))}) · {_text(metric, 60)} {_num(best.get('value'))} "
                          f"at epoch {_num(best.get('epoch'))}", f" · {params}" if params else "",
                          class_="box note", id="best")
            return join([h("h1", f"study {info.id} · ", _text(info.machine, 60)[6:], " · ",
                           h("span", info.status, class_=f"status {info.status}", id="status")),
                         h("p", f"{len(rows)} of {_num(s.get('n_trials'))} trials · {_text(metric, 60)} "
                                f"({_text(mode, 10)}) · ",
                           ", ".join(f"{n} {k}" for k, n in sorted(counts.items())), class_="facts"),
                         h("p", " · ".join(settings), class_="facts", id="search") if settings else None,
                         named])

        def trial_table() -> Markup:
            rows, _ = trials()
            s = state()
            metric = _text(s.get("metric"), 60)
            children: dict[Any, RunInfo] = {x.id: x for x in _runs(log, " WHERE r.parent_id = ?", [info.id])}
            best_run = _dict(s.get("best")).get("run_id")
            out = []
            for row in rows:
                child = children.get(row.get("run_id"))
                status = str(row.get("status"))
                prune = ""
                if child is not None and child.status in ("pruned", "stopped"):
                    last = _rows(log, child.id, child.last_seq, child.last_seq)[0]
                    note = _dict(last.info)
                    prune = "; ".join(f"{_text(k, 20)} {_text(val, 40)}" for k, val in list(note.items())[:6]
                                      if k not in ("by", "at"))
                params = ", ".join(f"{_text(k, 30)}={_num(val)}" for k, val in _dict(row.get("params")).items())
                is_best = row.get("run_id") == best_run and best_run is not None
                out.append(h("tr", h("td", h("input", type="checkbox", name="run", value=_text(row.get("run_id"), 20),
                                             form="compare", aria_label=f"compare trial {_num(row.get('trial'))}")),
                             h("td", _num(row.get("trial")), h("strong", " ★ best", class_="best-mark") if is_best else None),
                             h("td", h("a", _num(row.get("run_id")), href=f"/run/{_text(row.get('run_id'), 20)}")),
                             h("td", params),
                             h("td", h("span", status, class_=f"status {status}" if status in (*STATUSES, "completed",
                                                                                                  "paused", "pending")
                                       else "status")),
                             h("td", _num(row.get("best")), title=f"at epoch {_num(row.get('best_epoch'))}"),
                             h("td", _num(row.get("epochs"))),
                             h("td", _num(row.get("attempts"))),
                             h("td", _text(prune or row.get("error") or "", 160)),
                             class_="best" if is_best else status if status in ("pruned", "failed") else None,
                             data_trial=_text(row.get("trial"), 20)))
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
            metric = _text(s.get("metric"), 60)
            style = styles()
            series = []
            for row in sorted(rows, key=lambda x: _safe_key(x.get("trial"))):
                k = style.get(row.get("trial"), -1)
                vals = values.get(row.get("trial"), [])
                if not vals:
                    continue
                label = f"trial {_num(row.get('trial'))}" + (" (best)" if k == 0 else "") + (
                    " (pruned)" if row.get("status") == "pruned" else "")
                series.append(Series(label, vals, k))
            if not series:
                return None
            mode = s.get("mode") if s.get("mode") in ("min", "max") else "min"
            note = h("p", f"The {len(style)} best trial(s) in colour, each with its own dash and marker; the others in "
                          "grey." if len(series) > len(style) else "Each trial in its own colour, dash and marker.",
                     class_="muted")
            return join([note, h("div", chart(series, ylabel=metric, xlabel="epoch", best=mode, height=320,
                                              title=metric), id="curves-chart")])

        def para() -> Markup | None:
            rows, _ = trials()
            s = state()
            space = _dict(s.get("space"))
            names = sorted({str(k) for row in rows for k in _dict(row.get("params"))})[:12]
            if not names:
                return None
            axes = []
            for name in names:
                spec = _dict(space.get(name))
                kind = spec.get("type")
                vals = [_dict(row.get("params")).get(name) for row in rows]
                if kind == "choice" or any(not is_number(x) for x in vals if x is not None):
                    cats = tuple(dict.fromkeys(_text(x, 40) for x in (_list(spec.get("values")) or vals)))
                    axes.append(Axis(name, "cat", cats))
                elif kind == "loguniform" or (kind == "int" and spec.get("log") is True):
                    axes.append(Axis(name, "log"))
                else:
                    axes.append(Axis(name, "num"))
            metric = _text(s.get("metric"), 60)
            axes.append(Axis(f"best {metric}"))
            style = styles()
            lines = []
            for row in rows:
                params = _dict(row.get("params"))
                vals = [(params.get(a.name) if a.kind != "cat" else _text(params.get(a.name), 40))
                        if a.name in params else None for a in axes[:-1]] + [row.get("best")]
                label = f"trial {_num(row.get('trial'))}: " + ", ".join(
                    f"{a.name}={_num(params.get(a.name))}" for a in axes[:-1]) + f" → {metric} {_num(row.get('best'))}"
                lines.append(Line(label, vals, style.get(row.get("trial"), -1), row.get("status") == "pruned"))
            return parallel(axes, lines, title="parameters against the metric")

        return {
            "head": self._section(None, head, id="study-head"),
            "trials": self._section("trials", trial_table, id="trials-section"),
            "curves": self._section("curves", curves, id="curves"),
            "parallel": self._section("parameters", para, id="parallel"),
        }

    def _study_live(self, run_id: int, r: Request) -> dict[str, Any]:
        with self._log() as log:
            version = self._version(log)
            info = _run(log, run_id)
            if str(version) == r.query.get("since"):
                return {"since": version, "live": info.status == "running"}
            parts = self._study_parts(log, info)
        return {"since": version, "live": info.status == "running",
                "replace": {"study-head": parts["head"], "trials-section": parts["trials"], "curves": parts["curves"],
                            "parallel": parts["parallel"]}}

    # -- the one write ----------------------------------------------------------------------------------------
    def _post_input(self, req: BaseHTTPRequestHandler, run_id: int) -> Response:
        from .runner import give_text_input

        text = (req.headers.get("Content-Length") or "0").strip()
        if not re.fullmatch(r"[0-9]{1,9}", text):
            req.close_connection = True
            return self._message(400, "Bad request", "Content-Length must be a whole number of bytes.")
        length = int(text)
        if length > MAX_FORM:
            req.close_connection = True
            return self._message(413, "Too large", "The form is too large.")
        raw = req.rfile.read(length).decode("utf-8", errors="replace")
        if "application/x-www-form-urlencoded" not in (req.headers.get("Content-Type") or ""):
            return self._message(415, "Error", "Send the form as application/x-www-form-urlencoded.")
        form = {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}
        if self.readonly:
            return self._message(403, "Read-only", "This server was started read-only; it answers no gate. Nothing "
                                                   "was written.", back=True)
        if not hmac.compare_digest(form.pop("token", "").encode("utf-8", "replace"), self.token.encode()):
            return self._message(403, "Forbidden", "This request has no valid token: open the page from the URL the "
                                                   "server printed. Nothing was written.")
        try:
            with EventLog(self.log_path) as log:
                give_text_input(log, run_id, form, by="web", blank_is_absent=True)
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            if isinstance(e, FsmtrainError):
                raise
            return self._message(400, "Error", f"The gate this run recorded cannot be read ({_text(str(e), 200)}); "
                                               "nothing was written.", back=True)
        return Response(303, b"", headers=(("Location", f"/run/{run_id}"),))

