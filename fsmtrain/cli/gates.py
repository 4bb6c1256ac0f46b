"""Commands that answer a run from outside: ``input``, ``approve`` and ``reject`` (a gate's inputs), ``retry``
(a failed run) and ``stop``.  Each writes one event to an existing log, with who, when and why.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

import click

from ..log import Event, EventLog
from .common import RUN_ID, _existing_log, echo, home_option, kept

__all__ = ["approve", "input_", "reject", "retry_", "stop_"]


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


@click.command("input")
@click.argument("log", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("run_id", type=RUN_ID)
@click.argument("values", nargs=-1, required=True, metavar="KEY=VALUE...")
@click.option("--comment", help="A note recorded with the input.")
@home_option
def input_(log: Path, run_id: int, values: tuple[str, ...], comment: str | None, home: str | None) -> None:
    """Give input to a run waiting at a gate: KEY=VALUE for each input it declares.

    Values are read as the gate declares them (str, int, float, bool) and
    checked against its choices and range before anything is written; the
    first valid answer wins.  Your user name ($FSMTRAIN_USER, else the login
    name) and the time are recorded.

    \b
    Example:
        fsmtrain input runs.db 1 decision=no-go lr=0.001
    """
    from ..runner import give_text_input

    texts: dict[str, str] = {}
    for item in values:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="KEY=VALUE")
        if key in texts:
            raise click.BadParameter(f"{key} is given twice", param_hint="KEY=VALUE")
        texts[key] = text
    with _existing_log(log, home) as lg:
        with _uninterrupted():
            ev = give_text_input(lg, run_id, texts, comment=comment)
            kept(f"the input was recorded (run {run_id}, event {ev.seq})")
        _show_input(lg, ev)


def _decision_command(name: str, approve: bool, example: str) -> click.Command:
    """`fsmtrain approve` and `fsmtrain reject`: the gate's `decision` input, go or no-go."""

    @click.command(name, help=f"{name.capitalize()} a run waiting at a go/no-go gate (its `decision` input: "
                             f"{'go' if approve else 'no-go'}).\n\n\b\nExample:\n    {example}")
    @click.argument("log", type=click.Path(dir_okay=False, path_type=Path))
    @click.argument("run_id", type=RUN_ID)
    @click.option("--comment", help="Why; recorded with the decision (and given as the gate's `comment` input "
                                    "if it has one).")
    @home_option
    def command(log: Path, run_id: int, comment: str | None, home: str | None) -> None:
        from ..runner import decide

        with _existing_log(log, home) as lg:
            with _uninterrupted():
                ev = decide(lg, run_id, approve, comment=comment)
                kept(f"the decision was recorded (run {run_id}, event {ev.seq})")
            _show_input(lg, ev)

    return command


@click.command("retry")
@click.argument("log", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("run_id", type=RUN_ID)
@click.option("--comment", help="Why; recorded with the retry.")
@home_option
def retry_(log: Path, run_id: int, comment: str | None, home: str | None) -> None:
    """Continue a failed run deliberately, from its last committed step.

    Records who retried it ($FSMTRAIN_USER, else the login name), when and why;
    the run is then running again, with its attempts counted afresh, and the next
    process that resumes it (the same training command, or a worker) continues it.

    \b
    Example:
        fsmtrain retry runs.db 3 --comment "freed disk space"
    """
    from ..runner import retry

    with _existing_log(log, home) as lg:
        with _uninterrupted():
            ev = retry(lg, run_id, comment=comment)
            kept(f"the retry was recorded (run {run_id}, event {ev.seq})")
        echo(f"run {run_id}: retry recorded by {ev.info.get('by')}; it continues from step {ev.step} (`{ev.action}`) "
             f"when a process resumes it: the same training command, or fsmtrain worker {lg.path} --machine "
             "MODULE:ATTR --once")
        _suggested_worker(lg, run_id)


@click.command("stop")
@click.argument("log", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("run_id", type=RUN_ID)
@click.option("--reason", required=True, help="Why it is stopped; recorded with who and when.")
@home_option
def stop_(log: Path, run_id: int, reason: str, home: str | None) -> None:
    """End a run for good: no worker continues it, a process driving it stops at its next step.

    Records who stopped it ($FSMTRAIN_USER, else the login name), when and why.
    Its history stays (replay, whatif and the page show it as stopped).

    \b
    Example:
        fsmtrain stop runs.db 3 --reason "diverged; lr too high"
    """
    from ..runner import stop

    with _existing_log(log, home) as lg:
        with _uninterrupted():
            ev = stop(lg, run_id, reason=reason)
            kept(f"the stop was recorded (run {run_id}, event {ev.seq})")
        echo(f"run {run_id} stopped by {ev.info.get('by')} after {ev.step} step(s): {reason}")


approve = _decision_command("approve", True, 'fsmtrain approve runs.db 1 --comment "val_acc 0.97, ship it"')
reject = _decision_command("reject", False, 'fsmtrain reject runs.db 1 --comment "overfits"')
