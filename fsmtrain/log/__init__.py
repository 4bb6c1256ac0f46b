"""The append-only SQLite event log: schema, append, read, verify.

One file holds many runs.  sqlite-utils creates the schema and serves reads; every
write takes its own ``BEGIN IMMEDIATE`` transaction on the same connection, reads
the run's last sequence number and refuses to write when it is not the one this
writer expected.  Triggers make the database reject every UPDATE and DELETE, and
a BEFORE INSERT trigger rejects a sequence number that would leave a gap.
See ``spec/log.md`` for the normative schema.

The package has one module per job: ``records`` (what a log holds), ``hashing`` (the chain), ``schema``
(tables, triggers, versions), ``files`` (the file and its sidecars), ``opening``, ``witness``, ``writing``
(durability and barriers), ``reading``, ``integrity`` (``check``, ``check_run``) and ``eventlog`` (the class).
This module only re-exports their public names.
"""

from __future__ import annotations

from ..errors import (  # (the errors the log raises, importable from here as before the split)
    CorruptLog as CorruptLog,
)
from ..errors import (
    EventNotFound as EventNotFound,
)
from ..errors import (
    LogBusy as LogBusy,
)
from ..errors import (
    LogError as LogError,
)
from ..errors import (
    LogKeyError as LogKeyError,
)
from ..errors import (
    NotALog as NotALog,
)
from ..errors import (
    ReadOnlyLog as ReadOnlyLog,
)
from ..errors import (
    RunNotFound as RunNotFound,
)
from ..errors import (
    SchemaVersionError as SchemaVersionError,
)
from ..errors import (
    StorageError as StorageError,
)
from ..errors import (
    WriteConflict as WriteConflict,
)
from .eventlog import EventLog
from .files import _OPEN as _OPEN
from .files import _filesystem_of as _filesystem_of
from .hashing import _hash_doc as _hash_doc
from .hashing import event_hash, key_id, run_hash
from .records import _EVENT_COLS as _EVENT_COLS
from .records import (
    BARRIER_EVERY,
    BARRIER_KINDS,
    BARRIER_SECONDS,
    CHECKPOINT_EVERY,
    DURABILITY,
    ENDED,
    EVENT_KINDS,
    MAX_ID,
    SCHEMA_VERSION,
    WITNESS_SECONDS,
    Event,
    Problem,
    RunInfo,
    decode,
    status_of,
)
from .schema import _SCHEMA_TRIGGERS as _SCHEMA_TRIGGERS

__all__ = ["BARRIER_EVERY", "BARRIER_KINDS", "BARRIER_SECONDS", "CHECKPOINT_EVERY", "DURABILITY", "ENDED",
           "EVENT_KINDS", "MAX_ID", "SCHEMA_VERSION", "WITNESS_SECONDS", "Event", "EventLog", "Problem", "RunInfo",
           "decode", "event_hash", "key_id", "run_hash", "status_of"]
