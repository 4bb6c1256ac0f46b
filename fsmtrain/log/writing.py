"""Writing to a log: one ``BEGIN IMMEDIATE`` transaction per write (or one INSERT on the hot path), the
durability policy and its barriers, creating runs and appending events, and closing (the last barrier)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

from ..errors import (
    FsmtrainError,
    LogBusy,
    LogKeyError,
    RunNotFound,
    StorageError,
    UnserializableValue,
    WriteConflict,
    environmental,
)
from ..state import Encoded, dumps
from .files import _rollback, _sidecar, _why_storage
from .hashing import _chain_key, event_hash, run_hash
from .opening import _Opening
from .records import _INSERT, BARRIER_KINDS, CHECKPOINT_EVERY, EVENT_KINDS, MAC, SCHEMA_VERSION, WITNESS_SECONDS, Event
from .witness import Witness

_now = time.time  # (append's `time` argument shadows the module)
time_ = time  # (the module, where append's `time` argument shadows it)
_new_event = tuple.__new__  # (an Event from a tuple without the namedtuple's Python-level __new__)
_UNKNOWN = object()


class _Writing(_Opening):
    """Transactions, durability and appends (a layer of :class:`~fsmtrain.log.EventLog`)."""

    _ship: Any = None  # the home's shipper (fsmtrain.log.homed), woken at each barrier

    def take(self, run_id: int) -> None:
        """Before writing to a run: take it in the log's home (see :mod:`fsmtrain.log.homed`; nothing without one)."""

    def _home_wait(self) -> None:
        """Wait for the home where a person was told something (nothing without one)."""

    def _wake(self, heads: dict[int, tuple[int, str]]) -> None:
        """Hand the home's shipper what a barrier made durable (nothing without one)."""

    def close(self) -> None:
        """Close the log: a last barrier for what is not durable yet, the witness told, then the connections (a
        reader removes the WAL files it made beside a log nobody else has open)."""
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
        super().close()


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
        if self._ship is not None and self._heads:
            self._wake(dict(self._heads))
        if self._heads and (self._witness_due or self._last_barrier - self._witnessed >= WITNESS_SECONDS):
            self._witness()
        if c is not None and self.durability == "barrier" and self.commits - self._checkpointed >= CHECKPOINT_EVERY:
            self._checkpointed = self.commits
            try:  # PASSIVE: copies what no reader still needs, never waits (a later barrier does the rest)
                c.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error:
                pass  # upkeep only: the commits are durable in the WAL


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

    def _abandoned(self, c: sqlite3.Connection, full: bool, e: BaseException) -> BaseException:
        """Roll back a write that failed with ``e`` and return what to raise: the real cause (:meth:`_write_error`),
        chained to ``e`` when it is another error, as ``raise err from e`` would."""
        _rollback(c)
        self._settle(c, full)
        err = self._write_error(e)
        if err is not e:
            err.__cause__ = e
        return err

    def _write_error(self, e: BaseException) -> BaseException:
        """What a failed write raises: the real cause, never a ROLLBACK's complaint."""
        if isinstance(e, UnicodeEncodeError):
            return UnserializableValue(f"cannot write to {self.path}: a text holds characters that are not valid "
                                       f"UTF-8 ({e.reason} at position {e.start}); give plain UTF-8 text")
        env = environmental(e) if isinstance(e, (sqlite3.Error, OSError)) else None
        if env:
            return StorageError(f"cannot write to {self.path}: {_why_storage(env, self.path)}; nothing of this write "
                                "was committed, and the log is as it was before it. Fix the cause and run again to "
                                "continue")
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
            raise self._abandoned(c, full, e)  # noqa: B904  (it chains the real cause itself)
        self._committed(c, full)

    def create_run(self, machine: str, fingerprint: str, *, snapshot: Mapping[str, Any] | Encoded, next_action: str,
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
        if self._ship is not None and self._ship.lost is not None:
            raise self._ship.lost
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
            raise self._abandoned(c, full, e)  # noqa: B904  (it chains the real cause itself)
        self._keyed[run_id] = self.key_id
        self._heads[run_id] = (1, ev.hash)
        self._witness_due = self._witness_due or full
        self._committed(c, full)
        if self._ship is not None:
            self.take(run_id)
        return ev

    def append(self, run_id: int, expected_seq: int, *, kind: str, step: int, action: str | None = None,
               attempt: int | None = None, inputs: Mapping[str, Any] | None = None, updates: Any = None,
               next_action: str | None = None, info: Any = None, snapshot: Mapping[str, Any] | Encoded | None = None,
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
        ship = self._ship
        if ship is not None:  # (a log with a home: another writer took the run, or this one has not yet)
            if ship.lost is not None:
                raise ship.lost
            self.take(run_id)
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        # (the hot path of every step: what a runner passes pre-encoded is taken as it is)
        inputs_text = None if inputs is None else dumps(inputs)
        updates_text = None if updates is None else updates if type(updates) is Encoded else dumps(updates)
        info_text = None if info is None else info if type(info) is Encoded else dumps(info)
        snapshot_text = None if snapshot is None else snapshot if type(snapshot) is Encoded else dumps(snapshot)
        durability = self.durability
        if durability == "barrier":  # (see _full)
            full = bool(barrier or kind in BARRIER_KINDS or (kind == "step" and next_action is None)
                        or self.commits - self.synced >= self.barrier_every - 1
                        or time_.monotonic() - self._last_barrier >= self.barrier_seconds)
        else:
            full = durability == "step"
        mac = None if self._keyed.get(run_id, _UNKNOWN) is None else self._run_key(run_id)
        c = self._rw
        one = prev_hash is not None and c is not None and self.schema_version == SCHEMA_VERSION
        if one:  # the hot path: a single INSERT is its own (atomic) transaction
            assert c is not None
            if full and durability == "barrier":
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
            h = event_hash(prev_hash, run_id, seq, step, t, kind, action, attempt, inputs_text, updates_text,
                           next_action, info_text, snapshot_text, error, mac)
            try:
                c.execute(_INSERT, (run_id, seq, step, t, kind, action, attempt, inputs_text, updates_text, next_action,
                                    info_text, snapshot_text, error, prev_hash, h))
            except sqlite3.IntegrityError as e:
                if "gapless" in str(e) or "UNIQUE" in str(e):
                    raise self._conflict(run_id, expected_seq) from None
                raise
            if not one:
                c.execute("COMMIT")
        except BaseException as e:
            raise self._abandoned(c, full, e)  # noqa: B904  (it chains the real cause itself)
        self._heads[run_id] = (seq, h)
        self.commits += 1
        if full:
            if kind in BARRIER_KINDS or next_action is None:
                self._witness_due = True
                self._witness_sync = self._witness_sync or kind in BARRIER_KINDS
            self._settle(c, full)
            self._synced(c)
            if ship is not None and (kind in BARRIER_KINDS or (kind == "step" and next_action is None)):
                self._home_wait()
        elif durability == "none":  # (see _committed)
            self._synced(c)
        return _new_event(Event, (run_id, seq, step, t, kind, action, attempt, inputs, updates, next_action, info,
                                  snapshot, error, prev_hash, h))

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

    # -- the witness ------------------------------------------------------------------
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

    def _log_made(self) -> None:
        """Tell the witness (synced) that the log at this path is now this one: heads it holds about a log made
        here before no longer apply, and a log here claiming another identity later is not this one."""
        if self.durability == "none":
            return
        self._ident = None
        try:
            if self._wit is None:
                self._wit = Witness(self.artifacts, self._identity())
            self._wit.record_made()
        except (OSError, sqlite3.Error) as e:
            warnings.warn(f"{self.path}: cannot write the witness file in {self.artifacts}: "
                          f"{environmental(e) or e}; verify will not notice if this log loses what it holds",
                          stacklevel=4)

    def _accept(self, run_id: int, seq: int, h: str, note: dict[str, Any]) -> None:
        """Tell the witness (synced) that a person accepted the loss of what it saw of ``run_id`` beyond event
        ``seq`` (``0``: the whole run): its head is ``(seq, h)`` from now on."""
        if self._wit is None:
            self._wit = Witness(self.artifacts, self._identity())
        try:
            self._wit.record([(run_id, seq, h)], sync=True, accepted=note)
        except OSError as e:
            raise StorageError(f"cannot write the witness file in {self.artifacts}: {environmental(e) or e}; "
                               "the loss was not recorded there") from None

    def _identity(self) -> str:
        """What names this log file in its witness: the moment its schema was made (kept by its copies, new
        for a log made anew at the same path)."""
        if self._ident is None:
            row = self.conn.execute("SELECT applied FROM fsmtrain_schema ORDER BY version LIMIT 1").fetchone()
            self._ident = repr(row[0]) if row else "?"
        return self._ident

    def _witness_heads(self) -> dict[int, tuple[int, str]]:
        """The heads the witness saw of the log it knows at this path (none for a throwaway log: it has no
        witness): this log's, or, when this log claims another identity than the one the witness knows here,
        those of the one it knows (what this log must still hold, whatever it claims to be)."""
        if self.durability == "none":
            return {}
        try:
            w = Witness(self.artifacts, self._identity())
            bound = w.bound()
            return w.heads(bound if bound is not None else None)
        except sqlite3.Error:
            return {}

    def _identity_problem(self) -> str | None:
        """Why this log is not the one its witness knows at this path (``None``: it is, or there is no witness)."""
        if self.durability == "none":
            return None
        try:
            mine = self._identity()
            bound = Witness(self.artifacts, mine).bound()
        except sqlite3.Error:
            return None
        if bound is None or bound == mine:
            return None
        return (f"this log says it was made at {mine}, but the witness knows the log at this path as the one made "
                f"at {bound} (a log edited, or replaced by another one outside fsmtrain; `fsmtrain recover "
                f"{self.path} --accept-loss` accepts this one in its place)")

    def _rebind(self, note: dict[str, Any]) -> None:
        """A person accepts this log in place of the one the witness knew at this path (synced)."""
        if self._wit is None:
            self._wit = Witness(self.artifacts, self._identity())
        try:
            self._wit.record_made(note)
        except OSError as e:
            raise StorageError(f"cannot write the witness file in {self.artifacts}: {environmental(e) or e}; "
                               "nothing was recorded") from None
