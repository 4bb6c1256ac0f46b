"""The ``fsmtrain`` command line: thin wrappers that parse, call the library, and format.

Library errors become one-line messages and stable exit codes, never tracebacks.
``replay`` and ``verify`` open the log read-only and never import code named in it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click

from ._interrupt import early
from .errors import CorruptLog, FsmtrainError, InvalidDefinition, RunNotRunnable
from .log import ENDED, MAX_ID, Event, EventLog, RunInfo
from .replay import state_at
from .state import dumps, thaw
from .table import safe
from .table import table as _table

RUN_ID = click.IntRange(1, MAX_ID)
"""A run id on the command line: a whole number SQLite can hold (larger ones are refused cleanly)."""
SEQ = click.IntRange(1, MAX_ID)

class Finite(click.ParamType):  # type: ignore[type-arg]  # (generic only since click 8.2)
    """A finite number in a range (click's FloatRange lets NaN through: every comparison with it is false)."""

    name = "float"

    def __init__(self, low: float, high: float = float("inf"), *, low_open: bool = False) -> None:
        self.low, self.high, self.low_open = low, high, low_open

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        inside = (number > self.low if self.low_open else number >= self.low) and number <= self.high
        if not (inside and abs(number) != float("inf")):
            low = f"> {self.low:g}" if self.low_open else f">= {self.low:g}"
            high = f" and <= {self.high:g}" if self.high != float("inf") else ""
            self.fail(f"{value!r} is not a finite number {low}{high}", param, ctx)
        return number


FINITE_POSITIVE = Finite(0, low_open=True)

_KEPT = "fsmtrain.kept"


def kept(what: str) -> None:
    """Say what a command has committed so far: an interrupt (Ctrl-C) then reports it instead of 'nothing'."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.find_root().meta[_KEPT] = what


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            if signal.getsignal(signal.SIGINT) is early:
                signal.signal(signal.SIGINT, signal.default_int_handler)  # the command answers Ctrl-C from here
        except ValueError:  # not the main thread
            pass
        try:
            return super().invoke(ctx)
        except FsmtrainError as e:
            echo(f"Error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            what = ctx.meta.get(_KEPT, "nothing was written")
            echo(f"\ninterrupted: {what}", err=True)
            ctx.exit(130)
        except sqlite3.DatabaseError as e:
            echo(f"Error: SQLite: {e}", err=True)
            ctx.exit(1)
        except OSError as e:
            where = f" ({e.filename})" if getattr(e, "filename", None) else ""
            echo(f"Error: {e.strerror or e}{where}", err=True)
            ctx.exit(1)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as e:  # a bug of ours: one line, and how to see more
            if os.environ.get("FSMTRAIN_DEBUG"):
                raise
            echo(f"Error: internal error: {type(e).__name__}: {_short(str(e), 300)} "
                       "(set FSMTRAIN_DEBUG=1 for the traceback, and please report it)", err=True)
            ctx.exit(1)


@click.group(cls=_Group)
@click.version_option(package_name="fsmtrain")
def main() -> None:
    """fsmtrain: machine-learning training as a resumable state machine.

    \b
    Example:
        fsmtrain demo --log runs.db && fsmtrain replay runs.db

    \b
    Exit codes:
        0    done
        1    an error: a run or event that does not exist, a run that is not
             in a state to do that, a failed run, a log that is not a log or
             fails verification, storage that is full or read-only
        2    a usage error or invalid input (nothing was written)
        130  interrupted (Ctrl-C); the message says what was kept
    """


def _when(t: Any) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
    except (TypeError, ValueError, OverflowError, OSError):
        return f"time {_short(repr(t), 30)}"


def _short(value: Any, width: int = 60) -> str:
    try:
        text = value if isinstance(value, str) else dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"




def echo(text: str = "", *, err: bool = False, nl: bool = True) -> None:
    """``click.echo`` for anything that may hold text from a log (see :func:`safe`)."""
    click.echo(safe(text), err=err, nl=nl)


def _run_json(r: RunInfo) -> dict[str, Any]:
    return {"id": r.id, "machine": r.machine, "status": r.status, "steps": r.steps, "events": r.last_seq,
            "last_action": r.last_action, "next_action": r.next, "started": r.created, "updated": r.last_time,
            "parent_id": r.parent_id, "parent_seq": r.parent_seq, "tags": r.tags, "fingerprint": r.fingerprint}


def _event_json(e: Event) -> dict[str, Any]:
    return {"seq": e.seq, "step": e.step, "time": e.time, "kind": e.kind, "action": e.action, "attempt": e.attempt,
            "inputs": e.inputs, "updates": e.updates, "next": e.next, "info": e.info, "error": e.error,
            "hash": e.hash}


@contextlib.contextmanager
def _reading(ev: Event) -> Iterator[None]:
    """Showing an event: data of the wrong shape (a log edited outside fsmtrain) is a clear error."""
    try:
        yield
    except (TypeError, AttributeError, KeyError, IndexError, ValueError) as e:
        raise CorruptLog(f"run {ev.run_id} event {ev.seq} holds data no fsmtrain writer makes "
                         f"({type(e).__name__}: {_short(str(e), 80)}); check it with `fsmtrain verify`") from None


def _need(spec: Any) -> str:
    return str(spec["name"]) + (f" ({' | '.join(map(str, spec['choices']))})" if spec.get("choices") else "")


def _print_json(obj: Any) -> None:
    echo(json.dumps(obj, default=lambda o: thaw(o) if not hasattr(o, "to_json") else o.to_json(),
                          allow_nan=True, ensure_ascii=False))


@main.command()
@click.argument("log", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--run", "run_id", type=RUN_ID, help="Show this run's timeline.")
@click.option("--at", "at_seq", type=SEQ, help="With --run: the full state after this event.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def replay(log: Path, run_id: int | None, at_seq: int | None, as_json: bool) -> None:
    """Inspect a log: its runs, one run's timeline, or a run's state at any event.

    Opens LOG read-only; never runs or imports code. JSON output writes
    non-finite floats as NaN / Infinity / -Infinity.

    \b
    Examples:
        fsmtrain replay runs.db
        fsmtrain replay runs.db --run 1
        fsmtrain replay runs.db --run 1 --at 5 --json
    """
    if at_seq is not None and run_id is None:
        raise click.UsageError("--at needs --run ID")
    with EventLog(log, readonly=True) as lg:
        if run_id is None:
            runs = lg.runs()
            if as_json:
                _print_json([_run_json(r) for r in runs])
                return
            if not runs:
                echo(f"{log}: no runs yet")
                return
            echo(_table(["run", "machine", "status", "steps", "last action", "started", "updated"],
                              [[r.id, r.machine, r.status, r.steps, r.last_action or "-", _when(r.created),
                                _when(r.last_time)] for r in runs]))
            return
        info = lg.run(run_id)
        if at_seq is not None:
            ev = lg.event(run_id, at_seq)
            state = state_at(lg, run_id, at_seq)
            if as_json:
                _print_json({"run": run_id, "seq": at_seq, "step": ev.step, "state": state.to_dict()})
                return
            echo(f"run {run_id} after event {at_seq} (step {ev.step}, {ev.kind} {ev.action or ''}):".rstrip())
            for k in sorted(state):
                echo(f"  {k} = {_short(state[k], 200)}")
            return
        events = list(lg.events(run_id))
        if as_json:
            _print_json({"run": _run_json(info), "events": [_event_json(e) for e in events]})
            return
        resumes = sum(e.kind == "resume" for e in events)
        echo(f"run {info.id} · machine {info.machine} · {info.status} · {info.steps} steps"
             + (f" · forked from run {info.parent_id} at event {info.parent_seq}" if info.parent_id else "")
             + (f" · resumed after {resumes} interruption{'s' if resumes != 1 else ''}" if resumes else ""))
        rows = []
        for e in events:
            with _reading(e):
                rows.append(_timeline_row(e))
        echo(_table(["seq", "time", "kind", "action", "next", "details"], rows))


def _timeline_row(e: Event) -> list[Any]:
    """One event of ``fsmtrain replay --run``: when, what, and the details that matter."""
    detail = []
    if e.kind == "step" and isinstance(e.info, dict) and e.info.get("condition") != "default":
        detail.append(f"[{_short(e.info.get('reason') or e.info.get('condition'), 60)}]")
    if e.updates:
        detail.append(_short(e.updates))
    if e.inputs:
        detail.append("inputs " + _short(e.inputs, 40))
    if e.kind == "waiting" and isinstance(e.info, dict):
        detail.append("needs " + ", ".join(e.info.get("missing", [])))
    if e.kind == "resume" and isinstance(e.info, dict):
        if isinstance(e.info.get("interrupted"), int) and e.info["interrupted"] > 0:
            detail.append(f"{e.info['interrupted']} interruption(s) in a row before this one")
        if e.info.get("changed_from"):
            changes = [f"{c.get('source')}->{c.get('target')}: {c.get('was')} => {c.get('now')}"
                       for c in e.info.get("conditions", []) if isinstance(c, dict)]
            detail.append("machine changed" + (": " + "; ".join(changes) if changes else ""))
    if e.kind in ("input", "retry", "stopped", "pruned") and isinstance(e.info, dict):
        why = e.info.get("reason") or e.info.get("comment")
        detail.append(f"by {_short(e.info.get('by'), 30)}" + (f": {_short(why, 60)}" if why else ""))
    if e.error and e.error.strip():
        detail.append("error " + _short(e.error.strip().splitlines()[-1], 80))
    nxt = "" if e.kind not in ("start", "step") else ("-> " + e.next if e.next else "(end)")
    return [e.seq, _when(e.time), e.kind, e.action or "", nxt, "  ".join(detail)]


@main.command()
@click.argument("log", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def verify(log: Path, as_json: bool) -> None:
    """Check a log: SQLite integrity, triggers and tables, gapless sequence numbers, every hash chain, and
    that the log still holds what its witness file saw (no lost tail, run or older copy).

    With FSMTRAIN_LOG_KEY (or FSMTRAIN_LOG_KEY_FILE) set, keyed runs' HMAC chains are checked too.
    Exits 0 when intact, 1 naming the first bad event otherwise. Opens LOG read-only.

    \b
    Example:
        fsmtrain verify runs.db
    """
    with EventLog(log, readonly=True) as lg:
        problems = lg.verify()
        unchecked = list(lg.unchecked)
        n_runs = lg.conn.execute("SELECT count(*) FROM runs").fetchone()[0]
        n_events = lg.conn.execute("SELECT count(*) FROM events").fetchone()[0]
        witness = lg.artifacts / "witness.jsonl"
    if as_json:
        _print_json({"ok": not problems, "runs": n_runs, "events": n_events, "problems": problems,
                     "unchecked_keyed_runs": unchecked, "witness": witness.exists()})
    elif problems:
        echo(f"CORRUPT: {problems[0]}", err=True)
        for p in problems[1:]:
            echo(f"  also: {p}", err=True)
    else:
        echo(f"OK: {n_runs} run(s), {n_events} event(s); sequences gapless, hash chains intact"
             + ("; nothing lost that the witness saw" if witness.exists() else "; no witness file to compare with"))
        if unchecked:
            echo(f"note: run(s) {', '.join(map(str, unchecked))} are keyed (HMAC): their hashes were not checked; "
                 "give the key (FSMTRAIN_LOG_KEY or FSMTRAIN_LOG_KEY_FILE) to check them")
    if problems:
        sys.exit(1)


@main.command()
@click.argument("log", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--condition", "-c", "conditions", multiple=True, required=True, metavar="EXPR",
              help="A condition expression; repeat to compare several side by side.")
@click.option("--run", "runs", type=RUN_ID, multiple=True,
              help="A run to evaluate (repeatable; default: every finished, stopped or pruned run).")
@click.option("--metric", help="The metric whose best is compared (default: the first condition's metric, else val_loss).")
@click.option("--mode", type=click.Choice(["min", "max"]), help="Whether lower or higher --metric is better.")
@click.option("--counter", default="epoch", show_default=True, help="The state key counting epochs.")
@click.option("--import", "imports", multiple=True, metavar="MODULE",
              help="Import MODULE first, so the conditions it registers can be named (repeatable).")
@click.option("--summary", is_flag=True, help="Only the summary over all runs, not a table per run.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def whatif(log: Path, conditions: tuple[str, ...], runs: tuple[int, ...], metric: str | None, mode: str | None,
           counter: str, imports: tuple[str, ...], summary: bool, as_json: bool) -> None:
    """Where would these stop conditions have stopped recorded runs, and at what cost?

    Evaluates each EXPR against each run's recorded metric history, epoch by
    epoch, and prints side by side: the epoch where it would have stopped, why,
    the best metric reached by then against the run's overall best, and the
    epochs saved.  EXPR names conditions of fsmtrain.stopping (or registered by
    an --import'ed module) called with literal arguments, combined with &, |, ~
    and parentheses; it is parsed, never evaluated as Python.  Opens LOG
    read-only and writes nothing.

    \b
    Examples:
        fsmtrain whatif runs.db -c "early_stopping(val_loss, patience=3)" -c "max_epochs(10)"
        fsmtrain whatif runs.db --run 1 --run 2 -c "plateau(val_loss, patience=2) & min_epochs(5)" --json
    """
    from .whatif import whatif as compare

    if imports:
        _cwd_on_path()
    for module in imports:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise click.UsageError(f"--import {module}: cannot import it ({e})") from None
    with EventLog(log, readonly=True) as lg:
        result = compare(lg, list(conditions), runs=list(runs) or None, metric=metric, mode=mode, counter=counter)
    if as_json:
        _print_json(result.to_dict())
    elif not result.runs:
        echo(f"{log}: no finished, stopped or pruned runs to evaluate (name others with --run)")
    else:
        echo(result.to_text(rows=not summary), nl=False)


@main.command()
@click.argument("log", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--id", "study_id", type=RUN_ID, help="The study run (default: the newest study in the log).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def study(log: Path, study_id: int | None, as_json: bool) -> None:
    """A hyperparameter study's trials, best first: parameters, status, best metric, epochs, pruned.

    Opens LOG read-only.  Each trial is a child run: `fsmtrain replay LOG --run ID` shows it.

    \b
    Example:
        fsmtrain study runs.db --json
    """
    from .tune.study import table

    with EventLog(log, readonly=True) as lg:
        studies = [r for r in lg.runs() if r.machine.startswith("study:")]
        if study_id is None:
            if not studies:
                raise RunNotRunnable(f"{log} has no study run (studies are runs of machines named study:NAME)")
            info = studies[-1]
        else:
            info = lg.run(study_id)
            if not info.machine.startswith("study:"):
                raise RunNotRunnable(f"run {study_id} is a `{info.machine}` run, not a study; "
                                     f"studies here: {', '.join(str(r.id) for r in studies) or 'none'}")
        state = state_at(lg, info.id)
    rows = table(state)
    best = state["best"]
    if as_json:
        _print_json({"study": info.id, "name": info.machine.split(":", 1)[1], "status": info.status,
                     "metric": state["metric"], "mode": state["mode"], "n_trials": state["n_trials"],
                     "best": best, "trials": rows})
        return
    echo(f"study {info.id} ({info.machine.split(':', 1)[1]}) · {info.status} · {len(rows)} of {state['n_trials']} "
               f"trials · {state['metric']} ({state['mode']}) · sampler {state['sampler']}, scheduler {state['scheduler']}")
    echo(_table(["trial", "run", "params", "status", f"best {state['metric']}", "at epoch", "epochs"],
                      [[r["trial"], r["run_id"], ", ".join(f"{k}={_num(v)}" for k, v in r["params"].items()),
                        r["status"] + (f" ({r['attempts']} attempts)" if r["attempts"] > 1 else ""),
                        _num(r["best"]) if r["best"] is not None else "-", r["best_epoch"] or "-", r["epochs"]]
                       for r in rows]))
    if best:
        echo(f"best: trial {best['index']} (run {best['run_id']}): {state['metric']} {_num(best['value'])} at epoch "
                   f"{best['epoch']} with " + ", ".join(f"{k}={_num(v)}" for k, v in best["params"].items()))


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


@main.command()
@click.argument("log", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--run", "run_id", type=RUN_ID, help="The run to follow (default: the newest run).")
@click.option("--interval", type=Finite(0.05, 3600), default=1.0, show_default=True,
              help="Seconds between looks at the log.")
def watch(log: Path, run_id: int | None, interval: float) -> None:
    """Follow a run as it progresses, from another process; stop when it finishes, fails or waits.

    Opens LOG read-only and looks at it every --interval seconds: prints each new
    step (action, next action, metrics appended, the decision) and, when the run
    waits at a gate, what it needs and the command that gives it.  Ctrl-C stops
    watching (exit 0); the run is not affected.

    \b
    Example:
        fsmtrain watch runs.db --run 1
    """
    from .hooks import step_metrics
    from .replay import decode_updates

    seen = 0
    try:
        with EventLog(log, readonly=True) as lg:
            if run_id is None:
                runs = lg.runs()
                if not runs:
                    raise RunNotRunnable(f"{log} has no runs yet")
                run_id = runs[-1].id
            info = lg.run(run_id)
            echo(f"watching run {run_id} ({info.machine}) in {log}; Ctrl-C to stop")
            while True:
                info = lg.run(run_id)
                for ev in lg.events(run_id, start=seen + 1):
                    seen = ev.seq
                    with _reading(ev):
                        if ev.kind == "step":
                            metrics = step_metrics(decode_updates(ev.updates))
                            shown = "  ".join(f"{k} {v[-1]:.4g}" for k, v in sorted(metrics.items()))
                            decision = ""
                            if isinstance(ev.info, dict) and ev.info.get("condition") not in (None, "default"):
                                decision = f"  [{ev.info.get('reason')}]"
                            nxt = f"-> {ev.next}" if ev.next else "(end)"
                            echo(f"{_when(ev.time)}  step {ev.step:4d}  {ev.action} {nxt}  {shown}{decision}".rstrip())
                        elif ev.kind in ("resume", "error", "failed", "input", "retry", "stopped", "pruned"):
                            why = ev.info.get("reason") if isinstance(ev.info, dict) else None
                            echo(f"{_when(ev.time)}  {ev.kind} {ev.action or ''}".rstrip()
                                 + (f": {ev.error.strip().splitlines()[-1]}" if ev.error and ev.error.strip() else "")
                                 + (f": {why}" if why else ""))
                if info.status in ENDED:
                    echo(f"run {run_id} {info.status} after {info.steps} steps")
                    return
                if info.status == "waiting":
                    last = lg.last_event(run_id)
                    with _reading(last):
                        needs = ", ".join(_need(n) for n in (last.info or {}).get("needs", []) if n.get("required", True))
                    echo(f"run {run_id} is waiting at `{last.action}` for {needs}; answer with "
                               f"`fsmtrain approve {log} {run_id}`, `fsmtrain reject {log} {run_id}` or "
                               f"`fsmtrain input {log} {run_id} KEY=VALUE`")
                    return
                time.sleep(interval)
    except KeyboardInterrupt:
        echo(f"\nstopped watching run {run_id}", err=True)


@main.command()
@click.argument("log", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--run", "run_id", type=RUN_ID, required=True, help="The run whose curves to draw.")
@click.option("--metric", "metrics", multiple=True, required=True, help="A metric (a list of numbers in the state); repeatable.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The image to write: .svg (drawn by fsmtrain) or .png (needs matplotlib).")
def plot(log: Path, run_id: int, metrics: tuple[str, ...], output: Path) -> None:
    """Draw a run's metric curves as an image.

    Opens LOG read-only.  One point per recorded value; NaN and infinities are left out.

    \b
    Example:
        fsmtrain plot runs.db --run 1 --metric train_loss --metric val_loss -o curves.svg
    """
    from .plot import curves

    suffix = output.suffix.lower()
    if suffix not in (".svg", ".png"):
        raise click.BadParameter(f"{output.name}: write .svg or .png", param_hint="-o")
    folder = output.parent if str(output.parent) else Path(".")
    if not folder.is_dir():
        raise click.BadParameter(f"folder {folder} does not exist", param_hint="-o")
    with EventLog(log, readonly=True) as lg:
        state = state_at(lg, run_id)
    series: dict[str, list[float]] = {}
    for m in metrics:
        values = state.get(m)
        if not isinstance(values, Sequence) or isinstance(values, str) or \
                not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            lists = [k for k in sorted(state) if isinstance(state[k], Sequence) and not isinstance(state[k], str)
                     and state[k] and all(isinstance(v, (int, float)) for v in state[k])]
            raise click.BadParameter(f"run {run_id} has no metric {m!r} (its metrics: {', '.join(lists) or 'none'})",
                                     param_hint="--metric")
        series[m] = [float(v) for v in values]
    if suffix == ".svg":
        output.write_text(curves(series, title=f"run {run_id}"), encoding="utf-8")
    else:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise click.UsageError("a .png needs matplotlib (pip install matplotlib); or write .svg") from None
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        for name, values in series.items():
            ax.plot(range(1, len(values) + 1), values, label=name, marker="o", markersize=2)
        ax.set_xlabel("evaluation")
        ax.legend()
        ax.set_title(f"run {run_id}")
        fig.savefig(output, dpi=100)
    echo(f"wrote {output} ({', '.join(f'{k}: {len(v)} points' for k, v in series.items())})")


@main.command()
@click.argument("log", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (loopback by default).")
@click.option("--allow-remote", is_flag=True, help="Allow a --host other machines can reach (plain HTTP: anyone with "
                                                   "the URL reads the log and answers gates).")
@click.option("--read-only", "read_only", is_flag=True, help="Never write: gate forms are shown disabled.")
def ui(log: Path, port: int, host: str, allow_remote: bool, read_only: bool) -> None:
    """Serve a local web page over LOG: runs, curves, the graph, the timeline, the state, gates.

    Pages read the log read-only and follow running runs.  Every page needs the
    token in the URL printed at start (opening it once sets a cookie); a waiting
    run shows its gate's inputs as a form, checked like `fsmtrain input`.  Only
    loopback addresses are served unless --allow-remote is given.

    \b
    Example:
        fsmtrain ui runs.db --port 8765
    """
    import errno

    from .ui import UI, is_loopback

    if not is_loopback(host) and not allow_remote:
        raise click.UsageError(f"--host {host} would serve the log to other machines; the page is meant for this one. "
                               "Pass --allow-remote to do so deliberately")
    app = UI(log, allow_remote=allow_remote, readonly=read_only)
    try:
        server = app.bind(host, port)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise click.UsageError(f"port {port} on {host} is in use; pick another with --port") from None
        raise click.UsageError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    if not is_loopback(host):
        bar = "!" * 78
        echo(f"{bar}\nWARNING: serving {log} to the network on {host}:{app.port} over plain HTTP.\n"
             "Anyone who can reach this port and learns the URL below can read the whole log and answer\n"
             "its gates; the token is the only protection and travels unencrypted. Prefer an SSH tunnel\n"
             f"(ssh -L {app.port}:127.0.0.1:{app.port} HOST) to a loopback server.\n{bar}", err=True)
    echo(f"fsmtrain ui on {log}: {app.url}   (Ctrl-C to stop)", err=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        echo("\nstopped", err=True)
    finally:
        server.server_close()


def load_machine(target: str) -> Any:
    """The Machine ``module:attr`` names (the operator names it; never taken from a log).

    The object must be a Machine, a function that builds one (called with no argument), or a
    worker target (a function taking the log, e.g. returning a Trainer: called with a throwaway
    log in a temporary folder, so nothing is created beside you).  Its type is checked before
    anything is called: ``os:system`` is refused, not run.
    """
    import tempfile

    from .machine import Machine

    obj = import_target(target)
    if isinstance(obj, Machine):
        return obj
    params = _plain_function(obj, target)
    with _calling(target):
        if params == 0 and not _takes_log(obj):
            made = obj()
        else:
            with tempfile.TemporaryDirectory(prefix="fsmtrain-graph-") as scratch:
                log = EventLog(Path(scratch) / "graph.db")
                try:
                    made = obj(log)
                    made = getattr(made, "machine", made)
                finally:
                    log.close()
    if not isinstance(made, Machine):
        raise InvalidDefinition(target, [f"gave a {type(made).__name__}, not an fsmtrain Machine"])
    return made


@contextlib.contextmanager
def _calling(target: str) -> Iterator[None]:
    """Calling the operator's function: whatever it raises is a clear error naming it."""
    try:
        yield
    except (FsmtrainError, click.ClickException):
        raise
    except Exception as e:
        raise InvalidDefinition(target, [f"raised {type(e).__name__} when called: {_short(str(e), 200)}"]) from None


def _takes_log(fn: Any) -> bool:
    """Whether ``fn`` has a parameter named ``log`` (a worker target such as ``def trainer(log="x.db")``)."""
    import inspect

    return "log" in inspect.signature(fn).parameters


def _plain_function(obj: Any, target: str) -> int:
    """How many arguments the Python function ``obj`` needs (0 or 1); anything else is refused unrun."""
    import inspect

    if not (inspect.isfunction(obj) or inspect.ismethod(obj)):
        raise InvalidDefinition(target, [
            f"is a {type(obj).__name__}, not an fsmtrain Machine or a Python function returning one "
            "(e.g. fsmtrain.train.demo:machine)"])
    required = [p for p in inspect.signature(obj).parameters.values()
                if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(required) > 1:
        raise InvalidDefinition(target, [f"is a function needing {len(required)} arguments; name a Machine, a "
                                         "function of no argument returning one, or a function taking the log"])
    return len(required)


def import_target(target: str) -> Any:
    """The object ``module:attr`` names (imported from the operator's command line, never from a log).

    The current folder is on the import path, as for ``python -m``.
    """
    mod_name, sep, attr = target.partition(":")
    if not sep or not mod_name or not attr or not all(p.isidentifier() for p in mod_name.split(".")) \
            or not all(p.isidentifier() for p in attr.split(".")):
        raise click.BadParameter(f"{target!r} must be MODULE:ATTR, e.g. fsmtrain.train.demo:machine")
    _cwd_on_path()
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise click.BadParameter(f"cannot import module {mod_name!r}: {e}") from None
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise click.BadParameter(f"module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _cwd_on_path() -> None:
    if "" not in sys.path and "." not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, "")


def _existing_log(path: Path) -> EventLog:
    """Open an existing log to write to; a missing or empty file is an error, never a new empty log, and
    nothing is written to it (not even its journal mode) unless the command does write."""
    if not os.path.lexists(path):
        raise click.BadParameter(f"{path} does not exist", param_hint="LOG")
    return EventLog(path, create=False)


@contextlib.contextmanager
def _uninterrupted() -> Iterator[None]:
    """Hold Ctrl-C until the block ends, so that a write and the note of it (:func:`kept`) go together."""
    got: list[int] = []
    try:
        old = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if got:
            raise KeyboardInterrupt


def _show_input(lg: EventLog, ev: Event) -> None:
    given = ", ".join(f"{k}={v!r}" for k, v in sorted((ev.inputs or {}).items()))
    echo(f"run {ev.run_id}: input for `{ev.action}` recorded ({given}) by {ev.info.get('by')}; "
         f"the next worker pass continues it: fsmtrain worker {lg.path} --machine MODULE:ATTR --once")
    _suggested_worker(lg, ev.run_id)


def _suggested_worker(lg: EventLog, run_id: int) -> None:
    """The worker target the run's creator recorded in its tags: shown as data from the log, never run."""
    target = lg.run(run_id).tags.get("worker")
    if isinstance(target, str) and target:
        echo(f"  (run {run_id}'s tags suggest --machine {target!r}; that text comes from the log: check it "
             "before you run anything)")


@main.command("input")
@click.argument("log", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("run_id", type=RUN_ID)
@click.argument("values", nargs=-1, required=True, metavar="KEY=VALUE...")
@click.option("--comment", help="A note recorded with the input.")
def input_(log: Path, run_id: int, values: tuple[str, ...], comment: str | None) -> None:
    """Give input to a run waiting at a gate: KEY=VALUE for each input it declares.

    Values are read as the gate declares them (str, int, float, bool) and
    checked against its choices and range before anything is written; the
    first valid answer wins.  Your user name ($FSMTRAIN_USER, else the login
    name) and the time are recorded.

    \b
    Example:
        fsmtrain input runs.db 1 decision=no-go lr=0.001
    """
    from .runner import give_text_input

    texts: dict[str, str] = {}
    for item in values:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="KEY=VALUE")
        if key in texts:
            raise click.BadParameter(f"{key} is given twice", param_hint="KEY=VALUE")
        texts[key] = text
    with _existing_log(log) as lg:
        with _uninterrupted():
            ev = give_text_input(lg, run_id, texts, comment=comment)
            kept(f"the input was recorded (run {run_id}, event {ev.seq})")
        _show_input(lg, ev)


def _decision_command(name: str, approve: bool, example: str) -> None:
    """`fsmtrain approve` and `fsmtrain reject`: the gate's `decision` input, go or no-go."""

    @main.command(name, help=f"{name.capitalize()} a run waiting at a go/no-go gate (its `decision` input: "
                             f"{'go' if approve else 'no-go'}).\n\n\b\nExample:\n    {example}")
    @click.argument("log", type=click.Path(dir_okay=False, path_type=Path))
    @click.argument("run_id", type=RUN_ID)
    @click.option("--comment", help="Why; recorded with the decision (and given as the gate's `comment` input "
                                    "if it has one).")
    def command(log: Path, run_id: int, comment: str | None) -> None:
        from .runner import decide

        with _existing_log(log) as lg:
            with _uninterrupted():
                ev = decide(lg, run_id, approve, comment=comment)
                kept(f"the decision was recorded (run {run_id}, event {ev.seq})")
            _show_input(lg, ev)


@main.command("retry")
@click.argument("log", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("run_id", type=RUN_ID)
@click.option("--comment", help="Why; recorded with the retry.")
def retry_(log: Path, run_id: int, comment: str | None) -> None:
    """Continue a failed run deliberately, from its last committed step.

    Records who retried it ($FSMTRAIN_USER, else the login name), when and why;
    the run is then running again, with its attempts counted afresh, and the next
    process that resumes it (the same training command, or a worker) continues it.

    \b
    Example:
        fsmtrain retry runs.db 3 --comment "freed disk space"
    """
    from .runner import retry

    with _existing_log(log) as lg:
        with _uninterrupted():
            ev = retry(lg, run_id, comment=comment)
            kept(f"the retry was recorded (run {run_id}, event {ev.seq})")
        echo(f"run {run_id}: retry recorded by {ev.info.get('by')}; it continues from step {ev.step} (`{ev.action}`) "
             f"when a process resumes it: the same training command, or fsmtrain worker {lg.path} --machine "
             "MODULE:ATTR --once")
        _suggested_worker(lg, run_id)


@main.command("stop")
@click.argument("log", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("run_id", type=RUN_ID)
@click.option("--reason", required=True, help="Why it is stopped; recorded with who and when.")
def stop_(log: Path, run_id: int, reason: str) -> None:
    """End a run for good: no worker continues it, a process driving it stops at its next step.

    Records who stopped it ($FSMTRAIN_USER, else the login name), when and why.
    Its history stays (replay, whatif and the page show it as stopped).

    \b
    Example:
        fsmtrain stop runs.db 3 --reason "diverged; lr too high"
    """
    from .runner import stop

    with _existing_log(log) as lg:
        with _uninterrupted():
            ev = stop(lg, run_id, reason=reason)
            kept(f"the stop was recorded (run {run_id}, event {ev.seq})")
        echo(f"run {run_id} stopped by {ev.info.get('by')} after {ev.step} step(s): {reason}")


_decision_command("approve", True, 'fsmtrain approve runs.db 1 --comment "val_acc 0.97, ship it"')
_decision_command("reject", False, 'fsmtrain reject runs.db 1 --comment "overfits"')


@main.command()
@click.argument("log", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--machine", "target", required=True, metavar="MODULE:ATTR",
              help="The machine (or a function log -> Trainer) whose runs to continue; code comes only from here.")
@click.option("--once", is_flag=True, help="One pass, then exit (for cron).")
@click.option("--every", metavar="DURATION", help="Pass again after this pause (e.g. 30s, 10m) until SIGINT/SIGTERM.")
@click.option("--max-runs", type=click.IntRange(1, MAX_ID), help="Continue at most N runs per pass.")
@click.option("--hook", "hook_targets", multiple=True, metavar="MODULE:ATTR",
              help="A hook object (or a function returning one) to attach, e.g. to notify on waiting (repeatable).")
def worker(log: Path, target: str, once: bool, every: str | None, max_runs: int | None,
           hook_targets: tuple[str, ...]) -> None:
    """Continue every run that can make progress until its next halt.

    Finds the runs of the machine that are not finished, not failed and not
    waiting without input; resumes each (restoring its checkpoint) until it
    finishes, fails or reaches its next gate; prints a line per run.  Two
    workers on one log never run the same run at once.  SIGINT/SIGTERM stop it
    after the current step; the run resumes from there next time.  Exits 1 if a
    run failed.

    \b
    Examples:
        fsmtrain worker runs.db --machine fsmtrain.train.demo:gated_trainer --once
        */10 * * * *  cd /srv/train && fsmtrain worker runs.db --machine mypkg.train:trainer --once   # crontab
    """
    import signal

    from .worker import Worker, parse_duration

    if once == (every is not None):
        raise click.UsageError("give exactly one of --once and --every DURATION")
    pause = parse_duration(every) if every is not None else 0.0
    obj = import_target(target)
    hooks = []
    for h in hook_targets:
        hooks.append(_hook(h))
    if max_runs is not None and max_runs < 1:
        raise click.BadParameter("must be >= 1", param_hint="--max-runs")
    with _existing_log(log) as lg:
        with _calling(target):
            w = Worker(lg, obj, hooks=hooks, max_runs=max_runs, echo=echo, target_name=target)

        def on_signal(signum: int, frame: Any) -> None:
            echo(f"worker: {signal.Signals(signum).name}: stopping after the current step", err=True)
            w.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        if once:
            reports = w.run_once()
            if not reports:
                echo(f"nothing to do: no run of `{w.machine.name}` in {log} can make progress")
        else:
            echo(f"worker: passing over {log} every {every} (Ctrl-C to stop)")
            reports = w.serve(pause)
    if any(r.outcome in ("failed", "error") for r in reports):
        sys.exit(1)


def _hook(target: str) -> Any:
    """The hook ``--hook MODULE:ATTR`` names: a hook object, a class (made with no argument) or a Python
    function returning one; checked before anything is called."""
    import inspect

    obj = import_target(target)
    if _is_hook(obj) and not isinstance(obj, type):
        return obj
    if inspect.isclass(obj) or inspect.isfunction(obj):
        with _calling(target):
            made = obj()
        if _is_hook(made):
            return made
        raise InvalidDefinition(target, [f"gave a {type(made).__name__}, which has no on_<event> hook method"])
    raise InvalidDefinition(target, [f"is a {type(obj).__name__}, not a hook (an object with on_<event> methods, "
                                     "a class, or a Python function returning one)"])


def _is_hook(obj: Any) -> bool:
    return any(callable(getattr(obj, f"on_{e}", None)) for e in ("step_end", "waiting", "input", "run_end", "run_start"))


@main.command()
@click.argument("target")
@click.option("--format", "fmt", type=click.Choice(["mermaid", "dot", "svg"]), default="mermaid", show_default=True,
              help="svg runs Graphviz's `dot` (when installed) on the DOT text.")
def graph(target: str, fmt: str) -> None:
    """Print a machine's graph as Mermaid or Graphviz DOT text (or SVG, with Graphviz installed).

    TARGET is MODULE:ATTR naming a Machine (or a function returning one).

    \b
    Example:
        fsmtrain graph fsmtrain.train.demo:machine --format dot | dot -Tsvg > demo.svg
    """
    m = load_machine(target)
    if fmt == "svg":
        import shutil
        import subprocess

        dot = shutil.which("dot")
        if dot is None:
            raise click.UsageError("--format svg needs Graphviz's `dot` on PATH (e.g. apt install graphviz); "
                                   "--format dot prints the text to render elsewhere")
        out = subprocess.run([dot, "-Tsvg"], input=m.to_dot(), capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise click.ClickException(f"dot failed: {out.stderr.strip()}")
        echo(out.stdout, nl=False)
        return
    echo(m.to_mermaid() if fmt == "mermaid" else m.to_dot(), nl=False)


@main.command()
@click.option("--log", "log_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The event log (created if missing); checkpoints go to LOG.artifacts/.")
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True, help="Max epochs of a new run.")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True, help="Seed of a new run.")
@click.option("--patience", type=click.IntRange(min=1), default=5, show_default=True,
              help="Early stopping: evaluations without a better val_loss before a new run stops.")
@click.option("--lr", type=FINITE_POSITIVE, default=0.01, show_default=True, help="Adam learning rate of a new run.")
@click.option("--data", type=str, default=None,
              help="A CSV file (features, then an integer label) instead of the bundled digits.")
@click.option("--new", is_flag=True, help="Start a new run even if an unfinished one exists.")
@click.option("--json", "as_json", is_flag=True, help="End with one JSON summary line.")
@click.option("--delay", type=Finite(0, 3600), default=0.0,
              help="Sleep this many seconds at the start of each epoch: slow enough to press Ctrl-C, then resume.")
@click.option("--chunk", type=click.IntRange(1, 10**9), default=None,
              help="Train in chunks of N optimizer steps, each committed and checkpointed (default: whole epochs).")
@click.option("--accumulate", type=click.IntRange(1, 10**6), default=1, show_default=True,
              help="Batches per optimizer step (gradient accumulation).")
@click.option("--precision", type=click.Choice(["32", "bf16", "fp16"]), default="32", show_default=True,
              help="32-bit floats, bfloat16 autocast (CPU or CUDA), or float16 with a GradScaler (CUDA only).")
@click.option("--nproc", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Train one run on N processes (torch.distributed DDP through torchrun; gloo on the CPU).")
@click.option("--distributed", is_flag=True, hidden=True, help="(set by --nproc on each torchrun process)")
@click.option("--gate", is_flag=True,
              help="After training, wait at a go/no-go review gate; go exports the best model (see fsmtrain approve).")
def demo(log_path: Path, epochs: int, seed: int, patience: int, lr: float, data: str | None, new: bool,
         as_json: bool, delay: float, chunk: int | None, accumulate: int, precision: str, nproc: int,
         distributed: bool, gate: bool) -> None:
    """Train a small digits classifier, one epoch per step (or --chunk N optimizer steps), with checkpoints and
    early stopping.

    Running it again on the same log resumes the unfinished run; on a finished
    run it prints that run's summary (use --new for another run). Kill it at any
    moment: the resumed run ends with the same weights as an uninterrupted one.
    With --gate, the trained run waits for a person's decision: approve or
    reject it from any process, and a worker (or this command) finishes it.

    With --nproc N, one run trains on N processes (torch.distributed DDP,
    launched through torchrun, which restarts them all if one dies); the log
    is written by one of them only.

    \b
    Examples:
        fsmtrain demo --log runs.db
        fsmtrain demo --log gate.db --gate && fsmtrain approve gate.db 1
        fsmtrain demo --log ddp.db --nproc 2 --json
    """
    import signal

    from .hooks import Hook
    from .train import demo as d

    if nproc > 1 and not distributed:  # start this same command on nproc processes, through torchrun
        import subprocess

        from .launch import launch_command

        args = [a for a in sys.argv[1:] if not a.startswith("--nproc")]
        if "--nproc" in sys.argv[1:]:
            i = sys.argv[1:].index("--nproc")
            args = sys.argv[1:][:i] + sys.argv[1:][i + 2:]
        cmd, env = launch_command(nproc, "fsmtrain", [*args, "--distributed"])
        sys.exit(subprocess.run(cmd, env=env).returncode)

    # Ctrl-C interrupts the demo (and says how to resume) even where the shell started it with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    class Progress(Hook):
        t0: float | None = None  # when the epoch's first training action started (after any --delay)

        def on_step_start(self, *, action: str, **_: Any) -> None:
            if action in ("train_epoch", "train_steps"):
                if delay:
                    time.sleep(delay)
                if self.t0 is None:
                    self.t0 = time.perf_counter()

        def on_restore(self, *, run_id: int | None, note: dict[str, Any], **_: Any) -> None:
            for s in note.get("skipped", []):
                echo(f"warning: {s['problem']}; falling back to an older checkpoint", err=True)
            if not as_json:
                where = f"checkpoint {note['checkpoint']}" if "checkpoint" in note else "the start"
                echo(f"run {run_id}: restored from {where}, re-ran {note['redone']} committed step(s)")

        def on_step_end(self, *, action: str, state: Any, replayed: bool = False, **_: Any) -> None:
            if action == "evaluate" and not as_json and not replayed:
                ms = (time.perf_counter() - (self.t0 or time.perf_counter())) * 1000
                echo(f"epoch {state['epoch']:3d}  train_loss {state['train_loss'][-1]:.4f}  "
                     f"val_loss {state['val_loss'][-1]:.4f}  val_acc {state['val_acc'][-1]:.4f}  ({ms:.0f} ms)")
                self.t0 = None

    if distributed:
        _demo_rank(log_path, d, gate, Progress(), as_json, new, {
            **d.CONFIG, "max_epochs": epochs, "seed": seed, "patience": patience, "lr": lr, "data": data,
            "chunk": chunk, "accumulate": accumulate, "precision": precision})
        return
    with EventLog(log_path) as lg:
        trainer = (d.gated_trainer if gate else d.trainer)(lg, hooks=[Progress()])
        runs = [] if new else trainer.runs()
        unfinished = [r for r in runs if r.status in ("running", "waiting")]
        if unfinished:
            runner = trainer.resume(unfinished[-1].id)
            if not as_json:
                echo(f"run {runner.run_id}: resuming at `{runner.next_action}` after {runner.steps} steps")
        elif runs and runs[-1].status == "finished":
            _summary(runs[-1].id, "finished", state_at(lg, runs[-1].id), as_json,
                     note="already finished (use --new for another run)", artifacts=lg.artifacts)
            return
        elif runs and runs[-1].status == "failed":
            last = lg.last_event(runs[-1].id)
            why = (last.error or "").strip().splitlines()[-1:] or ["?"]
            raise RunNotRunnable(f"the newest demo run, {runs[-1].id}, failed at `{last.action}` ({why[0]}); "
                                 f"continue it with `fsmtrain retry {log_path} {runs[-1].id}` and this command again, "
                                 f"inspect it with `fsmtrain replay {log_path} --run {runs[-1].id}`, "
                                 "or start another with --new")
        elif runs and runs[-1].status in ("stopped", "pruned"):
            _summary(runs[-1].id, runs[-1].status, state_at(lg, runs[-1].id), as_json,
                     note=f"was {runs[-1].status} (use --new for another run)", artifacts=lg.artifacts)
            return
        else:
            config = {**d.CONFIG, "max_epochs": epochs, "seed": seed, "patience": patience, "lr": lr, "data": data,
                      "chunk": chunk, "accumulate": accumulate, "precision": precision}
            tags: dict[str, Any] = {"demo": True}
            if gate:
                tags["worker"] = "fsmtrain.train.demo:gated_trainer"
            runner = trainer.start(config, tags=tags)
            if not as_json:
                echo(f"run {runner.run_id}: new demo run (epochs={epochs}, seed={seed}) in {log_path}")
        assert runner.run_id is not None
        try:
            with runner:  # holds the run's lock: a worker started meanwhile leaves it alone
                halt = runner.run()
        except KeyboardInterrupt:
            echo(f"\ninterrupted after {runner.steps} steps; run the same command again to resume "
                 f"run {runner.run_id}", err=True)
            sys.exit(130)
        if halt.reason == "waiting":
            _waiting(lg, runner.run_id, halt.state, as_json)
            return
        _summary(runner.run_id, runner.status, halt.state, as_json, artifacts=lg.artifacts)


def _demo_rank(log_path: Path, d: Any, gate: bool, progress: Any, as_json: bool, new: bool,
               config: dict[str, Any]) -> None:
    """One process of ``fsmtrain demo --nproc N``: every rank trains; the log's rank writes and prints."""
    from .train.distributed import Distributed

    dist = Distributed()
    trainer = (d.gated_trainer if gate else d.trainer)(log_path, hooks=[progress] if dist.writer else [],
                                                       distributed=dist)
    try:
        runner = trainer.fit(config, new=new)
    finally:
        trainer.close()
    if not dist.writer:
        return
    if runner.status == "waiting":
        with EventLog(log_path, readonly=True) as lg:
            _waiting(lg, runner.run_id or 0, runner.state, as_json)
        return
    _summary(runner.run_id, runner.status, runner.state, as_json, artifacts=trainer.artifacts,
             extra={"world_size": dist.world})


def _waiting(lg: EventLog, run_id: int, state: Any, as_json: bool) -> None:
    """How to answer the demo's review gate, and what to run then."""
    best = state["best"] or {}
    worker_cmd = f"fsmtrain worker {lg.path} --machine fsmtrain.train.demo:gated_trainer --once"
    if as_json:
        _print_json({"run_id": run_id, "status": "waiting", "waiting_at": "review", "epochs": state["epoch"],
                     "best_epoch": best.get("epoch"), "best_val_loss": best.get("value"),
                     "approve": f"fsmtrain approve {lg.path} {run_id}", "reject": f"fsmtrain reject {lg.path} {run_id}",
                     "worker": worker_cmd})
        return
    echo(f"run {run_id} is waiting at `review` for a person's decision: {state['epoch']} epochs, best val_loss "
               f"{best.get('value', float('nan')):.4f} at epoch {best.get('epoch')}, val_acc "
               f"{state['val_acc'][(best.get('epoch') or 1) - 1]:.4f} there")
    echo(f"  go:     fsmtrain approve {lg.path} {run_id} --comment \"looks good\"   (exports the best model)")
    echo(f"  no-go:  fsmtrain reject {lg.path} {run_id}")
    echo(f"  then:   {worker_cmd}")


def _summary(run_id: int | None, status: str, state: Any, as_json: bool, note: str = "",
             artifacts: Path | None = None, extra: dict[str, Any] | None = None) -> None:
    best = state["best"] or {}
    ref = best.get("checkpoint")
    if as_json:
        exported = state.get("exported")
        _print_json({"run_id": run_id, "status": status, "epochs": state["epoch"], "best_epoch": best.get("epoch"),
                     "best_val_loss": best.get("value"), "weights_sha256": state["weights_sha256"],
                     "best_checkpoint": ref.path if ref else None,
                     **({"decision": state.get("decision"), "exported": exported.path if exported else None}
                        if "decision" in state else {}), **(extra or {})})
        return
    echo(f"run {run_id} {note or status}: {state['epoch']} epochs, best val_loss {best.get('value', float('nan')):.4f} "
               f"at epoch {best.get('epoch')}; final weights sha256 {(state['weights_sha256'] or '?')[:16]}…")
    if ref and artifacts is not None:
        echo(f"best checkpoint: {artifacts / ref.path}")
    if state.get("decision") is not None:
        exported = state.get("exported")
        echo(f"decision: {state['decision']}" + (f" ({state['comment']})" if state.get("comment") else "")
                   + (f"; exported model: {artifacts / exported.path}" if exported and artifacts else "; nothing exported"))


@main.command()
@click.option("--log", "log_path", type=click.Path(dir_okay=False, path_type=Path), help="Also inspect this log (read-only).")
def doctor(log_path: Path | None) -> None:
    """Print versions and settings that matter for a log's safety and speed.

    \b
    Example:
        fsmtrain doctor --log runs.db
    """
    import platform
    from importlib import metadata

    from ._version import __version__
    from .log import _filesystem_of

    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "not installed"

    echo(f"fsmtrain     {__version__}")
    echo(f"python       {platform.python_version()} ({sys.executable})")
    for pkg in ("attrs", "click", "sqlite-utils", "torch"):
        echo(f"{pkg:12s} {version(pkg)}")
    v = tuple(int(x) for x in sqlite3.sqlite_version.split("."))
    note = ""
    if (3, 7, 0) <= v < (3, 51, 3):
        note = "  (inside the range of SQLite's rare WAL-reset bug, fixed in 3.51.3; see sqlite.org/wal.html)"
    echo(f"sqlite       {sqlite3.sqlite_version}{note}")
    if log_path is not None:
        with EventLog(log_path, readonly=True) as lg:
            mode = lg.conn.execute("PRAGMA journal_mode").fetchone()[0]
            n = lg.conn.execute("SELECT count(*) FROM runs").fetchone()[0]
            echo(f"log          {log_path}: schema v{lg.schema_version}, journal {mode}, {n} run(s), "
                       f"filesystem {_filesystem_of(log_path) or 'unknown'}")


if __name__ == "__main__":  # pragma: no cover
    main()
