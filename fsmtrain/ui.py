"""``fsmtrain ui``: a local web page over a log — runs, curves, the graph, the timeline, the state, gates.

Served by the standard library's HTTP server.  This module is the server: hosts,
tokens, routing, responses and the one write (a gate's input, validated like
``fsmtrain input``); :mod:`fsmtrain.pages` builds the pages, every one with the
escaping builder of :mod:`fsmtrain.markup` (HTML and SVG alike, no template that
could forget to escape), from the tolerant readers of :mod:`fsmtrain.logview`.

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
import os
import queue
import re
import secrets
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlencode, urlsplit

from .errors import EventNotFound, FsmtrainError, LogBusy, RunNotFound
from .log import MAX_ID, EventLog
from .logview import clip
from .markup import Markup, h
from .pages import Csv, Pages, Request
from .pages.layout import ID
from .plot import graph_svg
from .state import dumps

__all__ = ["UI", "graph_svg", "is_loopback"]

LISTEN_BACKLOG = 512
"""Connections the kernel queues before the server accepts them."""
POOL_THREADS = 16
"""Requests served at once (each waits at most ``Handler.timeout`` for a slow client)."""

MAX_FORM = 100_000
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
STATIC = {"ui.js": "text/javascript; charset=utf-8", "ui.css": "text/css; charset=utf-8"}


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


class UI:
    """The server: ``UI(log_path).bind(host, port)``, then ``serve_forever`` (or ``serve_in_thread``);
    ``url`` carries the token.  A host that is not loopback is refused unless ``allow_remote``."""

    def __init__(self, log_path: str | os.PathLike[str], *, token: str | None = None, allow_remote: bool = False,
                 readonly: bool = False, home: str | os.PathLike[str] | None = None) -> None:
        self.log_path = Path(log_path)
        self.home = home  # (where the answers it records are shipped, as every writer's)
        self.readonly = readonly  # never answer a gate (also when the log cannot be written)
        with EventLog(self.log_path, readonly=True):  # a clear error now if it is not a log
            pass
        self.token = token or secrets.token_urlsafe(16)
        self.allow_remote = allow_remote
        self.pages = Pages(self.log_path, self.token, readonly=readonly)
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

        class Server(ThreadingHTTPServer):
            """Connections wait in a deep listen queue and are served by a bounded pool of threads (the standard
            library's backlog of 5 drops connections under load, and its one thread per connection has no bound)."""

            address_family = socket.AF_INET6 if ":" in bare else socket.AF_INET
            request_queue_size = LISTEN_BACKLOG

            def server_activate(self) -> None:
                super().server_activate()
                self._jobs: queue.SimpleQueue[tuple[Any, Any] | None] = queue.SimpleQueue()
                for i in range(POOL_THREADS):
                    threading.Thread(target=self._serve_jobs, name=f"fsmtrain-ui-{i}", daemon=True).start()

            def _serve_jobs(self) -> None:
                while (job := self._jobs.get()) is not None:
                    self.process_request_thread(*job)  # (handles errors, closes the socket)

            def server_close(self) -> None:
                super().server_close()
                jobs = getattr(self, "_jobs", None)  # (none when binding failed)
                if jobs is not None:
                    for _ in range(POOL_THREADS):  # the pool ends with the server
                        jobs.put(None)

            def process_request(self, request: Any, client_address: Any) -> None:
                self._jobs.put((request, client_address))

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that vanished mid-request: no traceback on the terminal that runs the server

        self.server = Server((bare, port), Handler)
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
            try:
                req.wfile.write(resp.body)
            except (BrokenPipeError, ConnectionResetError):  # the browser went away: nothing to tell anyone
                req.close_connection = True

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
        hosts = req.headers.get_all("Host") or []
        if len(hosts) > 1:  # (which one a proxy or a browser acted on is unknown: refuse, never pick one)
            return self._message(400, "Bad request", f"The request names {len(hosts)} Host headers; send one.")
        if not self._host_ok(req.headers.get("Host")):
            return self._message(421, "Wrong host", f"This fsmtrain ui answers only to this machine's loopback "
                                 f"names (http://127.0.0.1:{self.port}/); Host {clip(req.headers.get('Host'), 80)!r} "
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
            return self._message(404, "Not found", f"Nothing to post to at {clip(url.path, 100)}.", back=True)
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
        if not ID.match(text) or not 1 <= int(text) <= MAX_ID:
            raise RunNotFound(f"run {clip(text, 40)!r} does not exist (run ids are whole numbers from 1 to {MAX_ID})")
        return int(text)

    def _route(self, r: Request) -> Response:
        p = r.parts
        pages: dict[tuple[str, ...], Callable[[], Response]] = {
            (): lambda: self._html(self.pages.runs_page(r)),
            ("compare",): lambda: self._html(self.pages.compare_page(r)),
            ("compare.csv",): lambda: self._csv(self.pages.compare_csv(r)),
        }
        if tuple(p) in pages:
            return pages[tuple(p)]()
        if len(p) == 2 and p[0] == "run":
            return self._html(self.pages.run_page(self._id(p[1]), r))
        if len(p) == 3 and p[0] == "run" and p[2] == "metrics.csv":
            return self._csv(self.pages.run_csv(self._id(p[1])))
        if len(p) == 2 and p[0] == "study":
            return self._html(self.pages.study_page(self._id(p[1]), r))
        if len(p) == 3 and p[:2] == ["api", "run"]:
            return self._json(self.pages.run_json(self._id(p[2])))
        if len(p) == 4 and p[:2] == ["api", "run"] and p[3] == "state":
            return self._json(self.pages.state_json(self._id(p[2]), r))
        if len(p) == 3 and p[:2] == ["api", "live"] and p[2] == "runs":
            return self._json(self.pages.runs_live(r))
        if len(p) == 4 and p[:2] == ["api", "live"] and p[2] in ("run", "study"):
            rid = self._id(p[3])
            return self._json(self.pages.run_live(rid, r) if p[2] == "run" else self.pages.study_live(rid, r))
        return self._message(404, "Not found", f"No page {clip(r.path, 100)}.", back=True)

    # -- responses ---------------------------------------------------------------------------------------
    def _html(self, page: Markup, code: int = 200) -> Response:
        return Response(code, page.encode("utf-8", "replace"))

    def _csv(self, csv: Csv) -> Response:
        data = ("\r\n".join(csv.lines) + "\r\n").encode("utf-8", "replace")
        return Response(200, data, "text/csv; charset=utf-8",
                        (("Content-Disposition", f'attachment; filename="{csv.name}"'),))

    def _json(self, obj: Any) -> Response:
        return Response(200, dumps(obj).encode("utf-8", "replace"), "application/json")

    def _message(self, code: int, title: str, text: str, back: bool = False) -> Response:
        body = [h("h1", title), h("p", text, class_="box failed" if code >= 400 else "box note")]
        if back:
            body.append(h("p", h("a", "all runs", href="/")))
        return self._html(self.pages.document(title, body), code)

    # -- the one write ----------------------------------------------------------------------------------------
    def _post_input(self, req: BaseHTTPRequestHandler, run_id: int) -> Response:
        from .answers import give_text_input

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
            with EventLog(self.log_path, home=self.home) as log:
                give_text_input(log, run_id, form, by="web", blank_is_absent=True)
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            if isinstance(e, FsmtrainError):
                raise
            return self._message(400, "Error", f"The gate this run recorded cannot be read ({clip(str(e), 200)}); "
                                               "nothing was written.", back=True)
        return Response(303, b"", headers=(("Location", f"/run/{run_id}"),))
