"""`fsmtrain ui` at scale: a 500-epoch run (2,002 events) and a log of 10,000 runs.

    python benchmarks/ui.py            # full size (building the logs takes ~10 s)
    python benchmarks/ui.py --quick    # tiny sizes, to check that it runs

The long run is recorded by the real engine with a training-shaped machine of four
actions an epoch (train_epoch, evaluate, checkpoint with a Ref and a `best` record,
schedule_lr), without torch: only the log's contents matter here.  The 10,000 runs
are written through EventLog's API (start, a few steps, a `best` record; finished,
failed, running, waiting and stopped; three machines).  The page server runs in
this process on a free loopback port; each figure is the best of 5 requests, as a
browser makes them (with the token cookie), so it is the server's time plus a
loopback round trip.  Baselines, measured in the same run: reading the run's final
state (`state_at`, which the run page needs anyway) and listing every run
(`EventLog.runs`, which the runs page needs anyway).  Where Playwright and Debian's
chromium are installed, the run page's load time in headless Chromium is measured too.
Targets (issue 18): the first
page of the 2,002-event run in <= 0.1 s and <= 200 KB; 10,000 runs listed in <= 0.2 s.
The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fsmtrain import EventLog, Machine, Ref, Runner, action, append
from fsmtrain.replay import state_at
from fsmtrain.stopping import max_epochs
from fsmtrain.ui import UI


@action(reads=["epoch", "steps"], writes=["epoch", "steps", "train_loss"])
def train_epoch(state):
    e = state["epoch"] + 1
    return {"epoch": e, "steps": state["steps"] + 30, "train_loss": append(1.5 / (1 + 0.2 * e))}


@action(reads=["epoch"], writes=["val_loss", "val_acc"])
def evaluate(state):
    e = state["epoch"]
    v = 0.2 + 1.5 / (1 + 0.05 * e) + 0.0004 * max(0, e - 300)
    return {"val_loss": append(v), "val_acc": append(1 - v / 2)}


@action(reads=["epoch", "val_loss", "best", "checkpoints"], writes=["checkpoint", "checkpoints", "best"])
def checkpoint(state):
    e = state["epoch"]
    ref = Ref(f"run1/e{e:05d}.pt", f"{e:064x}", 1000 + e)
    out = {"checkpoint": ref, "checkpoints": [*state["checkpoints"][-2:], ref]}
    v = state["val_loss"][-1]
    if state["best"] is None or v < state["best"]["value"]:
        out["best"] = {"epoch": e, "metric": "val_loss", "value": v, "checkpoint": ref}
    return out


@action(reads=["epoch"], writes=["lr"])
def schedule_lr(state):
    return {"lr": append(0.1 * 0.99 ** state["epoch"])}


@action(writes=["weights_sha256"])
def finish(state):
    return {"weights_sha256": "0" * 64}


def long_run(log: EventLog, epochs: int) -> int:
    m = Machine("bench", [train_epoch, evaluate, checkpoint, schedule_lr, finish],
                [("train_epoch", "evaluate"), ("evaluate", "checkpoint"), ("checkpoint", "schedule_lr"),
                 ("schedule_lr", "finish", max_epochs(epochs)), ("schedule_lr", "train_epoch")],
                entry="train_epoch", terminal=["finish"],
                initial={"epoch": 0, "steps": 0, "train_loss": [], "val_loss": [], "val_acc": [], "lr": [],
                         "checkpoint": None, "checkpoints": [], "best": None, "weights_sha256": None})
    r = Runner.start(m, log=log)
    r.run()
    return r.run_id


def many_runs(log: EventLog, n: int) -> None:
    """``n`` short runs: start, train/evaluate steps with a `best` record, and an ending by kind."""
    for i in range(n):
        ev = log.create_run(f"model-{'abc'[i % 3]}", "f" * 64, next_action="train",
                            snapshot={"epoch": 0, "val_loss": [], "best": None, "lr": 0.1 / (1 + i % 7)},
                            tags={"sweep": i % 10, "owner": "bench"})
        rid, seq = ev.run_id, 1
        for e in range(1, 3):
            v = 1.0 / (e + i % 13)
            seq = log.append(rid, seq, kind="step", step=2 * e - 1, action="train", next_action="evaluate",
                             updates={"set": {"epoch": e}, "append": {"val_loss": [v]}}).seq
            seq = log.append(rid, seq, kind="step", step=2 * e, action="evaluate",
                             next_action=None if (e == 2 and i % 5 == 0) else "train",
                             updates={"set": {"best": {"epoch": e, "metric": "val_loss", "value": v}}}).seq
        end = i % 5
        if end == 1:
            log.append(rid, seq, kind="failed", step=4, action="train", attempt=3, error="RuntimeError: CUDA out of memory")
        elif end == 2:
            log.append(rid, seq, kind="waiting", step=4, action="review",
                       info={"needs": [{"name": "decision", "type": "str", "choices": ["go", "no-go"]}], "missing": []})
        elif end == 3:
            log.append(rid, seq, kind="stopped", step=4, action="train", info={"by": "bench", "at": 0.0, "reason": "r"})


def fetch(url: str, cookie: str) -> tuple[float, int, int]:
    req = urllib.request.Request(url, headers={"Cookie": cookie})
    t = time.perf_counter()
    with urllib.request.urlopen(req) as r:
        body = r.read()
        code = r.status
    return time.perf_counter() - t, len(body), code


def best_of(url: str, cookie: str, n: int = 5) -> tuple[float, int]:
    got = [fetch(url, cookie) for _ in range(n)]
    assert all(c == 200 for _, _, c in got), (url, got)
    return min(t for t, _, _ in got), got[0][1]


def timed(fn, n: int = 5) -> float:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return min(out)


def in_chromium(token_url: str, page_url: str) -> dict[str, float]:
    """The run page's load time in headless Chromium (best of 3), when Playwright and Debian's chromium are here."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return {}
    if not os.path.exists("/usr/bin/chromium"):
        return {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(token_url)
            times = []
            for _ in range(3):
                page.goto(page_url, wait_until="load")
                times.append(page.evaluate("(() => { const t = performance.getEntriesByType('navigation')[0];"
                                           " return (t.loadEventEnd - t.startTime) / 1000; })()"))
            height = page.evaluate("document.documentElement.scrollHeight")
        finally:
            browser.close()
    return {"chromium_run_page_s": min(times), "run_page_height_px": height}


def concurrent(base: str, cookie: str, paths: list[str], n: int) -> dict[str, float | int]:
    """``n`` requests at once (one connection each, cycling through ``paths``): how many got an answer, how many a
    server error, and the p50/p99/max seconds to the whole response."""
    import concurrent.futures
    import urllib.error
    import urllib.request

    def one(i: int) -> tuple[int, float]:
        req = urllib.request.Request(base + paths[i % len(paths)], headers={"Cookie": cookie})
        t = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            status = e.code
        except OSError:
            status = 0  # no answer (refused, reset, timed out)
        return status, time.perf_counter() - t

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        got = list(pool.map(one, range(n)))
    times = sorted(s for _, s in got)
    return {"answered": sum(1 for st, _ in got if st), "server_errors": sum(1 for st, _ in got if st >= 500),
            "p50_s": times[len(times) // 2], "p99_s": times[min(len(times) - 1, int(len(times) * 0.99))],
            "max_s": times[-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    args = ap.parse_args()
    epochs, n_runs = (40, 300) if args.quick else (500, 10_000)
    figures: dict[str, float | int] = {"epochs": epochs, "runs": n_runs, "cpus": os.cpu_count() or 0}
    with tempfile.TemporaryDirectory() as d:
        one, many = Path(d) / "one.db", Path(d) / "many.db"
        t = time.perf_counter()
        with EventLog(one, synchronous="NORMAL") as log:
            rid = long_run(log, epochs)
            events = log.run(rid).last_seq
        with EventLog(many, synchronous="NORMAL") as log:
            many_runs(log, n_runs)
        print(f"recorded a {epochs}-epoch run ({events:,} events) and {n_runs:,} runs in {time.perf_counter() - t:.1f} s")
        with EventLog(one, readonly=True) as log:
            figures["state_at_s"] = timed(lambda: state_at(log, rid))
        with EventLog(many, readonly=True) as log:
            figures["list_runs_s"] = timed(lambda: log.runs(), 3)
            version = log.conn.execute("SELECT max(rowid) FROM events").fetchone()[0]
        for path, pages in ((one, [("run_page", f"/run/{rid}"), ("run_at_page", f"/run/{rid}?at={events // 2}"),
                                   ("run_oldest_page", f"/run/{rid}?tpage=999999"),
                                   ("run_smooth_log_page", f"/run/{rid}?smooth=0.9&log=lr,val_loss"),
                                   ("run_live_poll", f"/api/live/run/{rid}?status=finished&since={events}"),
                                   ("compare_page", f"/compare?run={rid}")]),
                            (many, [("runs_page", "/"), ("runs_filtered_page", "/?status=failed&machine=model-b&sort=updated"),
                                    ("runs_tag_page", "/?tag=sweep%3D3&page=5"),
                                    ("runs_metric_page", "/?metric=val_loss&mode=min"),
                                    ("runs_live_changed", "/api/live/runs?since=0"),
                                    ("runs_live_idle", f"/api/live/runs?since={version}")])):
            app = UI(path)
            server = app.bind("127.0.0.1", 0)
            app.serve_in_thread()
            try:
                base = f"http://127.0.0.1:{app.port}"
                cookie = f"fsmtrain_ui_{app.port}={app.token}"
                for name, url in pages:
                    s, size = best_of(base + url, cookie)
                    figures[f"{name}_s"], figures[f"{name}_kb"] = s, size / 1000
                if path == one:
                    figures.update(in_chromium(app.url, f"{base}/run/{rid}"))
                else:  # the heaviest page (the list of every run) among light ones, 200 at once
                    import multiprocessing

                    with multiprocessing.get_context("fork").Pool(1) as clients:  # (clients outside the server's GIL)
                        load = clients.apply(concurrent, (base, cookie, ["/", "/favicon.ico", "/static/ui.css",
                                                                         f"/run/{n_runs}", "/api/live/runs?since=0"],
                                                          200))
                    figures.update({f"load200_{k}": v for k, v in load.items()})
            finally:
                server.shutdown()
                server.server_close()
    print(f"run of {events:,} events, first page: {figures['run_page_s'] * 1000:6.1f} ms, "
          f"{figures['run_page_kb']:6.1f} KB  (target <= 100 ms, <= 200 KB; "
          f"{figures['run_page_s'] / figures['state_at_s']:.1f}x reading its final state: "
          f"{figures['state_at_s'] * 1000:.1f} ms)")
    if "chromium_run_page_s" in figures:
        print(f"  in Chromium: loaded in {figures['chromium_run_page_s'] * 1000:.0f} ms, "
              f"{figures['run_page_height_px']:,} px tall")
    for name in ("run_at_page", "run_oldest_page", "run_smooth_log_page", "run_live_poll", "compare_page"):
        print(f"  {name:22s} {figures[name + '_s'] * 1000:6.1f} ms, {figures[name + '_kb']:6.1f} KB")
    load_ok = figures["load200_answered"] == 200 and not figures["load200_server_errors"] \
        and figures["load200_p99_s"] <= 10
    print(f"200 requests at once on the {n_runs:,}-run log (list, favicon, style, a run, live poll): "
          f"{figures['load200_answered']} answered, "
          f"{figures['load200_server_errors']} 5xx, p50 {figures['load200_p50_s']:.2f} s, p99 "
          f"{figures['load200_p99_s']:.2f} s, max {figures['load200_max_s']:.2f} s  (target: all answered, none 5xx, "
          f"p99 <= 10 s: {'met' if load_ok else 'NOT met'})")
    print(f"{n_runs:,} runs, first page:        {figures['runs_page_s'] * 1000:6.1f} ms, "
          f"{figures['runs_page_kb']:6.1f} KB  (target <= 200 ms; "
          f"{figures['runs_page_s'] / figures['list_runs_s']:.1f}x EventLog.runs(): {figures['list_runs_s'] * 1000:.1f} ms)")
    for name in ("runs_filtered_page", "runs_tag_page", "runs_metric_page", "runs_live_changed", "runs_live_idle"):
        print(f"  {name:22s} {figures[name + '_s'] * 1000:6.1f} ms, {figures[name + '_kb']:6.1f} KB")
    print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in figures.items()}))


if __name__ == "__main__":
    main()
