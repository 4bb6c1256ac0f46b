"""``fsmtrain demo``: train the bundled digits classifier as a resumable run (optionally gated, or on
several processes), and print its progress and summary."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from ..errors import RunNotRunnable
from ..log import EventLog
from ..replay import state_at
from .common import FINITE_POSITIVE, Finite, _print_json, echo, home_option

__all__ = ["demo"]


@click.command()
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
@click.option("--fsdp", is_flag=True,
              help="With --nproc: shard the model with FSDP2 (fully_shard) instead of DDP; each rank saves its shards "
                   "(sharded checkpoints through torch.distributed.checkpoint, in a folder every rank sees).")
@click.option("--distributed", is_flag=True, hidden=True, help="(set by --nproc on each torchrun process)")
@click.option("--checkpoints", "checkpoint_mode", type=click.Choice(["auto", "sync", "async"]), default="auto",
              show_default=True,
              help="async: write each checkpoint from a copy in memory in the background while training goes on "
                   "(its Ref is committed once the file is durable; one process, or every rank with --fsdp); sync: "
                   "the step commits once the file is durable; auto: async from 64 MiB of model and optimizer state "
                   "(the demo's is small).")
@click.option("--gate", is_flag=True,
              help="After training, wait at a go/no-go review gate; go exports the best model (see fsmtrain approve).")
@home_option
def demo(log_path: Path, epochs: int, seed: int, patience: int, lr: float, data: str | None, new: bool,
         as_json: bool, delay: float, chunk: int | None, accumulate: int, precision: str, nproc: int,
         distributed: bool, gate: bool, home: str | None, checkpoint_mode: str, fsdp: bool) -> None:
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
        fsmtrain demo --log fsdp.db --nproc 2 --fsdp --json
        fsmtrain demo --log /tmp/runs.db --home /shared/runs   # a requeued job continues on any node
    """
    import signal

    from ..hooks import Hook
    from ..train import demo as d

    if checkpoint_mode == "auto" and (nproc > 1 or distributed) and not fsdp:
        checkpoint_mode = "sync"  # (a DDP run saves synchronously)
    if checkpoint_mode == "async" and (nproc > 1 or distributed) and not fsdp:
        raise click.BadParameter("asynchronous checkpoints run in one process, or on every rank of a sharded model: "
                                 "with --nproc, use --checkpoints sync or add --fsdp", param_hint="--checkpoints")
    if (nproc > 1 or fsdp) and not distributed:  # start this same command on nproc processes, through torchrun
        import subprocess

        from ..launch import launch_command

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
            "chunk": chunk, "accumulate": accumulate, "precision": precision, "checkpoint_mode": checkpoint_mode,
            "fsdp": fsdp})
        return
    with EventLog(log_path, home=home) as lg:
        trainer = (d.gated_trainer if gate else d.trainer)(lg, hooks=[Progress()])
        runs = [] if new else trainer.runs()
        unfinished = [r for r in runs if r.status in ("running", "waiting")]
        if unfinished:
            runner = trainer.resume(unfinished[-1].id)
            if not as_json:
                echo(f"run {runner.run_id}: resuming at `{runner.next_action}` after {runner.steps} steps")
        elif runs and runs[-1].status == "finished":
            _summary(runs[-1].id, "finished", state_at(lg, runs[-1].id), as_json, log=lg,
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
            _summary(runs[-1].id, runs[-1].status, state_at(lg, runs[-1].id), as_json, log=lg,
                     note=f"was {runs[-1].status} (use --new for another run)", artifacts=lg.artifacts)
            return
        else:
            config = {**d.CONFIG, "max_epochs": epochs, "seed": seed, "patience": patience, "lr": lr, "data": data,
                      "chunk": chunk, "accumulate": accumulate, "precision": precision,
                      "checkpoint_mode": checkpoint_mode}
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
        _summary(runner.run_id, runner.status, halt.state, as_json, artifacts=lg.artifacts, log=lg)


def _demo_rank(log_path: Path, d: Any, gate: bool, progress: Any, as_json: bool, new: bool,
               config: dict[str, Any]) -> None:
    """One process of ``fsmtrain demo --nproc N``: every rank trains; the log's rank writes and prints."""
    from ..train.distributed import Distributed

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
    with EventLog(log_path, readonly=True) as lg:
        _summary(runner.run_id, runner.status, runner.state, as_json, artifacts=trainer.artifacts, log=lg,
                 extra={"world_size": dist.world, **({"sharded": True} if config.get("fsdp") else {})})


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


def _summary(run_id: int | None, status: str, state: Any, as_json: bool, note: str = "", log: EventLog | None = None,
             artifacts: Path | None = None, extra: dict[str, Any] | None = None) -> None:
    best = state["best"] or {}
    ref = best.get("checkpoint")
    if as_json:
        exported = state.get("exported")
        mode = {"checkpoints": _checkpoint_mode(state, log, run_id)} if "checkpoint_mode" in state else {}
        _print_json({"run_id": run_id, "status": status, "epochs": state["epoch"], "best_epoch": best.get("epoch"),
                     "best_val_loss": best.get("value"), "weights_sha256": state["weights_sha256"],
                     "best_checkpoint": ref.path if ref else None,
                     **({"decision": state.get("decision"), "exported": exported.path if exported else None}
                        if "decision" in state else {}), **mode, **(extra or {})})
        return
    echo(f"run {run_id} {note or status}: {state['epoch']} epochs, best val_loss {best.get('value', float('nan')):.4f} "
               f"at epoch {best.get('epoch')}; final weights sha256 {(state['weights_sha256'] or '?')[:16]}…")
    if ref and artifacts is not None:
        echo(f"best checkpoint: {artifacts / ref.path}")
    if state.get("decision") is not None:
        exported = state.get("exported")
        echo(f"decision: {state['decision']}" + (f" ({state['comment']})" if state.get("comment") else "")
                   + (f"; exported model: {artifacts / exported.path}" if exported and artifacts else "; nothing exported"))


def _checkpoint_mode(state: Any, log: EventLog | None, run_id: int | None) -> str:
    """The run's checkpoints as they were saved: "async" or "sync" ("auto" resolved: did a step stage a save?)."""
    mode = state["checkpoint_mode"]
    if mode != "auto":
        return str(mode)
    if log is None or run_id is None:
        return "sync"
    staged = log.conn.execute("SELECT 1 FROM events WHERE run_id = ? AND kind = 'step' AND "
                              "instr(updates, '\"checkpoint_pending\":{') > 0 LIMIT 1", (run_id,)).fetchone()
    return "async" if staged else "sync"
