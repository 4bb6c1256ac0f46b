"""Commands about a log's home: ``recover`` (a log that lost what its witness saw), ``pull`` (a local copy of a
home) and ``sync`` (push now and wait)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import HomeBehind, HomeError, LostTail
from ..log import EventLog
from .common import RUN_ID, _existing_log, echo, home_option, kept

__all__ = ["pull", "recover", "sync"]


@click.command()
@click.argument("log", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--run", "run_id", type=RUN_ID, help="Only this run (default: every run that lost a tail).")
@home_option
@click.option("--accept-loss", is_flag=True, help="Where no home holds the lost events: record that you accept "
                                                   "losing them (who, which, when); the run then redoes them.")
@click.option("--comment", help="Why; recorded with an accepted loss.")
def recover(log: Path, run_id: int | None, home: str | None, accept_loss: bool, comment: str | None) -> None:
    """Continue from a log that lost what its witness saw: an older copy restored, a backup of the log taken
    before its artifacts, a deleted -wal file.

    With --home (or $FSMTRAIN_HOME), the lost events are taken back from the home, verified: nothing is lost.
    Otherwise --accept-loss records, in the log and in the witness, who accepted losing which events of which
    run, and when; the run then resumes from what the log holds and redoes the lost steps (deterministically:
    the same weights), and `fsmtrain verify` reports the accepted loss as information. Without either, it
    says what was lost and exits 3. A run that lost nothing is left alone.

    \b
    Examples:
        fsmtrain recover runs.db --home /shared/runs
        fsmtrain recover runs.db --run 1 --accept-loss --comment "restored last night's backup"
    """
    from ..answers import accept_loss as accept

    _must_exist(log)
    with _existing_log(log, home) as lg:
        if lg._ship is not None and lg._ship.failing:
            raise HomeError(f"the home {home} cannot be reached ({lg._ship.failing}); nothing was recorded: run "
                            "recover again once it can be reached (or without --home to accept a loss)")
        changed = lg._identity_problem()
        if changed is not None:
            if not accept_loss:
                raise LostTail(f"{log}: {changed}")
            from ..answers import _note

            lg._rebind({**_note(None, comment, "comment"), "replaced": "the log the witness knew at this path"})
            kept("this log was accepted in place of the one the witness knew")
            echo(f"{log}: accepted in place of the log the witness knew at this path (recorded in the witness)")
        lost = lg.lost_tails()
        if run_id is not None:
            if run_id not in lost:
                lg.run(run_id)  # (a run that does not exist is an error)
            lost = {r: v for r, v in lost.items() if r == run_id}
        if not lost:
            echo(f"{log}: nothing to recover" + (f" in run {run_id}" if run_id else "")
                 + ": the log holds everything its witness saw" + (f" (after pulling from {home})" if home else ""))
            return
        if not accept_loss:
            where = f"the home {home} does not hold them" if home else "no home was given (--home)"
            runs = "; ".join(f"run {r} ends at event {have} but the witness saw event {saw}"
                             for r, (have, saw) in sorted(lost.items()))
            raise LostTail(f"{log}: {runs}, and {where}. `fsmtrain recover {log} --accept-loss` records that you "
                           "accept losing them; the run then redoes them")
        for r, (have, saw) in sorted(lost.items()):
            accept(lg, r, comment=comment)
            kept(f"the accepted loss of run {r} was recorded")
            what = f"events {have + 1} to {saw}" if have else "the whole run"
            echo(f"run {r}: the loss of {what} is recorded as accepted; "
                 + ("it continues from event " + str(have) + " when a process resumes it (the same command)"
                    if have else "the witness no longer expects it"))


@click.command()
@click.argument("home")
@click.argument("log", type=click.Path(dir_okay=False, path_type=Path))
def pull(home: str, log: Path) -> None:
    """Build (or bring up to date) a local log from a home, with the checkpoints each run's state names, so
    that replay, whatif, plot and ui work on a copy: a laptop over a bucket.

    Every event's hash is checked against its chain, and every file against its sha256. Nothing is written to
    the home.

    \b
    Example:
        fsmtrain pull s3://bucket/runs runs.db && fsmtrain replay runs.db
    """
    from ..log.home import Home, refs_in
    from ..replay import state_at

    source = Home.open(home)
    if not source.runs():
        raise HomeError(f"{home} holds no runs (is it the right home?); nothing was written")
    with EventLog(log) as lg:  # (no home of its own: nothing is ever written to the one it reads)
        source.pull_all(lg)
        runs = lg.runs()
        files = 0
        for info in runs:
            for ref in refs_in(state_at(lg, info.id).to_json()):
                if not (lg.artifacts / ref["path"]).exists() and \
                        source.fetch(lg.artifacts, ref["path"], ref["sha256"], ref["size"]):
                    files += 1
        n = lg.conn.execute("SELECT count(*) FROM events").fetchone()[0]
    echo(f"{log}: {len(runs)} run(s), {n} event(s) from {home}; {files} file(s) fetched to {lg.artifacts}")


def _must_exist(log: Path) -> None:
    """``recover`` and ``sync`` are about a log that is here (never one a home would make)."""
    import os

    if not os.path.lexists(log):
        raise click.BadParameter(f"{log} does not exist", param_hint="LOG")


@click.command()
@click.argument("log", type=click.Path(dir_okay=False, path_type=Path))
@home_option
@click.option("--timeout", type=click.FloatRange(0, 86400), default=None,
              help="Seconds to wait for the home (default: $FSMTRAIN_HOME_TIMEOUT, else 60).")
def sync(log: Path, home: str | None, timeout: float | None) -> None:
    """Push every event of LOG (and the files they name) to its home now, and wait until the home holds them:
    for a job's SIGTERM handler, or after a run ended while the home was unreachable.

    Exits 0 when the home holds everything, 75 when it could not be reached in time (run it again).

    \b
    Example:
        fsmtrain sync /tmp/runs.db --home s3://bucket/runs
    """
    if home is None:
        raise click.UsageError("give the home: --home DIR|URL (or set FSMTRAIN_HOME)")
    _must_exist(log)
    with _existing_log(log, home, timeout) as lg:
        behind = lg.sync_home()
        if behind:
            runs = ", ".join(f"run {r} ({h} of {s} events)" for r, (h, s) in sorted(behind.items()))
            raise HomeBehind(f"the home {home} still lacks part of {runs}; run `fsmtrain sync {log} --home {home}` "
                             "again once it can be reached")
        n = lg.conn.execute("SELECT count(*) FROM runs").fetchone()[0]
    echo(f"{log}: the home {home} holds every event of its {n} run(s)")
