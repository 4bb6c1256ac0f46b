"""Reading a log for display (``fsmtrain ui``): tolerant of whatever a log holds, cheap for long runs and many runs.

A log edited outside fsmtrain can hold anything: text where numbers belong, NaN, JSON no
writer makes, an unknown event kind.  These readers never raise on such data (a column
that cannot be decoded becomes a :class:`Broken` saying why); pages show what they can.
A listing never folds a run's state: the runs list reads each run's last event, and a
run's ``best`` record or one metric's history from its last snapshot and the updates
after it.
"""

from __future__ import annotations

import math
import re
import time
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from .errors import CorruptLog, RunNotFound
from .log import MAX_ID, EventLog, decode, status_of
from .plot import is_number
from .state import Ref, dumps, loads

__all__ = ["Best", "Broken", "Row", "RunRow", "StepAxes", "as_dict", "as_list", "best_of", "best_record",
           "chart_mode", "clip", "csv_cell", "decoded", "description_of", "ema", "fmt_duration", "fmt_num",
           "fmt_time", "get_run", "is_history", "list_runs", "metrics_of", "mode_of", "monitored_best", "refs_of",
           "rows_of", "series_of", "sort_key", "step_axes", "study_settings", "tags_of"]

_MAX_MODE = re.compile(r"acc|auc|f1|precision|recall|score|iou|map|bleu|r2|reward|return", re.I)
_NO_BEST = re.compile(r"(^|_)(lr|learning_rate|momentum|wd|weight_decay|beta\d?|temperature|grad_norm|epochs?|steps?|"
                      r"time|elapsed|throughput)($|_)", re.I)  # settings and counters: no "best" to mark


def as_dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def as_list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, (list, tuple)) else []


def clip(v: Any, width: int = 200) -> str:
    """Any value as short text (JSON for structures), clipped to ``width``."""
    if isinstance(v, str):
        text = v
    else:
        try:
            text = dumps(v)
        except (TypeError, ValueError, RecursionError):
            text = repr(v)
    return text if len(text) <= width else text[: width - 1] + "…"


def fmt_num(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return clip(v)
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    if isinstance(v, int):
        return str(v)
    return clip(v, 60)


def fmt_time(t: Any) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def fmt_duration(seconds: Any) -> str:
    if not is_number(seconds) or seconds < 0:
        return "?"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400 * 3:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def mode_of(metric: str) -> str:
    """Whether a metric is better high (accuracy, F1, reward, ...) or low (losses, errors): ``"max"`` or ``"min"``."""
    return "max" if _MAX_MODE.search(metric) else "min"


def chart_mode(metric: str) -> str | None:
    """The best point a chart of ``metric`` marks: none for a setting or a counter (a learning rate's minimum is
    not its best)."""
    return None if _NO_BEST.search(metric) else mode_of(metric)


def is_history(v: Any) -> bool:
    """A metric history: a non-empty list holding at least one number."""
    return isinstance(v, (list, tuple)) and bool(v) and any(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)


_STUDY_BOOKKEEPING = frozenset({"milestones", "running"})
"""A study's own lists of numbers (its scheduler's rungs, the trials running): not metrics to chart."""


def metrics_of(state: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The state's metric histories (lists holding numbers), less a study's bookkeeping."""
    skip = _STUDY_BOOKKEEPING if "trials" in state and "running" in state else frozenset()
    return {str(k): list(state[k]) for k in sorted(state, key=str) if k not in skip and is_history(state[k])}


def refs_of(value: Any, where: str = "") -> list[tuple[str, Ref]]:
    if isinstance(value, Ref):
        return [(where, value)]
    if isinstance(value, dict):
        return [r for k, v in value.items() for r in refs_of(v, f"{where}.{k}" if where else str(k))]
    if isinstance(value, list):
        return [r for i, v in enumerate(value) for r in refs_of(v, f"{where}[{i}]")]
    return []


def ema(values: Sequence[Any], weight: float) -> list[Any]:
    """TensorBoard's smoothing: an exponential moving average, debiased at the start; non-numbers kept out."""
    out: list[Any] = []
    last, n = 0.0, 0
    for v in values:
        if not is_number(v):
            out.append(None)
            continue
        n += 1
        last = last * weight + (1 - weight) * float(v)
        out.append(last / (1 - weight ** n))
    return out


def best_of(values: Sequence[Any], mode: str) -> tuple[float, int] | None:
    best: tuple[float, int] | None = None
    for i, v in enumerate(values):
        if is_number(v) and (best is None or (v < best[0] if mode == "min" else v > best[0])):
            best = (float(v), i + 1)
    return best


def sort_key(v: Any) -> tuple[int, Any]:
    """A sort key for values of any type (a forged column may hold text where numbers belong)."""
    if is_number(v):
        return (0, float(v))
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return (2, 0)
    return (1, str(v))


def csv_cell(v: Any) -> str:
    """A CSV cell; text that a spreadsheet would run as a formula is quoted with a leading '."""
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    text = clip(v, 10_000)
    # (a spreadsheet skips leading spaces and reads full-width ＝＋－＠ as their ASCII forms)
    if text[:1] in ("\t", "\r") or unicodedata.normalize("NFKC", text.lstrip()[:1]) in ("=", "+", "-", "@"):
        text = "'" + text
    if any(c in text for c in ',"\n\r'):
        text = '"' + text.replace('"', '""') + '"'
    return text


# -- reading the log (tolerantly; never one fold per run for a listing) -----------------------------------
_RUNS_SQL = """
    SELECT r.id, r.machine, r.fingerprint, r.created, r.parent_id, r.parent_seq, r.tags,
           e.seq, e.step, e.time, e.kind, e.action, e.next
    FROM runs r JOIN events e ON e.run_id = r.id AND e.seq = (SELECT max(seq) FROM events WHERE run_id = r.id)
"""
_ROWS_SQL = ("SELECT seq, step, time, kind, action, attempt, inputs, updates, next, info, snapshot IS NOT NULL, error "
             "FROM events WHERE run_id = ? AND seq >= ? AND seq <= ? ORDER BY seq DESC")


def tags_of(text: Any) -> dict[str, Any]:
    try:
        tags = loads(text) if isinstance(text, str) else text
    except (ValueError, TypeError, RecursionError):
        return {"(unreadable tags)": clip(text, 80)}
    return tags if isinstance(tags, dict) else {"tags": tags}


class RunRow(NamedTuple):
    """A run and what its last event says (the fields of :class:`fsmtrain.log.RunInfo`, read tolerantly)."""

    id: int
    machine: Any
    fingerprint: Any
    created: Any
    parent_id: Any
    parent_seq: Any
    tags: dict[str, Any]
    last_seq: Any
    steps: Any
    last_time: Any
    last_kind: Any
    last_action: Any
    next: Any

    @property
    def status(self) -> str:
        return status_of(self.last_kind, self.next)


def list_runs(log: EventLog, where: str = "", params: Sequence[Any] = ()) -> list[RunRow]:
    """Every run (or those ``where`` selects) with what its last event says, oldest first."""
    out = []
    for row in log.conn.execute(_RUNS_SQL + where + " ORDER BY r.id", list(params)):
        r = list(row)
        r[6] = tags_of(r[6])
        out.append(RunRow(*r))
    return out


def get_run(log: EventLog, run_id: int) -> RunRow:
    found = list_runs(log, " WHERE r.id = ?", [run_id])
    if not found:
        n = log.conn.execute("SELECT count(*) FROM runs").fetchone()[0]
        raise RunNotFound(f"run {run_id} does not exist in {log.path.name} ({n} run(s) in the log)")
    return found[0]


class Row(NamedTuple):
    """One event as the timeline shows it (JSON columns decoded; a broken one becomes a :class:`Broken`)."""

    seq: Any
    step: Any
    time: Any
    kind: Any
    action: Any
    attempt: Any
    inputs: Any
    updates: Any
    next: Any
    info: Any
    snapshot: bool
    error: Any


class Broken(str):
    """A JSON column that could not be read (its text says why)."""


def decoded(text: Any, where: str) -> Any:
    if text is None:
        return None
    try:
        return decode(text, where)
    except CorruptLog as e:
        return Broken(str(e))


def rows_of(log: EventLog, run_id: int, lo: int, hi: int) -> list[Row]:
    """Events ``lo..hi`` of a run, newest first, without their snapshots."""
    out = []
    for r in log.conn.execute(_ROWS_SQL, (run_id, lo, hi)):
        where = f"run {run_id} event {r[0]}"
        out.append(Row(r[0], r[1], r[2], r[3], r[4], r[5], decoded(r[6], where + " inputs"),
                       decoded(r[7], where + " updates"), r[8], decoded(r[9], where + " info"), bool(r[10]), r[11]))
    return out


def description_of(log: EventLog, run_id: int) -> dict[str, Any] | None:
    """The machine graph the run recorded last: its start event's, or a later resume's with a changed machine."""
    for (text,) in log.conn.execute(
            "SELECT info FROM events WHERE run_id = ? AND (seq = 1 OR (kind = 'resume' AND instr(info, '\"machine\":') > 0)) "
            "ORDER BY seq DESC", (run_id,)):
        info = decoded(text, f"run {run_id} info")
        if isinstance(info, dict) and isinstance(info.get("machine"), dict):
            machine: dict[str, Any] = info["machine"]
            return machine
    return None


def best_record(log: EventLog, run_id: int) -> Any:
    """The run's ``best`` state key (what a checkpoint monitors) without folding: the newest update that sets it
    after the last snapshot, else that snapshot's."""
    row = log.conn.execute("SELECT max(seq) FROM events WHERE run_id = ? AND snapshot IS NOT NULL", (run_id,)).fetchone()
    snap_seq = row[0] if row and isinstance(row[0], int) else 0
    for (text,) in log.conn.execute("SELECT updates FROM events WHERE run_id = ? AND seq > ? AND updates IS NOT NULL "
                                    "ORDER BY seq DESC", (run_id, snap_seq)):
        if isinstance(text, str) and '"best"' in text:
            u = decoded(text, "updates")
            if isinstance(u, dict) and isinstance(u.get("set"), dict) and "best" in u["set"]:
                return u["set"]["best"]
    if snap_seq:
        (text,) = log.conn.execute("SELECT snapshot FROM events WHERE run_id = ? AND seq = ?", (run_id, snap_seq)).fetchone()
        if isinstance(text, str) and '"best"' in text:
            return as_dict(decoded(text, "snapshot")).get("best")
    return None


def series_of(log: EventLog, run_id: int, key: str) -> list[Any]:
    """One state key's list as of the run's last event: the last snapshot's and what was appended since."""
    row = log.conn.execute("SELECT max(seq) FROM events WHERE run_id = ? AND snapshot IS NOT NULL", (run_id,)).fetchone()
    snap_seq = row[0] if row and isinstance(row[0], int) else 0
    values: list[Any] = []
    if snap_seq:
        (text,) = log.conn.execute("SELECT snapshot FROM events WHERE run_id = ? AND seq = ?", (run_id, snap_seq)).fetchone()
        values = as_list(as_dict(decoded(text, "snapshot")).get(key))
    needle = dumps(key)
    for (text,) in log.conn.execute("SELECT updates FROM events WHERE run_id = ? AND seq > ? AND updates IS NOT NULL "
                                    "ORDER BY seq", (run_id, snap_seq)):
        if isinstance(text, str) and needle in text:
            u = as_dict(decoded(text, "updates"))
            if key in as_dict(u.get("set")):
                values = as_list(u["set"][key])
            values = values + as_list(as_dict(u.get("append")).get(key))
    return values


class StepAxes(NamedTuple):
    """Where each value of some metric histories was recorded on the optimizer-step axis (see :func:`step_axes`)."""

    xs: dict[str, list[int]]  # metric -> the run's ``steps`` when each of its values was appended
    trained: frozenset[str]  # the metrics whose every value a training step appended (a train curve)


def step_axes(log: EventLog, run_id: int, keys: Sequence[str]) -> StepAxes:
    """The optimizer step (the state's ``steps``) at which each value of ``keys`` was appended, read from the run's
    events in order: a train curve recorded per chunk is drawn on a step axis, and an evaluation's value sits at the
    step it evaluated.  A metric some value of which has no known step (it was in the initial state, or appended
    before ``steps`` existed) is left out of ``xs``; ``trained`` holds those appended only by steps that also set
    ``steps`` (training actions)."""
    row = log.conn.execute("SELECT snapshot FROM events WHERE run_id = ? AND seq = 1", (run_id,)).fetchone()
    init = as_dict(decoded(row[0], "snapshot")) if row else {}
    steps = init.get("steps")
    xs: dict[str, list[Any]] = {k: [None] * len(as_list(init.get(k))) for k in keys}
    by_training = {k: True for k in keys}
    needles = ['"steps"', *(dumps(k) for k in keys)]
    for (text,) in log.conn.execute("SELECT updates FROM events WHERE run_id = ? AND seq > 1 AND updates IS NOT NULL "
                                    "ORDER BY seq", (run_id,)):
        if not isinstance(text, str) or not any(n in text for n in needles):
            continue
        u = as_dict(decoded(text, "updates"))
        changed, added = as_dict(u.get("set")), as_dict(u.get("append"))
        if "steps" in changed:
            steps = changed["steps"]
        for k in keys:
            if k in changed:
                xs[k] = [None] * len(as_list(changed[k]))
            if k in added:
                at = steps if isinstance(steps, int) and not isinstance(steps, bool) else None
                xs[k].extend([at] * len(as_list(added[k])))
                by_training[k] = by_training[k] and "steps" in changed
    known = {k: v for k, v in xs.items() if v and all(x is not None for x in v)}
    return StepAxes(known, frozenset(k for k in known if by_training[k]))


def study_settings(log: EventLog, study_id: Any, cache: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    """A study's settings (metric, mode, ...) from its start event's snapshot (read once per request)."""
    if study_id not in cache:
        cache[study_id] = {}
        if isinstance(study_id, int) and not isinstance(study_id, bool) and 1 <= study_id <= MAX_ID:
            row = log.conn.execute("SELECT snapshot FROM events WHERE run_id = ? AND seq = 1", (study_id,)).fetchone()
            if row is not None:
                cache[study_id] = as_dict(decoded(row[0], "snapshot"))
    return cache[study_id]


class Best(NamedTuple):
    metric: str
    value: float
    epoch: Any
    mode: str


def monitored_best(log: EventLog, r: RunRow, metric: str | None, mode: str | None,
                    studies: dict[Any, dict[str, Any]]) -> Best | None:
    """The best value of the run's monitored metric: ``metric`` when asked for, else its ``best`` record
    (a checkpoint's monitor), else (a study's trial) the study's metric."""
    if metric is None:
        rec = best_record(log, r.id)
        if isinstance(rec, dict) and is_number(rec.get("value")):
            m = str(rec.get("metric") or "best")
            return Best(m, float(rec["value"]), rec.get("epoch"), mode_of(m))
        settings = study_settings(log, r.tags.get("study"), studies) if "study" in r.tags else {}
        if not isinstance(settings.get("metric"), str):
            return None
        metric, mode = settings["metric"], settings.get("mode") if settings.get("mode") in ("min", "max") else None
    assert metric is not None
    mode = mode or mode_of(metric)
    found = best_of(series_of(log, r.id, metric), mode)
    return None if found is None else Best(metric, found[0], found[1], mode)
