"""The append-only SQLite event log: schema, append, read, verify.

One file holds many runs.  sqlite-utils creates the schema and serves reads; every
write takes its own ``BEGIN IMMEDIATE`` transaction on the same connection, reads
the run's last sequence number and refuses to write when it is not the one this
writer expected.  Triggers make the database reject every UPDATE and DELETE, and
a BEFORE INSERT trigger rejects a sequence number that would leave a gap.
See ``spec/log.md`` for the normative schema.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
import warnings
from collections.abc import Iterator, Mapping
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

import attrs
import sqlite_utils

from .errors import (
    EventNotFound,
    NotALog,
    ReadOnlyLog,
    RunNotFound,
    SchemaVersionError,
    WriteConflict,
)
from .state import dumps, loads

__all__ = ["EVENT_KINDS", "SCHEMA_VERSION", "Event", "EventLog", "RunInfo", "event_hash", "run_hash", "status_of"]

_now = time.time  # (append's `time` argument shadows the module)

SCHEMA_VERSION = 1
EVENT_KINDS = ("start", "step", "resume", "waiting", "input", "error", "failed")
_HEADER = b"SQLite format 3\x00"
_NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "9p", "afs", "lustre", "glusterfs", "ceph", "fuse.s3fs"}

_EVENT_COLS = ("run_id", "seq", "step", "time", "kind", "action", "attempt", "inputs",
               "updates", "next", "info", "snapshot", "error", "prev_hash", "hash")
_SELECT_EVENT = f"SELECT {', '.join(_EVENT_COLS)} FROM events"
_INSERT = f"INSERT INTO events ({', '.join(_EVENT_COLS)}) VALUES ({', '.join('?' * len(_EVENT_COLS))})"


class Event(NamedTuple):
    """One row of ``events``; JSON columns are decoded (``None`` when absent)."""

    run_id: int
    seq: int
    step: int
    time: float
    kind: str
    action: str | None
    attempt: int | None
    inputs: Any
    updates: Any
    next: str | None
    info: Any
    snapshot: Any
    error: str | None
    prev_hash: str
    hash: str

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Event:
        r = list(row)
        for i in (7, 8, 10, 11):  # inputs, updates, info, snapshot
            if r[i] is not None:
                r[i] = loads(r[i])
        return cls._make(r)


@attrs.frozen
class RunInfo:
    """A run and what its last event says about it."""

    id: int
    machine: str
    fingerprint: str
    created: float
    parent_id: int | None
    parent_seq: int | None
    tags: dict[str, Any]
    last_seq: int
    steps: int
    last_time: float
    last_kind: str
    last_action: str | None
    next: str | None

    @property
    def status(self) -> str:
        return status_of(self.last_kind, self.next)


def status_of(kind: str, next_action: str | None) -> str:
    """A run's status from its last event: running, waiting, finished or failed."""
    if kind == "failed":
        return "failed"
    if kind == "waiting":
        return "waiting"
    if kind == "step" and next_action is None:
        return "finished"
    return "running"


def run_hash(run_id: int, machine: str, fingerprint: str, created: float,
             parent_id: int | None, parent_seq: int | None, tags: str) -> str:
    """The genesis hash of a run: the ``prev_hash`` of its first event."""
    doc = json.dumps([run_id, machine, fingerprint, created, parent_id, parent_seq, tags], allow_nan=False)
    return hashlib.sha256(doc.encode()).hexdigest()


def event_hash(prev_hash: str, run_id: int, seq: int, step: int, t: float, kind: str,
               action: str | None, attempt: int | None, inputs: str | None, updates: str | None,
               next_action: str | None, info: str | None, snapshot: str | None, error: str | None) -> str:
    """sha256 of the JSON array of the previous hash and every stored column (see spec/log.md)."""
    doc = _hash_doc([prev_hash, run_id, seq, step, t, kind, action, attempt, inputs, updates,
                     next_action, info, snapshot, error])
    return hashlib.sha256(doc.encode()).hexdigest()


def _hash_doc(fields: list[Any]) -> str:
    """``json.dumps(fields, ensure_ascii=False, allow_nan=False)``, with the C encoder built once."""
    if _c_hash_encode is not None:
        return "".join(_c_hash_encode(fields, 0))
    return json.dumps(fields, ensure_ascii=False, allow_nan=False)


_c_hash_encode = (
    None if c_make_encoder is None
    else c_make_encoder(None, None, encode_basestring, None, ": ", ", ", False, False, False)
)


_SCHEMA_TRIGGERS = [
    f"""CREATE TRIGGER IF NOT EXISTS {t}_no_{op.lower()} BEFORE {op} ON {t}
        BEGIN SELECT RAISE(ABORT, 'fsmtrain log is append-only: {op} on {t} is refused'); END"""
    for t in ("fsmtrain_schema", "runs", "events") for op in ("UPDATE", "DELETE")
] + [
    """CREATE TRIGGER IF NOT EXISTS events_gapless BEFORE INSERT ON events
       WHEN NEW.seq != COALESCE((SELECT max(seq) FROM events WHERE run_id = NEW.run_id), 0) + 1
       BEGIN SELECT RAISE(ABORT, 'fsmtrain log: event sequence numbers must be gapless'); END""",
]


class EventLog:
    """An fsmtrain event log file.

    ``EventLog(path)`` opens (creating if needed) for writing; ``readonly=True``
    opens an existing log without ever writing to it.  ``synchronous`` is
    ``"FULL"`` (default: a committed step survives power loss) or ``"NORMAL"``
    (faster; the last commits may be lost on power loss, never on a crash).
    """

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False,
                 synchronous: str = "FULL", timeout: float = 30.0,
                 artifacts: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._artifacts = None if artifacts is None else Path(artifacts)
        sync = synchronous.upper()
        if sync not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', got {synchronous!r}")
        self.synchronous = sync
        _check_file(self.path, readonly)
        if readonly:
            uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
            self.conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None,
                                        check_same_thread=False)
            self.conn.execute("PRAGMA query_only=ON")
        else:
            self.conn = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None,
                                        check_same_thread=False)
        self.db = sqlite_utils.Database(self.conn, recursive_triggers=False, execute_plugins=False)
        try:
            self._setup()
        except sqlite3.DatabaseError as e:
            self.conn.close()
            raise NotALog(f"{self.path} is not a usable SQLite database: {e}") from None
        except Exception:
            self.conn.close()
            raise

    # -- opening --------------------------------------------------------------------
    def _setup(self) -> None:
        c = self.conn
        tables = {t for t in self.db.table_names() if not t.startswith("sqlite_")}  # e.g. sqlite_stat1 after ANALYZE
        if self.readonly:
            if "fsmtrain_schema" not in tables:
                raise NotALog(f"{self.path} is a SQLite database but not an fsmtrain log (no fsmtrain_schema table)")
            self._check_version()
            return
        # Decide before touching anything, so a foreign or too-new file is left byte-for-byte as it was.
        if tables - {"fsmtrain_schema", "runs", "events"}:
            raise NotALog(f"{self.path} is a SQLite database with other tables, not an fsmtrain log; use a new file")
        if "fsmtrain_schema" in tables:
            self._check_version()
        mode = c.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            warnings.warn(f"{self.path}: SQLite refused WAL mode (got {mode}); writes will be slower", stacklevel=3)
        c.execute(f"PRAGMA synchronous={self.synchronous}")
        _warn_if_network_fs(self.path)
        if "fsmtrain_schema" in tables:
            return
        c.execute("BEGIN IMMEDIATE")
        try:
            if "fsmtrain_schema" not in set(self.db.table_names()):  # another process may have won the race
                self._create_schema()
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        self._check_version()

    def _create_schema(self) -> None:
        from . import __version__

        db = self.db
        db.create_table("fsmtrain_schema", {"version": int, "applied": float, "fsmtrain": str},
                        pk="version", not_null=["applied", "fsmtrain"])
        db.create_table("runs", {"id": int, "machine": str, "fingerprint": str, "created": float,
                                 "parent_id": int, "parent_seq": int, "tags": str},
                        pk="id", not_null=["machine", "fingerprint", "created", "tags"],
                        foreign_keys=[("parent_id", "runs", "id")])
        types = (int, int, int, float, str, str, int, str, str, str, str, str, str, str, str)
        db.create_table("events", dict(zip(_EVENT_COLS, types, strict=True)),
                        pk=("run_id", "seq"), not_null=["step", "time", "kind", "prev_hash", "hash"],
                        foreign_keys=[("run_id", "runs", "id")])
        self.conn.execute("CREATE INDEX IF NOT EXISTS events_snapshots ON events(run_id, seq) WHERE snapshot IS NOT NULL")
        for sql in _SCHEMA_TRIGGERS:
            self.conn.execute(sql)
        self.conn.execute("INSERT INTO fsmtrain_schema (version, applied, fsmtrain) VALUES (?, ?, ?)",
                          (SCHEMA_VERSION, time.time(), __version__))

    def _check_version(self) -> None:
        row = self.conn.execute("SELECT max(version) FROM fsmtrain_schema").fetchone()
        version = row[0] if row else None
        if version is None:
            raise NotALog(f"{self.path} has an empty fsmtrain_schema table; it is not a complete fsmtrain log")
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self.path} uses log schema version {version}, newer than this fsmtrain supports "
                f"({SCHEMA_VERSION}); upgrade fsmtrain to read it"
            )
        self.schema_version = version

    @property
    def artifacts(self) -> Path:
        """The folder that :class:`~fsmtrain.Ref` paths are relative to (default: ``<log>.artifacts``)."""
        return self._artifacts if self._artifacts is not None else self.path.with_name(self.path.name + ".artifacts")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> EventLog:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing --------------------------------------------------------------------
    def _writable(self) -> None:
        if self.readonly:
            raise ReadOnlyLog(f"{self.path} was opened read-only; open it with EventLog(path) to write")

    def create_run(self, machine: str, fingerprint: str, *, snapshot: Mapping[str, Any], next_action: str,
                   tags: Mapping[str, Any] | None = None, parent: tuple[int, int] | None = None,
                   info: Mapping[str, Any] | None = None, run_id: int | None = None,
                   created: float | None = None) -> Event:
        """Insert a run and its ``start`` event (one transaction); returns that event.

        ``run_id`` and ``created`` (default: the next id, now) let a copy of a run elsewhere keep its
        identity (a study's detached trials replay their run in a scratch log).
        """
        self._writable()
        tags_text = dumps(dict(tags or {}))
        snap = dumps(snapshot)
        info_text = None if info is None else dumps(info)
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            created = time.time() if created is None else created
            parent_id, parent_seq = parent if parent else (None, None)
            cur = c.execute("INSERT INTO runs (id, machine, fingerprint, created, parent_id, parent_seq, tags) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (run_id, machine, fingerprint, created, parent_id, parent_seq, tags_text))
            run_id = int(cur.lastrowid)  # type: ignore[arg-type]
            prev = run_hash(run_id, machine, fingerprint, created, parent_id, parent_seq, tags_text)
            ev = self._insert(run_id, 1, 0, "start", None, None, None, None, next_action, info_text, snap, None, prev, created)
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return ev

    def append(self, run_id: int, expected_seq: int, *, kind: str, step: int, action: str | None = None,
               attempt: int | None = None, inputs: Mapping[str, Any] | None = None, updates: Any = None,
               next_action: str | None = None, info: Any = None, snapshot: Mapping[str, Any] | None = None,
               error: str | None = None, prev_hash: str | None = None, time: float | None = None) -> Event:
        """Append one event as one ``BEGIN IMMEDIATE`` transaction.

        ``time`` (default: now) is the event's timestamp; a runner passes the
        moment it evaluated the step's transitions, so that the active time a
        condition saw is exactly what the log says.

        Raises :class:`WriteConflict` unless the run's last event is ``expected_seq``
        (another writer got there first).  A writer that knows the hash of that
        event passes it as ``prev_hash`` and saves a read: the database itself
        then refuses the insert if the run has moved on (primary key and the
        gapless trigger), which is reported as the same conflict.
        """
        if self.readonly:
            self._writable()
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        texts = (None if inputs is None else dumps(inputs), None if updates is None else dumps(updates),
                 None if info is None else dumps(info), None if snapshot is None else dumps(snapshot))
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            if prev_hash is None:
                row = c.execute("SELECT seq, hash FROM events WHERE run_id = ? ORDER BY seq DESC LIMIT 1",
                                (run_id,)).fetchone()
                if row is None:
                    raise RunNotFound(f"run {run_id} does not exist in {self.path}")
                if row[0] != expected_seq:
                    raise self._conflict(run_id, expected_seq)
                prev_hash = row[1]
            t = _now() if time is None else time
            seq = expected_seq + 1
            h = event_hash(prev_hash, run_id, seq, step, t, kind, action, attempt, texts[0], texts[1],
                           next_action, texts[2], texts[3], error)
            try:
                c.execute(_INSERT, (run_id, seq, step, t, kind, action, attempt, texts[0], texts[1], next_action,
                                    texts[2], texts[3], error, prev_hash, h))
            except sqlite3.IntegrityError as e:
                if "gapless" in str(e) or "UNIQUE" in str(e):
                    raise self._conflict(run_id, expected_seq) from None
                raise
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return Event(run_id, seq, step, t, kind, action, attempt, inputs, updates, next_action, info, snapshot,
                     error, prev_hash, h)

    def _conflict(self, run_id: int, expected_seq: int) -> WriteConflict:
        (last,) = self.conn.execute("SELECT max(seq) FROM events WHERE run_id = ?", (run_id,)).fetchone()
        return WriteConflict(
            f"run {run_id} in {self.path} is at event {last}, but this writer expected {expected_seq}: "
            "another process wrote to it. Only one runner may drive a run at a time; resume it afresh "
            "to continue from the log"
        )

    def _insert(self, run_id: int, seq: int, step: int, kind: str, action: str | None, attempt: int | None,
                inputs: str | None, updates: str | None, next_action: str | None, info: str | None,
                snapshot: str | None, error: str | None, prev: str, t: float) -> Event:
        h = event_hash(prev, run_id, seq, step, t, kind, action, attempt, inputs, updates, next_action, info, snapshot, error)
        self.conn.execute(_INSERT, (run_id, seq, step, t, kind, action, attempt, inputs, updates, next_action, info,
                                    snapshot, error, prev, h))
        return Event.from_row((run_id, seq, step, t, kind, action, attempt, inputs, updates, next_action, info,
                               snapshot, error, prev, h))

    # -- reading --------------------------------------------------------------------
    _RUNS_SQL = """
        SELECT r.id, r.machine, r.fingerprint, r.created, r.parent_id, r.parent_seq, r.tags,
               e.seq, e.step, e.time, e.kind, e.action, e.next
        FROM runs r JOIN events e
          ON e.run_id = r.id AND e.seq = (SELECT max(seq) FROM events WHERE run_id = r.id)
    """

    def runs(self, *, machine: str | None = None, parent_id: int | None = None) -> list[RunInfo]:
        """Every run with its status, oldest first."""
        sql, params = self._RUNS_SQL, list[Any]()
        where = []
        if machine is not None:
            where.append("r.machine = ?")
            params.append(machine)
        if parent_id is not None:
            where.append("r.parent_id = ?")
            params.append(parent_id)
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [_run_info(r) for r in self.conn.execute(sql + " ORDER BY r.id", params)]

    def run(self, run_id: int) -> RunInfo:
        row = self.conn.execute(self._RUNS_SQL + " WHERE r.id = ?", (run_id,)).fetchone()
        if row is None:
            n = self.conn.execute("SELECT count(*) FROM runs").fetchone()[0]
            raise RunNotFound(f"run {run_id} does not exist in {self.path} ({n} run(s) in the log; "
                              "list them with `fsmtrain replay LOG`)")
        return _run_info(row)

    def events(self, run_id: int, *, start: int = 1, end: int | None = None) -> Iterator[Event]:
        """The run's events with ``start <= seq <= end``, in order."""
        sql = _SELECT_EVENT + " WHERE run_id = ? AND seq >= ?"
        params: list[Any] = [run_id, start]
        if end is not None:
            sql += " AND seq <= ?"
            params.append(end)
        for row in self.conn.execute(sql + " ORDER BY seq", params):
            yield Event.from_row(row)

    def event(self, run_id: int, seq: int) -> Event:
        row = self.conn.execute(_SELECT_EVENT + " WHERE run_id = ? AND seq = ?", (run_id, seq)).fetchone()
        if row is None:
            last = self.run(run_id).last_seq
            raise EventNotFound(f"run {run_id} has no event {seq} (its events are 1..{last})")
        return Event.from_row(row)

    def last_event(self, run_id: int) -> Event:
        row = self.conn.execute(_SELECT_EVENT + " WHERE run_id = ? ORDER BY seq DESC LIMIT 1", (run_id,)).fetchone()
        if row is None:
            self.run(run_id)  # raises RunNotFound
        return Event.from_row(row)

    def snapshot_before(self, run_id: int, seq: int) -> tuple[int, dict[str, Any]]:
        """The newest full snapshot at or before ``seq``: ``(its seq, state dict)``."""
        row = self.conn.execute(
            "SELECT seq, snapshot FROM events WHERE run_id = ? AND seq <= ? AND snapshot IS NOT NULL "
            "ORDER BY seq DESC LIMIT 1", (run_id, seq)).fetchone()
        if row is None:
            self.run(run_id)
            raise EventNotFound(f"run {run_id} has no snapshot at or before event {seq}")
        return row[0], loads(row[1])

    def updates_between(self, run_id: int, after: int, upto: int | None = None) -> Iterator[str]:
        """Raw JSON text of the updates of events ``after < seq <= upto``, in order (the fold's hot path)."""
        sql = "SELECT updates FROM events WHERE run_id = ? AND seq > ? AND updates IS NOT NULL"
        params: list[Any] = [run_id, after]
        if upto is not None:
            sql += " AND seq <= ?"
            params.append(upto)
        for (text,) in self.conn.execute(sql + " ORDER BY seq", params):
            yield text

    # -- verifying ------------------------------------------------------------------
    def verify(self) -> list[str]:
        """Every problem found: SQLite integrity, sequence gaps, broken hash chains. Empty when intact."""
        problems: list[str] = []
        for (msg,) in self.conn.execute("PRAGMA integrity_check"):
            if msg != "ok":
                problems.append(f"SQLite integrity check: {msg}")
        if problems:
            return problems
        runs = {r[0]: r for r in self.conn.execute(
            "SELECT id, machine, fingerprint, created, parent_id, parent_seq, tags FROM runs ORDER BY id")}
        for rid, row in runs.items():
            if row[4] is not None and row[4] not in runs:
                problems.append(f"run {rid}: parent run {row[4]} does not exist")
            prev = run_hash(*row)
            expected = 1
            for r in self.conn.execute(_SELECT_EVENT + " WHERE run_id = ? ORDER BY seq", (rid,)):
                seq = r[1]
                where = f"run {rid} event {seq}"
                if seq != expected:
                    problems.append(f"run {rid}: event {expected} is missing (next is {seq})")
                    expected = seq
                if r[13] != prev:
                    problems.append(f"{where}: prev_hash does not match the previous event's hash (the chain is broken)")
                h = event_hash(r[13], *r[:13])
                if h != r[14]:
                    problems.append(f"{where}: hash does not match its contents (the event was edited)")
                if seq == 1 and r[4] != "start":
                    problems.append(f"{where}: the first event is {r[4]!r}, not 'start'")
                prev = r[14]
                expected = seq + 1
            if expected == 1:
                problems.append(f"run {rid}: has no events")
        orphans = self.conn.execute("SELECT DISTINCT run_id FROM events WHERE run_id NOT IN (SELECT id FROM runs)").fetchall()
        problems.extend(f"events of run {r[0]} exist but the run does not" for r in orphans)
        return problems


def _run_info(row: tuple[Any, ...]) -> RunInfo:
    r = list(row)
    r[6] = loads(r[6])
    return RunInfo(*r)


def _check_file(path: Path, readonly: bool) -> None:
    if path.is_dir():
        raise NotALog(f"{path} is a directory, not an fsmtrain log file")
    if not path.exists():
        if readonly:
            raise NotALog(f"{path} does not exist")
        if not path.parent.exists():
            raise NotALog(f"cannot create {path}: folder {path.parent} does not exist")
        return
    size = path.stat().st_size
    if size == 0:
        if readonly:
            raise NotALog(f"{path} is an empty file, not an fsmtrain log")
        return
    with path.open("rb") as f:
        head = f.read(16)
    if head != _HEADER:
        raise NotALog(f"{path} is not a SQLite database (it starts with {head[:8]!r}); not an fsmtrain log")


def _filesystem_of(path: Path) -> str | None:
    """The filesystem type of the folder holding ``path``, from /proc/mounts (None where unknown)."""
    try:
        target = str(path.resolve().parent)
        best, fstype = "", None
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and (target == parts[1] or target.startswith(parts[1].rstrip("/") + "/")) \
                        and len(parts[1]) > len(best):
                    best, fstype = parts[1], parts[2]
        return fstype
    except OSError:
        return None


def _warn_if_network_fs(path: Path) -> None:
    fstype = _filesystem_of(path)
    if fstype in _NETWORK_FS:
        warnings.warn(f"{path} is on a network filesystem ({fstype}); SQLite's WAL mode does not work "
                      "reliably there. Keep the log on a local disk.", stacklevel=4)
