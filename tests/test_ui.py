"""`fsmtrain ui` in a real headless Chromium (Playwright's Python client on Debian's /usr/bin/chromium)."""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from fsmtrain import EventLog, Runner, state_at
from fsmtrain.stopping import max_epochs
from tests.conftest import ROOT, file_digest
from tests.machines.approval import machine as gated
from tests.machines.curves import CURVES, curve_machine

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
ENV = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def log_file(tmp_path):
    """A finished run, a running one (its process gone mid-way) and a waiting one."""
    path = tmp_path / "ui.db"
    with EventLog(path) as log:
        Runner.start(curve_machine(max_epochs(12)), log=log, state={"curve": CURVES["overfits"]}).run()
        Runner.start(curve_machine(max_epochs(12)), log=log, state={"curve": CURVES["noisy"]}).run(max_steps=5)
        Runner.start(gated, log=log).run()
    return path


@pytest.fixture
def server(log_file, tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fsmtrain", "ui", str(log_file), "--port", str(port)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    url = re.search(r"(http://\S+)", line).group(1)
    yield url, port, log_file
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright (CI installs it)")
    if not os.path.exists(CHROMIUM):
        pytest.skip("no chromium at /usr/bin/chromium (CI installs Debian's package)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def test_the_pages_show_what_the_log_holds_and_go_records_the_input(server, browser, tmp_path):
    url, port, log_file = server
    token = url.split("token=")[1]
    page = browser.new_page(viewport={"width": 1200, "height": 1400})
    page.goto(url)
    statuses = [page.inner_text(f"#runs tr[data-run='{i}'] td:nth-child(3)") for i in (1, 2, 3)]
    assert statuses == ["finished", "running", "waiting"]

    with EventLog(log_file, readonly=True) as log:
        finished = state_at(log, 1)
        events = list(log.events(2))
        running = log.run(2)
    page.click("#runs tr[data-run='1'] a")
    titles = page.eval_on_selector_all("#curves circle title", "els => els.map(e => e.textContent)")
    points = [t.split(": ") for t in titles]
    assert [float(v) for k, v in points if k.startswith("val_loss ")] == list(finished["val_loss"])
    assert [float(v) for k, v in points if k.startswith("val_acc ")] == list(finished["val_acc"])

    page.goto(f"http://127.0.0.1:{port}/run/2?token={token}")
    assert page.get_attribute("#graph g.current", "data-action") == running.next  # the action due next
    assert page.eval_on_selector_all("#timeline tr[data-seq]", "rows => rows.length") == len(events)
    page.click("#timeline tr[data-seq='3'] a")  # the state at any step
    assert "state after event 3" in page.content()
    page.screenshot(path=str(_artifact("ui-running.png")), full_page=True)

    page.goto(f"http://127.0.0.1:{port}/run/3?token={token}")
    assert page.get_attribute("#graph g.current", "data-action") == "review"
    page.screenshot(path=str(_artifact("ui-waiting.png")), full_page=True)
    page.click("form.gate button[value='go']")
    page.wait_for_selector("#status.running")
    with EventLog(log_file, readonly=True) as log:
        ev = log.last_event(3)
    assert ev.kind == "input" and ev.inputs == {"decision": "go"} and ev.info["by"] == "web"


def _artifact(name):
    folder = ROOT / "test-artifacts"
    folder.mkdir(exist_ok=True)
    return folder / name


def post(url, data, content_type="application/x-www-form-urlencoded"):
    req = urllib.request.Request(url, data=data.encode(), method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class TestRefusals:
    def test_a_post_without_the_token_is_refused_and_writes_nothing(self, server):
        url, port, log_file = server
        before = file_digest(log_file)
        code, body = post(f"http://127.0.0.1:{port}/run/3/input", "decision=go")
        assert code == 403 and "no valid token" in body
        code, _ = post(f"http://127.0.0.1:{port}/run/3/input", "decision=go&token=wrong")
        assert code == 403
        assert file_digest(log_file) == before

    @pytest.mark.parametrize(("path", "form", "code", "message"), [
        ("/run/3/input", "decision=maybe", 400, "must be one of"),
        ("/run/3/input", "verdict=go", 400, "has no input named"),
        ("/run/3/input", "decision=go&scale=lots", 400, "must be int"),
        ("/run/1/input", "decision=go", 400, "run 1 is finished, not waiting"),
        ("/run/99/input", "decision=go", 404, "run 99 does not exist"),
    ])
    def test_malformed_forms_are_4xx_with_a_message_and_the_log_unchanged(self, server, path, form, code, message):
        url, port, log_file = server
        token = url.split("token=")[1]
        before = file_digest(log_file)
        got, body = post(f"http://127.0.0.1:{port}{path}", f"{form}&token={token}")
        assert got == code and message in body
        assert file_digest(log_file) == before

    def test_an_unknown_run_or_page_is_404(self, server):
        _, port, _ = server
        for path, message in (("/run/42", "run 42 does not exist"), ("/nothing", "No page")):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{path}")
            assert e.value.code == 404 and message in e.value.read().decode()


def test_start_up_errors_are_clear(tmp_path, log_file):
    junk = tmp_path / "junk.db"
    junk.write_text("hello")
    p = subprocess.run([sys.executable, "-m", "fsmtrain", "ui", str(junk)], capture_output=True, text=True, env=ENV)
    assert p.returncode != 0 and "not a SQLite database" in p.stderr and "Traceback" not in p.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        p = subprocess.run([sys.executable, "-m", "fsmtrain", "ui", str(log_file), "--port", str(busy)],
                           capture_output=True, text=True, env=ENV, timeout=30)
    assert p.returncode == 2 and f"port {busy} on 127.0.0.1 is in use" in p.stderr


def test_a_study_page_lists_its_trials(tmp_path):
    from fsmtrain.tune import IntRange, LogUniform, Study
    from fsmtrain.ui import UI

    with EventLog(tmp_path / "s.db") as log:
        Study(log, "tests.machines.trials:trainer", {"lr": LogUniform(0.01, 0.5), "hidden": IntRange(4, 16)},
              n_trials=3, max_concurrent=2, seed=1, config={"max_epochs": 2}).run()
    app = UI(tmp_path / "s.db")
    srv = app.bind("127.0.0.1", 0)
    app.serve_in_thread()
    try:
        page = urllib.request.urlopen(f"http://127.0.0.1:{srv.server_address[1]}/study/1").read().decode()
    finally:
        srv.shutdown()
        srv.server_close()
    assert page.count("<tr><td>") == 3 and "study 1" in page and page.count("<polyline") == 3
    time.sleep(0)
