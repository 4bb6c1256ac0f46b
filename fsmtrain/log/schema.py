"""The log's tables and triggers: how a new log is made, the shape writers make (what ``check`` compares
against), the schema version a file records and its upgrade by the first write."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import sqlite_utils

from .._version import __version__
from ..errors import NotALog, SchemaVersionError
from .records import _EVENT_COLS, SCHEMA_VERSION

_TABLES = {"fsmtrain_schema", "runs", "events"}

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

_TABLE_SHAPES = {
    "fsmtrain_schema": (["version", "applied", "fsmtrain"], ["version"]),
    "runs": (["id", "machine", "fingerprint", "created", "parent_id", "parent_seq", "tags"], ["id"]),
    "events": (["run_id", "seq", "step", "time", "kind", "action", "attempt", "inputs", "updates", "next", "info",
                "snapshot", "error", "prev_hash", "hash"], ["run_id", "seq"]),
}


def create_schema(db: sqlite_utils.Database, conn: sqlite3.Connection) -> None:
    """Make the tables, index and triggers of a new log, and record its schema version."""
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


def schema_version(conn: sqlite3.Connection, path: Path) -> int:
    """The schema version the log at ``path`` records; refuses one no fsmtrain writes, or a newer one."""
    row = conn.execute("SELECT max(version) FROM fsmtrain_schema").fetchone()
    version = row[0] if row else None
    if version is None:
        raise NotALog(f"{path} has an empty fsmtrain_schema table; it is not a complete fsmtrain log")
    if not isinstance(version, int):
        raise NotALog(f"{path} records schema version {version!r}, which no fsmtrain writes")
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{path} uses log schema version {version}, newer than this fsmtrain supports "
            f"({SCHEMA_VERSION}); upgrade fsmtrain to read it"
        )
    return version


def upgrade(conn: sqlite3.Connection) -> None:
    """Inside a write transaction: record that the log now holds this schema version's events."""
    (version,) = conn.execute("SELECT max(version) FROM fsmtrain_schema").fetchone()
    if version < SCHEMA_VERSION:
        conn.execute("INSERT INTO fsmtrain_schema (version, applied, fsmtrain) VALUES (?, ?, ?)",
                     (SCHEMA_VERSION, time.time(), __version__))
