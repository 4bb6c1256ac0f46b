"""A log's home: where its runs live beyond one machine's disk (spec/home.md).

The home holds, as objects that are only ever created (never renamed, appended to or overwritten):

- ``runs/<run>/events/<first>.jsonl``: the run's event segments (:mod:`fsmtrain.log.segments`), contiguous,
  each continuing the hash chain of the one before; the last event of the last segment is the run's head as
  the home holds it;
- ``runs/<run>/claims/<n>.json``: the writers that took the run, numbered; the highest number is the one
  writer allowed to add segments (create-if-absent makes two machines that take the run at once see one win);
- ``artifacts/<path>``: the files the events name by :class:`~fsmtrain.Ref` (content-addressed).

:class:`Home` reads and writes those objects for a local log: it pulls what the home holds beyond the local
log (verifying every hash), takes a run (claims it), and ships segments (through
:class:`~fsmtrain.log.shipping.Shipper`, off the step's critical path).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import CorruptLog, HomeConflict, LogKeyError
from .hashing import _chain_key
from .records import _INSERT
from .segments import Segment, decode, first_of, first_prev, segment_key, verify
from .store import Store, open_store

__all__ = ["Home", "refs_in"]


class Home:
    """The home of one local log (``store``: where its objects are)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.url = store.url
        self.claims: dict[int, str] = {}  # run -> the name of this process's claim
        self.held: dict[int, tuple[int, str | None]] = {}  # run -> (seq, hash): how far the home holds it, as known
        self._segments: dict[int, list[int]] = {}  # run -> the first events of its segments, as last listed
        self.uploaded: set[str] = set()  # artifact paths known to be in the home
        self._lock = threading.Lock()

    @classmethod
    def open(cls, home: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> Home:
        return cls(open_store(home, storage_options))

    # -- what the home holds ------------------------------------------------------
    def runs(self) -> list[int]:
        return sorted(int(n) for n in self.store.list("runs") if n.isdigit())

    def firsts(self, run_id: int) -> list[int]:
        firsts = sorted(f for f in map(first_of, self.store.list(f"runs/{run_id}/events")) if f is not None)
        self._segments[run_id] = firsts
        return firsts

    def segment(self, run_id: int, first: int) -> Segment:
        key = segment_key(run_id, first)
        return decode(self.store.get(key), f"{self.url}/{key}", run_id, first)

    def tip(self, run_id: int) -> tuple[int, str | None]:
        """``(seq, hash)`` of the newest event the home holds of the run (``(0, None)``: none)."""
        firsts = self.firsts(run_id)
        if not firsts:
            return 0, None
        seg = self.segment(run_id, firsts[-1])
        self.held[run_id] = seg.head
        return seg.head

    def hash_at(self, run_id: int, seq: int) -> str | None:
        """The hash of the home's event ``seq`` of the run (``None``: it holds no such event), from the segments
        as last listed."""
        firsts = self._segments.get(run_id) or self.firsts(run_id)
        start = max((f for f in firsts if f <= seq), default=None)
        if start is None:
            return None
        for row in self.segment(run_id, start).rows:
            if row[1] == seq:
                return str(row[14])
        return None

    def segments(self, run_id: int, after: int) -> Iterator[Segment]:
        """The segments that hold the run's events after ``after``, in order (contiguity checked)."""
        firsts = self._segments.get(run_id) or self.firsts(run_id)
        start = max((f for f in firsts if f <= after + 1), default=None)
        if start is None:
            if firsts:
                raise CorruptLog(f"the home {self.url} lacks run {run_id}'s events {after + 1} to {firsts[0] - 1}")
            return
        expect = start
        for f in firsts[firsts.index(start):]:
            if f != expect:
                raise CorruptLog(f"the home {self.url} lacks run {run_id}'s events {expect} to {f - 1} (between two "
                                 "segments); nothing was taken from it")
            seg = self.segment(run_id, f)
            expect = seg.last + 1
            yield seg

    # -- pulling ------------------------------------------------------------------
    def pull(self, log: Any, run_id: int) -> int:
        """Add to ``log`` the events of ``run_id`` the home holds beyond it, verified; returns how many."""
        conn = log.conn
        row = conn.execute("SELECT max(seq) FROM events WHERE run_id = ?", (run_id,)).fetchone()
        have = row[0] or 0
        local_run = conn.execute("SELECT id, machine, fingerprint, created, parent_id, parent_seq, tags FROM runs "
                                 "WHERE id = ?", (run_id,)).fetchone()
        tip, tip_hash = self.tip(run_id)
        if tip == 0:
            return 0
        if have >= tip:
            (mine,) = conn.execute("SELECT hash FROM events WHERE run_id = ? AND seq = ?", (run_id, tip)).fetchone()
            if mine != tip_hash:
                raise self._diverged(log.path, run_id, tip)
            return 0
        prev = None
        if have:
            (prev,) = conn.execute("SELECT hash FROM events WHERE run_id = ? AND seq = ?", (run_id, have)).fetchone()
        added = 0
        key: bytes | None = None
        for seg in self.segments(run_id, have):
            if seg.run_row is not None:
                if local_run is not None and tuple(local_run) != seg.run_row:
                    raise HomeConflict(f"run {run_id} of {log.path} is not the run {run_id} the home {self.url} holds "
                                       "(another run under the same id): give this log a home of its own")
                if have == 0:
                    prev = first_prev(seg.run_row)
            if key is None:
                key = self._key(log, run_id, seg)
            rows = [r for r in seg.rows if r[1] > have]
            if rows and rows[0][13] != prev:
                raise self._diverged(log.path, run_id, have)
            prev = verify(run_id, rows, prev or "", key or None, f"{self.url}/{segment_key(run_id, seg.first)}")
            with log.transaction() as c:
                if seg.run_row is not None and local_run is None:
                    c.execute("INSERT INTO runs (id, machine, fingerprint, created, parent_id, parent_seq, tags) "
                              "VALUES (?, ?, ?, ?, ?, ?, ?)", seg.run_row)
                    local_run = seg.run_row
                c.executemany(_INSERT, rows)
            if rows:
                have = rows[-1][1]
                added += len(rows)
        if added:
            log._checked.pop(run_id, None)
            log.barrier()
        return added

    def _key(self, log: Any, run_id: int, seg: Segment) -> bytes:
        """The key the run's chain is hashed with (``b""``: plain SHA-256)."""
        if seg.first == 1:
            kid = _chain_key(seg.rows[0][10])
        else:
            row = log.conn.execute("SELECT info FROM events WHERE run_id = ? AND seq = 1", (run_id,)).fetchone()
            kid = _chain_key(row[0] if row else None)
        if kid is None:
            return b""
        if log._mac is None or kid != log.key_id:
            raise LogKeyError(f"run {run_id} in the home {self.url} is authenticated with a key (id {kid}): set "
                              "FSMTRAIN_LOG_KEY (or FSMTRAIN_LOG_KEY_FILE) to that key to take it; nothing was taken")
        return bytes(log._mac)

    def _diverged(self, path: Any, run_id: int, seq: int) -> HomeConflict:
        return HomeConflict(f"run {run_id} in {path} and in the home {self.url} differ at event {seq}: another "
                            "machine continued the run from the home, or this log continued without it. Move this "
                            f"log away and run the command again to continue from the home (`fsmtrain pull {self.url} "
                            "LOG` makes a copy of the home's runs)")

    def pull_all(self, log: Any) -> int:
        return sum(self.pull(log, r) for r in self.runs())

    # -- claims: one writer per run -----------------------------------------------
    def claim(self, me: Mapping[str, Any], run_id: int) -> str:
        """Take the run for the writer ``me`` (``{"host", "log", "made"}``: one local log; the processes that
        share it are one writer, kept apart by the run's local lock): nothing to do when the newest claim is
        already its own; otherwise create claim ``n + 1`` after the newest one.  Another writer that claims at
        the same moment makes this raise :class:`HomeConflict`, naming it."""
        with self._lock:  # (the writer's thread and the shipper's)
            if run_id in self.claims:
                return self.claims[run_id]
            names = self._claims(run_id)
            if names and self._mine(me, run_id, names[-1]):
                self.claims[run_id] = names[-1]
                return names[-1]
            n = int(names[-1].split(".")[0]) + 1 if names else 1
            name = f"{n:06d}.json"
            doc = {**me, "pid": os.getpid(), "at": time.time(), "id": uuid.uuid4().hex}
            if not self.store.create(f"runs/{run_id}/claims/{name}", json.dumps(doc, sort_keys=True).encode()) \
                    and not self._mine(me, run_id, name):
                raise self._other(run_id, name, "took it at the same moment")
            self.claims[run_id] = name
            return name

    def _claims(self, run_id: int) -> list[str]:
        return sorted(n for n in self.store.list(f"runs/{run_id}/claims")
                      if n.endswith(".json") and n.split(".")[0].isdigit())

    def _claim_doc(self, run_id: int, name: str) -> dict[str, Any]:
        try:
            doc = json.loads(self.store.get(f"runs/{run_id}/claims/{name}"))
        except ValueError:
            return {}
        return doc if isinstance(doc, dict) else {}

    def _mine(self, me: Mapping[str, Any], run_id: int, name: str) -> bool:
        doc = self._claim_doc(run_id, name)
        return all(doc.get(k) == v for k, v in me.items())

    def check_claim(self, me: Mapping[str, Any], run_id: int) -> None:
        """Raise :class:`HomeConflict` when another writer claimed the run after this one."""
        names = self._claims(run_id)
        mine = self.claims.get(run_id)
        if not names or names[-1] == mine:
            return
        if mine is not None and names[-1] > mine and self._mine(me, run_id, names[-1]):
            self.claims[run_id] = names[-1]  # (another process on this same log: the same writer)
            return
        raise self._other(run_id, names[-1], "took it since")

    def _other(self, run_id: int, name: str, how: str) -> HomeConflict:
        try:
            doc = self._claim_doc(run_id, name)
            who = (f"{doc.get('host')} (pid {doc.get('pid')}, log {doc.get('log')}, at "
                   f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(float(doc.get('at', 0))))})")
        except (OSError, ValueError, TypeError):
            who = f"the writer of claim {name}"
        return HomeConflict(f"run {run_id} belongs to another writer: {who} {how} in the home {self.url}; this "
                            "process stops and writes nothing more to the home. Stop the other one first to continue "
                            "here")

    # -- artifacts ----------------------------------------------------------------
    def upload(self, root: Path, path: str) -> int:
        """Put the local file ``root/path`` in the home unless it is there; returns the bytes sent.  A manifest
        (:func:`manifest_files`: a sharded checkpoint) goes after every file it lists."""
        if path in self.uploaded:
            return 0
        sent = 0
        if is_manifest(path):
            try:
                listed = manifest_files(root, path)
            except FileNotFoundError:
                return 0  # (deleted here since: no longer named)
            for f in listed:
                got = self.upload(root, f["path"])
                if f["path"] not in self.uploaded:
                    return sent  # a listed file is gone (retention): the manifest is not named any more either
                sent += got
        return sent + self._upload_one(root, path)

    def _upload_one(self, root: Path, path: str) -> int:
        key = f"artifacts/{path}"
        src = root / path
        sent = 0
        if not self.store.exists(key):
            try:
                size = src.stat().st_size
                if self.store.upload(key, src):
                    sent = size
            except FileNotFoundError as e:  # deleted here since (retention): no longer named by the run's state
                if e.filename is not None and Path(e.filename) != src:
                    raise  # (the home's side: a vanished folder there is the home's trouble, not ours)
                return 0
        self.uploaded.add(path)
        return sent

    def fetch(self, root: Path, path: str, sha256: str, size: int) -> bool:
        """Copy ``artifacts/path`` from the home to ``root/path`` when the home holds it with that content
        (checked before it is moved into place); ``False`` when it does not.  A manifest's listed files come
        first, each checked the same way, and the manifest last: a manifest here means its files are too."""
        if not is_manifest(path):
            return self._fetch_one(root, path, sha256, size)
        staged = f"{path}.{uuid.uuid4().hex}.fetching"
        try:
            if not self._fetch_one(root, staged, sha256, size, key=f"artifacts/{path}"):
                return False
            for f in manifest_files(root, staged):
                here = root / f["path"]
                if here.exists() and here.stat().st_size == f["size"] and _sha256(here) == f["sha256"]:
                    continue  # (already here, intact: a damaged one is fetched again)
                if not self._fetch_one(root, f["path"], f["sha256"], f["size"]):
                    raise CorruptLog(f"the home holds {path} but not {f['path']}, which it lists; nothing was "
                                     "taken from it")
            os.replace(root / staged, root / path)
        finally:
            (root / staged).unlink(missing_ok=True)
        return True

    def _fetch_one(self, root: Path, path: str, sha256: str, size: int, key: str | None = None) -> bool:
        key = key or f"artifacts/{path}"
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            try:
                self.store.fetch(key, tmp)
            except FileNotFoundError:
                return False
            data_ok = tmp.stat().st_size == size and _sha256(tmp) == sha256
            if not data_ok:
                raise CorruptLog(f"the home's {key} is not the file the log names (size or sha256 differ); "
                                 "nothing was taken from it")
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return True


MANIFEST = "manifest.json"
"""The name of a file that lists others, in a folder named ``*.dcp`` (a sharded checkpoint's):
``{"files": [{"path", "sha256", "size"}...]}``, each path relative to the manifest's folder.  A Ref to it stands
for all of them: they are shipped before it and fetched before it."""


def is_manifest(path: str) -> bool:
    """Whether the file a Ref names at ``path`` is a manifest of files (see :data:`MANIFEST`)."""
    p = PurePosixPath(path)
    return p.name == MANIFEST and p.parent.suffix == ".dcp"


def manifest_files(root: Path, path: str) -> list[dict[str, Any]]:
    """The files the manifest ``root/path`` lists, as ``{"path", "sha256", "size"}`` with paths relative to ``root``;
    :class:`CorruptLog` where it is not a manifest, or names a file outside its folder."""
    try:
        doc = json.loads((root / path).read_bytes())
        files = doc["files"]
        out = [{"path": str(PurePosixPath(path).parent / f["path"]), "sha256": str(f["sha256"]), "size": int(f["size"])}
               for f in files]
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptLog(f"{path} is not a manifest of files ({type(e).__name__})") from None
    for given in files:
        name = PurePosixPath(given["path"])
        if name.is_absolute() or ".." in name.parts or str(name) in ("", "."):
            raise CorruptLog(f"manifest {path} names {given['path']!r}, outside its folder")
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def refs_in(text: str | None) -> Iterator[dict[str, Any]]:
    """The ``{"path", "sha256", "size"}`` of every Ref a JSON column names."""
    if not text or '"$ref"' not in text:
        return
    stack: list[Any] = [json.loads(text)]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            r = v.get("$ref")
            if len(v) == 1 and isinstance(r, dict) and isinstance(r.get("path"), str):
                yield r
            else:
                stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
