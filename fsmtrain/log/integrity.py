"""Checking a log: SQLite's integrity, the triggers and tables, every run's hash chain (keyed or not), the
JSON columns, and what the witness saw; ``check_run`` before a writer writes (spec/log.md, *Verification*)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from typing import Any

from ..errors import (
    CorruptLog,
    LostTail,
    RunNotFound,
)
from .hashing import _chain_key, _row_hash, run_hash
from .homed import _Homing
from .records import _EVENT_COLS, _SELECT_EVENT, EVENT_KINDS, SCHEMA_VERSION, Problem, _first_line, decode
from .schema import _TABLE_SHAPES, _TRIGGER_SQL


class _Checking(_Homing):
    """Verification (a layer of :class:`~fsmtrain.log.EventLog`)."""

    def verify(self) -> list[str]:
        """Every problem found, as sentences: SQLite integrity, missing triggers, sequence gaps, broken hash
        chains, JSON no writer makes. Empty when intact. (:meth:`check` gives them with codes.)"""
        return [p.message for p in self.check()]

    def check(self) -> list[Problem]:
        """Every problem found, each with its code and the run and event it concerns (spec/log.md,
        *Verification*). Empty when intact."""
        problems: list[Problem] = []
        try:
            for (msg,) in self.conn.execute("PRAGMA integrity_check"):
                if msg != "ok":
                    problems.append(Problem("integrity", f"SQLite integrity check: {msg}"))
        except sqlite3.DatabaseError as e:
            return [Problem("integrity", f"SQLite integrity check: {e}")]
        if problems:
            return problems
        problems += self._check_triggers() + self._check_schema()
        self.unchecked = []
        runs = {r[0]: r for r in self.conn.execute(
            "SELECT id, machine, fingerprint, created, parent_id, parent_seq, tags FROM runs ORDER BY id")}
        for rid, row in runs.items():
            if row[4] is not None and row[4] not in runs:
                problems.append(Problem("parent-missing", f"run {rid}: parent run {row[4]} does not exist", rid))
            try:
                prev = run_hash(*row)
            except (TypeError, ValueError) as e:
                problems.append(Problem("bad-row", f"run {rid}: its row holds values no writer makes "
                                                   f"({_first_line(e)})", rid))
                continue
            _json_problem(row[6], f"run {rid}: its tags column", problems, "", rid, None)
            first = self.conn.execute("SELECT seq, info FROM events WHERE run_id = ? ORDER BY seq LIMIT 1",
                                      (rid,)).fetchone()
            if first is not None and first[0] == 1:
                mac, check_hash = self._verify_key(rid, _chain_key(first[1]), problems)
            else:  # (no event 1: which hash its chain uses is unknown)
                mac, check_hash = None, False
            for r in self._chain(rid, 1, prev, mac, problems, check_hash):
                seq = r[1]
                where = f"run {rid} event {seq}"
                if seq == 1 and r[4] != "start":
                    problems.append(Problem("not-start", f"{where}: the first event is {r[4]!r}, not 'start'",
                                            rid, seq))
                if r[4] not in EVENT_KINDS:
                    problems.append(Problem("kind", f"{where}: unknown event kind {r[4]!r}", rid, seq))
                for i in (7, 8, 10, 11):
                    if r[i] is not None:
                        _json_problem(r[i], f"{where}: its {_EVENT_COLS[i]} column", problems, _EVENT_COLS[i],
                                      rid, seq)
            if first is None:
                problems.append(Problem("no-events", f"run {rid}: has no events", rid))
        orphans = self.conn.execute("SELECT DISTINCT run_id FROM events WHERE run_id NOT IN (SELECT id FROM runs)"
                                    " ORDER BY run_id").fetchall()
        problems.extend(Problem("orphan", f"events of run {r[0]} exist but the run does not", r[0])
                        for r in orphans)
        problems += self._check_witness()
        return problems

    def _chain(self, run_id: int, start: int, prev: str | None, mac: bytes | None, problems: list[Problem],
               check_hash: bool = True) -> Iterator[tuple[Any, ...]]:
        """Walk the run's events from ``start`` (``prev``: the hash event ``start`` must link to), adding a
        problem for a gap, a broken link and a hash that does not match (``mac``: the key its chain is hashed
        with; ``check_hash=False`` where the hashes cannot be checked); yields each event row for further checks."""
        expected = start
        for r in self.conn.execute(_SELECT_EVENT + " WHERE run_id = ? AND seq >= ? ORDER BY seq", (run_id, start)):
            seq = r[1]
            where = f"run {run_id} event {seq}"
            if seq != expected:
                problems.append(Problem("missing", f"run {run_id}: event {expected} is missing (next is {seq})",
                                        run_id, expected))
            if r[13] != prev:
                problems.append(Problem("chain", f"{where}: prev_hash does not match the previous event's hash "
                                                 "(the chain is broken)", run_id, seq))
            if check_hash:
                try:
                    h = _row_hash(r, mac)
                except (TypeError, ValueError) as e:
                    h = f"unhashable: {_first_line(e)}"
                if h != r[14]:
                    problems.append(Problem("hash", f"{where}: hash does not match its contents (the event was "
                                                    "edited)", run_id, seq))
            yield r
            prev, expected = r[14], seq + 1

    def _verify_key(self, run_id: int, kid: str | None, problems: list[Problem]) -> tuple[bytes | None, bool]:
        """The key to check a run's hashes with, and whether they can be checked; adds key problems."""
        if kid is None:
            if self._mac is not None:
                # (strict: a run made before the key was adopted is not authenticated either, and a forger who
                # removed a run's marker and recomputed its chain must not pass as one)
                problems.append(Problem("unkeyed", f"run {run_id} is not authenticated by the key: it was made "
                                                   "without it (before the key was adopted?) or its chain was "
                                                   "recomputed without it", run_id))
            return None, True
        if self._mac is None:
            self.unchecked.append(run_id)
            return None, False
        if kid != self.key_id:
            problems.append(Problem("key", f"run {run_id} is authenticated with another key (id {kid}) than the one "
                                           f"given (id {self.key_id})", run_id))
            return None, False
        return self._mac, True

    def _check_schema(self) -> list[Problem]:
        """The tables have the columns and keys writers made, and the schema versions are ones fsmtrain wrote."""
        out = []
        for table, (cols, pk) in _TABLE_SHAPES.items():
            info = self.conn.execute(f"PRAGMA table_info({table})").fetchall()
            got = [r[1] for r in info]
            got_pk = [r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5])]
            if got != cols or got_pk != pk:
                out.append(Problem("schema", f"table {table} was changed: columns {got}, primary key {got_pk} "
                                             f"(writers make {cols}, {pk})"))
        versions = [r[0] for r in self.conn.execute("SELECT version FROM fsmtrain_schema ORDER BY rowid")]
        if not versions or any(type(v) is not int or not 1 <= v <= SCHEMA_VERSION for v in versions) \
                or versions != sorted(set(versions)):
            out.append(Problem("schema", f"fsmtrain_schema holds versions {versions}, which no writer records"))
        return out

    def _check_witness(self, run_id: int | None = None,
                       heads: dict[int, tuple[int, str]] | None = None) -> list[Problem]:
        """What the log lost or rewrote of what the witness saw (all runs, or one)."""
        out = []
        changed = self._identity_problem()
        if changed is not None:
            out.append(Problem("witness", changed))
        if heads is None:
            heads = self._witness_heads()
        for rid, (seq, h) in sorted(heads.items()):
            if run_id is not None and rid != run_id:
                continue
            row = self.conn.execute("SELECT max(seq) FROM events WHERE run_id = ?", (rid,)).fetchone()
            last = row[0] if row else None
            if last is None:
                out.append(Problem("witness", f"run {rid} is missing, but the witness saw its event {seq} (a lost "
                                              "run, or an older copy of the log)", rid, seq))
            elif last < seq:
                out.append(Problem("witness", f"run {rid} ends at event {last} but the witness saw event {seq} (a "
                                              "lost tail: a deleted -wal file, or an older copy of the log)", rid, seq))
            else:
                (have,) = self.conn.execute("SELECT hash FROM events WHERE run_id = ? AND seq = ?",
                                            (rid, seq)).fetchone() or (None,)
                if have != h:
                    out.append(Problem("witness", f"run {rid} event {seq} is not the event the witness saw (its "
                                                  "history was rewritten)", rid, seq))
        return out

    def lost_tails(self) -> dict[int, tuple[int, int]]:
        """The runs that lost what the witness saw of them: ``{run: (the last event the log holds (0: the run is
        missing), the event the witness saw)}`` (``fsmtrain recover`` takes them back, or records their loss)."""
        out = {}
        for p in self._check_witness():
            if p.run is not None and p.seq is not None and "lost" in p.message:
                (last,) = self.conn.execute("SELECT max(seq) FROM events WHERE run_id = ?", (p.run,)).fetchone()
                out[p.run] = (last or 0, p.seq)
        return out

    def check_run(self, run_id: int) -> None:
        """Refuse (:class:`~fsmtrain.errors.CorruptLog`) to write to a run whose log is damaged: the
        triggers or tables changed, the run's chain broken since its newest snapshot, or less than the
        witness saw.  Cheap: what was found intact is not checked again by this object."""
        heads = self._witness_heads()
        (cookie,) = self.conn.execute("PRAGMA schema_version").fetchone()  # (any change to a table or trigger
        problems = [] if cookie == self._schema_ok else self._check_triggers() + self._check_schema()  # bumps it)
        problems += self._check_witness(run_id, heads)
        last, snap = self.conn.execute("SELECT max(seq), max(CASE WHEN snapshot IS NOT NULL THEN seq END) FROM events "
                                       "WHERE run_id = ?", (run_id,)).fetchone()
        if last is None:
            raise RunNotFound(f"run {run_id} does not exist in {self.path}")
        start = self._checked.get(run_id, 0)
        if start < last:
            snap = snap or 1
            head = heads.get(run_id)
            start = max(start, min(snap, head[0] if head else snap))
            mac = self._run_key(run_id)
            if start <= 1:
                row = self.conn.execute("SELECT id, machine, fingerprint, created, parent_id, parent_seq, tags FROM "
                                        "runs WHERE id = ?", (run_id,)).fetchone()
                try:
                    prev = run_hash(*row) if row else None
                except (TypeError, ValueError) as e:
                    problems.append(Problem("bad-row", f"run {run_id}: its row holds values no writer makes "
                                                       f"({_first_line(e)})", run_id))
                    prev = None
                start = 1
            else:
                (prev,) = self.conn.execute("SELECT hash FROM events WHERE run_id = ? AND seq = ?",
                                            (run_id, start - 1)).fetchone() or (None,)
            for _ in self._chain(run_id, start, prev, mac, problems):
                pass
        lost = [p for p in problems if p.code == "witness" and p.seq is not None and "lost" in p.message]
        if lost and len(lost) == len(problems):
            raise LostTail(f"{self.path}: refusing to write to run {run_id}: {lost[0].message}; nothing was written. "
                           f"`fsmtrain recover {self.path}` takes the lost events back from the run's home (--home), "
                           "or records that you accept losing them (--accept-loss) so the run redoes them")
        if problems:
            raise CorruptLog(f"{self.path}: refusing to write to run {run_id}, its log is damaged: "
                             + "; ".join(p.message for p in problems[:3])
                             + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
                             + f"; nothing was written (`fsmtrain verify {self.path}` lists every problem)")
        self._checked[run_id] = last
        self._schema_ok = cookie

    def _check_triggers(self) -> list[Problem]:
        """The append-only triggers are all there, as written (a dropped trigger lets the log be edited)."""
        have = {name: " ".join(sql.split()) for name, sql in self.conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'") if isinstance(sql, str)}
        out = []
        for name, sql in _TRIGGER_SQL.items():
            if name not in have:
                out.append(Problem("trigger", f"trigger {name} is missing: the log is no longer protected "
                                              "against edits"))
            elif have[name] != sql:
                out.append(Problem("trigger", f"trigger {name} was changed: the log is no longer protected "
                                              "against edits"))
        return out



def _json_problem(text: Any, where: str, problems: list[Problem], column: str, run: int | None,
                  seq: int | None) -> None:
    """Add a problem if ``text`` is not JSON of the shape its column holds (every JSON column holds an object)."""
    try:
        value = decode(text, where)
    except CorruptLog as e:
        problems.append(Problem("json", str(e).replace("; the log was edited outside fsmtrain", ""), run, seq))
        return
    duplicated = _duplicate_key(text)
    if duplicated is not None:  # (a reader keeps the last; which one a writer meant is unknown: no writer makes it)
        problems.append(Problem("json", f"{where} holds the key {duplicated!r} twice in one object", run, seq))
    if not isinstance(value, dict):
        problems.append(Problem("json", f"{where} holds a JSON {type(value).__name__}, not an object", run, seq))
    elif column == "updates":
        bad = sorted(set(value) - {"set", "append"})
        if bad or not isinstance(value.get("set", {}), dict) or not isinstance(value.get("append", {}), dict) \
                or not all(isinstance(v, list) for v in value.get("append", {}).values()):
            problems.append(Problem("json", f'{where} is not of the form {{"set": {{...}}, "append": {{key: '
                                            '[...]}}}}', run, seq))


class _Duplicate(Exception):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _Duplicate(k)
            seen.add(k)
    return out


def _duplicate_key(text: str) -> str | None:
    """A key that one JSON object of ``text`` holds twice (the first found), or None."""
    if not isinstance(text, str) or text.count('"') < 4:
        return None
    try:
        json.loads(text, object_pairs_hook=_pairs)
    except _Duplicate as e:
        return str(e.args[0])
    except (ValueError, RecursionError):
        return None  # (reported as malformed by decode)
    return None
