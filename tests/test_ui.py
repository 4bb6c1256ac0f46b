"""`fsmtrain ui` over real logs, a real HTTP server and a real headless Chromium (Playwright on Debian's chromium).

Screenshots of each page, at desktop and phone widths, are kept under test-artifacts/.
"""

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest

from fsmtrain import EventLog, Runner, state_at
from fsmtrain.runner import stop
from fsmtrain.stopping import early_stopping, max_epochs
from fsmtrain.ui import UI
from tests.conftest import ROOT, file_digest, tamper
from tests.machines.approval import machine as gated
from tests.machines.curves import CURVES, curve_machine

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
ENV = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
PAYLOAD = '<i class="pwn">x</i><script>alert(1)</script><img src=x onerror=alert(2)>"\'&'
RAW = ('<i class="pwn">', "<script>alert", "<img src=x")  # what must never reach a page as markup
SEEN = "&lt;i class=&quot;pwn&quot;&gt;"  # how the payload reads, escaped, in HTML text or attributes


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _artifact(name):
    folder = ROOT / "test-artifacts"
    folder.mkdir(exist_ok=True)
    return folder / name


def request(port, path, *, method="GET", host=None, cookie=None, body=None, headers=()):
    """One HTTP request with exactly these headers: (status, headers, body text)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host if host is not None else f"127.0.0.1:{port}")
        if cookie:
            conn.putheader("Cookie", cookie)
        for k, v in headers:
            conn.putheader(k, v)
        if body is not None and not any(k.lower() == "content-length" for k, _ in headers):
            conn.putheader("Content-Length", str(len(body.encode())))
        conn.endheaders(body.encode() if body is not None else None)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode("utf-8", "replace")
    finally:
        conn.close()


def raw_request(port, data: bytes):
    """Bytes sent as they are (a request line no client library would write); the status code back."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(data)
        head = b""
        while b"\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
    return int(head.split()[1])


class Served:
    """An in-process server on a free loopback port, with this test's cookie."""

    def __init__(self, app):
        self.app, self.port = app, app.port
        self.cookie = f"fsmtrain_ui_{app.port}={app.token}"
        self.base = f"http://127.0.0.1:{app.port}"

    def get(self, path, **kw):
        return request(self.port, path, cookie=self.cookie, **kw)


@pytest.fixture
def serve():
    """Start `UI(path)` servers in this process; all are shut down when the test ends."""
    apps = []

    def start(path, **kw):
        app = UI(path, **kw)
        app.bind("127.0.0.1", 0)
        app.serve_in_thread()
        apps.append(app)
        return Served(app)

    yield start
    for app in apps:
        app.server.shutdown()
        app.server.server_close()


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
def server(log_file):
    """`fsmtrain ui` in its own process (killed when the test ends): (url with token, port, log)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fsmtrain", "ui", str(log_file), "--port", str(port)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r"(http://\S+)", line).group(1)
        yield url, port, log_file
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright (CI installs it)")
    if not os.path.exists(CHROMIUM):
        pytest.skip("no chromium at /usr/bin/chromium (CI installs Debian's package)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def open_page(browser, url, viewport=DESKTOP, **context):
    """A page in a fresh browser context that has opened the token URL (so it holds the cookie)."""
    ctx = browser.new_context(viewport=viewport, **context)
    page = ctx.new_page()
    page.goto(url)
    return page


def follow(page, selector):
    """Click a link or a submit button and wait for the page it loads: a bare click returns once the click is
    sent, so a query right after it can read the old page while the new one is still loading."""
    with page.expect_navigation():
        page.click(selector)


def token_of(url):
    return url.split("token=")[1]


# -- the pages, as a person uses them ------------------------------------------------------------------------
def test_the_pages_show_what_the_log_holds_and_go_records_the_input(server, browser):
    """The runs list, one chart per metric with the logged values, the graph with the action due next, the state
    at any event, and a Go in the browser recorded in the log, followed by what must happen next."""
    url, port, log_file = server
    page = open_page(browser, "about:blank")
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(url)
    assert "token=" not in page.url  # the token URL set a cookie and went away
    statuses = {i: page.inner_text(f"#runs tr[data-run='{i}'] .status") for i in (1, 2, 3)}
    assert statuses == {1: "finished", 2: "running", 3: "waiting"}

    with EventLog(log_file, readonly=True) as log:
        finished = state_at(log, 1)
        running = log.run(2)
    follow(page, "#runs tr[data-run='1'] td:nth-child(2) a")
    for metric in ("val_loss", "val_acc"):
        titles = page.eval_on_selector_all(f"#curves figure[data-metric='{metric}'] svg > :is(circle, rect, polygon) title",
                                           "els => els.map(e => e.textContent)")
        assert [float(t.split(": ")[1]) for t in titles] == list(finished[metric])
        assert page.text_content(f"#curves figure[data-metric='{metric}'] .ylabel") == metric  # its own labelled axis
    best = page.get_attribute("#curves figure[data-metric='val_loss'] g.best", "data-value")
    assert float(best) == min(finished["val_loss"])
    page.screenshot(path=str(_artifact("ui-finished.png")), full_page=True)

    page.goto(f"http://127.0.0.1:{port}/run/2")
    assert page.get_attribute("#graph g.current", "data-action") == running.next
    follow(page, "#timeline tr[data-seq='3'] a")
    assert page.inner_text("#state-section h2") == "state after event 3"
    assert page.get_attribute("#timeline tr.at", "data-seq") == "3"
    page.screenshot(path=str(_artifact("ui-running.png")), full_page=True)

    page.goto(f"http://127.0.0.1:{port}/run/3")
    gate = page.inner_text("#gate")
    assert page.get_attribute("#graph g.current", "data-action") == "review"
    assert "`" not in page.inner_text("#gate h2") and page.inner_text("#gate h2 code") == "review"
    assert "history" in page.inner_text("#gate table.summary")  # what the waiting event summarised
    assert "the reviewer's decision" in gate and "why" in gate  # each input's help
    page.screenshot(path=str(_artifact("ui-waiting.png")), full_page=True)
    page.click("form.gate button[value='go']")
    page.wait_for_selector("#status.running")
    assert "fsmtrain worker" in page.inner_text("#next-step")  # who continues it now
    with EventLog(log_file, readonly=True) as log:
        ev = log.last_event(3)
    assert ev.kind == "input" and ev.inputs == {"decision": "go"} and ev.info["by"] == "web"
    assert problems == []  # no script error, nothing the Content-Security-Policy had to block


def _long_run(log, epochs=500):
    """A forged 500-epoch run: 4 events an epoch (2,001 in all), a snapshot every 100 steps, like the runner's."""
    state = {"epoch": 0, "val_loss": [], "val_acc": [], "lr": [], "best": None}
    desc = {"name": "long", "entry": "train", "terminal": ["done"],
            "actions": {n: {"reads": [], "writes": [], "inputs": []} for n in ("train", "evaluate", "checkpoint", "schedule",
                                                                               "done")},
            "transitions": [["train", "evaluate", "default"], ["evaluate", "checkpoint", "default"],
                            ["checkpoint", "schedule", "default"], ["schedule", "done", "max_epochs(500)"],
                            ["schedule", "train", "default"]]}
    ev = log.create_run("long", "f" * 64, snapshot=state, next_action="train", info={"machine": desc})
    rid, seq, step = ev.run_id, 1, 0
    plan = [("train", "evaluate", lambda e: {"set": {"epoch": e}}),
            ("evaluate", "checkpoint", lambda e: {"append": {"val_loss": [1 / e + 0.001 * e], "val_acc": [1 - 1 / (e + 1)]}}),
            ("checkpoint", "schedule", lambda e: {"set": {"best": {"epoch": e, "metric": "val_loss",
                                                                  "value": min(state["val_loss"])}}}),
            ("schedule", "train", lambda e: {"append": {"lr": [0.1 * 0.99 ** e]}})]
    for e in range(1, epochs + 1):
        for action, nxt, make in plan:
            u = make(e)
            state.update(u.get("set", {}))
            for k, v in u.get("append", {}).items():
                state[k] = state[k] + v
            step += 1
            seq = log.append(rid, seq, kind="step", step=step, action=action, next_action=nxt, updates=u,
                             snapshot=dict(state) if step % 100 == 0 else None).seq
    return rid


def test_a_2000_event_run_is_paged_latest_first_and_stays_small(tmp_path, serve, browser):
    """The timeline shows 50 events a page, newest first, with links to jump; `?at=SEQ` marks the event on the
    charts and its timeline row; the state is one compact row per key; the first page stays under 200 KB."""
    with EventLog(tmp_path / "long.db", synchronous="NORMAL") as log:
        rid = _long_run(log)
        last = log.run(rid).last_seq
    assert last == 2001
    s = serve(tmp_path / "long.db")
    code, _, body = s.get(f"/run/{rid}")
    assert code == 200 and len(body.encode()) <= 200_000
    page = open_page(browser, s.app.url)
    page.goto(f"{s.base}/run/{rid}")
    seqs = page.eval_on_selector_all("#timeline tr[data-seq]", "rows => rows.map(r => +r.dataset.seq)")
    assert seqs == list(range(last, last - 50, -1))
    assert page.eval_on_selector_all("#state tr", "rows => rows.length") == 5  # one row per state key
    assert len(page.inner_text("#state")) < 1000
    assert sorted(page.eval_on_selector_all("#curves figure", "fs => fs.map(f => f.dataset.metric)")) == \
        ["lr", "val_acc", "val_loss"]  # one chart per metric: lr is not flattened against the loss
    page.screenshot(path=str(_artifact("ui-long-run.png")), full_page=True)
    follow(page, "#timeline-section .pager a[rel='next']")
    assert page.eval_on_selector("#timeline tr[data-seq]", "r => +r.dataset.seq") == last - 50
    follow(page, "#timeline-section .pager a:text-is('41')")  # the oldest page
    assert page.eval_on_selector_all("#timeline tr[data-seq]", "rows => rows.map(r => +r.dataset.seq)")[-1] == 1

    page.goto(f"{s.base}/run/{rid}?at=1000")
    assert page.get_attribute("#timeline tr.at", "data-seq") == "1000"
    marks = page.eval_on_selector_all("#curves figure", "fs => fs.map(f => [f.dataset.metric, !!f.querySelector('.at-mark')])")
    assert dict(marks) == {"lr": True, "val_acc": True, "val_loss": True}
    assert page.inner_text("#state-section h2") == "state after event 1000"
    follow(page, "#curves figure[data-metric='lr'] figcaption a:text-is('log scale')")
    assert "lr (log)" in page.text_content("#curves figure[data-metric='lr'] .ylabel")
    assert page.get_attribute("#timeline tr.at", "data-seq") == "1000"  # the view keeps what it looked at
    page.set_viewport_size(PHONE)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.screenshot(path=str(_artifact("ui-long-run-phone.png")), full_page=True)


def _many_runs(log, n):
    machines = ["resnet", "mlp", "gpt"]
    for i in range(1, n + 1):
        ev = log.create_run(machines[i % 3], "f" * 64, snapshot={"epoch": 0, "val_loss": [], "best": None},
                            next_action="train", tags={"sweep": i % 4})
        seq = log.append(ev.run_id, 1, kind="step", step=1, action="train", next_action="evaluate",
                         updates={"set": {"epoch": 1}, "append": {"val_loss": [1 / i]}}, time=1_000_000.0 + i).seq
        end = None if i % 5 else "done"
        seq = log.append(ev.run_id, seq, kind="step", step=2, action="evaluate", next_action=end, time=1_000_000.0 + 2 * i,
                         updates={"set": {"best": {"epoch": 1, "metric": "val_loss", "value": 1 / i}}}).seq
        if i % 7 == 0:
            log.append(ev.run_id, seq, kind="failed", step=2, action="train", attempt=3, error="RuntimeError: boom",
                       time=1_000_000.0 + 3 * i)


def test_300_runs_are_listed_newest_first_in_pages_sortable_and_filterable(tmp_path, serve, browser):
    """Newest first, 50 a page; sorting by a column and filtering by status, machine and tag; each run's best
    monitored value; at phone width the page does not overflow sideways."""
    with EventLog(tmp_path / "many.db", synchronous="NORMAL") as log:
        _many_runs(log, 300)
    s = serve(tmp_path / "many.db")
    page = open_page(browser, s.app.url)

    def runs():
        return page.eval_on_selector_all("#runs-body tr", "rows => rows.map(r => +r.dataset.run)")

    assert runs() == list(range(300, 250, -1))
    assert page.inner_text("#runs tr[data-run='300'] td:nth-child(10)").startswith(f"{1 / 300:.4g}")
    page.screenshot(path=str(_artifact("ui-runs.png")), full_page=True)
    follow(page, ".pager a[rel='next']")
    assert runs() == list(range(250, 200, -1))
    page.select_option("select[name='status']", "failed")
    follow(page, "form.filters button")
    assert runs() == [i for i in range(300, 0, -1) if i % 7 == 0][:50]
    page.goto(f"{s.base}/?machine=mlp&tag=sweep%3D1")
    assert runs() == [i for i in range(300, 0, -1) if i % 3 == 1 and i % 4 == 1][:50]
    page.goto(f"{s.base}/")
    follow(page, "#runs th a:text('updated')")  # newest update first, then the other way round
    assert runs()[0] == 294  # (its failed event is the latest of all)
    follow(page, "#runs th a:text('updated')")
    assert runs()[:3] == [1, 2, 3]
    page.set_viewport_size(PHONE)
    page.goto(f"{s.base}/")
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.screenshot(path=str(_artifact("ui-runs-phone.png")), full_page=True)


def test_compare_overlays_each_metric_names_differing_settings_and_downloads_csv(tmp_path, serve, browser):
    """Runs ticked in the list open one chart per metric with a series per run (each its own dash and marker),
    a legend naming the settings that differ, and their metrics as CSV."""
    path = tmp_path / "c.db"
    with EventLog(path) as log:
        for name, lr in (("overfits", 0.1), ("falls", 0.01), ("noisy", 0.001)):
            Runner.start(curve_machine(max_epochs(12)), log=log, state={"curve": CURVES[name]}, tags={"lr": lr}).run()
        states = {i: state_at(log, i) for i in (1, 3)}
    s = serve(path)
    page = open_page(browser, s.app.url)
    page.check("#runs tr[data-run='1'] input[type=checkbox]")
    page.check("#runs tr[data-run='3'] input[type=checkbox]")
    page.click("#compare button")
    page.wait_for_selector("#compare-legend")
    assert page.eval_on_selector_all("#compare-legend th", "ths => ths.map(t => t.textContent)") == ["run", "status", "tag:lr"]
    for metric in ("val_loss", "val_acc"):
        lines = page.eval_on_selector_all(f"#curves figure[data-metric='{metric}'] polyline",
                                          "ps => ps.map(p => [p.dataset.series, p.getAttribute('stroke-dasharray')])")
        assert [label for label, _ in lines] == ["run 1 · tag:lr=0.1", "run 3 · tag:lr=0.001"]
        assert len({dash for _, dash in lines}) == 2  # told apart by more than colour
    page.screenshot(path=str(_artifact("ui-compare.png")), full_page=True)
    href = page.get_attribute("a:text('these metrics as CSV')", "href")
    code, headers, text = s.get(href)
    assert code == 200 and headers["content-type"].startswith("text/csv")
    rows = text.strip().splitlines()
    assert rows[0] == "run,metric,index,value"
    got = [r.split(",") for r in rows[1:]]
    for rid, state in states.items():
        assert [float(v) for r, m, _, v in got if r == str(rid) and m == "val_loss"] == list(state["val_loss"])


def test_a_study_page_shows_pruned_trials_the_best_one_its_search_and_parameters(tmp_path, serve, browser):
    """A study with ASHA: pruned trials shown as pruned, the best trial marked and named, the sampler and scheduler,
    the best few curves in colour and the rest grey, and a parallel-coordinates chart with a line per trial."""
    from fsmtrain.tune import ASHA, Choice, InlineExecutor, IntRange, LogUniform, Study

    with EventLog(tmp_path / "s.db") as log:
        Study(log, "tests.machines.trials:trainer",
              {"lr": LogUniform(0.01, 0.5), "hidden": IntRange(4, 16), "act": Choice(["relu", "tanh"])},
              n_trials=8, max_concurrent=2, seed=1, scheduler=ASHA(grace_period=1, reduction_factor=2, max_t=4),
              executor=InlineExecutor()).run()
        study = state_at(log, 1)
    best = study["best"]
    s = serve(tmp_path / "s.db")
    page = open_page(browser, s.app.url)
    page.goto(f"{s.base}/study/1")
    statuses = page.eval_on_selector_all("#trials tbody tr .status", "els => els.map(e => e.textContent)")
    assert len(statuses) == 8 and "pruned" in statuses
    assert page.get_attribute("#trials tr.best", "data-trial") == str(best["index"])
    assert f"trial {best['index']}" in page.inner_text("#best")
    search = page.inner_text("#search")
    assert "sampler random" in search and "scheduler asha" in search
    colours = page.eval_on_selector_all("#curves polyline", "ps => ps.map(p => p.getAttribute('stroke'))")
    assert 1 <= len(set(colours) - {"#a3a3a3"}) <= 5
    labels = page.eval_on_selector_all("#parallel polyline.pline", "ps => ps.map(p => p.dataset.label.split(':')[0])")
    assert len(set(labels)) == 8
    assert page.eval_on_selector_all("#parallel text.axis", "ts => ts.map(t => t.textContent)") == \
        ["act", "hidden", "lr (log)", "best val_loss"]
    page.screenshot(path=str(_artifact("ui-study.png")), full_page=True)
    page.set_viewport_size(PHONE)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]  # wide parts scroll in place
    page.screenshot(path=str(_artifact("ui-study-phone.png")), full_page=True)


def _attention_log(path):
    """A failed run, a stopped one, a pruned one, and one resumed after interruptions."""
    from fsmtrain import Machine, action

    @action(reads=["epoch"], writes=["epoch"])
    def boom(state):
        raise ValueError("loss is NaN at step 17: lower the learning rate")

    with EventLog(path) as log:
        with pytest.raises(Exception, match="failed"):
            Runner.start(Machine("boomer", [boom], [("boom", "boom")], entry="boom", initial={"epoch": 0}),
                         log=log).run()
        r = Runner.start(curve_machine(max_epochs(12)), log=log, state={"curve": CURVES["diverges"]})
        r.run(max_steps=6)
        stop(log, r.run_id, reason="diverging; lr too high", by="alice")
        r = Runner.start(curve_machine(max_epochs(12)), log=log, state={"curve": CURVES["falls"]})
        r.run(max_steps=4)
        stop(log, r.run_id, reason="below the median at rung 2", by="asha", kind="pruned",
             details={"rung": 2, "value": 0.7, "rule": "median"})
        r = Runner.start(curve_machine(max_epochs(12)), log=log, state={"curve": CURVES["falls"]})
        r.run(max_steps=2)
        last = log.last_event(r.run_id)
        log.append(r.run_id, last.seq, kind="resume", step=last.step, action=last.next, attempt=1,
                   info={"interrupted": 2, "pid": 1})


def test_runs_that_need_attention_say_why_near_the_top(tmp_path, serve, browser):
    """A failed run shows its error, a stopped or pruned one who ended it and why (and the scheduler's details),
    above the charts; interruptions are counted in the heading."""
    _attention_log(tmp_path / "a.db")
    s = serve(tmp_path / "a.db")
    page = open_page(browser, s.app.url)

    def above_charts(box):
        return page.evaluate(f"""() => {{
            const box = document.querySelector('{box}'), charts = document.querySelector('#charts, #machine');
            return !!box && !!(box.compareDocumentPosition(charts) & Node.DOCUMENT_POSITION_FOLLOWING);
        }}""")

    page.goto(f"{s.base}/run/1")
    assert "ValueError: loss is NaN at step 17: lower the learning rate" in page.inner_text("#error .error-line")
    assert above_charts("#error") and "fsmtrain retry" in page.inner_text("#error")
    page.screenshot(path=str(_artifact("ui-failed.png")), full_page=True)
    page.goto(f"{s.base}/run/2")
    assert "stopped by alice" in page.inner_text("#stop h2") and "diverging; lr too high" in page.inner_text("#stop")
    assert above_charts("#stop")
    page.goto(f"{s.base}/run/3")
    text = page.inner_text("#stop")
    assert "pruned by asha" in text and "below the median at rung 2" in text
    assert all(word in text for word in ("rung", "median", "0.7"))
    page.screenshot(path=str(_artifact("ui-pruned.png")), full_page=True)
    page.goto(f"{s.base}/run/4")
    assert "2 interruption(s) in a row" in page.inner_text("#head .facts")


def test_a_read_only_server_shows_the_gate_with_its_buttons_disabled_and_how_to_answer(log_file, serve, browser):
    """Where the page cannot answer (`fsmtrain ui --read-only`), the form is visibly disabled and says where to answer
    instead; a post is refused."""
    s = serve(log_file, readonly=True)
    page = open_page(browser, s.app.url)
    page.goto(f"{s.base}/run/3")
    assert page.eval_on_selector_all("form.gate button", "bs => bs.every(b => b.disabled)")
    assert "fsmtrain input" in page.inner_text("#gate .disabled-note")
    page.screenshot(path=str(_artifact("ui-gate-disabled.png")), full_page=True)
    before = file_digest(log_file)
    code, _, body = s.get("/run/3/input", method="POST", body=f"decision=go&token={s.app.token}",
                          headers=[("Content-Type", "application/x-www-form-urlencoded")])
    assert code == 403 and "read-only" in body and file_digest(log_file) == before


def test_the_cli_read_only_flag_writes_nothing(log_file):
    """`fsmtrain ui --read-only` serves the pages but refuses the gate's form, leaving the log as it was."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fsmtrain", "ui", str(log_file), "--port", str(port), "--read-only"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        token = token_of(re.search(r"(http://\S+)", proc.stdout.readline()).group(1))
        before = file_digest(log_file)
        code, _, body = request(port, "/run/3/input", method="POST", body=f"decision=go&token={token}",
                                headers=[("Content-Type", "application/x-www-form-urlencoded")])
        assert code == 403 and "read-only" in body and file_digest(log_file) == before
        assert request(port, "/run/3", cookie=f"fsmtrain_ui_{port}={token}")[0] == 200
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_the_graph_lists_every_condition_in_full(tmp_path, serve, browser):
    """Conditions longer than a label fits are numbered on the drawing and listed whole beside it."""
    cond = early_stopping("val_loss", patience=3, min_delta=0.001) & max_epochs(12)
    with EventLog(tmp_path / "g.db") as log:
        Runner.start(curve_machine(cond), log=log, state={"curve": CURVES["falls"]}).run()
    s = serve(tmp_path / "g.db")
    page = open_page(browser, s.app.url)
    page.goto(f"{s.base}/run/1")
    items = page.eval_on_selector_all("ol.conditions li", "lis => lis.map(li => li.textContent)")
    full = next(c for src, dst, c in curve_machine(cond).describe()["transitions"] if dst == "done")
    assert len(full) > 40 and any(full in item for item in items)
    assert page.eval_on_selector_all("#graph g.badge", "gs => gs.length") == 1
    assert page.evaluate("() => { const li = document.querySelector('ol.conditions li:nth-child(2)');"
                         " return li.scrollWidth <= li.clientWidth + 1; }")  # wrapped, never clipped


def test_a_live_page_updates_in_place_and_refreshes_itself_without_scripts(log_file, serve, browser):
    """While a run runs, new events appear in the timeline and new points on the charts without a reload (the same
    origin's ui.js polling the API); with scripts off, the page refreshes itself."""
    s = serve(log_file)
    page = open_page(browser, s.app.url)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{s.base}/run/2")
    page.evaluate("window.__stayed = true")
    points = page.eval_on_selector_all("#curves figure[data-metric='val_loss'] svg > circle", "cs => cs.length")
    with EventLog(log_file) as log:
        last = log.last_event(2)
        assert last.next == "evaluate"
        ev = log.append(2, last.seq, kind="step", step=last.step + 1, action="evaluate", next_action="train",
                        updates={"append": {"val_loss": [0.5], "val_acc": [0.75]}})
    page.wait_for_selector(f"#timeline-rows tr[data-seq='{ev.seq}']")
    assert page.evaluate("window.__stayed") is True
    assert page.eval_on_selector_all("#curves figure[data-metric='val_loss'] svg > circle", "cs => cs.length") == points + 1
    assert page.eval_on_selector_all("#timeline-rows tr", "rows => +rows[0].dataset.seq") == ev.seq
    assert errors == [] and "live" in page.inner_text("#live-state")

    page.goto(f"{s.base}/")  # the runs list follows too, and keeps what was ticked for compare
    page.check("#runs tr[data-run='1'] input[type=checkbox]")
    steps = page.inner_text("#runs tr[data-run='2'] td:nth-child(5)")
    with EventLog(log_file) as log:
        log.append(2, ev.seq, kind="step", step=ev.step + 1, action="train", next_action="evaluate",
                   updates={"set": {"epoch": 99}})
    page.wait_for_function("s => document.querySelector(\"#runs tr[data-run='2'] td:nth-child(5)\").textContent !== s",
                           arg=steps)
    assert page.is_checked("#runs tr[data-run='1'] input[type=checkbox]")
    assert page.evaluate("window.__stayed") is None  # (a new page: the list was not reloaded either)

    still = open_page(browser, s.app.url, java_script_enabled=False)
    still.goto(f"{s.base}/run/2")
    with still.expect_navigation():  # the <noscript> refresh
        pass


def test_text_contrast_language_and_viewport(log_file, serve, browser):
    """Every text on the pages has a contrast of at least 4.5:1 with what is behind it; pages declare their
    language and a viewport."""
    _attention_log(log_file.parent / "a.db")
    contrast = """() => {
      const lum = c => { const [r, g, b] = c.match(/[\\d.]+/g).slice(0, 3).map(Number).map(v => v / 255)
                        .map(v => v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4);
                        return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
      const bg = el => { for (; el; el = el.parentElement) { const c = getComputedStyle(el).backgroundColor;
                         if (c && !c.endsWith(', 0)') && c !== 'transparent') return c; } return 'rgb(255, 255, 255)'; };
      const worst = [];
      for (const el of document.querySelectorAll('body *')) {
        if (el.closest('button[disabled], option, select, script, style, title, noscript')) continue;
        const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
        if (!own || el.getClientRects().length === 0) continue;
        const svg = el instanceof SVGElement;
        const fg = svg ? getComputedStyle(el).fill : getComputedStyle(el).color;
        const back = svg ? 'rgb(255, 255, 255)' : bg(el);
        const [a, b] = [lum(fg), lum(back)];
        const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
        if (ratio < 4.5) worst.push([el.tagName, el.textContent.slice(0, 30), fg, back, ratio]);
      }
      return worst;
    }"""
    s = serve(log_file)
    t = serve(log_file.parent / "a.db")
    page = open_page(browser, s.app.url)
    for base, path in ((s.base, "/"), (s.base, "/run/1?at=5"), (s.base, "/run/2"), (s.base, "/run/3"),
                       (s.base, "/compare?run=1&run=2"), (t.base, "/run/1"), (t.base, "/run/2"), (t.base, "/run/3")):
        if base == t.base and "fsmtrain_ui_" + str(t.port) not in str(page.context.cookies()):
            page.goto(t.app.url)
        page.goto(base + path)
        assert page.evaluate(contrast) == [], path
        assert page.get_attribute("html", "lang") == "en"
        assert "width=device-width" in page.get_attribute("meta[name=viewport]", "content")


# -- trust: escaping, hosts, tokens, robustness ----------------------------------------------------------------
def _forged(path):
    """A log whose every text field holds markup: run, machine graph, gate, summary, events, a stop, a study."""
    desc = {"name": PAYLOAD, "entry": PAYLOAD, "terminal": [PAYLOAD],
            "actions": {PAYLOAD: {"reads": [], "writes": [], "inputs": [
                {"name": "decision", "type": "str", "required": True, "choices": [PAYLOAD, "go"], "help": PAYLOAD}]},
                "b": {"inputs": []}},
            "transitions": [[PAYLOAD, "b", PAYLOAD], ["b", PAYLOAD, "default"]]}
    with EventLog(path) as log:
        ev = log.create_run(PAYLOAD, PAYLOAD, snapshot={PAYLOAD: [1.0, 2.0], "text": PAYLOAD, "nested": {PAYLOAD: [PAYLOAD]}},
                            next_action=PAYLOAD, tags={PAYLOAD: PAYLOAD, "worker": PAYLOAD}, info={"machine": desc})
        rid = ev.run_id
        seq = log.append(rid, 1, kind="step", step=1, action=PAYLOAD, next_action="b",
                         updates={"set": {"text": PAYLOAD}, "append": {PAYLOAD: [3.0]}},
                         info={"condition": PAYLOAD, "reason": PAYLOAD}).seq
        seq = log.append(rid, seq, kind="error", step=1, action=PAYLOAD, attempt=1, error=PAYLOAD).seq
        log.append(rid, seq, kind="waiting", step=1, action=PAYLOAD, info={
            "needs": [{"name": "decision", "type": "str", "required": True, "choices": [PAYLOAD, "go"], "help": PAYLOAD},
                      {"name": PAYLOAD, "type": PAYLOAD, "required": False, "choices": None, "help": PAYLOAD}],
            "missing": [PAYLOAD], "summary": {"epoch": PAYLOAD, "metrics": {PAYLOAD: {"n": PAYLOAD, "last": PAYLOAD}}}})
        ev = log.create_run("x", "f" * 64, snapshot={}, next_action=PAYLOAD)
        stop(log, ev.run_id, reason=PAYLOAD, by=PAYLOAD, kind="pruned", details={PAYLOAD: PAYLOAD})
        ev = log.create_run("y", "f" * 64, snapshot={}, next_action="a")
        log.append(ev.run_id, 1, kind="failed", step=0, action=PAYLOAD, attempt=3, error=f"Traceback\n{PAYLOAD}\n{PAYLOAD}")
        log.create_run("study:" + PAYLOAD, "f" * 64, next_action="propose", snapshot={
            "mode": PAYLOAD, "n_trials": PAYLOAD, "metric": PAYLOAD, "sampler": PAYLOAD, "scheduler": PAYLOAD,
            "space": {PAYLOAD: {"type": PAYLOAD}},
            "trials": [{"index": 0, "run_id": 1, "params": {PAYLOAD: PAYLOAD}},
                       {"index": PAYLOAD, "run_id": PAYLOAD, "params": {PAYLOAD: 1.0}}],
            "updates": [{"index": 0, "status": PAYLOAD, "epochs": PAYLOAD, "values": [1.0, 0.5]}],
            "best": {"index": PAYLOAD, "run_id": PAYLOAD, "value": PAYLOAD, "epoch": PAYLOAD, "params": {PAYLOAD: PAYLOAD}}})
    # what no writer makes: an unknown kind, text in the step and attempt columns, inputs of a stopped run
    tamper(path, ("INSERT INTO events (run_id, seq, step, time, kind, action, attempt, inputs, next, prev_hash, hash) "
                  "VALUES (2, 3, ?, 0, ?, ?, ?, ?, ?, 'x', 'x')",
                  (PAYLOAD, PAYLOAD, PAYLOAD, PAYLOAD, json.dumps({PAYLOAD: PAYLOAD}), None)))
    return ["/", "/run/1", "/run/1?at=2", "/run/2", "/run/3", "/study/4", "/run/4", "/compare?run=1&run=2&run=4",
            f"/?status=waiting&tag={PAYLOAD}", "/run/1?tpage=1&log=" + PAYLOAD]


def test_markup_in_every_text_field_of_a_forged_log_is_shown_as_text_on_every_page(tmp_path, serve, browser):
    """Names, tags, states, conditions, gate inputs and help, summaries, errors, stop reasons, a study's settings
    and trials, an unknown event kind: all reach the pages escaped, as text, and nothing runs."""
    pages = _forged(tmp_path / "f.db")
    s = serve(tmp_path / "f.db")
    for path in pages:
        code, headers, body = s.get(path.replace("<", "%3C").replace(" ", "%20").replace('"', "%22"))
        assert code == 200, (path, body[-500:])
        assert not any(raw in body for raw in RAW), path
        assert SEEN in body or "&lt;i class=&quot;pwn" in body, path  # the text is there, escaped
    dialogs = []
    page = open_page(browser, s.app.url)
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    for path in pages:
        page.goto(s.base + path.replace("<", "%3C"))
        assert page.evaluate("document.querySelectorAll('.pwn, img, iframe, object, embed, script:not([src])').length") == 0
        assert '<i class="pwn">' in page.inner_text("body"), path  # shown as the text it is
    assert dialogs == []
    page.goto(s.base + "/run/1")
    page.screenshot(path=str(_artifact("ui-forged.png")), full_page=True)


def test_a_forged_log_of_wrong_shapes_never_gives_a_500(tmp_path, serve):
    """Strings where numbers belong, NaN, nested junk, JSON no writer makes: every page renders what it can and says
    what it cannot show."""
    path = tmp_path / "w.db"
    with EventLog(path) as log:
        log.create_run("m", "f" * 64, next_action="a", snapshot={
            "val_loss": [1.0, "x", float("nan"), None, {"a": 1}, float("inf"), 0.5], "best": "junk",
            "epoch": "seven", "lr": [[1, 2], [3]], "acc": [True, False]},
            info={"machine": {"actions": ["not", "a", "dict"], "transitions": [["a"], "junk", ["a", "b", "c", "d"]],
                              "entry": 5}})
        log.create_run("study:s", "f" * 64, next_action="a", snapshot={"trials": "junk", "updates": 7, "mode": None,
                                                                      "metric": ["x"], "n_trials": float("nan")})
        log.create_run("study:t", "f" * 64, next_action="a", snapshot={
            "trials": [{"index": 0, "run_id": 1, "params": "junk"}], "updates": [{"index": 5}], "mode": "min"})
        log.create_run("g", "f" * 64, next_action="a", snapshot={})
        log.append(4, 1, kind="waiting", step=0, action="a", info={"needs": "junk", "summary": [1, 2]})
        log.create_run("h", "f" * 64, next_action="a", snapshot={})
        log.append(5, 1, kind="waiting", step=0, action="a",
                   info={"needs": [{"name": "decision", "choices": "go"}, {"nope": 1}, 7], "summary": {"metrics": 3}})
        log.create_run("i", "f" * 64, next_action="a", snapshot={})
        log.append(6, 1, kind="stopped", step=0, action="a", info=["by", "someone"])
    tamper(path,
           "INSERT INTO runs (id, machine, fingerprint, created, parent_id, parent_seq, tags) "
           "VALUES (7, 'j', 'f', 'yesterday', 'nobody', NULL, 'not json')",
           "INSERT INTO events (run_id, seq, step, time, kind, action, updates, info, snapshot, prev_hash, hash) "
           "VALUES (7, 1, 'one', 'noon', 'start', NULL, '[1, 2]', '\"text\"', '{\"a\": NaN', 'x', 'x')",
           "INSERT INTO events (run_id, seq, step, time, kind, info, prev_hash, hash) VALUES (6, 3, 0, 0, 'resume', "
           "'{\"interrupted\": \"lots\"}', 'x', 'x')")
    s = serve(path)
    pages = ["/", "/?sort=started", "/?sort=duration&order=asc", "/?sort=steps", "/?metric=val_loss", "/?metric=epoch",
             "/?tag=x", "/compare?run=1&run=2&run=3&run=7", "/compare.csv?run=1&run=7"]
    pages += [f"/run/{i}" for i in range(1, 8)] + [f"/run/{i}?at=1&smooth=0.6&log=val_loss" for i in range(1, 8)]
    pages += ["/study/2", "/study/3", "/run/1/metrics.csv", "/api/live/runs?since=0",
              "/api/live/run/1?status=running&since=0", "/api/live/study/2?since=0"]
    for p in pages:
        code, _, body = s.get(p)
        assert code == 200, (p, body[-800:])
    code, _, body = s.get("/run/1")
    assert "val_loss" in body and "not finite left out" in body  # the numbers it has are drawn
    code, _, body = s.get("/study/2")
    assert "cannot be shown" in body
    for p in ("/run/4", "/run/5"):  # a gate recorded as junk: answering it is a clear 4xx, nothing written
        before = file_digest(path)
        code, _, body = s.get(p + "/input", method="POST", body=f"decision=go&token={s.app.token}",
                              headers=[("Content-Type", "application/x-www-form-urlencoded")])
        assert 400 <= code < 500 and file_digest(path) == before, body[-300:]


class TestHostsAndTokens:
    def test_a_foreign_host_is_refused_even_with_the_token(self, log_file, serve):
        """A request naming another host (DNS rebinding) gets no page, whatever it carries."""
        s = serve(log_file)
        for path in ("/", "/run/1", "/api/run/1", f"/?token={s.app.token}", "/static/ui.js"):
            code, _, body = s.get(path, host="evil.example")
            assert code == 421 and "curves" not in body and "evil.example" in body
        code, _, _ = s.get("/", host=f"evil.example:{s.port}")
        assert code == 421
        code, _, _ = request(s.port, "/", host="", cookie=s.cookie)
        assert code == 421

    def test_two_host_headers_are_refused_even_when_the_first_is_loopback(self, log_file, serve):
        """A second, foreign Host header after a loopback one: 400, never a page (which one a proxy used is unknown)."""
        s = serve(log_file)
        data = (f"GET /?token={s.app.token} HTTP/1.1\r\nHost: 127.0.0.1:{s.port}\r\nHost: evil.example\r\n"
                "Connection: close\r\n\r\n").encode()
        assert raw_request(s.port, data) == 400
        one = f"GET /?token={s.app.token} HTTP/1.1\r\nHost: 127.0.0.1:{s.port}\r\nConnection: close\r\n\r\n"
        assert raw_request(s.port, one.encode()) in (200, 303)

    def test_loopback_host_names_are_served(self, log_file, serve):
        """127.0.0.1, localhost and [::1], with or without the port, are this machine."""
        s = serve(log_file)
        for host in (f"127.0.0.1:{s.port}", "localhost", f"localhost:{s.port}", f"[::1]:{s.port}", "LOCALHOST"):
            assert s.get("/", host=host)[0] == 200, host

    def test_reading_needs_the_token_and_the_token_url_sets_a_cookie(self, log_file, serve):
        """Without the token nothing is read (a page says how to get the URL); the token URL sets an HttpOnly,
        SameSite=Strict cookie and redirects to the same page without it."""
        s = serve(log_file)
        for path in ("/", "/run/1", "/study/1", "/api/run/1", "/run/1/metrics.csv", "/compare?run=1", "/api/live/runs"):
            code, _, body = request(s.port, path)
            assert code == 401 and "token" in body and "curves" not in body, path
        code, headers, _ = request(s.port, f"/run/1?at=3&token={s.app.token}")
        assert code == 303 and headers["location"] == "/run/1?at=3"
        cookie = headers["set-cookie"]
        assert cookie.startswith(s.cookie + ";") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        code, _, body = request(s.port, "/", cookie=cookie.split(";")[0])
        assert code == 200 and "token=" not in body
        code, _, body = request(s.port, f"/api/run/1?token={s.app.token}")  # scripts may pass it along
        assert code == 200 and json.loads(body)["status"] == "finished"

    @pytest.mark.parametrize("token", ["wrong", "%C3%A9t%C3%A9", "%00", "%FF"])
    def test_a_wrong_or_non_ascii_token_is_refused_cleanly(self, log_file, serve, token):
        """A wrong token, in the URL, a cookie or a form, is a 403 or 401 page, never a crash."""
        s = serve(log_file)
        assert request(s.port, f"/?token={token}")[0] == 403
        assert request(s.port, "/", cookie=f"fsmtrain_ui_{s.port}=é{token}")[0] == 401
        before = file_digest(log_file)
        code, _, body = request(s.port, "/run/3/input", method="POST", body=f"decision=go&token={token}",
                                headers=[("Content-Type", "application/x-www-form-urlencoded")])
        assert code == 403 and "no valid token" in body and file_digest(log_file) == before

    def test_every_response_carries_nosniff_and_the_policy(self, log_file, serve):
        """Pages, JSON, CSV, static files, redirects, errors and the standard library's own error replies all say
        nosniff and allow scripts from this server only."""
        s = serve(log_file)
        answers = [s.get(p) for p in ("/", "/run/1", "/api/run/1", "/run/1/metrics.csv", "/static/ui.js", "/nothing",
                                      "/api/live/run/2?status=running&since=0")]
        answers += [request(s.port, "/"), request(s.port, f"/?token={s.app.token}"), s.get("/", host="evil.example"),
                    s.get("/run/3/input", method="POST", body="decision=go")]
        for code, headers, _ in answers:
            assert headers.get("x-content-type-options") == "nosniff", code
            assert "script-src 'self'" in headers.get("content-security-policy", ""), code
            assert "unsafe-inline" not in headers["content-security-policy"]
        with socket.create_connection(("127.0.0.1", s.port), timeout=60) as sock:  # the standard library's 501
            sock.sendall(b"BREW /pot HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
        assert reply.startswith(b"HTTP/1.0 501") and b"X-Content-Type-Options: nosniff" in reply

    @pytest.mark.parametrize(("length", "code"), [("-1", 400), ("abc", 400), ("1e3", 400), ("99999999999", 400),
                                                  ("200000", 413)])
    def test_an_invalid_content_length_is_refused_at_once(self, log_file, serve, length, code):
        """A negative, non-numeric or huge length is answered at once (not read until the client leaves)."""
        s = serve(log_file)
        data = (f"POST /run/3/input HTTP/1.1\r\nHost: 127.0.0.1:{s.port}\r\nContent-Type: "
                f"application/x-www-form-urlencoded\r\nContent-Length: {length}\r\n\r\n").encode()
        assert raw_request(s.port, data) == code  # the connection stays open: only the server can answer

    @pytest.mark.parametrize("path", ["/run/99999999999999999999", "/run/9223372036854775808", "/run/0", "/run/-1",
                                      "/run/%D9%A1", "/study/99999999999999999999", "/api/run/99999999999999999999",
                                      "/run/99999999999999999999/metrics.csv", "/run/42", "/study/1", "/nothing"])
    def test_ids_out_of_range_unknown_or_not_ascii_digits_are_a_clean_404(self, log_file, serve, path):
        """Ids beyond SQLite's integers, zero, negative, non-ASCII digits or no such run: a 404 page, never a 500."""
        s = serve(log_file)
        code, _, body = s.get(path)
        assert code == 404 and ("does not exist" in body or "No page" in body or "not a study" in body), body[-300:]

    def test_non_ascii_digits_in_the_raw_request_line_are_a_404(self, log_file, serve):
        """Arabic-Indic digits sent as raw UTF-8 bytes (which int() would accept) are not a run id."""
        s = serve(log_file)
        data = f"GET /run/١ HTTP/1.0\r\nHost: 127.0.0.1\r\nCookie: {s.cookie}\r\n\r\n".encode()
        assert raw_request(s.port, data) == 404
        assert s.get("/run/1?at=99999999999999999999&tpage=99999999999999999999")[0] == 200

    def test_the_cli_refuses_a_remote_host_unless_allowed_and_then_warns(self, log_file):
        """`--host 0.0.0.0` exits with a usage error naming --allow-remote; with it, the server starts and warns."""
        p = subprocess.run([sys.executable, "-m", "fsmtrain", "ui", str(log_file), "--host", "0.0.0.0"],
                           capture_output=True, text=True, env=ENV, timeout=60)
        assert p.returncode == 2 and "--allow-remote" in p.stderr and "Traceback" not in p.stderr
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "fsmtrain", "ui", str(log_file), "--host", "0.0.0.0",
                                 "--allow-remote", "--port", str(port)], env=ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            line = proc.stdout.readline()
            assert f":{port}/?token=" in line
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=10)
        assert "WARNING" in err and "plain HTTP" in err


class TestRefusals:
    def test_a_post_without_the_token_is_refused_and_writes_nothing(self, server):
        """A form without the server's token is a 403, and the log is unchanged."""
        url, port, log_file = server
        before = file_digest(log_file)
        form = [("Content-Type", "application/x-www-form-urlencoded")]
        code, _, body = request(port, "/run/3/input", method="POST", body="decision=go", headers=form)
        assert code == 403 and "no valid token" in body
        code, _, _ = request(port, "/run/3/input", method="POST", body="decision=go&token=wrong", headers=form)
        assert code == 403
        assert file_digest(log_file) == before

    @pytest.mark.parametrize(("path", "form", "code", "message"), [
        ("/run/3/input", "decision=maybe", 400, "must be one of"),
        ("/run/3/input", "verdict=go", 400, "has no input named"),
        ("/run/3/input", "decision=go&scale=lots", 400, "must be int"),
        ("/run/1/input", "decision=go", 400, "run 1 is finished, not waiting"),
        ("/run/99/input", "decision=go", 404, "run 99 does not exist"),
        ("/run/99999999999999999999/input", "decision=go", 404, "does not exist"),
    ])
    def test_malformed_forms_are_4xx_with_a_message_and_the_log_unchanged(self, server, path, form, code, message):
        """Input the gate would refuse is a 4xx page saying why; nothing is written."""
        url, port, log_file = server
        before = file_digest(log_file)
        got, _, body = request(port, path, method="POST", body=f"{form}&token={token_of(url)}",
                               headers=[("Content-Type", "application/x-www-form-urlencoded")])
        assert got == code and message in body
        assert file_digest(log_file) == before

    def test_an_unknown_run_or_page_is_404(self, server):
        """A run that does not exist, and a path that is no page, are 404 pages that say so."""
        url, port, _ = server
        cookie = f"fsmtrain_ui_{port}={token_of(url)}"
        for path, message in (("/run/42", "run 42 does not exist"), ("/nothing", "No page")):
            code, _, body = request(port, path, cookie=cookie)
            assert code == 404 and message in body


def test_start_up_errors_are_clear(tmp_path, log_file):
    """A file that is not a log, and a port in use, are one-line errors, not tracebacks."""
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


@pytest.mark.slow
def test_the_benchmark_prints_its_figures():
    """`benchmarks/ui.py --quick` runs and ends with one JSON line of positive figures (timings are not asserted)."""
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ui.py"), "--quick"], capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr
    figures = json.loads(p.stdout.strip().splitlines()[-1])
    for key in ("run_page_s", "run_page_kb", "runs_page_s", "runs_page_kb", "state_at_s", "list_runs_s"):
        assert isinstance(figures[key], float) and figures[key] > 0, key


def test_the_state_json_and_metrics_of_a_run_are_served_to_scripts(log_file, serve):
    """`/api/run/ID/state?at=SEQ` is the state after that event, and the CSV holds every metric value."""
    s = serve(log_file)
    with EventLog(log_file, readonly=True) as log:
        want = state_at(log, 1, 5).to_dict()
        final = state_at(log, 1)
    code, headers, body = s.get("/api/run/1/state?at=5")
    assert code == 200 and headers["content-type"] == "application/json"
    assert json.loads(body)["state"] == json.loads(json.dumps(want))
    rows = [r.split(",") for r in s.get("/run/1/metrics.csv")[2].strip().splitlines()[1:]]
    assert [float(v) for m, _, v in rows if m == "val_loss"] == list(final["val_loss"])


def test_a_live_poll_with_nothing_new_is_tiny_and_a_changed_status_asks_for_a_reload(log_file, serve):
    """The live API answers "nothing new" in a few bytes, new rows when events arrive, and a reload when the run's
    status changed (a gate appeared, it finished)."""
    s = serve(log_file)
    with EventLog(log_file, readonly=True) as log:
        last = log.run(2).last_seq
    code, _, body = s.get(f"/api/live/run/2?status=running&since={last}")
    assert code == 200 and json.loads(body) == {"since": last, "live": True} and len(body) < 100
    answer = json.loads(s.get(f"/api/live/run/2?status=running&since={last - 2}")[2])
    assert re.findall(r'data-seq="(\d+)"', answer["prepend"]["timeline-rows"]) == [str(last), str(last - 1)]
    assert json.loads(s.get(f"/api/live/run/2?status=waiting&since={last}")[2]) == {"reload": True}


def test_sqlite_integers_in_every_id_column_stay_within_range(tmp_path, serve):
    """A run id at SQLite's largest integer is served; one past it is a 404 (not an OverflowError)."""
    path = tmp_path / "big.db"
    with EventLog(path) as log:
        log.create_run("big", "f" * 64, snapshot={"x": [1.0]}, next_action="a", run_id=2**63 - 1)
    s = serve(path)
    assert s.get(f"/run/{2**63 - 1}")[0] == 200
    assert s.get(f"/run/{2**63}")[0] == 404
