"""Opening a log: checking the file, reading through a read-only connection until the first write, then
the writing connection (WAL, the durability's ``synchronous``), making the schema of a new log and upgrading an
older one."""

from __future__ import annotations

import os
import sqlite3
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlite_utils

from ..errors import (
    FsmtrainError,
    LogBusy,
    LogError,
    NotALog,
    ReadOnlyLog,
    StorageError,
    environmental,
)
from .files import _OPEN, _check_writable, _inspect, _refuse_network_fs, _remove_own_sidecars, _rollback, _sidecar, _why_storage
from .hashing import _log_key, key_id
from .records import BARRIER_EVERY, BARRIER_SECONDS, DURABILITY, SCHEMA_VERSION
from .schema import _TABLES, _Fresh, create_schema, schema_version, upgrade
from .witness import Witness


class _Opening:
    """The log's connections and settings (the first layer of :class:`~fsmtrain.log.EventLog`)."""

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
        self._made = new  # this object makes the file at its first write (and takes it back if that fails)
        self._inherited = not new and not readonly and self.durability == "barrier"
        self._key = str(self.path.resolve())
        if not readonly:
            _check_writable(self.path, new)
            _refuse_network_fs(self.path)
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
            # Read-only storage, or a full disk, where the WAL's shared-memory file cannot be created: with no
            # WAL left behind, the database file alone is the whole log, and can be read as immutable.
            if self._ro is not None:
                self._ro.close()
                self._ro = None
            _remove_own_sidecars(self.path, self._sidecars)  # (what the failed open made, e.g. on a full disk)
            text = str(e).lower()
            if isinstance(e, LogBusy) or _sidecar(self.path, "-wal").exists() or \
                    not any(s in text for s in ("unable to open", "readonly", "disk i/o error", "disk is full")):
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
            self.db = sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)
            tables = {t for t in self.db.table_names() if not t.startswith("sqlite_")}
            if not tables:
                conn.execute("BEGIN IMMEDIATE")
                made = False
                try:
                    if "fsmtrain_schema" not in set(self.db.table_names()):  # another process may have won the race
                        self._create_schema(conn)
                        made = True
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise
                if made:
                    self._rw = self.conn = conn
                    self._log_made()
            else:
                self._probe(conn)
        except sqlite3.DatabaseError as e:
            conn.close()
            self._unmake()
            env = environmental(e)
            if env:
                raise StorageError(f"cannot write to {self.path}: {_why_storage(env, self.path)}") from None
            raise self._open_error(e) from None
        except BaseException:
            conn.close()
            self._unmake()
            raise
        self._rw = self.conn = conn
        self._check_version(conn)
        return conn

    def _log_made(self) -> None:
        """This object just made the log's schema (the witness is told: :class:`~fsmtrain.log.writing._Writing`)."""

    def _unmake(self) -> None:
        """After a failed first write to a log this object was to make: take back the empty file (and the
        sidecars it made) so that a refused command leaves nothing behind; a file someone filled stays."""
        if not self._made:
            return
        try:
            if self.path.exists() and self.path.stat().st_size == 0:
                for s in ("-wal", "-shm"):
                    side = _sidecar(self.path, s)
                    if s not in self._sidecars and side.exists() and (s == "-shm" or side.stat().st_size == 0):
                        side.unlink()
                self.path.unlink()
        except OSError:
            pass

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        create_schema(self.db, conn)

    def _check_version(self, conn: sqlite3.Connection) -> None:
        self.schema_version = schema_version(conn, self.path)

    def _upgrade(self, conn: sqlite3.Connection) -> None:
        """Inside a write transaction: record that the log now holds this schema version's events."""
        upgrade(conn)
        self.schema_version = SCHEMA_VERSION

    @property
    def artifacts(self) -> Path:
        """The folder that :class:`~fsmtrain.Ref` paths are relative to (default: ``<log>.artifacts``)."""
        return self._artifacts if self._artifacts is not None else self.path.with_name(self.path.name + ".artifacts")

    def close(self) -> None:
        """Close the connections.  A reader removes the WAL files it made beside a log nobody else has open."""
        was_open = self._ro is not None or self._rw is not None
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

    def _writable(self) -> None:
        if self.readonly:
            raise ReadOnlyLog(f"{self.path} was opened read-only; open it with EventLog(path) to write")



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

