"""A real S3-compatible server for the tests: moto's standalone server, in a child process, on 127.0.0.1 only.

    from tests.s3server import running_s3_server

    @pytest.fixture
    def s3():
        with running_s3_server() as server:   # skips the test when moto[server] or s3fs is not installed
            yield server

    def test_it(s3):
        fs = s3.filesystem()                   # s3fs, in this process, with fast failures
        env = s3.child_env()                   # for a child process: plain fsspec.filesystem("s3") then works

Three kinds of outage, all on the same URL:

* ``pause()`` / ``resume()``: SIGSTOP / SIGCONT.  The server hangs (the kernel still accepts connections) and keeps its
  data; clients fail by their read timeout.  Beware: a PUT with a body sends ``Expect: 100-continue``, and aiohttp does
  not time out while it waits for the ``100 Continue``, so a PUT to a paused server hangs for ever unless that header
  is dropped (``fast_fail`` does it for an in-process filesystem) or the call is given fsspec's ``timeout=``.
* ``down()`` / ``up()``: the server closes its listening socket and every open connection (so new calls are refused
  at once) and later listens again; the data is kept (the same process holds moto's in-memory state).
* ``stop()`` / ``start()``: the process is killed and a new one started on the same port; the data is lost (moto has
  no persistence).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Iterator
from typing import Any

HOST = "127.0.0.1"  # never any other address
REGION = "us-east-1"
_REQUIRED = ("moto", "flask", "flask_cors", "werkzeug", "s3fs", "fsspec")

# Runs in the child.  It dies with the process that started it (PR_SET_PDEATHSIG), prints the port it listens on,
# then serves until killed.  SIGUSR1: stop listening and drop every connection; SIGUSR2: listen again (same port).
_CHILD = r"""
import ctypes, logging, os, signal, socket, sys, threading, weakref
if sys.platform.startswith("linux"):
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
if os.getppid() != int(sys.argv[1]):
    os._exit(1)
from werkzeug.serving import make_server
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app

logging.getLogger("werkzeug").setLevel(logging.ERROR)
app = DomainDispatcherApplication(create_backend_app)
host, port = sys.argv[2], int(sys.argv[3])
conns = weakref.WeakSet()
state = {"server": None}

def up(*_):
    global port
    if state["server"] is not None:
        return
    srv = make_server(host, port, app, threaded=True, request_handler=MotoRequestHandler)
    accept = srv.get_request
    def get_request():
        sock, addr = accept()
        conns.add(sock)
        return sock, addr
    srv.get_request = get_request
    port = srv.server_address[1]
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    state["server"] = srv

def down(*_):
    srv, state["server"] = state["server"], None
    if srv is None:
        return
    srv.shutdown()
    srv.server_close()
    for sock in list(conns):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

# Blocked before any thread starts, so every thread inherits the mask and the signals stay pending for sigwait here.
# (With handlers and signal.pause(), a signal the kernel hands to a server thread never wakes the main thread.)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGUSR2})
up()
print(port, flush=True)
while True:
    if signal.sigwait({signal.SIGUSR1, signal.SIGUSR2}) == signal.SIGUSR1:
        down()
    else:
        up()
"""


def missing_requirements() -> list[str]:
    """The modules a real S3 server and its client need that are not installed (``pip install "moto[server]" s3fs``)."""
    return [name for name in _REQUIRED if importlib.util.find_spec(name) is None]


def require_moto() -> None:
    """Skip the calling test when moto's server or s3fs is not installed."""
    missing = missing_requirements()
    if missing:
        import pytest

        pytest.skip(f"needs moto[server] and s3fs (missing: {', '.join(missing)})")


def fast_fail(fs: Any) -> Any:
    """Make an in-process, synchronous s3fs filesystem fail fast against a dead or hung server: one try (s3fs retries
    5 times by default) and no ``Expect: 100-continue`` (with it, a PUT to a hung server never times out).  A
    reconnected client (``fs.connect(refresh=True)``) gets the header back."""
    import botocore.handlers

    fs.retries = 1
    fs.connect()
    fs.s3.meta.events.unregister("before-call.s3", botocore.handlers.add_expect_header)
    return fs


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # works on a stopped (paused) process too
        except ProcessLookupError:
            pass
    proc.wait()


class S3Server:
    """moto's S3 server in a child process on 127.0.0.1 (a free port unless ``port`` is given)."""

    def __init__(self, port: int = 0, *, connect_timeout: float = 1.0, read_timeout: float = 1.0) -> None:
        self.port = port
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self._finalizer: Any = None  # weakref.finalize
        self._paused = False
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy

    @property
    def url(self) -> str:
        """The endpoint: ``http://127.0.0.1:PORT``."""
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    # -- life cycle ---------------------------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> S3Server:
        """Start the server (again: on the same port, with no data) and wait until it answers."""
        if self._proc is not None and self._proc.poll() is None:
            return self
        self._log = tempfile.TemporaryFile()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOTO_"))}
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(os.getpid()), HOST, str(self.port)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log, env=env, start_new_session=True)
        self._finalizer = weakref.finalize(self, _kill, self._proc)
        self._paused = False
        deadline = time.monotonic() + timeout
        assert self._proc.stdout is not None
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._proc.stdout], [], [], left)[0]:
                self._fail(f"did not start within {timeout}s")
            chunk = os.read(self._proc.stdout.fileno(), 64)
            if not chunk:
                self._fail("exited while starting")
            line += chunk
        self.port = int(line)
        self._wait_answering(deadline)
        return self

    def stop(self) -> None:
        """Kill the server (SIGKILL, paused or not) and reap it.  Its data is lost."""
        if self._finalizer is not None:
            self._finalizer()  # kills and waits
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()
        if self._log is not None:
            self._log.close()
        self._proc, self._log, self._finalizer, self._paused = None, None, None, False

    def pause(self) -> None:
        """SIGSTOP: the server hangs (connections are accepted by the kernel, nothing answers); the data is kept."""
        os.killpg(self._running().pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after ``pause()``."""
        os.killpg(self._running().pid, signal.SIGCONT)
        self._paused = False

    def down(self, timeout: float = 120.0) -> None:
        """Stop listening and drop every open connection (calls are refused at once); the data is kept."""
        self._signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while self._answers():
            if time.monotonic() > deadline:
                self._fail(f"still accepting connections {timeout}s after down()")
            time.sleep(0.02)

    def up(self, timeout: float = 120.0) -> None:
        """Listen again on the same port after ``down()``."""
        self._signal(signal.SIGUSR2)
        self._wait_answering(time.monotonic() + timeout)

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- data ---------------------------------------------------------------------------------------------------------

    def create_bucket(self, name: str = "bucket") -> str:
        """Create a bucket (moto checks no signatures, so a plain PUT does); returns its name."""
        self._request("PUT", f"/{name}")
        return name

    def reset(self) -> None:
        """Forget every bucket and object without restarting."""
        self._request("POST", "/moto-api/reset")

    # -- clients ------------------------------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """What a child process needs for ``fsspec.filesystem("s3")`` (no storage_options) to use this server, and to
        fail fast: one botocore attempt, short timeouts (FSSPEC_S3 is read when fsspec is first imported).  s3fs's own
        5 retries cannot be set from the environment: a refused connection fails at once (not retried), a hung server
        after about 5 * read_timeout + 2 s."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_MAX_ATTEMPTS": "1",
            "AWS_RETRY_MODE": "standard",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "FSSPEC_S3": json.dumps({"config_kwargs": {"connect_timeout": self.connect_timeout,
                                                       "read_timeout": self.read_timeout},
                                     "use_listings_cache": False}),
        }

    def child_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) without its AWS_* and FSSPEC_S3* variables, plus ``env()``."""
        base = dict(os.environ if base is None else base)
        kept = {k: v for k, v in base.items() if not k.startswith(("AWS_", "FSSPEC_S3"))}
        return {**kept, **self.env()}

    def storage_options(self) -> dict[str, Any]:
        """fsspec storage_options for this server, independent of the environment: fast failures, no caches."""
        return {
            "endpoint_url": self.url,
            "key": "test",
            "secret": "test",
            "client_kwargs": {"region_name": REGION},
            "config_kwargs": {"connect_timeout": self.connect_timeout, "read_timeout": self.read_timeout,
                              "retries": {"total_max_attempts": 1}},
            "use_listings_cache": False,
            "skip_instance_cache": True,
        }

    def filesystem(self) -> Any:
        """A fresh s3fs filesystem on this server, in this process, that fails fast (see ``fast_fail``)."""
        import fsspec

        return fast_fail(fsspec.filesystem("s3", **self.storage_options()))

    # -- internals ----------------------------------------------------------------------------------------------------

    def _running(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError("the S3 server is not running")
        return self._proc

    def _signal(self, sig: int) -> None:
        if self._paused:
            raise RuntimeError("the S3 server is paused: resume() it first")
        os.kill(self._running().pid, sig)

    def _request(self, method: str, path: str) -> bytes:
        req = urllib.request.Request(self.url + path, data=b"" if method in ("PUT", "POST") else None, method=method)
        with self._opener.open(req, timeout=30) as resp:
            return resp.read()  # type: ignore[no-any-return]

    def _answers(self) -> bool:
        try:
            self._opener.open(self.url + "/moto-api/", timeout=1).close()
        except urllib.error.HTTPError:
            return True  # an HTTP answer, even an error, is an answer
        except (OSError, ValueError):
            return False
        return True

    def _wait_answering(self, deadline: float) -> None:
        while not self._answers():
            if self._proc is None or self._proc.poll() is not None:
                self._fail("exited while starting")
            if time.monotonic() > deadline:
                self._fail("does not answer")
            time.sleep(0.02)

    def _fail(self, what: str) -> None:
        log = b""
        if self._log is not None:
            self._log.seek(0)
            log = self._log.read()[-4000:]
        self.stop()
        raise RuntimeError(f"moto S3 server on {self.url} {what}:\n{log.decode(errors='replace')}")


@contextlib.contextmanager
def running_s3_server(bucket: str | None = "bucket", **kwargs: Any) -> Iterator[S3Server]:
    """A started S3Server (with ``bucket`` created) for the block, stopped after it; skips the test without moto."""
    require_moto()
    server = S3Server(**kwargs).start()
    try:
        if bucket:
            server.create_bucket(bucket)
        yield server
    finally:
        server.stop()


__all__ = ["S3Server", "fast_fail", "missing_requirements", "require_moto", "running_s3_server"]
