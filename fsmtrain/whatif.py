"""What-if: evaluate termination conditions against recorded runs, offline.

For each run, the state at the end of every epoch is rebuilt from the log (the
epoch ends with the last step before the ``epoch`` counter moves on, where a
training machine evaluates its stop condition) together with the run's active
time then.  Each condition is evaluated on those states in order, and the
first epoch at which it fires is where it would have stopped the run.  Nothing
is written and no action runs; conditions are pure functions of the history.
``fsmtrain whatif`` prints what :func:`whatif` returns.
"""

from __future__ import annotations

import contextlib
import gc
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import attrs

from .conditions import Condition, _Composite, _Not
from .errors import InvalidInput, MetricNotRecorded, RunNotFound
from .log import EventLog
from .state import Seq, State, freeze, loads, loads_plain
from .stopping import MetricCondition, _better
from .table import table

__all__ = ["Outcome", "RunRecord", "WhatIf", "epoch_states", "whatif"]

_PLAIN = frozenset({float, int, str, bool, type(None)})


@attrs.frozen
class RunRecord:
    """What a run recorded: its epochs, its best ``metric`` value, and what stopped it (if anything did)."""

    run_id: int
    machine: str
    status: str
    epochs: int
    best: float | None
    best_epoch: int | None
    stopped_by: str | None
    reason: str | None


@attrs.frozen
class Outcome:
    """One condition on one run: where it would have stopped, why, and what that would have cost."""

    run_id: int
    condition: str
    stopped_at: int | None  # the epoch at which it fires; None: not within the recorded epochs
    reason: str
    epochs_run: int
    epochs_saved: int
    best_by_then: float | None
    best_epoch_by_then: int | None
    best: float | None
    best_epoch: int | None

    @property
    def kept_best(self) -> bool:
        """The run's best value had been reached by the time this condition stopped it."""
        return self.best_epoch is None or (self.best_epoch_by_then is not None and self.best_epoch_by_then == self.best_epoch)

    @property
    def gap(self) -> float | None:
        """How much worse the best value by then is than the run's overall best (0 when kept; >= 0)."""
        if self.best is None or self.best_by_then is None:
            return None
        return abs(self.best_by_then - self.best)


@attrs.frozen
class Summary:
    """One condition over all the runs compared."""

    condition: str
    runs: int
    fired: int
    epochs_run: int
    epochs_saved: int
    kept_best: int
    mean_gap: float | None


@attrs.frozen
class WhatIf:
    """The result of :func:`whatif`: one :class:`Outcome` per run and condition, in order."""

    metric: str
    mode: str
    counter: str
    conditions: list[str]
    runs: list[RunRecord]
    rows: list[Outcome]
    skipped: list[tuple[int, str]] = attrs.field(factory=list)  # runs left out when none were named, and why

    def summary(self) -> list[Summary]:
        """Per condition, over all runs: how often it fired, epochs saved, best kept, mean gap to best."""
        out = []
        for name in self.conditions:
            rows = [r for r in self.rows if r.condition == name]
            gaps = [r.gap for r in rows if r.gap is not None]
            out.append(Summary(name, len(rows), sum(r.stopped_at is not None for r in rows),
                               sum(r.epochs_run for r in rows), sum(r.epochs_saved for r in rows),
                               sum(r.kept_best for r in rows), sum(gaps) / len(gaps) if gaps else None))
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (what ``fsmtrain whatif --json`` prints)."""
        return {"metric": self.metric, "mode": self.mode, "counter": self.counter, "conditions": self.conditions,
                "runs": [attrs.asdict(r) for r in self.runs],
                "rows": [{**attrs.asdict(r), "kept_best": r.kept_best, "gap": r.gap} for r in self.rows],
                "summary": [attrs.asdict(s) for s in self.summary()],
                "skipped": [{"run_id": r, "why": why} for r, why in self.skipped]}

    def to_text(self, *, rows: bool = True) -> str:
        """Side-by-side tables: per run (unless ``rows=False``), then a summary when several runs are compared."""
        out: list[str] = []
        by_run: dict[int, list[Outcome]] = {}
        for r in self.rows:
            by_run.setdefault(r.run_id, []).append(r)
        if rows:
            for run in self.runs:
                if run.status in ("stopped", "pruned"):
                    stop = f"{run.status.upper()} from outside before any stop condition fired"
                else:
                    stop = f"stopped by {run.reason}" if run.reason else f"{run.status}, no stop decision recorded"
                out.append(f"run {run.run_id} ({run.machine}): {_count(run.epochs, self.counter)}, {stop}; "
                           f"best {self.metric} {_v(run.best)} at {self.counter} {run.best_epoch}")
                out.append(_indent(table(
                    ["condition", f"stops at {self.counter}", f"best {self.metric} by then", "saved", "reason"],
                    [[o.condition, "-" if o.stopped_at is None else o.stopped_at,
                      f"{_v(o.best_by_then)} ({self.counter} {o.best_epoch_by_then})"
                      + ("" if o.kept_best else f", {_v(o.gap)} worse"),
                      o.epochs_saved, _clip(o.reason, 110)] for o in by_run.get(run.run_id, [])])))
                out.append("")
        if len(self.runs) > 1 or not rows:
            out.append(f"summary over {len(self.runs)} run(s), {self.metric} ({self.mode}):")
            out.append(_indent(table(
                ["condition", "fired in", _count("", self.counter).strip() + " saved", "best kept in",
                 f"mean gap to best {self.metric}"],
                [[s.condition, f"{s.fired}/{s.runs}",
                  f"{s.epochs_saved}/{s.epochs_run} ({100 * s.epochs_saved / max(1, s.epochs_run):.0f}%)",
                  f"{s.kept_best}/{s.runs}", _v(s.mean_gap)] for s in self.summary()])))
        if self.skipped:
            out.append(f"skipped {len(self.skipped)} ended run(s) that do not record what the conditions read "
                       f"(runs {', '.join(str(r) for r, _ in self.skipped[:10])}{', ...' if len(self.skipped) > 10 else ''})")
        return "\n".join(out).rstrip() + "\n"


COMPARED = ("finished", "stopped", "pruned")
"""The statuses of the runs ``whatif`` compares when none are named."""


def _v(x: float | None) -> str:
    return "-" if x is None else f"{x:.6g}"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


# -- reading the epochs back ----------------------------------------------------------------
@attrs.frozen
class _History:
    """A run's end-of-epoch states, rebuilt from its events (the lists share storage across epochs)."""

    run_id: int
    epochs: list[int]
    states: list[State]
    lists: dict[str, list[Any]]  # every value each list key ever held, by the end of the run
    keys: frozenset[str]  # the needed keys the run's state ever had
    stopped_by: str | None
    reason: str | None


def _relevant_actions(log: EventLog, ids: Sequence[int], needed: frozenset[str]) -> list[str] | None:
    """The actions that declare writing a needed key, from the machine descriptions in the runs' start events.

    None when a run has no description (a log written before they were recorded, or a fork).
    """
    found: set[str] = set()
    cache: dict[str, list[str] | None] = {}
    n = 0
    for (info,) in log.conn.execute(
            f"SELECT info FROM events WHERE run_id IN ({','.join('?' * len(ids))}) AND seq = 1", list(ids)):
        if info not in cache:
            described = loads_plain(info).get("machine") if info and '"machine":' in info else None
            cache[info] = None if described is None else [
                a for a, d in described["actions"].items() if needed.intersection(d["writes"])]
        names = cache[info]
        if names is None:
            return None
        found.update(names)
        n += 1
    return sorted(found) if n == len(ids) else None


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many small acyclic objects.

    Building the end-of-epoch states of 1,000 runs allocates ~10^6 objects that
    all stay alive; the collector would traverse them again and again (about
    15% of whatif's time) and find nothing, since none of them form cycles.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _histories(log: EventLog, run_ids: Sequence[int], needed: frozenset[str], counter: str) -> list[_History]:
    """One pass over the runs' events, decoding only the updates that can hold a needed key."""
    out: list[_History] = []
    chunk = 400  # under SQLite's parameter limit
    with _no_gc():
        for lo in range(0, len(run_ids), chunk):
            ids = list(run_ids[lo:lo + chunk])
            writers = _relevant_actions(log, ids, needed)
            got, changed = _read(log, ids, needed, counter, writers)
            if changed:  # a resume changed the machine: its new actions may write more keys
                again = dict((h.run_id, h) for h in _read(log, changed, needed, counter, None)[0])
                got = [again.get(h.run_id, h) for h in got]
            out.extend(got)
    return out


def _read(log: EventLog, ids: list[int], needed: frozenset[str], counter: str,
          writers: list[str] | None) -> tuple[list[_History], list[int]]:
    # Active time as replay.active_time counts it: step, error and failed events (codes 0, 1, 3).
    # Canonical JSON writes a key as "key": with no space, so this finds every update that sets
    # or appends a needed key (and some that only nest one: that costs a decode, nothing else).
    mentions = re.compile("|".join(re.escape(f'"{k}":') for k in sorted(needed))).search
    decode = loads_plain  # Refs stay plain dicts: no condition over metrics needs them as Refs
    # With `writers`, the updates of steps by other actions are not even fetched.  Few columns,
    # because reading them dominates: code 0 = a step whose transitions were evaluated, 1 = a
    # terminal step, 2 = start, 3 = error/failed (active time), 4 = other.  `extra` is the start
    # snapshot, a non-default transition decision (the last says what stopped the run), or the
    # info of a resume that changed the machine.
    updates_sql = "updates" if writers is None else f"CASE WHEN action IN ({','.join('?' * len(writers))}) THEN updates END"
    rows = log.conn.execute(
        "SELECT run_id, CASE kind WHEN 'step' THEN next IS NULL WHEN 'start' THEN 2 WHEN 'error' THEN 3 "
        f"WHEN 'failed' THEN 3 ELSE 4 END, time, {updates_sql}, CASE WHEN kind = 'start' THEN snapshot "
        "WHEN kind = 'step' AND next IS NOT NULL AND instr(info, '\"condition\":\"default\"') = 0 THEN info "
        "WHEN kind = 'resume' AND instr(info, '\"changed_from\"') > 0 THEN info END "
        f"FROM events WHERE run_id IN ({','.join('?' * len(ids))}) ORDER BY run_id, seq", [*(writers or ()), *ids])
    out: list[_History] = []
    changed: list[int] = []
    b: _Builder | None = None
    current = None
    active = last_t = 0.0
    for run_id, code, t, updates, extra in rows:
        if run_id != current:
            if b is not None:
                out.append(b.finish())
            b = _Builder(run_id, counter, needed)
            current, active, last_t = run_id, 0.0, t
        assert b is not None
        if code < 2:  # a step
            active += t - last_t
            if updates is not None and mentions(updates):
                b.apply(decode(updates))
            if code == 0:
                b.elapsed = active
                if extra is not None:  # (the last decision a condition took: steps after it may follow defaults)
                    b.decision = extra
        elif code == 2:
            b.start(decode(extra))
        elif code == 3:
            active += t - last_t
        elif extra is not None and writers is not None:
            changed.append(run_id)
        last_t = t
    if b is not None:
        out.append(b.finish())
    return out, changed


class _Builder:
    __slots__ = ("counter", "decision", "elapsed", "epoch", "epochs", "lists", "needed", "points", "run_id", "scalars")

    def __init__(self, run_id: int, counter: str, needed: frozenset[str]) -> None:
        self.run_id, self.counter, self.needed = run_id, counter, needed
        self.scalars: dict[str, Any] = {}
        self.lists: dict[str, list[Any]] = {}
        self.epoch: Any = None  # the counter's value once a step has set it
        self.epochs: list[int] = []
        self.points: list[tuple[dict[str, Any], Sequence[tuple[str, list[Any], int]], float]] = []
        self.elapsed = 0.0
        self.decision: str | None = None

    def start(self, snapshot: dict[str, Any]) -> None:
        for k in self.needed:
            if k in snapshot:
                self._set(k, snapshot[k])

    def _set(self, k: str, v: Any) -> None:
        if isinstance(v, list):
            self.lists[k] = [freeze(x) for x in v]  # a new list: earlier epochs keep the old one
            self.scalars.pop(k, None)
        else:
            self.scalars[k] = freeze(v)
            self.lists.pop(k, None)

    def apply(self, logged: dict[str, Any]) -> None:
        sets = logged.get("set")
        if sets is not None:
            c = self.counter
            if c in sets and sets[c] != self.epoch:
                self._close()
                self.epoch = sets[c]
            for k in self.needed.intersection(sets):
                self._set(k, sets[k])
        appends = logged.get("append")
        if appends is not None:
            lists = self.lists
            for k in self.needed.intersection(appends):
                items = appends[k]
                cur = lists.get(k)
                if cur is None:
                    cur = lists[k] = []
                    self.scalars.pop(k, None)
                if len(items) == 1 and type(items[0]) is float:
                    cur.append(items[0])
                else:
                    cur.extend(x if type(x) in _PLAIN else freeze(x) for x in items)

    def _close(self) -> None:
        """The epoch in progress has ended: remember the state it ended with."""
        if self.epoch is None:
            return
        lists = self.lists
        self.points.append((self.scalars.copy(), [(k, v, len(v)) for k, v in lists.items()] if lists else (),
                            self.elapsed))
        self.epochs.append(self.epoch)

    def finish(self) -> _History:
        self._close()
        states = []
        share, at = Seq._share, State._at
        for data, lists, elapsed in self.points:  # data: the point's own copy of the scalars
            for k, items, n in lists:
                data[k] = share(items, n)
            states.append(at(data, elapsed))
        stopped_by = reason = None
        if self.decision is not None:
            d = loads(self.decision)
            stopped_by, reason = d.get("condition"), d.get("reason")
        keys = frozenset(self.scalars) | frozenset(self.lists)
        return _History(self.run_id, self.epochs, states, self.lists, keys, stopped_by, reason)


def epoch_states(log: EventLog, run_id: int, *, keys: Iterable[str] | None = None, counter: str = "epoch") -> list[State]:
    """The state at the end of each epoch of ``run_id`` (only ``keys`` plus the counter, default all), with its active time.

    Feeding these to a condition in order is how :func:`whatif` decides where it
    would have stopped the run.
    """
    log.run(run_id)  # RunNotFound
    if keys is None:
        keys = _all_keys(log, run_id)
    return _histories(log, [run_id], frozenset([*keys, counter]), counter)[0].states


def _all_keys(log: EventLog, run_id: int) -> set[str]:
    from .replay import state_at

    return set(state_at(log, run_id))


# -- the comparison ---------------------------------------------------------------------------
def _metric_conditions(c: Condition) -> Iterable[MetricCondition]:
    if isinstance(c, MetricCondition):
        yield c
    elif isinstance(c, _Composite):
        for p in c.parts:
            yield from _metric_conditions(p)
    elif isinstance(c, _Not):
        yield from _metric_conditions(c.inner)


def whatif(log: EventLog, conditions: Sequence[Condition | str], *, runs: Sequence[int] | None = None,
           metric: str | None = None, mode: str | None = None, counter: str = "epoch") -> WhatIf:
    """Evaluate each condition against each run's recorded history; see :class:`WhatIf`.

    ``conditions`` are Conditions or expressions (:func:`fsmtrain.expr.parse`).
    ``runs`` defaults to every run that ended with its history complete: finished, and stopped or
    pruned from outside (a study's pruned trials: their histories are real, and what one asks "what if"
    about; their records say so).  ``metric``/``mode`` choose the
    value whose best is reported; by default, the metric of the first condition
    that watches one (and its mode), else ``val_loss`` (min).
    """
    from .expr import parse

    if not conditions:
        raise InvalidInput("whatif needs at least one condition, e.g. early_stopping(val_loss, patience=3)")
    conds = [parse(c) if isinstance(c, str) else c for c in conditions]
    for c in conds:
        if not isinstance(c, Condition):
            raise InvalidInput(f"whatif takes Conditions or expressions, got {type(c).__name__} {c!r}")
    if mode is not None and mode not in ("min", "max"):
        raise InvalidInput(f"mode must be 'min' or 'max', got {mode!r}")
    if metric is None:
        first = next((m for c in conds for m in _metric_conditions(c)), None)
        metric = first.metric if first is not None else "val_loss"
        if mode is None and first is not None:
            mode = first.mode
    if mode is None:
        mode = next((m.mode for c in conds for m in _metric_conditions(c) if m.metric == metric), "min")
    if runs is None:
        run_ids = [r.id for r in log.runs() if r.status in COMPARED]
    else:
        run_ids = list(dict.fromkeys(runs))
        known = {r for (r,) in log.conn.execute("SELECT id FROM runs")}
        missing = [r for r in run_ids if r not in known]
        if missing:
            raise RunNotFound(f"run {missing[0]} does not exist in {log.path} ({len(known)} run(s) in the log; "
                              "list them with `fsmtrain replay LOG`)")
    needed = frozenset({counter, metric, *(k for c in conds for k in c.keys)})
    histories = _histories(log, run_ids, needed, counter)
    infos = {r.id: r for r in log.runs()} if run_ids else {}
    records, rows = [], []
    skipped: list[tuple[int, str]] = []
    first_problem: MetricNotRecorded | None = None
    better = _better(mode)
    for h in histories:
        try:
            _check_recorded(log, h, conds, metric, counter)
        except MetricNotRecorded as problem:
            if runs is not None:  # a run the user named: say what is wrong with it
                raise
            # Comparing every ended run: one of another kind (no such metric) is left out.
            skipped.append((h.run_id, str(problem)))
            first_problem = first_problem or problem
            continue
        values = h.lists[metric]
        # For each evaluation, the epoch it was made in; and the best so far after each evaluation.
        epoch_of: list[int] = []
        for e, s in zip(h.epochs, h.states, strict=True):
            epoch_of.extend([e] * (len(s[metric]) - len(epoch_of)))
        best_i: list[int] = []
        bi = -1
        for i, v in enumerate(values):
            if isinstance(v, (int, float)) and math.isfinite(v) and (bi < 0 or better(v, values[bi])):
                bi = i
            best_i.append(bi)

        def best_at(n: int, values: Sequence[Any] = values, epoch_of: list[int] = epoch_of,
                    best_i: list[int] = best_i) -> tuple[float | None, int | None]:
            i = best_i[n - 1] if n > 0 else -1
            return (None, None) if i < 0 else (values[i], epoch_of[i] if i < len(epoch_of) else None)

        overall, overall_epoch = best_at(len(values))
        info = infos[h.run_id]
        last = h.epochs[-1] if h.epochs else 0
        records.append(RunRecord(h.run_id, info.machine, info.status, last, overall, overall_epoch,
                                 h.stopped_by if info.status == "finished" else None,
                                 h.reason if info.status == "finished" else None))
        for c in conds:
            scan = c.scanner()
            fired_at: int | None = None
            state: State | None = None
            for e, state in zip(h.epochs, h.states, strict=True):
                if scan.fires(state):
                    fired_at = e
                    break
            if state is None:
                reason = f"no {counter} recorded"
            elif fired_at is None:
                reason = f"did not fire in {_count(last, counter)} (last: {scan.reason()})"
            else:
                reason = scan.reason()
            n = len(state[metric]) if state is not None else 0
            by_then, by_then_epoch = best_at(n)
            rows.append(Outcome(h.run_id, c.name, fired_at, reason, last,
                                0 if fired_at is None else last - fired_at, by_then, by_then_epoch,
                                overall, overall_epoch))
    if skipped and not records:
        assert first_problem is not None
        raise MetricNotRecorded(f"no ended run records what the conditions read; e.g. {first_problem}")
    return WhatIf(metric, mode, counter, [c.name for c in conds], records, rows, skipped)


def _check_recorded(log: EventLog, h: _History, conds: Sequence[Condition], metric: str, counter: str) -> None:
    def has() -> str:
        return ", ".join(sorted(_all_keys(log, h.run_id)))

    if not h.epochs:
        raise MetricNotRecorded(f"run {h.run_id} never set `{counter}` (its state has: {has()}): whatif evaluates "
                                f"conditions once per {counter}; name the run's epoch counter with --counter")
    for c in conds:
        for k in sorted(c.keys):
            if k not in h.keys:
                raise MetricNotRecorded(f"condition `{c.name}` reads `{k}`, which run {h.run_id} never recorded "
                                        f"(its state has: {has()})")
    if metric not in h.lists:
        what = "never recorded" if metric not in h.keys else "does not hold a list of values (one per evaluation) in"
        raise MetricNotRecorded(f"run {h.run_id} {what} `{metric}` (its state has: {has()}); "
                                "choose the metric to compare with --metric")


def _count(n: Any, counter: str) -> str:
    """``n`` and the counter's name, plural where it needs one ("1 epoch", "207 epochs", "207 steps")."""
    return f"{n} {counter}" if n == 1 or counter.endswith("s") else f"{n} {counter}s"
