"""The append-only SQLite event log: schema, append, read, verify.

One file holds many runs.  sqlite-utils creates the schema and serves reads; every
write takes its own ``BEGIN IMMEDIATE`` transaction on the same connection, reads
the run's last sequence number and refuses to write when it is not the one this
writer expected.  Triggers make the database reject every UPDATE and DELETE, and
a BEFORE INSERT trigger rejects a sequence number that would leave a gap.
See ``spec/log.md`` for the normative schema.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
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
    CorruptLog,
    EventNotFound,
    FsmtrainError,
    LogBusy,
    LogError,
    LogKeyError,
    NotALog,
    ReadOnlyLog,
    RunNotFound,
    SchemaVersionError,
    StorageError,
    UnserializableValue,
    WriteConflict,
    environmental,
)
from .state import dumps, loads
from .witness import Witness

__all__ = ["BARRIER_KINDS", "DURABILITY", "ENDED", "EVENT_KINDS", "SCHEMA_VERSION", "Event", "EventLog", "Problem",
           "RunInfo", "event_hash", "key_id", "run_hash", "status_of"]

_now = time.time  # (append's `time` argument shadows the module)

SCHEMA_VERSION = 2
"""Version 2 added the event kinds ``retry``, ``stopped`` and ``pruned``; version-1 logs are read as they are
and upgraded (a row in ``fsmtrain_schema``) by their first write."""
EVENT_KINDS = ("start", "step", "resume", "waiting", "input", "error", "failed", "retry", "stopped", "pruned")
ENDED = ("finished", "failed", "stopped", "pruned")
"""Statuses of a run that no runner continues (``failed`` only after a deliberate ``retry``)."""
DURABILITY = ("barrier", "step", "none")
BARRIER_KINDS = frozenset({"input", "retry", "stopped", "pruned", "failed", "waiting"})
"""Event kinds whose commit is a barrier under ``durability="barrier"``: what a person or the outside world gave
or saw (an answer, a retry, a stop, a prune) and the end or pause of a run.  A ``step`` whose ``next`` is null
(the run finished) is one too."""
BARRIER_EVERY = 1000
"""Default: a barrier at least every this many commits of one writer (bounds the WAL between checkpoints)."""
BARRIER_SECONDS = 1.0
"""Default: the first commit after this many seconds without a barrier is one."""
CHECKPOINT_EVERY = 100
"""A barrier runs SQLite's WAL checkpoint when at least this many commits were made since the last one."""
WITNESS_SECONDS = 1.0
"""A barrier writes the witness (spec/log.md, *Integrity*) when this many seconds passed since it last did, or
when it records something from outside or a run's end, or at close."""
MAC = "hmac-sha256"
"""The keyed chain: an event's hash is HMAC-SHA256 under the log's key instead of SHA-256."""
MAX_ID = 2**63 - 1
_HEADER = b"SQLite format 3\x00"
_TABLES = {"fsmtrain_schema", "runs", "events"}
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
                r[i] = decode(r[i], f"run {r[0]} event {r[1]}: its {_EVENT_COLS[i]} column")
        return cls._make(r)


def decode(text: Any, where: str) -> Any:
    """JSON text read from a log, decoded; :class:`CorruptLog` naming ``where`` when it is not what a writer makes.

    A log that was edited outside fsmtrain can hold anything: text that is not JSON, JSON nested
    100,000 deep, a Ref whose path leaves the artifact folder.  Readers say so instead of crashing.
    """
    if not isinstance(text, str):
        raise CorruptLog(f"{where} holds a {type(text).__name__}, not JSON text; the log was edited outside fsmtrain")
    try:
        return loads(text)
    except RecursionError:
        raise CorruptLog(f"{where} holds JSON nested too deeply to read; the log was edited outside fsmtrain") from None
    except (ValueError, TypeError) as e:
        raise CorruptLog(f"{where} is not valid fsmtrain JSON ({_first_line(e)}); "
                         "the log was edited outside fsmtrain") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


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


@attrs.frozen
class Problem:
    """One problem :meth:`EventLog.check` found: its ``code`` (spec/log.md, *Verification*), the run and the
    event it concerns (``None`` where it is not about one), and a sentence for a person."""

    code: str
    message: str
    run: int | None = None
    seq: int | None = None

    def __str__(self) -> str:
        return self.message


def status_of(kind: str, next_action: str | None) -> str:
    """A run's status from its last event: running, waiting, finished, failed, stopped or pruned."""
    if kind in ("failed", "waiting", "stopped", "pruned"):
        return kind
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
               next_action: str | None, info: str | None, snapshot: str | None, error: str | None,
               key: bytes | None = None) -> str:
    """sha256 of the JSON array of the previous hash and every stored column (see spec/log.md); with a
    ``key``, HMAC-SHA256 under it (a run whose chain is keyed)."""
    doc = _hash_doc([prev_hash, run_id, seq, step, t, kind, action, attempt, inputs, updates,
                     next_action, info, snapshot, error])
    if key is not None:
        return hmac.new(key, doc.encode(), hashlib.sha256).hexdigest()
    return hashlib.sha256(doc.encode()).hexdigest()


def key_id(key: bytes) -> str:
    """A public name of a key (recorded in the runs it authenticates): not enough to forge with."""
    return hashlib.sha256(b"fsmtrain log key\0" + key).hexdigest()[:16]


def _log_key(key: bytes | str | None) -> bytes | None:
    """The key: given, else ``$FSMTRAIN_LOG_KEY`` (text), else the file ``$FSMTRAIN_LOG_KEY_FILE`` names."""
    where = "key"
    if key is None:
        if os.environ.get("FSMTRAIN_LOG_KEY"):
            key, where = os.environ["FSMTRAIN_LOG_KEY"], "FSMTRAIN_LOG_KEY"
        elif os.environ.get("FSMTRAIN_LOG_KEY_FILE"):
            name = os.environ["FSMTRAIN_LOG_KEY_FILE"]
            try:
                key = Path(name).read_bytes().rstrip(b"\r\n")
            except OSError as e:
                raise LogKeyError(f"FSMTRAIN_LOG_KEY_FILE names {name!r}, which cannot be read: "
                                 f"{e.strerror or e}") from None
            where = f"the key file {name}"
        else:
            return None
    if isinstance(key, str):
        key = key.encode("utf-8", "surrogateescape")
    if not isinstance(key, bytes):
        raise TypeError(f"key must be bytes or str, got {type(key).__name__}")
    if len(key) < 16:
        raise (ValueError if where == "key" else LogKeyError)(
            f"{where} is {len(key)} bytes long; use a secret of at least 16 bytes "
                         "(e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)")
    return key


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


class _Fresh(Exception):
    """A SQLite file without any table yet: made into a log by the first writer."""


_TRIGGER_SQL = {sql.split()[5]: " ".join(sql.split()).replace(" IF NOT EXISTS", "") for sql in _SCHEMA_TRIGGERS}


class EventLog:
    """An fsmtrain event log file.

    ``EventLog(path)`` opens a log to write to, creating the file when it does not exist
    (``create=False`` refuses a missing or empty file instead); ``readonly=True`` opens an existing
    log without ever writing to it.

    ``durability`` says what survives a power loss or an OS crash (a killed process never loses
    a commit, in any mode; see spec/log.md):

    - ``"barrier"`` (default): commits are ordinary (SQLite ``synchronous=NORMAL``); a **barrier**
      — one commit with ``synchronous=FULL``, which makes every earlier commit durable too — is
      taken for the events in :data:`BARRIER_KINDS`, at a run's end, for a commit passed
      ``barrier=True`` (an action declared ``barrier=True``), on :meth:`barrier`, at
      :meth:`close`, and at the first commit after ``barrier_every`` commits or ``barrier_seconds``
      seconds without one.  SQLite's own WAL checkpoints run at barriers, never on a step's
      commit.  After a power loss the log is a consistent prefix that ends at or after the last
      barrier.
    - ``"step"``: every commit is a barrier (one fsync per commit).
    - ``"none"``: never synced (``synchronous=OFF``): for throwaway logs; a power loss may
      lose or damage it.

    ``synchronous="FULL"`` / ``"NORMAL"`` (the older spelling) mean ``"step"`` / ``"barrier"``.

    At barriers a writer appends the heads of the runs it wrote to the **witness** file
    (``<artifacts>/witness.jsonl``), so that :meth:`verify` and writers notice a log that lost what it
    once held.  ``key`` (default: ``$FSMTRAIN_LOG_KEY``, or the file ``$FSMTRAIN_LOG_KEY_FILE`` names)
    makes the chains of the runs it creates HMAC-SHA256 under that secret: forging their events then needs
    the key, and writing to them too (spec/log.md, *Integrity*).

    Nothing is written, and no file is created, before the first write: a writer reads through a
    read-only connection until it appends (a log that does not exist yet reads as an empty one), so
    a command that refuses (bad input, a run not waiting) leaves every file byte-for-byte as it was
    and creates none, and a log on read-only storage still opens for reading.
    """

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False, create: bool = True,
                 durability: str | None = None, barrier_every: int = BARRIER_EVERY,
                 barrier_seconds: float = BARRIER_SECONDS, synchronous: str | None = None, timeout: float = 30.0,
                 artifacts: str | os.PathLike[str] | None = None, key: bytes | str | None = None) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._artifacts = None if artifacts is None else Path(artifacts)
        self.durability = _durability(durability, synchronous)
        if isinstance(barrier_every, bool) or not isinstance(barrier_every, int) or barrier_every < 1:
            raise ValueError(f"barrier_every must be a whole number of commits >= 1, got {barrier_every!r}")
        if isinstance(barrier_seconds, bool) or not isinstance(barrier_seconds, (int, float)) \
                or not 0 <= barrier_seconds < float("inf"):
            raise ValueError(f"barrier_seconds must be a finite number of seconds >= 0, got {barrier_seconds!r}")
        self.barrier_every = barrier_every
        self.barrier_seconds = float(barrier_seconds)
        self._mac = _log_key(key)
        self.key_id = None if self._mac is None else key_id(self._mac)
        """The public name of the log's key (``None`` without one)."""
        self._keyed: dict[int, str | None] = {}  # run -> the id of the key its chain is keyed with (None: SHA-256)
        self._heads: dict[int, tuple[int, str]] = {}  # heads written since the witness last saw them
        self._witness_due = False  # the next barrier tells the witness (an event from outside, a run's end)
        self._witness_sync = False  # ... and syncs it (an event from outside: a person was told)
        self._witnessed = self._witness_synced = time.monotonic()
        self._wit: Witness | None = None
        self._checked: dict[int, int] = {}  # run -> the last event check_run found intact
        self.unchecked: list[int] = []
        """Runs whose keyed hashes the last :meth:`check` could not check (no key given)."""
        self._ident: str | None = None
        self._schema_ok: int | None = None  # the schema cookie at which the triggers and tables were last intact
        self.synchronous = {"step": "FULL", "barrier": "NORMAL", "none": "OFF"}[self.durability]
        self.commits = 0
        """Commits made through this object."""
        self.synced = 0
        """How many of them are behind a barrier (durable): every commit when ``synced == commits``."""
        self.barriers = 0
        self._last_barrier = time.monotonic()
        self._checkpointed = 0
        self._inherited = False  # an existing log: its last commits, by other processes, may not be durable yet
        self.timeout = timeout
        self.schema_version = SCHEMA_VERSION
        self._rw: sqlite3.Connection | None = None
        self._ro: sqlite3.Connection | None = None
        self._sidecars: set[str] = set()
        self._create = create and not readonly
        new = _inspect(self.path, readonly=readonly, create=create)
        self._inherited = not new and not readonly and self.durability == "barrier"
        self._key = str(self.path.resolve())
        if not readonly:
            _check_writable(self.path, new)
        try:
            if not new:
                try:
                    self._open_ro()
                except _Fresh:  # SQLite without tables: another process is creating the log right now
                    assert self._ro is not None
                    self._ro.close()
                    self._ro = None
                    new = True
            if new:  # nothing exists until the first write: until then, read an empty log in memory
                self._open_blank()
        except BaseException:
            self.close()
            raise
        _OPEN[self._key] = _OPEN.get(self._key, 0) + 1

    # -- opening --------------------------------------------------------------------
    def _connect(self, uri: str) -> sqlite3.Connection:
        return sqlite3.connect(uri, uri=True, timeout=self.timeout, isolation_level=None, check_same_thread=False)

    def _open_ro(self) -> None:
        """Read through a read-only connection; check what the file is before anything else."""
        self._sidecars = {s for s in ("-wal", "-shm") if _sidecar(self.path, s).exists()}
        base = f"file:{quote(str(self.path.resolve()))}"
        try:
            conn = self._connect(base + "?mode=ro")
            self._ro = conn
            self._probe(conn)
        except (sqlite3.OperationalError, LogBusy) as e:
            # Read-only storage where the WAL's shared-memory file cannot be created: with no WAL
            # left behind, the database file alone is the whole log, and can be read as immutable.
            if self._ro is not None:
                self._ro.close()
                self._ro = None
            if isinstance(e, LogBusy) or _sidecar(self.path, "-wal").exists() or \
                    ("unable to open" not in str(e) and "readonly" not in str(e)):
                raise self._open_error(e) from None
            conn = self._connect(base + "?immutable=1")
            self._ro = conn
            try:
                self._probe(conn)
            except sqlite3.DatabaseError as e2:
                raise self._open_error(e2) from None
        except sqlite3.DatabaseError as e:
            raise self._open_error(e) from None
        conn.execute("PRAGMA query_only=ON")
        self.conn = conn
        self.db = sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)

    def _open_blank(self) -> None:
        """A log that does not exist yet reads as an empty one; the file is made by the first write."""
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        self.db = sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)
        self._create_schema(conn)
        self._ro = self.conn = conn

    def _probe(self, conn: sqlite3.Connection) -> None:
        """Check that the file is a complete fsmtrain log of a version we read (quickly, if it is locked)."""
        conn.execute(f"PRAGMA busy_timeout={int(min(self.timeout, 5.0) * 1000)}")
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                      if not r[0].startswith("sqlite_")}  # e.g. sqlite_stat1 after ANALYZE
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                raise LogBusy(f"{self.path} is locked by another process (it holds the whole file, e.g. an exclusive "
                              f"transaction); nothing was read or written. Try again once it has finished") from None
            raise
        conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
        if not tables and self._create and conn is self._ro:
            raise _Fresh
        if not tables:
            raise NotALog(f"{self.path} is an empty SQLite database (no tables): not an fsmtrain log, or one "
                          "that a process is creating right now")
        if "fsmtrain_schema" not in tables:
            raise NotALog(f"{self.path} is a SQLite database but not an fsmtrain log (no fsmtrain_schema table)")
        other = sorted(tables - _TABLES)
        if other:
            raise NotALog(f"{self.path} is a SQLite database with other tables ({', '.join(other[:5])}), "
                          "not an fsmtrain log; use a new file")
        missing = sorted(_TABLES - tables)
        if missing:
            raise NotALog(f"{self.path} is an incomplete fsmtrain log (no {', '.join(missing)} table); use a new file")
        self._check_version(conn)

    def _open_error(self, e: BaseException) -> FsmtrainError:
        if isinstance(e, (LogError, FsmtrainError)):
            return e
        text = str(e)
        if "locked" in text or "busy" in text:
            return LogBusy(f"{self.path} is locked by another process; nothing was read or written. "
                           "Try again once it has finished")
        if "unable to open" in text or "readonly" in text:
            return NotALog(f"{self.path} cannot be opened for reading ({text}); check the permissions of the file "
                           "and its folder")
        return NotALog(f"{self.path} is not a usable SQLite database ({text})")

    def _open_rw(self) -> sqlite3.Connection:
        """The connection that writes, opened at the first write (creating the schema of a new log)."""
        if self._rw is not None:
            return self._rw
        if self.readonly:
            self._writable()
        try:
            conn = self._connect(f"file:{quote(str(self.path.resolve()))}")
        except sqlite3.Error as e:
            raise StorageError(f"cannot open {self.path} to write: {e}") from None
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                warnings.warn(f"{self.path}: SQLite refused WAL mode (got {mode}); writes will be slower", stacklevel=4)
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            if self.durability == "barrier":
                conn.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run at barriers, off the step path
            _warn_if_network_fs(self.path)
            self.db = sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)
            tables = {t for t in self.db.table_names() if not t.startswith("sqlite_")}
            if not tables:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if "fsmtrain_schema" not in set(self.db.table_names()):  # another process may have won the race
                        self._create_schema(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise
            else:
                self._probe(conn)
        except sqlite3.DatabaseError as e:
            conn.close()
            env = environmental(e)
            if env:
                raise StorageError(f"cannot write to {self.path}: {env}") from None
            raise self._open_error(e) from None
        except BaseException:
            conn.close()
            raise
        self._rw = self.conn = conn
        self._check_version(conn)
        return conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
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
        conn.execute("CREATE INDEX IF NOT EXISTS events_snapshots ON events(run_id, seq) WHERE snapshot IS NOT NULL")
        for sql in _SCHEMA_TRIGGERS:
            conn.execute(sql)
        conn.execute("INSERT INTO fsmtrain_schema (version, applied, fsmtrain) VALUES (?, ?, ?)",
                     (SCHEMA_VERSION, time.time(), __version__))

    def _check_version(self, conn: sqlite3.Connection) -> None:
        row = conn.execute("SELECT max(version) FROM fsmtrain_schema").fetchone()
        version = row[0] if row else None
        if version is None:
            raise NotALog(f"{self.path} has an empty fsmtrain_schema table; it is not a complete fsmtrain log")
        if not isinstance(version, int):
            raise NotALog(f"{self.path} records schema version {version!r}, which no fsmtrain writes")
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self.path} uses log schema version {version}, newer than this fsmtrain supports "
                f"({SCHEMA_VERSION}); upgrade fsmtrain to read it"
            )
        self.schema_version = version

    def _upgrade(self, conn: sqlite3.Connection) -> None:
        """Inside a write transaction: record that the log now holds this schema version's events."""
        from . import __version__

        (version,) = conn.execute("SELECT max(version) FROM fsmtrain_schema").fetchone()
        if version < SCHEMA_VERSION:
            conn.execute("INSERT INTO fsmtrain_schema (version, applied, fsmtrain) VALUES (?, ?, ?)",
                         (SCHEMA_VERSION, time.time(), __version__))
        self.schema_version = SCHEMA_VERSION

    @property
    def artifacts(self) -> Path:
        """The folder that :class:`~fsmtrain.Ref` paths are relative to (default: ``<log>.artifacts``)."""
        return self._artifacts if self._artifacts is not None else self.path.with_name(self.path.name + ".artifacts")

    def close(self) -> None:
        """Close the log.  A reader removes the WAL files it made beside a log nobody else has open."""
        was_open = self._ro is not None or self._rw is not None
        if self._rw is not None and not self.durable:
            try:
                self.barrier()
            except FsmtrainError as e:  # (closing must not raise over the error being handled)
                warnings.warn(f"{self.path}: the last commits may not survive a power loss: {e}", stacklevel=2)
        if self._heads and self.durable:
            self._witness_due = True
            self._witness()
        if self._wit is not None:
            try:
                self._wit.close()  # (syncs what it wrote)
            except OSError as e:
                warnings.warn(f"{self.path}: cannot sync the witness file: {environmental(e) or e}", stacklevel=2)
            self._wit = None
        if self._ro is not None:
            self._ro.close()
            self._ro = None
        if self._rw is not None:
            self._rw.close()
            self._rw = None
        if not was_open:
            return
        left = _OPEN.get(self._key, 1) - 1
        if left > 0:
            _OPEN[self._key] = left
            return
        _OPEN.pop(self._key, None)
        _remove_own_sidecars(self.path, self._sidecars)

    def __enter__(self) -> EventLog:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing --------------------------------------------------------------------
    def _writable(self) -> None:
        if self.readonly:
            raise ReadOnlyLog(f"{self.path} was opened read-only; open it with EventLog(path) to write")

    def _begin(self, full: bool = False) -> sqlite3.Connection:
        """``BEGIN IMMEDIATE`` on the writing connection (its commit a barrier when ``full``); the environment's
        failures become StorageError."""
        c = self._rw if self._rw is not None else self._open_rw()
        try:
            if full and self.durability == "barrier":
                c.execute("PRAGMA synchronous=FULL")  # (only outside a transaction)
            c.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            self._settle(c, full)
            raise self._write_error(e) from None
        if self.schema_version < SCHEMA_VERSION:
            try:
                self._upgrade(c)
            except BaseException:
                _rollback(c)
                raise
        return c

    # -- durability -------------------------------------------------------------------
    def _full(self, kind: str, next_action: str | None, barrier: bool | None) -> bool:
        """Whether the commit of an event of ``kind`` is a barrier."""
        if self.durability != "barrier":
            return self.durability == "step"
        return bool(barrier or kind in BARRIER_KINDS or (kind == "step" and next_action is None)
                    or self.commits - self.synced >= self.barrier_every - 1
                    or time.monotonic() - self._last_barrier >= self.barrier_seconds)

    def _settle(self, c: sqlite3.Connection, full: bool) -> None:
        """Back to ordinary commits after a barrier's commit (or its failure)."""
        if full and self.durability == "barrier" and not c.in_transaction:
            try:
                c.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error:
                pass

    def _committed(self, c: sqlite3.Connection, full: bool) -> None:
        self.commits += 1
        if full or self.durability == "none":  # ("none": nothing will ever be more durable than now)
            self._settle(c, full)
            self._synced(c)

    @property
    def durable(self) -> bool:
        """Whether everything in the log as this object has seen it is behind a barrier (durable): its own
        commits, and those of the processes before it."""
        return self.synced >= self.commits and not self._inherited

    def _synced(self, c: sqlite3.Connection | None) -> None:
        """Every commit so far is durable: count the barrier and run SQLite's WAL checkpoint if one is due."""
        self.synced = self.commits
        self._inherited = False
        self.barriers += 1
        self._last_barrier = time.monotonic()
        if self._heads and (self._witness_due or self._last_barrier - self._witnessed >= WITNESS_SECONDS):
            self._witness()
        if c is not None and self.durability == "barrier" and self.commits - self._checkpointed >= CHECKPOINT_EVERY:
            self._checkpointed = self.commits
            try:  # PASSIVE: copies what no reader still needs, never waits (a later barrier does the rest)
                c.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error:
                pass  # upkeep only: the commits are durable in the WAL

    def _witness(self) -> None:
        """Tell the witness the heads written since it last heard (after they became durable)."""
        if self.durability == "none":
            self._heads.clear()
            return
        heads = [(r, s, h) for r, (s, h) in sorted(self._heads.items())]
        self._heads.clear()
        now = time.monotonic()
        # synced for what a person was told, else at most once a second (a line lost to a power loss only
        # makes the witness see less, never more than the log holds)
        sync = self._witness_sync or now - self._witness_synced >= WITNESS_SECONDS
        self._witness_due = self._witness_sync = False
        self._witnessed = now
        try:
            if self._wit is None:
                self._wit = Witness(self.artifacts, self._identity())
            self._wit.record(heads, sync=sync)
            if sync:
                self._witness_synced = now
        except (OSError, sqlite3.Error) as e:
            warnings.warn(f"{self.path}: cannot write the witness file in {self.artifacts}: "
                          f"{environmental(e) or e}; verify will not notice if this log loses what it holds now",
                          stacklevel=3)

    def _identity(self) -> str:
        """What names this log file in its witness: the moment its schema was made (kept by its copies, new
        for a log made anew at the same path)."""
        if self._ident is None:
            row = self.conn.execute("SELECT applied FROM fsmtrain_schema ORDER BY version LIMIT 1").fetchone()
            self._ident = repr(row[0]) if row else "?"
        return self._ident

    def _witness_heads(self) -> dict[int, tuple[int, str]]:
        """The heads the witness saw of this log's runs (none for a throwaway log: it has no witness)."""
        if self.durability == "none":
            return {}
        try:
            return Witness(self.artifacts, self._identity()).heads()
        except sqlite3.Error:
            return {}

    def barrier(self) -> None:
        """Make every commit so far durable now (one fsync of the WAL), as a barrier does.

        ``durability="none"`` never syncs; with ``"step"`` every commit is durable already.
        """
        if self.readonly or self.durability != "barrier" or self.durable:
            return
        wal = _sidecar(self.path, "-wal")
        try:
            fd = os.open(wal, os.O_RDONLY)
        except FileNotFoundError:
            fd = None  # checkpointed and removed: the database file itself was synced by the checkpoint
        except OSError as e:
            raise StorageError(f"cannot sync {wal}: {environmental(e) or e}") from None
        if fd is not None:
            try:
                os.fsync(fd)
            except OSError as e:
                raise StorageError(f"cannot sync {wal}: {environmental(e) or e}; the last commits may not "
                                   "survive a power loss") from None
            finally:
                os.close(fd)
        self._synced(self._rw)

    def _write_error(self, e: BaseException) -> BaseException:
        """What a failed write raises: the real cause, never a ROLLBACK's complaint."""
        if isinstance(e, UnicodeEncodeError):
            return UnserializableValue(f"cannot write to {self.path}: a text holds characters that are not valid "
                                       f"UTF-8 ({e.reason} at position {e.start}); give plain UTF-8 text")
        env = environmental(e) if isinstance(e, (sqlite3.Error, OSError)) else None
        if env:
            return StorageError(f"cannot write to {self.path}: {env}; nothing of this write was committed, "
                                "and the log is as it was before it. Fix the cause and run again to continue")
        if isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "busy" in str(e)):
            return LogBusy(f"{self.path} stayed locked by another process for {self.timeout:.0f} s; nothing was "
                           "written. Try again once it has finished")
        if isinstance(e, OverflowError):
            return UnserializableValue(f"cannot write to {self.path}: {e}")
        return e

    @contextlib.contextmanager
    def transaction(self, *, barrier: bool = False) -> Iterator[sqlite3.Connection]:
        """``with log.transaction() as conn:`` one ``BEGIN IMMEDIATE`` transaction on the writing connection,
        committed at the end (a barrier with ``barrier=True``), rolled back (and the real cause raised) on any
        error.  For bulk imports and tools; the triggers still refuse any UPDATE or DELETE."""
        full = self._full("", "", barrier)
        c = self._begin(full)
        try:
            yield c
            c.execute("COMMIT")
        except BaseException as e:
            _rollback(c)
            self._settle(c, full)
            err = self._write_error(e)
            if err is e:
                raise
            raise err from e
        self._committed(c, full)

    def create_run(self, machine: str, fingerprint: str, *, snapshot: Mapping[str, Any], next_action: str,
                   tags: Mapping[str, Any] | None = None, parent: tuple[int, int] | None = None,
                   info: Mapping[str, Any] | None = None, run_id: int | None = None,
                   created: float | None = None, on_id: Any = None, barrier: bool | None = None) -> Event:
        """Insert a run and its ``start`` event (one transaction); returns that event.

        ``run_id`` and ``created`` (default: the next id, now) let a copy of a run elsewhere keep its
        identity (a study's detached trials replay their run in a scratch log).  ``on_id(run_id)``,
        when given, is called inside the transaction once the new id is known, before anything is
        inserted (a runner takes the run's lock there, so no other process can pick the run up first).
        """
        self._writable()
        tags_text = dumps(dict(tags or {}))
        snap = dumps(snapshot)
        if self._mac is not None:  # the run's chain is keyed: say so (and with which key) in its first event
            info = {**(info or {}), "chain": {"mac": MAC, "key": self.key_id}}
        info_text = None if info is None else dumps(info)
        full = self._full("start", next_action, barrier)
        c = self._begin(full)
        try:
            created = time.time() if created is None else created
            parent_id, parent_seq = parent if parent else (None, None)
            if run_id is None:
                (top,) = c.execute("SELECT max(id) FROM runs").fetchone()
                run_id = (top or 0) + 1
            if on_id is not None:
                on_id(run_id)
            c.execute("INSERT INTO runs (id, machine, fingerprint, created, parent_id, parent_seq, tags) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?)",
                      (run_id, machine, fingerprint, created, parent_id, parent_seq, tags_text))
            prev = run_hash(run_id, machine, fingerprint, created, parent_id, parent_seq, tags_text)
            ev = self._insert(run_id, 1, 0, "start", None, None, None, None, next_action, info_text, snap, None, prev, created,
                              self._mac)
            c.execute("COMMIT")
        except BaseException as e:
            _rollback(c)
            self._settle(c, full)
            err = self._write_error(e)
            if err is e:
                raise
            raise err from e
        self._keyed[run_id] = self.key_id
        self._heads[run_id] = (1, ev.hash)
        self._witness_due = self._witness_due or full
        self._committed(c, full)
        return ev

    def append(self, run_id: int, expected_seq: int, *, kind: str, step: int, action: str | None = None,
               attempt: int | None = None, inputs: Mapping[str, Any] | None = None, updates: Any = None,
               next_action: str | None = None, info: Any = None, snapshot: Mapping[str, Any] | None = None,
               error: str | None = None, prev_hash: str | None = None, time: float | None = None,
               barrier: bool | None = None) -> Event:
        """Append one event as one transaction.

        ``time`` (default: now) is the event's timestamp; a runner passes the
        moment it evaluated the step's transitions, so that the active time a
        condition saw is exactly what the log says.  ``barrier=True`` makes the
        commit a barrier (see the class: the events that are barriers anyway).

        Raises :class:`WriteConflict` unless the run's last event is ``expected_seq``
        (another writer got there first).  A writer that knows the hash of that
        event passes it as ``prev_hash`` and saves a read: the database itself
        then refuses the insert if the run has moved on (primary key and the
        gapless trigger), which is reported as the same conflict, and the insert
        is one statement, its own transaction.  A write the environment stops
        (disk full, read-only storage, I/O error) raises
        :class:`~fsmtrain.errors.StorageError` and commits nothing.
        """
        if self.readonly:
            self._writable()
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        texts = (None if inputs is None else dumps(inputs), None if updates is None else dumps(updates),
                 None if info is None else dumps(info), None if snapshot is None else dumps(snapshot))
        full = self._full(kind, next_action, barrier)
        mac = self._run_key(run_id)
        c = self._rw
        one = prev_hash is not None and c is not None and self.schema_version == SCHEMA_VERSION
        if one:  # the hot path: a single INSERT is its own (atomic) transaction
            assert c is not None
            if full and self.durability == "barrier":
                try:
                    c.execute("PRAGMA synchronous=FULL")
                except sqlite3.OperationalError as e:
                    raise self._write_error(e) from None
        else:
            c = self._begin(full)  # (the first write opens the writing connection, upgrading a v1 log)
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
                           next_action, texts[2], texts[3], error, mac)
            try:
                c.execute(_INSERT, (run_id, seq, step, t, kind, action, attempt, texts[0], texts[1], next_action,
                                    texts[2], texts[3], error, prev_hash, h))
            except sqlite3.IntegrityError as e:
                if "gapless" in str(e) or "UNIQUE" in str(e):
                    raise self._conflict(run_id, expected_seq) from None
                raise
            if not one:
                c.execute("COMMIT")
        except BaseException as e:
            _rollback(c)
            self._settle(c, full)
            err = self._write_error(e)
            if err is e:
                raise
            raise err from e
        self._heads[run_id] = (seq, h)
        if full and (kind in BARRIER_KINDS or next_action is None):
            self._witness_due = True
            self._witness_sync = self._witness_sync or kind in BARRIER_KINDS
        self._committed(c, full)
        return Event(run_id, seq, step, t, kind, action, attempt, inputs, updates, next_action, info, snapshot,
                     error, prev_hash, h)

    def _run_key(self, run_id: int) -> bytes | None:
        """The key the run's chain is hashed with (``None``: plain SHA-256); refuses a keyed run without its key."""
        if run_id not in self._keyed:
            row = self.conn.execute("SELECT info FROM events WHERE run_id = ? AND seq = 1", (run_id,)).fetchone()
            self._keyed[run_id] = _chain_key(row[0] if row else None)
        kid = self._keyed[run_id]
        if kid is None:
            return None
        if self._mac is None:
            raise LogKeyError(f"run {run_id} in {self.path} is authenticated with a key (id {kid}): set "
                              "FSMTRAIN_LOG_KEY (or FSMTRAIN_LOG_KEY_FILE) to write to it; nothing was written")
        if kid != self.key_id:
            raise LogKeyError(f"run {run_id} in {self.path} is authenticated with another key (id {kid}) than the "
                              f"one given (id {self.key_id}); nothing was written")
        return self._mac

    def _conflict(self, run_id: int, expected_seq: int) -> WriteConflict:
        (last,) = self.conn.execute("SELECT max(seq) FROM events WHERE run_id = ?", (run_id,)).fetchone()
        return WriteConflict(
            f"run {run_id} in {self.path} is at event {last}, but this writer expected {expected_seq}: "
            "another process wrote to it. Only one runner may drive a run at a time; resume it afresh "
            "to continue from the log"
        )

    def _insert(self, run_id: int, seq: int, step: int, kind: str, action: str | None, attempt: int | None,
                inputs: str | None, updates: str | None, next_action: str | None, info: str | None,
                snapshot: str | None, error: str | None, prev: str, t: float, key: bytes | None) -> Event:
        assert self._rw is not None
        h = event_hash(prev, run_id, seq, step, t, kind, action, attempt, inputs, updates, next_action, info, snapshot, error,
                       key)
        self._rw.execute(_INSERT, (run_id, seq, step, t, kind, action, attempt, inputs, updates, next_action, info,
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
        _check_id(run_id, self.path)
        row = self.conn.execute(self._RUNS_SQL + " WHERE r.id = ?", (run_id,)).fetchone()
        if row is None:
            n = self.conn.execute("SELECT count(*) FROM runs").fetchone()[0]
            raise RunNotFound(f"run {run_id} does not exist in {self.path} ({n} run(s) in the log; "
                              "list them with `fsmtrain replay LOG`)")
        return _run_info(row)

    def events(self, run_id: int, *, start: int = 1, end: int | None = None) -> Iterator[Event]:
        """The run's events with ``start <= seq <= end``, in order."""
        _check_id(run_id, self.path)
        start, end = _clamp(start), None if end is None else _clamp(end)
        sql = _SELECT_EVENT + " WHERE run_id = ? AND seq >= ?"
        params: list[Any] = [run_id, start]
        if end is not None:
            sql += " AND seq <= ?"
            params.append(end)
        for row in self.conn.execute(sql + " ORDER BY seq", params):
            yield Event.from_row(row)

    def event(self, run_id: int, seq: int) -> Event:
        _check_id(run_id, self.path)
        if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= MAX_ID:
            last = self.run(run_id).last_seq
            raise EventNotFound(f"run {run_id} has no event {seq} (its events are 1..{last})")
        row = self.conn.execute(_SELECT_EVENT + " WHERE run_id = ? AND seq = ?", (run_id, seq)).fetchone()
        if row is None:
            last = self.run(run_id).last_seq
            raise EventNotFound(f"run {run_id} has no event {seq} (its events are 1..{last})")
        return Event.from_row(row)

    def last_event(self, run_id: int) -> Event:
        _check_id(run_id, self.path)
        row = self.conn.execute(_SELECT_EVENT + " WHERE run_id = ? ORDER BY seq DESC LIMIT 1", (run_id,)).fetchone()
        if row is None:
            self.run(run_id)  # raises RunNotFound
        return Event.from_row(row)

    def snapshot_before(self, run_id: int, seq: int) -> tuple[int, dict[str, Any]]:
        """The newest full snapshot at or before ``seq``: ``(its seq, state dict)``."""
        _check_id(run_id, self.path)
        row = self.conn.execute(
            "SELECT seq, snapshot FROM events WHERE run_id = ? AND seq <= ? AND snapshot IS NOT NULL "
            "ORDER BY seq DESC LIMIT 1", (run_id, _clamp(seq))).fetchone()
        if row is None:
            self.run(run_id)
            raise EventNotFound(f"run {run_id} has no snapshot at or before event {seq}")
        snap = decode(row[1], f"run {run_id} event {row[0]}: its snapshot column")
        if not isinstance(snap, dict):
            raise CorruptLog(f"run {run_id} event {row[0]}: its snapshot is a {type(snap).__name__}, not a JSON object; "
                             "the log was edited outside fsmtrain")
        return row[0], snap

    def updates_between(self, run_id: int, after: int, upto: int | None = None) -> Iterator[str]:
        """Raw JSON text of the updates of events ``after < seq <= upto``, in order (the fold's hot path)."""
        _check_id(run_id, self.path)
        sql = "SELECT updates FROM events WHERE run_id = ? AND seq > ? AND updates IS NOT NULL"
        params: list[Any] = [run_id, _clamp(after)]
        if upto is not None:
            sql += " AND seq <= ?"
            params.append(_clamp(upto))
        for (text,) in self.conn.execute(sql + " ORDER BY seq", params):
            yield text

    # -- verifying ------------------------------------------------------------------
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


def _durability(durability: Any, synchronous: Any) -> str:
    """The durability mode from ``durability`` or the older ``synchronous`` spelling."""
    if synchronous is not None:
        legacy = {"FULL": "step", "NORMAL": "barrier"}.get(synchronous.upper() if isinstance(synchronous, str) else "")
        if legacy is None:
            raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', got {synchronous!r} (or give durability=)")
        if durability is not None and durability != legacy:
            raise ValueError(f"give durability= or synchronous=, not both ({durability!r} and {synchronous!r})")
        return legacy
    if durability is None:
        return "barrier"
    if durability not in DURABILITY:
        raise ValueError(f"durability must be one of {', '.join(map(repr, DURABILITY))}, got {durability!r}")
    return str(durability)


_TABLE_SHAPES = {
    "fsmtrain_schema": (["version", "applied", "fsmtrain"], ["version"]),
    "runs": (["id", "machine", "fingerprint", "created", "parent_id", "parent_seq", "tags"], ["id"]),
    "events": (["run_id", "seq", "step", "time", "kind", "action", "attempt", "inputs", "updates", "next", "info",
                "snapshot", "error", "prev_hash", "hash"], ["run_id", "seq"]),
}


def _row_hash(r: tuple[Any, ...], key: bytes | None) -> str:
    """The hash of an event row as :data:`_SELECT_EVENT` reads it (``prev_hash`` at 13)."""
    return event_hash(r[13], r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], key)


def _chain_key(info: str | None) -> str | None:
    """The key id a run's first event's ``info`` says its chain is keyed with (``None``: SHA-256)."""
    if not isinstance(info, str) or '"chain"' not in info:
        return None
    try:
        chain = json.loads(info).get("chain")
    except (ValueError, AttributeError, RecursionError):
        return None
    if isinstance(chain, dict) and chain.get("mac") == MAC and isinstance(chain.get("key"), str):
        return str(chain["key"])
    return None


def _json_problem(text: Any, where: str, problems: list[Problem], column: str, run: int | None,
                  seq: int | None) -> None:
    """Add a problem if ``text`` is not JSON of the shape its column holds (every JSON column holds an object)."""
    try:
        value = decode(text, where)
    except CorruptLog as e:
        problems.append(Problem("json", str(e).replace("; the log was edited outside fsmtrain", ""), run, seq))
        return
    if not isinstance(value, dict):
        problems.append(Problem("json", f"{where} holds a JSON {type(value).__name__}, not an object", run, seq))
    elif column == "updates":
        bad = sorted(set(value) - {"set", "append"})
        if bad or not isinstance(value.get("set", {}), dict) or not isinstance(value.get("append", {}), dict) \
                or not all(isinstance(v, list) for v in value.get("append", {}).values()):
            problems.append(Problem("json", f'{where} is not of the form {{"set": {{...}}, "append": {{key: '
                                            '[...]}}}}', run, seq))


def _run_info(row: tuple[Any, ...]) -> RunInfo:
    r = list(row)
    tags = decode(r[6], f"run {r[0]}: its tags column")
    r[6] = tags if isinstance(tags, dict) else {"tags": tags}
    return RunInfo(*r)


def _check_id(run_id: Any, path: Path) -> None:
    if isinstance(run_id, bool) or not isinstance(run_id, int) or not 1 <= run_id <= MAX_ID:
        raise RunNotFound(f"run {run_id!r} does not exist in {path} (run ids are whole numbers from 1 to {MAX_ID})")


def _clamp(n: Any) -> int:
    """A sequence bound as SQLite can take it (beyond the range, nothing matches anyway)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"an event sequence number must be an int, got {type(n).__name__}")
    return max(-MAX_ID, min(n, MAX_ID))


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is open; a failing ROLLBACK never hides the error that caused it."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass


# Open EventLogs per file in this process: the last one to close may tidy the WAL files up.
_OPEN: dict[str, int] = {}


def _sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _inspect(path: Path, *, readonly: bool, create: bool) -> bool:
    """Check what is at ``path`` before SQLite opens it; True when a new log is to be made there.

    Reads at most the 100-byte header, so a file that is not a log is refused without being
    touched: no WAL or shared-memory file appears beside it.
    """
    try:
        if path.is_dir():
            raise NotALog(f"{path} is a directory, not an fsmtrain log file")
        exists = path.exists()
    except OSError as e:
        raise NotALog(f"cannot look at {path}: {e.strerror or e}") from None
    except ValueError as e:  # e.g. a NUL in the path
        raise NotALog(f"{path!r} is not a usable file name: {e}") from None
    if not exists:
        if readonly or not create:
            raise NotALog(f"{path} does not exist" + ("" if readonly else "; nothing was created"))
        if not path.parent.is_dir():
            raise NotALog(f"cannot create {path}: folder {path.parent} does not exist")
        return True
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(100)
    except OSError as e:
        raise NotALog(f"cannot read {path}: {e.strerror or e}") from None
    if size == 0:
        if readonly or not create:
            raise NotALog(f"{path} is an empty file, not an fsmtrain log")
        return True
    if head[:16] != _HEADER:
        raise NotALog(f"{path} is not a SQLite database (it starts with {head[:8]!r}); not an fsmtrain log")
    if len(head) < 100:
        raise NotALog(f"{path} is a truncated SQLite file ({size} bytes, shorter than its 100-byte header); "
                      "not a usable log")
    page = int.from_bytes(head[16:18], "big")
    page = 65536 if page == 1 else page
    if page < 512 or page & (page - 1) or head[18] not in (1, 2) or head[19] not in (1, 2):
        raise NotALog(f"{path} has a damaged SQLite header; not a usable log")
    if size % page:
        raise NotALog(f"{path} is truncated or damaged: {size} bytes is not a whole number of "
                      f"{page}-byte pages; restore it from a copy")
    return False


def _check_writable(path: Path, new: bool) -> None:
    """Refuse to write, before any work, where the file or its folder cannot be written."""
    folder = path.parent if str(path.parent) else Path(".")
    problems = []
    if path.exists() and not os.access(path, os.W_OK):
        problems.append(f"the file {path} is not writable")
    if not os.access(folder, os.W_OK):
        problems.append(f"its folder {folder} is not writable (SQLite keeps its journal there)")
    if problems:
        raise ReadOnlyLog(f"cannot write to {path}: {' and '.join(problems)} (read-only storage or permissions); "
                          "nothing was done. Commands that only read it (replay, verify, ui, whatif, plot, study, "
                          "watch) still work")


def _remove_own_sidecars(path: Path, before: set[str]) -> None:
    """Remove the ``-wal``/``-shm`` files a reader made beside a log, once nobody has the log open.

    A read-only connection to a WAL log creates them and cannot delete them.  They are removed only
    when they did not exist before this object opened the log, the WAL holds nothing, and an
    exclusive lock on the shared-memory file's "dead man switch" byte (what SQLite itself takes
    before it deletes them) shows that no other connection is open.
    """
    made = [s for s in ("-wal", "-shm") if s not in before and _sidecar(path, s).exists()]
    if not made:
        return
    wal, shm = _sidecar(path, "-wal"), _sidecar(path, "-shm")
    try:
        if wal.exists() and wal.stat().st_size > 0:
            return  # someone wrote meanwhile: theirs to clean up
        if not shm.exists():
            if "-wal" in made:
                wal.unlink(missing_ok=True)
            return
        import fcntl

        fd = os.open(shm, os.O_RDWR)
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 128, 0)  # SQLite's DMS byte of the -shm
            except OSError:
                return  # another connection is open
            if wal.exists() and wal.stat().st_size > 0:
                return
            for s in made:
                _sidecar(path, s).unlink(missing_ok=True)
        finally:
            os.close(fd)
    except (OSError, ImportError):
        pass


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
