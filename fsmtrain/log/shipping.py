"""Shipping a log to its home on a background thread, never on the step's critical path.

A writer's barrier hands the shipper the heads it made durable (:meth:`Shipper.wake`: a dict copy and a
notify).  The thread then, for each run: takes it in the home when this process has not (a claim), uploads the
files its new events name, checks that no newer claim took the run, and creates the segment of those events.
A home that cannot be reached is said once on stderr; training goes on, and the thread retries (backing off to
10 s) until it catches up.  Another writer found in the home stops shipping for good (:attr:`Shipper.lost`, which
the writer raises at its next append).  A gate's answer, a run's end and ``close`` wait for it
(:meth:`Shipper.settle`), at most ``timeout`` seconds.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..errors import CorruptLog, FsmtrainError, HomeConflict, LogKeyError, environmental
from .home import Home, refs_in
from .records import _EVENT_COLS
from .segments import encode, segment_key

__all__ = ["SEGMENT_EVENTS", "Shipper"]

SEGMENT_EVENTS = 2000
"""At most this many events per segment (a long backlog is shipped as several)."""
_RUN_COLS = "id, machine, fingerprint, created, parent_id, parent_seq, tags"


class Shipper:
    """Ships the durable events of the log at ``path`` (files relative to ``artifacts``) to ``home``."""

    def __init__(self, home: Home, path: Path, artifacts: Path, *, quiet: bool = False) -> None:
        self.home = home
        self.me: dict[str, Any] | None = None
        """Who writes (the home's claims name it); set by the writer's thread before it first wakes this one."""
        self.path = path
        self.artifacts = artifacts
        self.quiet = quiet
        self.lost: HomeConflict | None = None
        """Another writer took a run in the home: shipping stopped; the log's writer raises this."""
        self.failing: str | None = None
        """Why the home cannot be reached right now (``None``: it can)."""
        self.lags: list[float] = []
        """Seconds from each barrier (:meth:`wake`) until the home held what it made durable."""
        self.sent_bytes = 0
        self.sent_seconds = 0.0
        self._want: dict[int, tuple[int, str]] = {}
        self._woken: dict[int, float] = {}  # run -> when the oldest unshipped barrier asked for it
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self._conn: sqlite3.Connection | None = None
        self._busy = False

    # -- the writer's side --------------------------------------------------------
    def wake(self, heads: dict[int, tuple[int, str]]) -> None:
        """What a barrier made durable: ship it."""
        if not heads or self.lost is not None:
            return
        now = time.monotonic()
        with self._cv:
            for run, head in heads.items():
                if head[0] > self._want.get(run, (0, ""))[0]:
                    self._want[run] = head
                    self._woken.setdefault(run, now)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=f"fsmtrain-home {self.home.url}", daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def behind(self) -> dict[int, tuple[int, int]]:
        """Runs the home lacks durable events of: ``{run: (home's seq, local durable seq)}``."""
        with self._cv:
            return {r: (self.home.held.get(r, (0, None))[0], s) for r, (s, _) in self._want.items()
                    if self.home.held.get(r, (0, None))[0] < s}

    def settle(self, timeout: float) -> bool:
        """Wait until the home holds everything woken so far (at most ``timeout`` s); whether it does."""
        end = time.monotonic() + timeout
        with self._cv:
            self._cv.notify_all()
            while self.lost is None and (self._pending() or self._busy):
                left = end - time.monotonic()
                if left <= 0 or self._thread is None:
                    break
                self._cv.wait(min(left, 0.5))
            return self.lost is None and not self._pending()

    def close(self, timeout: float) -> bool:
        ok = self.settle(timeout)
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        return ok

    def _pending(self) -> bool:
        return any(self.home.held.get(r, (0, None))[0] < s for r, (s, _) in self._want.items())

    # -- the thread ---------------------------------------------------------------
    def _loop(self) -> None:
        delay = 0.5
        try:
            while True:
                with self._cv:
                    while not self._stop and not self._pending():
                        self._cv.wait()
                    if self._stop and (self.failing is not None or not self._pending()):
                        return
                    work = {r: h for r, h in self._want.items() if self.home.held.get(r, (0, None))[0] < h[0]}
                    self._busy = True
                try:
                    for run, head in sorted(work.items()):
                        self._ship(run, head)
                except (HomeConflict, CorruptLog, LogKeyError, sqlite3.ProgrammingError) as e:
                    self.lost = e if isinstance(e, HomeConflict) else HomeConflict(
                        f"shipping to the home {self.home.url} stopped: {_line(e)}")
                    self._say(f"fsmtrain: {self.lost}")
                    return
                except Exception as e:  # unreachable, refused, timed out: say so once, go on, retry
                    why = environmental(e) if isinstance(e, OSError) else None
                    if self.failing is None:
                        self._say(f"fsmtrain: the home {self.home.url} cannot be reached ({why or _line(e)}); training "
                                  "goes on, and the home catches up when it is back")
                    self.failing = why or _line(e)
                    with self._cv:
                        self._busy = False
                        self._cv.notify_all()
                        if not self._stop:
                            self._cv.wait(delay)
                    delay = min(delay * 2, 10.0)
                    continue
                if self.failing is not None:
                    self.failing = None
                    self._say(f"fsmtrain: the home {self.home.url} is back; it holds every durable event again")
                delay = 0.5
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()
        except BaseException as e:  # (a bug: never a silent thread; the writer raises it at its next write)
            self.lost = HomeConflict(f"shipping to the home {self.home.url} stopped: {_line(e)}")
        finally:
            with self._cv:
                self._busy = False
                self._cv.notify_all()
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _ship(self, run: int, head: tuple[int, str]) -> None:
        """Bring the home's copy of ``run`` up to ``head`` (this log's durable head): from the home's tip as it is
        now (another process of this log may have shipped since), after checking that the tip is this log's."""
        home = self.home
        assert self.me is not None
        held, held_hash = home.tip(run)
        if held >= head[0]:  # the home holds as much: it must be this log's history there
            if home.hash_at(run, head[0]) != head[1]:
                raise self._elsewhere(run, head[0])
            return
        if held:
            local = self._rows(run, held - 1, held)
            if not local or local[0][14] != held_hash:
                raise self._elsewhere(run, held)
        if run not in home.claims:
            home.claim(self.me, run)
        while held < head[0]:
            rows = self._rows(run, held, min(head[0], held + SEGMENT_EVENTS))
            if not rows or rows[0][1] != held + 1:
                raise CorruptLog(f"{self.path} lacks run {run}'s events after {held}, which it made durable")
            run_row = self._run_row(run) if rows[0][1] == 1 else None
            start = time.monotonic()
            for ref in head_refs(rows):
                self.sent_bytes += home.upload(self.artifacts, ref["path"])
            home.check_claim(self.me, run)
            data = encode(run, rows, run_row, home.claims[run])
            key = segment_key(run, rows[0][1])
            if not home.store.create(key, data) and home.store.get(key) != data:  # (a retried put may find its own)
                tip = home.tip(run)  # (another process of this log may have shipped these events meanwhile)
                if tip[0] >= rows[-1][1] and home.hash_at(run, rows[-1][1]) == rows[-1][14]:
                    held, held_hash = tip
                    continue
                raise home._other(run, home._claims(run)[-1], "wrote its events since")
            self.sent_bytes += len(data)
            self.sent_seconds += time.monotonic() - start
            held, held_hash = rows[-1][1], rows[-1][14]
            with self._cv:
                home.held[run] = (held, held_hash)
                home._segments.setdefault(run, []).append(rows[0][1])
                if held >= self._want.get(run, (0, ""))[0] and run in self._woken:
                    self.lags.append(time.monotonic() - self._woken.pop(run))
                self._cv.notify_all()

    def _elsewhere(self, run: int, seq: int) -> HomeConflict:
        """The home's history of ``run`` is not this log's at ``seq``: name the writer that made it, if a claim
        says which."""
        assert self.me is not None
        names = self.home._claims(run)
        if names and names[-1] != self.home.claims.get(run) and not self.home._mine(self.me, run, names[-1]):
            return self.home._other(run, names[-1], "continued it")
        return self.home._diverged(self.path, run, seq)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(f"file:{quote(str(self.path.resolve()))}?mode=ro", uri=True, timeout=30.0,
                                         check_same_thread=False)
        return self._conn

    def _rows(self, run: int, after: int, upto: int) -> list[tuple[Any, ...]]:
        return self._db().execute(f"SELECT {', '.join(_EVENT_COLS)} FROM events WHERE run_id = ? AND seq > ? AND "
                                  "seq <= ? ORDER BY seq", (run, after, upto)).fetchall()

    def _run_row(self, run: int) -> tuple[Any, ...]:
        return tuple(self._db().execute(f"SELECT {_RUN_COLS} FROM runs WHERE id = ?", (run,)).fetchone())

    def _say(self, line: str) -> None:
        if not self.quiet:
            try:
                print(line, file=sys.stderr, flush=True)
            except (OSError, ValueError):  # (a closed stderr must not kill the thread)
                pass


def head_refs(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """The files the state names after the last of ``rows`` among those their updates and snapshots name: each
    top-level key's newest value (a checkpoint superseded within the segment is not needed to resume from it)."""
    keys: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        for col, is_snapshot in ((row[11], True), (row[8], False)):
            if not col or '"$ref"' not in col:
                if is_snapshot and col:
                    keys.clear()  # (a snapshot without files: nothing before it is named any more)
                continue
            value = json.loads(col)
            if not isinstance(value, dict):
                continue
            if is_snapshot:
                keys = {k: list(refs_in(json.dumps(v))) for k, v in value.items()}
                continue
            for k, v in (value.get("set") or {}).items():
                keys[k] = list(refs_in(json.dumps(v)))
            for k, items in (value.get("append") or {}).items():
                keys.setdefault(k, []).extend(refs_in(json.dumps(items)))
    return [r for refs in keys.values() for r in refs]


def _line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    name = type(e).__name__
    if isinstance(e, FsmtrainError):
        return first or name
    return f"{name}: {first}" if first else name
