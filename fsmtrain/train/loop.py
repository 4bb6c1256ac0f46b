"""The usual training loop as a machine: :func:`training_machine` and its checkpoint/evaluation schedules.

Its one job is building the graph ``train → evaluate → checkpoint → (stop?
finish : train)`` (below the epoch too, in chunks of optimizer steps, and with
an optional human review gate) from the ready-made actions of
:mod:`fsmtrain.train.actions`, with the initial state it needs.  Running it is
the :class:`~fsmtrain.train.Trainer`'s job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Union

from ..actions import gate
from ..conditions import Condition, default, when
from ..errors import InvalidDefinition
from ..machine import Machine
from . import actions as A

__all__ = ["DEFAULTS", "Schedule", "training_machine"]

DEFAULTS: dict[str, Any] = {"seed": 0, "epoch": 0, "steps": 0, "train_loss": [], "learning_rate": [], "checkpoint": None,
                            "checkpoints": [],
                            "best": None, "weights_sha256": None}


Schedule = Union[int, str]
_UNITS = {"step": "steps", "steps": "steps", "chunk": "chunks", "chunks": "chunks", "epoch": "epochs",
          "epochs": "epochs"}


def _schedule(spec: Any, what: str, problems: list[str]) -> tuple[str, int] | None:
    """``3`` (chunks), ``"500 steps"``, ``"2 chunks"``, ``"epoch"`` / ``"2 epochs"`` -> (unit, n)."""
    if isinstance(spec, bool):
        spec = None
    if isinstance(spec, int):
        if spec >= 1:
            return "chunks", spec
    elif isinstance(spec, str):
        parts = spec.split()
        if len(parts) == 1 and parts[0] in _UNITS:
            return _UNITS[parts[0]], 1
        if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) >= 1 and parts[1] in _UNITS:
            return _UNITS[parts[1]], int(parts[0])
    problems.append(f"{what} must be a number of chunks (an int >= 1) or a text such as '500 steps', '2 chunks' or "
                    f"'epoch', got {spec!r}")
    return None


def _due(unit: str, n: int, at: str) -> Condition:
    """Fires when the schedule ``every n <unit>`` is due after the training action that just ran."""
    if unit == "chunks":
        return Condition(lambda s: (s.get("chunks") or 0) % n == 0, keys=["chunks"], name=f"every({n} chunks)")
    if unit == "epochs":
        return Condition(lambda s: not (s.get("offset") or 0) and s["epoch"] > 0 and s["epoch"] % n == 0,
                         keys=["offset", "epoch"], name=f"every({n} epochs)")
    return Condition(lambda s: s["steps"] // n > (s.get(at) or 0) // n, keys=["steps", at], name=f"every({n} steps)")


def training_machine(stop: Condition, *, name: str = "train", monitor: str | None = "val_loss", mode: str = "min",
                     keep_last: int = 3, checkpoint_every: Schedule = 1, metrics: Mapping[str, A.Metric] | None = None,
                     initial: Mapping[str, Any] | None = None, review: bool = False, every: Any = None,
                     accumulate: Any = 1, evaluate_every: Schedule | None = None,
                     checkpoints: Any = "auto") -> Machine:
    """The usual loop as a machine: ``train_epoch → evaluate → checkpoint → (stop? finish : train_epoch)``.

    ``stop`` is any condition over the state (see :mod:`fsmtrain.stopping`).
    With ``checkpoint_every=n`` the checkpoint runs after every n-th epoch and
    after the last.  ``monitor``/``mode`` choose the best checkpoint.  With
    ``review=True``, a stopped run waits at a human gate, ``review`` (inputs
    ``decision``: go / no-go, optional ``comment``): go exports the best model
    (``export``, see :func:`~fsmtrain.train.actions.export_best`) then finishes;
    no-go finishes without exporting.  ``accumulate=k`` sums the gradients of k
    batches per optimizer step (:func:`~fsmtrain.train.actions.train_steps`).
    ``metrics`` maps a name to ``fn(outputs, targets)`` returning the batch's mean, computed by ``evaluate``
    on ``val_data`` and appended as ``val_<name>`` (default ``{"acc": accuracy}``, left out with a warning
    where the outputs are not a classifier's; ``metrics={}`` for none).

    **Below the epoch**: ``every=N`` trains in chunks of N optimizer steps
    (``train_steps``; a chunk also ends at the epoch's end), each a committed,
    resumable step, and ``evaluate_every`` / ``checkpoint_every`` say when the
    evaluation and the checkpoint run: a number of chunks (an int), or a text,
    ``"500 steps"`` (at the first chunk boundary at or after each multiple),
    ``"2 chunks"``, ``"epoch"`` / ``"3 epochs"`` (at epoch ends).  Defaults:
    evaluate at each epoch's end, checkpoint after every chunk.  The machine is
    ``train_steps → (evaluation due or stop? evaluate) → (checkpoint due or stop?
    checkpoint) → (stop? finish : train_steps)``: a run that stops is evaluated
    and checkpointed at its end.  ``every`` and ``accumulate``
    may be ``setting("key")`` (the run's state says; ``None`` there trains whole
    epochs).

    ``checkpoints="async"``: each checkpoint but the last is written in the background while training goes on
    (``checkpoint(async_=True)``; its Ref is committed by the first step after the file is durable); the last
    (where ``stop`` holds) is synchronous.  ``"sync"``: the step commits once the file is durable.  ``"auto"``
    (default): asynchronous where the model and optimizer hold at least 64 MiB of tensors (where it measures
    better: ``benchmarks/checkpoints.py``), else synchronous.  ``setting("key")``: the run's state says.
    """
    problems: list[str] = []
    if not isinstance(stop, Condition):
        problems.append(f"stop must be a Condition (e.g. max_epochs(20)), got {type(stop).__name__}")
    from ..stopping import Setting

    if not isinstance(checkpoints, Setting) and checkpoints not in ("sync", "async", "auto"):
        problems.append(f"checkpoints must be 'auto', 'sync', 'async' or setting('key'), got {checkpoints!r}")
    chunked = every is not None
    ckpt = _schedule(checkpoint_every, "checkpoint_every", problems)
    ev = _schedule(evaluate_every if evaluate_every is not None else ("epoch" if chunked else 1), "evaluate_every",
                   problems)
    if not chunked and ev is not None and ev != ("chunks", 1) and ev != ("epochs", 1):
        problems.append("evaluate_every needs every=N (chunks below the epoch); without it the evaluation runs after "
                        "every epoch")
    if not chunked and ckpt is not None and ckpt[0] == "steps":
        problems.append("checkpoint_every in steps needs every=N (chunks below the epoch)")
    try:
        train = A.train_steps(every, accumulate=accumulate) if chunked else A.train_epoch(accumulate=accumulate)
    except InvalidDefinition as e:
        problems.extend(e.problems)
        train = None
    if problems:
        raise InvalidDefinition(f"training machine `{name}`", problems)
    assert train is not None and ckpt is not None and ev is not None
    ev_at = "evaluated_at" if chunked and ev[0] == "steps" else None
    ck_at = "checkpointed_at" if chunked and ckpt[0] == "steps" else None
    acts = [train, A.evaluate(metrics, at=ev_at), A.checkpoint(monitor, mode=mode, keep_last=keep_last, at=ck_at,
                                                                async_=checkpoints if isinstance(checkpoints, Setting)
                                                                else {"async": True, "sync": False}.get(checkpoints, "auto"),
                                                                sync_when=stop),
            A.finish()]
    written = sorted({k for a in acts for k in a.writes})
    if monitor is not None and monitor not in written:
        raise InvalidDefinition(f"training machine `{name}`", [
            f"monitor `{monitor}` is written by no action (metrics written: {', '.join(written)})"])
    t = train.name
    init = {**DEFAULTS, **{k: [] for k in acts[1].writes if k != ev_at},
            **({"checkpoint_pending": None} if checkpoints != "sync" else {}), **(initial or {})}
    if chunked:
        init.update({"offset": 0, "chunks": 0, **({ev_at: 0} if ev_at else {}),
                     **({ck_at: 0} if ck_at else {})})
        init.update(initial or {})
        eval_due, ckpt_due = _due(*ev, ev_at or ""), _due(*ckpt, ck_at or "")
        body: list[tuple[str, str] | tuple[str, str, Condition]] = [
            (t, "evaluate", eval_due | stop), (t, "checkpoint", ckpt_due), (t, t),
            ("evaluate", "checkpoint", ckpt_due | stop), ("evaluate", t)]
    elif ckpt == ("chunks", 1) or ckpt == ("epochs", 1):
        body = [(t, "evaluate"), ("evaluate", "checkpoint")]
    else:
        n_ckpt = ckpt[1]
        due = Condition(lambda s: s["epoch"] % n_ckpt == 0, keys=["epoch"], name=f"every({n_ckpt})")
        body = [(t, "evaluate"), ("evaluate", "checkpoint", stop | due), ("evaluate", t, default)]
    if review:
        acts += [gate("review"), A.export_best()]
        init.update(decision=None, comment=None, exported=None)
        ending: list[tuple[str, str] | tuple[str, str, Condition]] = [
            ("checkpoint", "review", stop), ("checkpoint", t),
            ("review", "export", when(decision="go")), ("review", "finish"), ("export", "finish")]
    else:
        ending = [("checkpoint", "finish", stop), ("checkpoint", t)]
    return Machine(name, acts, [*body, *ending], entry=t, terminal=["finish"], initial=init)
