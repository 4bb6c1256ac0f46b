"""Commands that read a log and never write to it: ``replay``, ``verify``, ``whatif``, ``study``, ``watch`` and
``plot`` (which writes only its image).  They open the log read-only and never import code named in it.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click

from ..errors import CorruptLog, RunNotRunnable
from ..log import ENDED, MAX_ID, Event, EventLog, RunInfo
from ..replay import state_at
from ..table import table as _table
from .common import RUN_ID, SEQ, Finite, _print_json, _short, _when, echo
from .targets import _cwd_on_path

__all__ = ["plot", "replay", "study", "verify", "watch", "whatif"]


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


PAGE = 1000
"""Events a text timeline shows unless told otherwise (a run can hold millions)."""


def _need(spec: Any) -> str:
    return str(spec["name"]) + (f" ({' | '.join(map(str, spec['choices']))})" if spec.get("choices") else "")


@click.command()
@click.argument("log", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--run", "run_id", type=RUN_ID, help="Show this run's timeline.")
@click.option("--at", "at_seq", type=SEQ, help="With --run: the full state after this event.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--from", "from_seq", type=SEQ, default=1, show_default=True,
              help="With --run: the timeline from this event on.")
@click.option("--limit", type=click.IntRange(0, MAX_ID), default=None,
              help=f"With --run: at most this many events (0: all). Default: {PAGE} for the text timeline, all for "
                   "--json.")
@click.option("--home", envvar="FSMTRAIN_HOME", metavar="DIR|URL",
              help="Also say how much of each run the log's home holds (read only). Default: $FSMTRAIN_HOME.")
def replay(log: Path, run_id: int | None, at_seq: int | None, as_json: bool, from_seq: int,
           limit: int | None, home: str | None) -> None:
    """Inspect a log: its runs, one run's timeline, or a run's state at any event.

    Opens LOG read-only; never runs or imports code. JSON output writes
    non-finite floats as NaN / Infinity / -Infinity. A long timeline is shown a
    page at a time (--from, --limit), read as it is printed.

    \b
    Examples:
        fsmtrain replay runs.db
        fsmtrain replay runs.db --run 1
        fsmtrain replay runs.db --run 1 --from 1001 --limit 500
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
            if home:
                _home_lines(home, [(r.id, r.last_seq) for r in runs])
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
        if limit is None:
            limit = 0 if as_json else PAGE
        end = None if limit == 0 else min(from_seq + limit - 1, MAX_ID)
        if as_json:
            _print_json({"run": _run_json(info), "events": [_event_json(e) for e in lg.events(run_id, start=from_seq,
                                                                                             end=end)]})
            return
        # (a process that resumed after a gate's answer, a retry or a recorded loss did not follow one that died)
        (resumes,) = lg.conn.execute(
            "SELECT count(*) FROM events e JOIN events p ON p.run_id = e.run_id AND p.seq = e.seq - 1 "
            "WHERE e.run_id = ? AND e.kind = 'resume' AND p.kind NOT IN ('waiting', 'input', 'retry') "
            "AND coalesce(e.info, '') NOT LIKE '%\"accepted_loss\"%'", (run_id,)).fetchone()
        echo(f"run {info.id} · machine {info.machine} · {info.status} · {info.steps} steps"
             + (f" · forked from run {info.parent_id} at event {info.parent_seq}" if info.parent_id else "")
             + (f" · resumed after {resumes} interruption{'s' if resumes != 1 else ''}" if resumes else ""))
        rows = []
        for e in lg.events(run_id, start=from_seq, end=end):  # (streamed: one page of events in memory)
            with _reading(e):
                rows.append(_timeline_row(e))
        echo(_table(["seq", "time", "kind", "action", "next", "details"], rows))
        last = info.last_seq
        if end is not None and end < last:
            echo(f"(events {from_seq:,}–{end:,} of {last:,}; the next page: fsmtrain replay {log} --run {run_id} "
                 f"--from {end + 1}; all of them: --limit 0)")
        elif from_seq > last:
            echo(f"(run {run_id} has {last:,} events; --from {from_seq:,} is past its end)")


def _timeline_row(e: Event) -> list[Any]:
    """One event of ``fsmtrain replay --run``: when, what, and the details that matter."""
    detail = []
    if e.kind == "step" and isinstance(e.info, dict) and e.info.get("condition") not in (None, "default"):
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


def _home_lines(home: str, runs: list[tuple[int, int]]) -> None:
    """How much of each run the home holds, one line each (or one line saying it cannot be reached)."""
    from ..log.home import Home

    try:
        h = Home.open(home)
        held = {r: h.tip(r)[0] for r, _ in runs}
    except Exception as e:  # (an unreachable store raises its own errors, not only OSError)
        echo(f"home {home}: cannot be reached ({type(e).__name__}: {_short(str(e), 200)}); the log's writer ships "
             "what it lacks when it is back (or `fsmtrain sync`)")
        return
    for r, last in runs:
        behind = "" if held[r] >= last else f": {last - held[r]} event(s) behind the log (`fsmtrain sync` pushes them)"
        echo(f"home {home}: holds run {r} up to event {held[r]}{behind}")


@click.command()
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
        accepted = [(e.run_id, e.info["accepted_loss"]) for e in (lg.event(r, s) for r, s in lg.conn.execute(
            "SELECT run_id, seq FROM events WHERE kind = 'resume' AND info LIKE '%\"accepted_loss\"%' ORDER BY run_id, seq"))
            if isinstance(e.info, dict) and isinstance(e.info.get("accepted_loss"), dict)]
        lost = bool(lg.lost_tails()) if problems else False
    if as_json:
        _print_json({"ok": not problems, "runs": n_runs, "events": n_events, "problems": problems,
                     "unchecked_keyed_runs": unchecked, "witness": witness.exists(),
                     "accepted_losses": [{"run": r, **note} for r, note in accepted]})
    elif problems:
        echo(f"CORRUPT: {problems[0]}", err=True)
        for p in problems[1:]:
            echo(f"  also: {p}", err=True)
        if lost:
            echo(f"  to continue: `fsmtrain recover {log} --home HOME` takes the lost events back from a home; "
                 "`--accept-loss` records that you accept losing them", err=True)
    else:
        echo(f"OK: {n_runs} run(s), {n_events} event(s); sequences gapless, hash chains intact"
             + ("; nothing lost that the witness saw" if witness.exists() else "; no witness file to compare with"))
        for r, note in accepted:
            lost_range = note.get("lost") or {}
            echo(f"note: run {r}: {note.get('by')} accepted losing events {lost_range.get('from')} to "
                 f"{lost_range.get('to')} on {_when(note.get('at'))}"
                 + (f" ({_short(note['comment'], 200)})" if note.get("comment") else "") + "; they were redone")
        if unchecked:
            echo(f"note: run(s) {', '.join(map(str, unchecked))} are keyed (HMAC): their hashes were not checked; "
                 "give the key (FSMTRAIN_LOG_KEY or FSMTRAIN_LOG_KEY_FILE) to check them")
    if problems:
        sys.exit(1)


@click.command()
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
    from ..whatif import whatif as compare

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


@click.command()
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
    from ..tune.study import table

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


@click.command()
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
    from ..hooks import step_metrics
    from ..replay import decode_updates

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
                            updates = decode_updates(ev.updates)
                            metrics = step_metrics(updates)
                            shown = "  ".join(f"{k} {v[-1]:.4g}" for k, v in sorted(metrics.items()))
                            if metrics and isinstance(updates.get("steps"), int):  # a training chunk's point
                                shown = f"at step {updates['steps']}  {shown}"
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


@click.command()
@click.argument("log", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--run", "run_id", type=RUN_ID, required=True, help="The run whose curves to draw.")
@click.option("--metric", "metrics", multiple=True, required=True, help="A metric (a list of numbers in the state); repeatable.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The image to write: .svg (drawn by fsmtrain) or .png (needs matplotlib).")
def plot(log: Path, run_id: int, metrics: tuple[str, ...], output: Path) -> None:
    """Draw a run's metric curves as an image.

    Opens LOG read-only.  One point per recorded value; NaN and infinities are left out.  In a training run
    the x axis is the optimizer step at which each value was recorded (a chunked run's train_loss has a point
    per chunk, val_loss one per evaluation); otherwise it counts the values.

    \b
    Example:
        fsmtrain plot runs.db --run 1 --metric train_loss --metric val_loss -o curves.svg
    """
    from ..plot import curves

    suffix = output.suffix.lower()
    if suffix not in (".svg", ".png"):
        raise click.BadParameter(f"{output.name}: write .svg or .png", param_hint="-o")
    folder = output.parent if str(output.parent) else Path(".")
    if not folder.is_dir():
        raise click.BadParameter(f"folder {folder} does not exist", param_hint="-o")
    from ..logview import step_axes

    with EventLog(log, readonly=True) as lg:
        state = state_at(lg, run_id)
        steps = state.get("steps")
        axes = step_axes(lg, run_id, list(metrics)) if isinstance(steps, int) and not isinstance(steps, bool) \
            else None
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
    # a step axis when a train curve is drawn and every curve has one (all on the same axis, or none)
    xs = {m: axes.xs[m] for m in series if len(axes.xs.get(m, ())) == len(series[m])} if axes else {}
    xs = xs if axes and len(xs) == len(series) and axes.trained & set(series) else {}
    xlabel = "step" if xs else "evaluation"
    if suffix == ".svg":
        output.write_text(curves(series, title=f"run {run_id}", xs=xs, xlabel=xlabel), encoding="utf-8")
    else:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise click.UsageError("a .png needs matplotlib (pip install matplotlib); or write .svg") from None
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        for name, values in series.items():
            ax.plot(xs.get(name, range(1, len(values) + 1)), values, label=name, marker="o", markersize=2)
        ax.set_xlabel(xlabel)
        ax.legend()
        ax.set_title(f"run {run_id}")
        fig.savefig(output, dpi=100)
    echo(f"wrote {output} ({', '.join(f'{k}: {len(v)} points' for k, v in series.items())})")


def _grammar() -> str:
    """Every function a condition expression may call, with its arguments (for ``whatif --help``)."""
    from ..expr import _signature
    from ..stopping import CONDITIONS

    return "\n".join(f"    {name}{_signature(f)}" for name, f in sorted(CONDITIONS.items()))


_head, _sep, _examples = (whatif.help or "").partition("\b\n    Examples:")  # (the docstring, as written: indented)
whatif.help = (_head.rstrip() + "\n\n    \b\n    The functions (keyword arguments after *; a bare name is a string; "
               "setting('key') reads\n    the run's state; combine with & | ~ and parentheses):\n"
               + "\n".join("    " + line for line in _grammar().splitlines()) + "\n\n    " + _sep + _examples)
