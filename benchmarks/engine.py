"""Engine speed: per-step cost in memory and durable, against the raw SQLite floor; fold and listing.

    python benchmarks/engine.py            # full sizes (20,000 steps, 1,000,000 events, 10,000 runs,
                                           # 10**3..10**6 steps that append to a history)
    python benchmarks/engine.py --quick    # tiny sizes, to check that it runs

Every ratio is against a baseline measured in the same run.  The last line is
one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fsmtrain import Condition, EventLog, Machine, Runner, State, action, append, default
from fsmtrain.log import event_hash, run_hash
from fsmtrain.replay import state_at
from fsmtrain.state import dumps


@action(reads=["n"], writes=["n"])
def inc(state):
    return {"n": state["n"] + 1}


@action(reads=["n"], writes=["checked"])
def check(state):
    return {"checked": state["n"]}


@action()
def stop(state):
    return None


def counter_machine() -> Machine:
    done = Condition(lambda s: s["n"] >= s["limit"], keys=["n", "limit"], name="n>=limit")
    return Machine("bench", [inc, check, stop], [("inc", "check"), ("check", "stop", done), ("check", "inc", default)],
                   entry="inc", terminal=["stop"])


def per_step_us(steps: int, log: EventLog | None) -> float:
    m = counter_machine()
    r = Runner.start(m, log=log, state={"n": 0, "limit": steps // 2, "checked": 0})
    t = time.perf_counter()
    r.run()
    elapsed = time.perf_counter() - t
    assert r.status == "finished" and r.steps == steps + 1, (r.status, r.steps)
    return elapsed / r.steps * 1e6


@action(reads=["n"], writes=["n", "loss"])
def tick(state):
    n = state["n"] + 1
    return {"n": n, "loss": append(1.0 / n)}


def appending_machine() -> Machine:
    done = Condition(lambda s: s["n"] >= s["limit"], keys=["n", "limit"], name="n>=limit")
    return Machine("appending", [tick, stop], [("tick", "stop", done), ("tick", "tick", default)],
                   entry="tick", terminal=["stop"])


def appending(tmp: Path, steps: int) -> tuple[float, float, float, int]:
    """A run whose one action appends a float to a history every step (a per-step loss curve), on a log with
    ``durability="none"``: microseconds per step, log bytes per step, seconds to resume it at its end (open
    the log, fold the state, position the runner), and how many events carry a snapshot."""
    path = tmp / f"appending-{steps}.db"
    log = EventLog(path, durability="none")
    r = Runner.start(appending_machine(), log=log, state={"n": 0, "limit": steps, "loss": []})
    t = time.perf_counter()
    r.run(max_steps=steps - 1)
    per_step = (time.perf_counter() - t) / (steps - 1) * 1e6
    run_id = r.run_id
    snapshots = log.conn.execute("SELECT count(*) FROM events WHERE run_id = ? AND snapshot IS NOT NULL",
                                 (run_id,)).fetchone()[0]
    log.close()
    size = sum(f.stat().st_size for f in tmp.glob(f"appending-{steps}.db*") if f.is_file())
    t = time.perf_counter()
    with EventLog(path, durability="none") as again:
        resumed = Runner.resume(appending_machine(), again, run_id)
        assert len(resumed.state["loss"]) == steps - 1
        resume_s = time.perf_counter() - t
        resumed.run()
        assert resumed.status == "finished" and len(resumed.state["loss"]) == steps
    for f in tmp.glob(f"appending-{steps}.db*"):
        shutil.rmtree(f) if f.is_dir() else f.unlink()
    return per_step, size / steps, resume_s, snapshots


def durable_us(tmp: Path, steps: int, durability: str, chunks: int = 20, busy_us: float = 0.0) -> tuple[float, float, float]:
    """Per-step cost of the engine on a durable log, and of the raw floor: a bare sqlite3
    BEGIN/INSERT/COMMIT per step and a row the size of a step event, with SQLite's defaults
    otherwise (its WAL checkpoint every 1000 pages) and ``synchronous`` NORMAL for the
    default policy (``durability="barrier"``: NORMAL commits, a FULL one and a checkpoint at
    each barrier), FULL for ``durability="step"``.
    The two are measured in alternating chunks so that disk noise hits both alike.

    With ``busy_us``, a third series runs the floor with that many microseconds of
    pure-Python busy work before each commit: what the same disk charges for doing
    as much Python per step as the engine does."""
    synchronous = "FULL" if durability == "step" else "NORMAL"
    conn = sqlite3.connect(tmp / f"floor-{durability}.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("CREATE TABLE t (run_id INTEGER, seq INTEGER, payload TEXT, PRIMARY KEY (run_id, seq))")
    payload = "x" * 300
    log = EventLog(tmp / f"engine-{durability}.db", durability=durability)
    r = Runner.start(counter_machine(), log=log, state={"n": 0, "limit": steps, "checked": 0})
    per = steps // chunks
    floor_s = ours_s = busy_s = 0.0
    i = 0
    for _ in range(chunks):
        if busy_us:
            t = time.perf_counter()
            for _ in range(per):
                i += 1
                until = time.perf_counter() + busy_us / 1e6
                while time.perf_counter() < until:
                    pass
                conn.execute("BEGIN")
                conn.execute("INSERT INTO t VALUES (1, ?, ?)", (i, payload))
                conn.execute("COMMIT")
            busy_s += time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(per):
            i += 1
            conn.execute("BEGIN")
            conn.execute("INSERT INTO t VALUES (1, ?, ?)", (i, payload))
            conn.execute("COMMIT")
        floor_s += time.perf_counter() - t
        t = time.perf_counter()
        r.run(max_steps=per)
        ours_s += time.perf_counter() - t
    assert r.steps == per * chunks
    conn.close()
    log.close()
    n = per * chunks
    return ours_s / n * 1e6, floor_s / n * 1e6, busy_s / n * 1e6


def row_us(tmp: Path, steps: int, chunks: int = 20) -> tuple[float, float]:
    """What SQLite alone charges: the floor (BEGIN/INSERT/COMMIT of a 300-byte row into a 3-column table) and one
    committed INSERT of a step-shaped row into a real log's events table (its triggers and indexes in place,
    ``synchronous=NORMAL``, no Python of fsmtrain's), in alternating chunks."""
    from fsmtrain.log.records import _INSERT

    conn = sqlite3.connect(tmp / "rowfloor.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE t (run_id INTEGER, seq INTEGER, payload TEXT, PRIMARY KEY (run_id, seq))")
    log = EventLog(tmp / "rowours.db", durability="none")
    ev = log.create_run("bench", "f" * 64, snapshot={"n": 0}, next_action="inc")
    c = log._rw
    assert c is not None
    c.execute("PRAGMA synchronous=NORMAL")
    h = "ab" * 32
    info = '{"condition":"default","reason":"n>=limit is false"}'
    per, seq, floor_s, ours_s = steps // chunks, ev.seq, 0.0, 0.0
    for _ in range(chunks):
        t = time.perf_counter()
        for i in range(seq, seq + per):
            conn.execute("BEGIN")
            conn.execute("INSERT INTO t VALUES (1, ?, ?)", (i, "x" * 300))
            conn.execute("COMMIT")
        floor_s += time.perf_counter() - t
        t = time.perf_counter()
        for i in range(seq + 1, seq + per + 1):
            c.execute(_INSERT, (ev.run_id, i, i, 1.5, "step", "inc", 1, None, '{"set":{"n":1}}', "check", info, None,
                                None, h, h))
        ours_s += time.perf_counter() - t
        seq += per
    conn.close()
    log.close()
    return floor_s / (per * chunks) * 1e6, ours_s / (per * chunks) * 1e6


def build_long_run(path: Path, events: int) -> int:
    """One run of ``events`` step events (no snapshots after the start), written in one transaction."""
    with EventLog(path, durability="none") as log:
        m = counter_machine()
        ev = log.create_run(m.name, m.fingerprint, snapshot={"n": 0, "h": []}, next_action="inc")
        prev, rows = ev.hash, []
        for seq in range(2, events + 2):
            updates = dumps({"set": {"n": seq - 1}, "append": {"h": [seq * 0.5]}})
            h = event_hash(prev, ev.run_id, seq, seq - 1, 0.0, "step", "inc", 1, None, updates, "inc", None, None, None)
            rows.append((ev.run_id, seq, seq - 1, 0.0, "step", "inc", 1, updates, "inc", prev, h))
            prev = h
        with log.transaction() as conn:
            conn.executemany("INSERT INTO events (run_id, seq, step, time, kind, action, attempt, updates, next, "
                             "prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # (as barriers keep a real log's WAL small)
        return ev.run_id


def cli_run(*args: str) -> tuple[float, float]:
    """Seconds and peak resident MB of ``fsmtrain ARGS`` in a fresh process."""
    import subprocess

    code = ("import resource, runpy, sys; sys.argv = ['fsmtrain', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('fsmtrain', run_name='__main__')\nexcept SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')]\n"  # (ru_maxrss survives exec)
            "print('PEAK', hwm[0].split()[1] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,"
            " file=sys.stderr)")
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    elapsed = time.perf_counter() - t
    assert p.returncode == 0, p.stderr[-2000:]
    peak_kb = int(p.stderr.split("PEAK")[-1].split()[0])
    return elapsed, peak_kb / 1024


def build_many_runs(path: Path, runs: int) -> None:
    """``runs`` runs of three events each, written in one transaction."""
    with EventLog(path, durability="none") as log, log.transaction() as c:
        for rid in range(1, runs + 1):
            created = 1.0e9 + rid
            c.execute("INSERT INTO runs (id, machine, fingerprint, created, tags) VALUES (?, 'bench', 'f', ?, '{}')",
                      (rid, created))
            prev = run_hash(rid, "bench", "f", created, None, None, "{}")
            for seq, kind, nxt in ((1, "start", "inc"), (2, "step", "check"), (3, "step", None)):
                h = event_hash(prev, rid, seq, seq - 1, created, kind, None, None, None, None, nxt, None, None, None)
                c.execute("INSERT INTO events (run_id, seq, step, time, kind, next, prev_hash, hash) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (rid, seq, seq - 1, created, kind, nxt, prev, h))
                prev = h


def append_us(history: int, appends: int = 20000) -> float:
    """Cost of one State update that appends to a metric history already ``history`` long."""
    s = State({"h": [0.5] * history, "epoch": 0})
    t = time.perf_counter()
    for i in range(appends):
        s = s.apply({"h": append(0.25), "epoch": i})
    return (time.perf_counter() - t) / appends * 1e6


def best_of(n: int, fn, *args) -> float:
    return min(fn(*args) for _ in range(n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    args = ap.parse_args()
    steps, durable_steps, fold_n, runs_n = (2000, 300, 5000, 200) if args.quick else (40000, 20000, 1_000_000, 10_000)
    appending_sizes = (2000, 10_000) if args.quick else (2000, 1000, 10_000, 100_000, 1_000_000)

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        memory = best_of(3, per_step_us, steps, None)
        print(f"in memory:           {memory:8.2f} us/step   (target <= 10)")
        figures = {"memory_us": memory}
        short, long = best_of(3, append_us, 10), best_of(3, append_us, 10_000)
        print(f"append to a history:  {short:8.2f} us at 10 entries, {long:8.2f} us at 10,000   "
              f"ratio {long / short:5.2f}x (no copying: ~1)")
        figures.update(append_10_us=short, append_10k_us=long)
        # The default policy first: its gap to the NORMAL floor is the engine's Python work per step, which
        # the FULL series then also charges to a floor that does that much busy work.
        python_us = 0.0
        for durability, label, key, floor_key in (("barrier", "default policy (barrier)", "default_us", "floor_normal_us"),
                                                  ("step", "durability=step (FULL)", "full_us", "floor_full_us")):
            ours, floor, busy = durable_us(tmp, durable_steps, durability, busy_us=python_us)
            print(f"durable, {label:26s} {ours:8.2f} us/step   raw floor {floor:8.2f} us   "
                  f"ratio {ours / floor:5.2f}x (target <= 1.30)")
            figures[key] = ours
            figures[floor_key] = floor
            if durability == "barrier":
                python_us = max(ours - floor, 0.0)
                floor2, row = row_us(tmp, durable_steps)
                print(f"  where the gap goes: the engine's row alone (SQLite, no Python) {row:6.2f} us against this "
                      f"floor's {floor2:6.2f} us ({row / floor2:4.2f}x); the in-memory step {memory:5.2f} us; so the "
                      f"least a step can cost is {(row + memory) / floor2:4.2f}x the floor, and the log's own Python is "
                      f"about {max(ours / floor * floor2 - row - memory, 0.0):5.2f} us")
                figures.update(row_floor_us=floor2, row_us=row)
                print(f"  against a peer's SQLite persister (956 us/step, measured by the issue's author on this VM, "
                      f"not re-run here): {956 / ours:5.1f}x faster (target >= 3)")
            else:
                print(f"  floor + {python_us:.1f} us of busy Python per step: {busy:8.2f} us   "
                      f"ratio {ours / busy:5.2f}x (how much of the gap is the cost of doing Python between fsyncs)")
                figures["floor_full_busy_us"] = busy

        base_us = base_bytes = 0.0
        for n in appending_sizes:
            us, nbytes, resume_s, snaps = appending(tmp, n)
            if n == appending_sizes[0]:
                base_us, base_bytes = us, nbytes
                verdict = "(the baseline)"
            else:
                verdict = f"{us / base_us:4.2f}x the time, {nbytes / base_bytes:4.2f}x the bytes of {appending_sizes[0]:,} steps"
                if n == 100_000:
                    ok = us <= 1.5 * base_us and nbytes <= 2 * base_bytes and resume_s <= 2.0
                    verdict += f"; target <= 1.5x, <= 2x, resume <= 2 s: {'met' if ok else 'NOT met'}"
            print(f"appending {n:>9,} steps: {us:7.2f} us/step {nbytes:8.1f} B/step, resume {resume_s:6.3f} s, "
                  f"{snaps} snapshot(s)   {verdict}")
            figures[f"append_{n}_us"] = us
            figures[f"append_{n}_bytes"] = nbytes
            figures[f"append_{n}_resume_s"] = resume_s

        run_id = build_long_run(tmp / "long.db", fold_n)
        with EventLog(tmp / "long.db", readonly=True) as log:
            t = time.perf_counter()
            final = state_at(log, run_id)
            fold_s = time.perf_counter() - t
        assert final["n"] == fold_n and len(final["h"]) == fold_n
        print(f"fold {fold_n:,} events:   {fold_s:8.3f} s        (target <= 3 for 1,000,000)")
        for what, args in (("replay", ["replay", str(tmp / "long.db"), "--run", str(run_id)]),
                           ("plot", ["plot", str(tmp / "long.db"), "--run", str(run_id), "--metric", "h", "-o",
                                     str(tmp / "h.svg")])):
            s, mb = cli_run(*args)
            ok = "met" if s <= 10 and mb <= 300 else "NOT met"
            print(f"`fsmtrain {what}` of a {fold_n:,}-event run: {s:6.2f} s, peak {mb:6.0f} MB "
                  f"(target <= 10 s, <= 300 MB for 1,000,000: {ok})")
            figures.update({f"{what}_cli_s": s, f"{what}_cli_mb": mb})

        build_many_runs(tmp / "many.db", runs_n)
        with EventLog(tmp / "many.db", readonly=True) as log:
            t = time.perf_counter()
            listed = log.runs()
            list_s = time.perf_counter() - t
        assert len(listed) == runs_n and all(r.status == "finished" for r in listed)
        print(f"list {runs_n:,} runs:       {list_s:8.3f} s        (target <= 0.5 for 10,000)")
        figures.update(fold_1m_s=fold_s, list_10k_s=list_s, steps=durable_steps, fold_events=fold_n, runs=runs_n,
                       sqlite=sqlite3.sqlite_version, cpus=os.cpu_count())
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}))


if __name__ == "__main__":
    main()
