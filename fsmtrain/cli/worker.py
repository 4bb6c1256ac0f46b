"""``fsmtrain worker``: continue every run of a machine that can make progress, once or every so often,
with the hooks the operator names."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ..errors import InvalidDefinition
from ..log import MAX_ID
from .common import _existing_log, echo, home_option
from .targets import _calling, import_target

__all__ = ["worker"]


@click.command()
@click.argument("log", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--machine", "target", required=True, metavar="MODULE:ATTR",
              help="The machine (or a function log -> Trainer) whose runs to continue; code comes only from here.")
@click.option("--once", is_flag=True, help="One pass, then exit (for cron).")
@click.option("--every", metavar="DURATION", help="Pass again after this pause (e.g. 30s, 10m) until SIGINT/SIGTERM.")
@click.option("--max-runs", type=click.IntRange(1, MAX_ID), help="Continue at most N runs per pass.")
@click.option("--hook", "hook_targets", multiple=True, metavar="MODULE:ATTR",
              help="A hook object (or a function returning one) to attach, e.g. to notify on waiting (repeatable).")
@home_option
def worker(log: Path, target: str, once: bool, every: str | None, max_runs: int | None,
           hook_targets: tuple[str, ...], home: str | None) -> None:
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

    from ..worker import Worker, parse_duration

    if once == (every is not None):
        raise click.UsageError("give exactly one of --once and --every DURATION")
    pause = parse_duration(every) if every is not None else 0.0
    obj = import_target(target)
    hooks = []
    for h in hook_targets:
        hooks.append(_hook(h))
    if max_runs is not None and max_runs < 1:
        raise click.BadParameter("must be >= 1", param_hint="--max-runs")
    with _existing_log(log, home) as lg:
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
