"""The Trainer: starts, resumes and restores training runs; ``training_machine`` builds the usual loop.

Starting a run seeds every RNG from ``state["seed"]`` and calls the user's
factory ``build(state) -> Resources``.  Resuming calls the factory again, loads
the newest checkpoint that verifies (falling back to older ones, saying so in
the ``resume`` event), and re-executes the steps committed after it
(:meth:`~fsmtrain.Runner.redo`), so the live model is exactly where the log
says the run is: an interrupted epoch runs again from the last committed
checkpoint, and the run ends as an uninterrupted one would.  ``training_machine``
is defined in :mod:`fsmtrain.train.loop`.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, FsmtrainError, ResourceError, RestoreFailed, RunFailed
from ..hooks import Hook
from ..log import EventLog
from ..machine import Machine
from ..replay import state_at
from ..runner import Runner
from ..state import Ref, State, dumps
from . import actions as A
from .checkpoints import load_checkpoint, read_verified, remove, restore_rng, seed_everything, sweep, unnamed
from .history import Origin, committed_checkpoints, origin_of
from .loop import DEFAULTS as DEFAULTS
from .loop import Schedule as Schedule
from .loop import training_machine
from .resources import Resources, check, rank_seed, stateful
from .saver import AsyncSaver
from .sharded import is_sharded, is_sharded_ref, load_full, load_own, load_sharded, sharding_problem, verify_sharded
from .sharded_async import ShardedSaver

__all__ = ["Trainer", "training_machine"]

Factory = Callable[[State], Resources]


def config_hash(config: Mapping[str, Any]) -> str:
    """A short, stable hash of a run's configuration (used to find the run to resume)."""
    return hashlib.sha256(dumps(dict(config)).encode()).hexdigest()[:16]


class _Retention(Hook):
    """After a checkpoint step commits, delete the run's files its state no longer names — once that
    step is behind a barrier of the log, so that no prefix of the log a power loss could leave names a
    deleted file (``EventLog(durability=...)``).

    The first time per run (e.g. after a resume) and at the end it condemns every file of the folder
    the state does not name (orphans of lost or killed steps among them); in between, just the files the
    last step dropped.  A condemned file is deleted at the first step after a barrier covers the step
    that condemned it, unless a state names it again by then.
    """

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.kept: dict[int | None, list[Ref]] = {}
        self.condemned: list[tuple[int, int | None, str]] = []  # (the log's commit count then, run, path)

    def on_step_end(self, *, run_id: int | None, state: Any, updates: dict[str, Any], **_: Any) -> None:
        if "checkpoint" in updates or "exported" in updates:
            before, now = self.kept.get(run_id), A.artifact_refs(state)
            if before is None or self.trainer.log.runs(parent_id=run_id):
                drop = self.trainer.unneeded(run_id, state)
            else:
                drop = [ref.path for ref in before if ref not in now]
            self.kept[run_id] = now
            self.condemned += [(self.trainer.log.commits, run_id, path) for path in drop]
        if self.condemned:
            self.delete()

    def on_run_end(self, *, run_id: int | None, state: Any, status: str, **_: Any) -> None:
        # A run that ended (finished, failed, stopped): its files no state names go; what its final
        # state names stays (a failed run may be retried, a stopped one inspected or forked).
        log = self.trainer.log
        self.kept[run_id] = A.artifact_refs(state)
        self.condemned += [(log.commits, run_id, path) for path in self.trainer.unneeded(run_id, state)]
        log.barrier()  # (the end of a run is a barrier already: this costs nothing then)
        self.delete()
        self.kept.pop(run_id, None)

    def delete(self) -> list[str]:
        """Delete the condemned files whose condemning step is durable now; what was deleted."""
        log = self.trainer.log
        synced = log.synced if not log._inherited else -1  # (the commits of earlier processes: not yet known durable)
        due = [c for c in self.condemned if c[0] <= synced]
        if not due:
            return []
        self.condemned = [c for c in self.condemned if c[0] > synced]
        deleted = []
        forks: dict[int | None, set[str]] = {}
        for _, run_id, path in due:
            if run_id not in forks:
                forks[run_id] = {r.path for r in self.trainer.fork_refs(run_id)}
            if path in forks[run_id] or any(r.path == path for r in self.kept.get(run_id, ())) \
                    or self.trainer._saving(path):
                continue  # named again meanwhile (a fork, a step redone after a power loss, a save in flight)
            remove(self.trainer.artifacts, path)
            deleted.append(path)
        return deleted


class Trainer:
    """Runs a training machine with resources from ``build(state)``, recorded in ``log``.

    ``Trainer(machine, build, log="runs.db").fit({"lr": 1e-3, "seed": 0})`` trains
    until the run halts, resuming the unfinished run with that config if there is
    one (see the README's "Train your own model").

    ``home`` (default: ``$FSMTRAIN_HOME``): a directory on a shared filesystem, or an fsspec URL
    (``s3://bucket/prefix``), that receives the log's events and checkpoints at each barrier, off the step's
    path; the same command on another machine (a requeued job, a new spot instance) continues from it,
    bit-identical (spec/home.md).  ``storage_options`` go to fsspec.
    """

    def __init__(self, machine: Machine, build: Factory, *, log: EventLog | str | os.PathLike[str],
                 hooks: Iterable[Any] = (), max_attempts: int = 3, max_interruptions: int | None = None,
                 map_location: Any = None, distributed: Any = False, home: str | os.PathLike[str] | None = None,
                 storage_options: Mapping[str, Any] | None = None) -> None:
        if not isinstance(machine, Machine):
            raise TypeError(f"machine must be a Machine, got {type(machine).__name__}")
        if not callable(build):
            raise TypeError(f"build must be a callable state -> Resources, got {type(build).__name__}")
        self.machine = machine
        self.build = build
        self.dist: Any = None
        if distributed:  # one run on every rank of a torchrun job; only the log's rank opens the log
            from .distributed import Distributed

            self.dist = distributed if isinstance(distributed, Distributed) else Distributed()
        self._log_path = Path(log.path if isinstance(log, EventLog) else log)
        self._log: EventLog | None = None
        if isinstance(log, EventLog) and home is not None:
            raise ValueError("give the home to the EventLog (EventLog(path, home=...)) when you pass one, not to "
                             "the Trainer")
        if home is None and not isinstance(log, EventLog):
            home = os.environ.get("FSMTRAIN_HOME") or None
        if self.dist is None or self.dist.writer:
            self._log = log if isinstance(log, EventLog) else EventLog(log, home=home, storage_options=storage_options)
        self.hooks = [_Retention(self), *hooks] if self._log is not None else []  # hooks run where the log is
        # asynchronous checkpoints (checkpoint(async_=True)) write from here: one process's, or each rank's part of a
        # sharded one (FSDP2; a DDP run saves synchronously)
        self.saver: AsyncSaver | ShardedSaver = AsyncSaver(self.artifacts) if self.dist is None \
            else ShardedSaver(self.artifacts, self.dist)
        self.max_attempts = max_attempts
        self.max_interruptions = max_interruptions
        self.map_location = map_location

    @property
    def log(self) -> EventLog:
        """The run's log (in a distributed run, only the log's rank has it)."""
        if self._log is None:
            raise RuntimeError(f"rank {self.dist.rank} of this distributed run does not hold the log; rank "
                               f"{self.dist.writer_rank} does")
        return self._log

    @property
    def artifacts(self) -> Path:
        """The folder the run's checkpoint files (and ``Ref`` paths) are relative to."""
        if self._log is not None:
            return self._log.artifacts
        return self._log_path.with_name(self._log_path.name + ".artifacts")

    def close(self) -> None:
        """Close the log (also done by ``with Trainer(...) as trainer:``), once an asynchronous save in flight has
        reached its file (a later process commits it, or drops it, as spec/training.md §3b says)."""
        self.saver.close()
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runs -------------------------------------------------------------------------
    def start(self, config: Mapping[str, Any] | None = None, *, tags: Mapping[str, Any] | None = None) -> Runner:
        """A new run from the machine's initial state updated with ``config``.

        The factory runs before anything is written: if it raises, the log is unchanged.
        """
        config = dict(config or {})
        state = self.machine.initial.apply(config) if config else self.machine.initial
        resources = self._build(state, None)
        all_tags = {"config": config_hash(config), **(tags or {})}
        if self.dist is not None:
            all_tags["world_size"] = self.dist.world
        runner = self._coordinated(lambda: Runner.start(
            self.machine, log=self.log, state=config, hooks=self.hooks, resources=resources, restore=self._restore,
            tags=all_tags, max_attempts=self.max_attempts, max_interruptions=self.max_interruptions, sync=self.dist),
            resources)
        resources.run_id = runner.run_id
        return runner

    def resume(self, run_id: int, *, allow_changed_machine: bool = False, hooks: Iterable[Any] = ()) -> Runner:
        """Continue ``run_id``; the resources are rebuilt and restored just before its next action runs.

        ``hooks`` are added to the Trainer's own for this runner (a worker passes its own this way).
        """
        return self._coordinated(lambda: Runner.resume(
            self.machine, self.log, run_id, hooks=[*self.hooks, *hooks], restore=self._restore,
            allow_changed_machine=allow_changed_machine, max_attempts=self.max_attempts,
            max_interruptions=self.max_interruptions, sync=self.dist,
            lock_wait=0.0 if self.dist is None else 60.0))  # (a restarted job may meet its dying predecessor)

    def _coordinated(self, make: Callable[[], Runner], resources: Any = None) -> Runner:
        """The runner of this process: the log's rank makes it; in a distributed run, every other rank makes
        its twin from the position the log's rank tells it (resources are rebuilt at the restore)."""
        if self.dist is None:
            made = make()
            made.late = self.saver.late
            return made
        runner: Runner | None = None
        error: BaseException | None = None
        if self.dist.writer:
            try:
                runner = make()
            except BaseException as e:  # every rank learns why, and stops
                error = e
        said = self.dist.agree(("error", f"{type(error).__name__}: {error}") if error is not None
                               else ("position", runner.position() if runner is not None else None))
        if error is not None:
            raise error
        if said[0] == "error":
            raise ResourceError(f"the log's rank could not start or resume the run: {said[1]}")
        if runner is None:
            runner = Runner.follow(self.machine, said[1], sync=self.dist, resources=resources, restore=self._restore,
                                   max_attempts=self.max_attempts)
        runner.late = self.saver.late  # (the ranks agree on its answer: a collective while a save is pending)
        return runner

    def runs(self, config: Mapping[str, Any] | None = None) -> list[Any]:
        """This machine's runs (with this ``config`` when given), oldest first."""
        runs = self.log.runs(machine=self.machine.name)
        if config is not None:
            h = config_hash(config)
            runs = [r for r in runs if r.tags.get("config") == h]
        return runs

    def fit(self, config: Mapping[str, Any] | None = None, *, new: bool = False, allow_changed_machine: bool = False,
            on_interrupt: str = "exit") -> Runner:
        """Train with ``config`` until the run halts, resuming where a previous process stopped.

        The newest run with the same config is resumed when it is unfinished, and
        returned as it is when it ended (finished, stopped or pruned); ``new=True``
        starts another.  A failed run is never silently replaced: :class:`RunFailed`
        says why it failed and how to continue it (:meth:`retry`) or start anew.
        ``allow_changed_machine=True`` resumes a run recorded with another graph (e.g.
        a swapped stop condition; the change is recorded).  Ctrl-C prints one line
        saying what was kept and how to continue, then exits with status 130
        (``on_interrupt="raise"`` re-raises ``KeyboardInterrupt`` instead).
        """
        if on_interrupt not in ("exit", "raise"):
            raise ValueError(f"on_interrupt must be 'exit' or 'raise', got {on_interrupt!r}")
        decision: tuple[str, Any] | None = None
        if self._log is not None:
            runs = [] if new else self.runs(config or {})
            last = runs[-1] if runs else None
            if last is not None and last.status == "failed":
                decision = ("failed", str(self._failed(last.id)))
            elif last is not None and last.status in ("finished", "stopped", "pruned"):
                decision = ("ended", last.id)
            else:
                decision = ("resume", last.id) if last is not None else ("start", None)
        if self.dist is not None:  # every rank does what the log's rank found
            decision = self.dist.agree(decision)
        assert decision is not None
        if decision[0] == "failed":
            raise RunFailed(decision[1])
        if decision[0] == "ended":
            return self.resume(decision[1], allow_changed_machine=allow_changed_machine)
        runner = self.resume(decision[1], allow_changed_machine=allow_changed_machine) if decision[0] == "resume" \
            else self.start(config)
        return self._drive(runner, on_interrupt)

    def retry(self, run_id: int, *, comment: str | None = None, by: str | None = None,
              on_interrupt: str = "exit") -> Runner:
        """Continue failed run ``run_id`` from its last committed step (recording who retried it, and when),
        until it halts: the Python form of ``fsmtrain retry LOG RUN``."""
        from ..runner import retry

        if self._log is not None:
            retry(self.log, run_id, by=by, comment=comment)
        if self.dist is not None:
            self.dist.barrier()
        return self._drive(self.resume(run_id), on_interrupt)

    def _drive(self, runner: Runner, on_interrupt: str) -> Runner:
        try:
            with runner:
                for _ in runner.iterate():
                    if self.dist is not None and self.dist.stopping:  # a rank got SIGTERM: all stop here
                        break
            if self.dist is not None:  # the last step too is compared across the ranks
                self.dist.tick(time.time(), runner._digest)
        except KeyboardInterrupt:
            if on_interrupt == "raise":
                raise
            import sys

            print(f"\ninterrupted: run {runner.run_id} keeps its {runner.steps} committed step(s) in {self._log_path}; "
                  "run the same code again to continue it", file=sys.stderr, flush=True)
            raise SystemExit(130) from None
        return runner

    def _failed(self, run_id: int) -> RunFailed:
        last = self.log.last_event(run_id)
        why = (last.error or "").strip().splitlines()[-1:] or ["no error recorded"]
        return RunFailed(
            f"run {run_id} (this config's newest) failed at `{last.action}`: {why[0]}. Continue it from its last "
            f"committed step with trainer.retry({run_id}) or `fsmtrain retry {self.log.path} {run_id}`, or start "
            "a new run with fit(config, new=True)")

    def load(self, run_id: int, which: str = "best") -> Resources:
        """Fresh resources holding run ``run_id``'s ``best`` or newest (``checkpoint``) checkpoint."""
        if which not in ("best", "checkpoint"):
            raise ValueError(f"which must be 'best' or 'checkpoint', got {which!r}")
        state = state_at(self.log, run_id)
        ref = (state.get("best") or {}).get("checkpoint") if which == "best" else state.get("checkpoint")
        if not isinstance(ref, Ref):
            raise CheckpointError(f"run {run_id} has no {which} checkpoint yet")
        resources = self._build(_start_state(self.log, run_id), run_id)
        self._apply(resources, self._payload(ref))
        return resources

    def sweep(self, run_id: int | None, state: Any) -> list[str]:
        """Delete the run's checkpoint files that neither ``state`` (committed) nor a fork of it still needs,
        after a barrier (so that no state the log could fall back to on a power loss names them)."""
        self.log.barrier()
        return sweep(self.artifacts, A.run_folder(run_id), A.artifact_refs(state) + self.fork_refs(run_id),
                     self._saving)

    def unneeded(self, run_id: int | None, state: Any) -> list[str]:
        """The run's files (relative to the artifacts folder) that neither ``state`` nor a fork of it names."""
        return unnamed(self.artifacts, A.run_folder(run_id), A.artifact_refs(state) + self.fork_refs(run_id),
                       self._saving)

    def _saving(self, relpath: str) -> bool:
        """Whether ``relpath`` may be the file of an asynchronous save not yet committed (retention spares it)."""
        return self.saver.protects(relpath)

    def fork_refs(self, run_id: int | None) -> list[Ref]:
        """The run's files that its forks' start and latest states name."""
        keep: list[Ref] = []
        if run_id is None:
            return keep
        for child in self.log.runs(parent_id=run_id):
            for seq in (1, child.last_seq):
                keep += A.artifact_refs(state_at(self.log, child.id, seq))
        return keep

    # -- internals --------------------------------------------------------------------
    def _build(self, state: State, run_id: int | None) -> Resources:
        seed = state.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ResourceError(f"state['seed'] must be an int, got {seed!r}")
        seed_everything(seed)
        name = getattr(self.build, "__qualname__", repr(self.build))
        try:
            resources = self.build(state)
        except FsmtrainError:
            raise
        except Exception as e:
            raise ResourceError(f"the resource factory `{name}` raised {type(e).__name__}: {e}") from e
        resources = check(resources, name)
        if (problem := sharding_problem(resources.model, self.dist is not None)) is not None:
            raise ResourceError(f"the resource factory `{name}`: {problem}")
        resources.artifacts, resources.run_id, resources.saver = self.artifacts, run_id, self.saver
        if self.dist is not None:  # DDP over the ranks; each rank's own random stream from here on
            resources.dist = self.dist
            # (a model sharded with FSDP2 synchronises its own gradients: it is not wrapped)
            resources._ddp = resources.model if is_sharded(resources.model) else self.dist.wrap(resources.model)
            seed_everything(rank_seed(seed, self.dist.rank))
        return resources

    def _payload(self, ref: Ref) -> dict[str, Any]:
        """What :meth:`_apply` restores from ``ref`` (verified): a checkpoint file's contents, or for a sharded
        checkpoint its verified manifest (every rank reads its own shards in ``_apply``)."""
        ref = self._here(ref)
        if is_sharded_ref(ref):
            return {"manifest": verify_sharded(self.artifacts, ref), "ref": ref}
        return load_checkpoint(self.artifacts, ref, map_location=self.map_location)

    def _apply(self, r: Resources, payload: Mapping[str, Any]) -> None:
        rank, world = r.shard()
        if "manifest" in payload:  # a sharded checkpoint (FSDP2): DCP reads the shards, resharding at another size
            if r.dist is not None:
                own = load_sharded(r, self.artifacts, payload["ref"], payload["manifest"], self.map_location)
            else:
                load_full(self.artifacts, payload["ref"], r.model, r.optimizer)
                own = {**load_own(self.artifacts, payload["ref"], payload["manifest"], 0, self.map_location),
                       "world_size": payload["manifest"]["world_size"]}
            payload, rank = own, 0  # (each rank's "rng" is its own file's: restored below as rank 0's would be)
        elif is_sharded(r.model):
            raise CheckpointError(f"this model is sharded with FSDP2, but checkpoint of epoch {payload.get('epoch')} "
                                  "was saved from an unsharded one: resume this run with the model as it was saved")
        else:
            r.model.load_state_dict(payload["model"])
            r.optimizer.load_state_dict(payload["optimizer"])
        if r.scheduler is not None and payload.get("scheduler") is not None:
            r.scheduler.load_state_dict(payload["scheduler"])
        if payload.get("scaler") is not None:
            scaler = r.grad_scaler()
            if scaler is not None:
                scaler.load_state_dict(payload["scaler"])
        if payload.get("loader") is not None and stateful(r.train_data):
            r.train_data.load_state_dict(payload["loader"])
        ranks = payload.get("rng_ranks")
        if ranks is not None and len(ranks) == world:  # each rank its own RNG state
            restore_rng(ranks[rank])
        elif rank == 0 or r.dist is None:
            restore_rng(payload["rng"])  # (another world size resumes, but not bit for bit)

    def _restore(self, runner: Runner) -> dict[str, Any]:
        """Rebuild the resources and bring them to the runner's last committed step."""
        self.saver.wait()  # (a retry's restore: a save in flight must not share the save group with the load)
        if self.dist is not None:
            return self._restore_distributed(runner)
        assert runner.run_id is not None
        resources = self._build(_start_state(self.log, runner.run_id), runner.run_id)
        note: dict[str, Any] = {}
        ref, payload, origin, skipped = self._choose(runner, self._payload)
        if ref is not None:
            self._apply(resources, payload)
            note["checkpoint"] = ref.path
        if skipped:
            note["skipped"] = skipped
            note["fallback"] = "an earlier checkpoint" if ref is not None else "the start"
        runner.resources = resources
        prelude = None
        if origin.prelude is not None:  # a fork: first the parent's steps after the one the checkpoint holds
            parent, lo, hi = origin.prelude
            prelude = {"run": parent, "from_seq": lo, "to_seq": hi, "state": state_at(self.log, parent, lo),
                       "events": list(self.log.events(parent, start=lo + 1, end=hi))}
        note.update(_redo(runner, resources, origin.seq, prelude))
        return note

    def _choose(self, runner: Runner, load: Callable[[Ref], Any]) -> tuple[Ref | None, Any, Origin,
                                                                         list[dict[str, Any]]]:
        """The checkpoint to restore from: (its Ref, what ``load`` made of it, where its state is in the log (see
        :func:`~fsmtrain.train.history.origin_of`), the ones skipped and why).

        The Refs the state names come first (newest, kept, best); if none verifies — damaged files, or a log
        restored from a backup or left by a power loss beside a folder that has moved on — every other
        checkpoint the run ever committed, newest first; then the start of the run (redo every step: the
        same result, at the cost of recomputing it), unless the run began from a checkpoint (a fork).
        """
        assert runner.run_id is not None
        skipped: list[dict[str, Any]] = []
        tried: set[Ref] = set()
        candidates = A.kept_refs(runner.state)
        for ref in candidates:
            tried.add(ref)
            try:
                got = load(ref)
                return ref, got, origin_of(self.log, runner.run_id, ref), skipped
            except CheckpointError as e:
                skipped.append({"checkpoint": ref.path, "problem": str(e)})
        if not candidates:
            return None, None, Origin(1), skipped  # no checkpoint yet: from the seeded, freshly built resources
        for seq, ref in committed_checkpoints(self.log, runner.run_id, runner.seq):
            if ref in tried:
                continue
            tried.add(ref)
            try:
                return ref, load(ref), Origin(seq), skipped
            except CheckpointError as e:
                skipped.append({"checkpoint": ref.path, "problem": str(e)})
        if A.kept_refs(_start_state(self.log, runner.run_id)):
            problems = "; ".join(s["problem"] for s in skipped)
            raise CheckpointError(f"run {runner.run_id} has no usable checkpoint left, and it began from a "
                                  f"checkpoint (a fork), so it cannot be redone from its start: {problems}")
        return None, None, Origin(1), skipped

    def _restore_distributed(self, runner: Runner) -> dict[str, Any]:
        """:meth:`_restore` on every rank of a distributed run: the log's rank finds the checkpoint and the steps
        to redo and sends them (bytes and events: the other ranks need neither the log nor the files)."""
        d = self.dist
        assert runner.run_id is not None
        plan: dict[str, Any] = {}
        blob: bytes | None = None
        if d.writer:
            try:
                plan["start"] = _start_state(self.log, runner.run_id).to_json()
                ref, got, origin, skipped = self._choose(runner, lambda r: self._payload(r) if is_sharded_ref(r)
                                                         else read_verified(self.artifacts, self._here(r)))
                after = origin.seq
                if ref is not None:
                    plan["checkpoint"] = ref.path
                    if isinstance(got, dict):  # a sharded checkpoint: every rank reads its own shards
                        plan["sharded"] = got
                    else:
                        blob = got
                plan.update(skipped=skipped, after=after, state=state_at(self.log, runner.run_id, after).to_json(),
                            events=list(self.log.events(runner.run_id, start=after + 1, end=runner.seq)))
                if origin.prelude is not None:  # a fork: the parent's steps first
                    parent, lo, hi = origin.prelude
                    plan["prelude"] = {"run": parent, "from_seq": lo, "to_seq": hi,
                                       "state": state_at(self.log, parent, lo).to_json(),
                                       "events": list(self.log.events(parent, start=lo + 1, end=hi))}
            except BaseException as e:
                plan = {"error": f"{type(e).__name__}: {e}"}
        plan = d.agree(plan)
        if "error" in plan:
            raise RestoreFailed(f"restoring run {runner.run_id} on the log's rank failed: {plan['error']}")
        bytes_too = "checkpoint" in plan and "sharded" not in plan
        data = d.broadcast_bytes(blob) if bytes_too else None
        resources = self._build(State.from_json(plan["start"]), runner.run_id)
        note: dict[str, Any] = {"world_size": d.world}
        if "checkpoint" in plan:
            payload = plan["sharded"] if data is None else \
                torch.load(io.BytesIO(data), map_location=self.map_location or d.device, weights_only=True)
            self._apply(resources, payload)
            note["checkpoint"] = plan["checkpoint"]
            was = payload.get("world_size") if data is not None else payload["manifest"]["world_size"]
            if was is not None and was != d.world:
                note["world_size_changed"] = {"from": was, "to": d.world, "bit_identical": False}
        if plan["skipped"]:
            note["skipped"] = plan["skipped"]
            note["fallback"] = "an earlier checkpoint" if "checkpoint" in plan else "the start"
        runner.resources = resources
        prelude = plan.get("prelude")
        if prelude:
            prelude = {**prelude, "state": State.from_json(prelude["state"])}
        note.update(_redo(runner, resources, plan["after"], prelude, events=plan["events"],
                          state=State.from_json(plan["state"])))
        return note

    def _here(self, ref: Ref) -> Ref:
        """``ref``, its file fetched from the log's home when this machine lacks it (a new machine after a
        preemption); a home that cannot give it is a :class:`CheckpointError` (the restore then falls back)."""
        home = self._log.home if self._log is not None else None
        if home is None or (self.artifacts / ref.path).exists():
            return ref
        try:
            home.fetch(self.artifacts, ref.path, ref.sha256, ref.size)
        except FsmtrainError as e:
            raise CheckpointError(f"checkpoint {ref.path}: {e}") from None
        except Exception as e:
            raise CheckpointError(f"checkpoint {ref.path} is not on this machine, and its home {home.url} cannot "
                                  f"give it ({type(e).__name__}: {e})") from None
        return ref


def _redo(runner: Runner, resources: Resources, after: int, prelude: Mapping[str, Any] | None,
          events: Any = None, state: State | None = None) -> dict[str, Any]:
    """Redo the steps after ``after`` (``events``/``state``: given, or read from the log), preceded for a fork by
    its parent's steps (``prelude``: ``run``, ``from_seq``, ``to_seq``, the ``state`` then, the ``events``), redone
    as they ran, in the parent's name; what the restore's note records of it."""
    steps, mismatches = 0, []
    note: dict[str, Any] = {}
    if prelude:
        resources.run_id = prelude["run"]  # (a checkpoint among the parent's steps names the parent's files)
        try:
            first = runner.redo(prelude["from_seq"], events=prelude["events"], state=prelude["state"])
        finally:
            resources.run_id = runner.run_id
        steps, mismatches = first.steps, first.mismatches
        note["prelude"] = {k: prelude[k] for k in ("run", "from_seq", "to_seq")}
    redo = runner.redo(after, events=events, state=state)
    note.update(from_seq=after, redone=steps + redo.steps)
    if mismatches or redo.mismatches:
        note["mismatches"] = (mismatches + redo.mismatches)[:10]
    return note


def _start_state(log: EventLog, run_id: int) -> State:
    """The run's state at its start: what the factory was given when the run began.

    Rebuilding from it (after the same seeding) gives the resources the run
    started with, whatever hyperparameters later steps changed in state.
    """
    ev = next(log.events(run_id, end=1))
    return State(ev.snapshot or {})
