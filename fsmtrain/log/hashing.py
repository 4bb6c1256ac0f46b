"""The hash chain: a run's genesis hash, an event's hash (SHA-256, or HMAC-SHA256 under the log's key),
the key itself and its public id (spec/log.md, *Integrity*)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any

from ..errors import (
    LogKeyError,
)
from .files import read_small_regular
from .records import MAC

KEY_FILE_LIMIT = 4096
"""The most bytes a key file may hold (a secret is a few dozen)."""

__all__ = ["event_hash", "key_id", "run_hash"]


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
                key = read_small_regular(Path(name), KEY_FILE_LIMIT, "the key file").rstrip(b"\r\n")
            except OSError as e:
                raise LogKeyError(f"FSMTRAIN_LOG_KEY_FILE names {name!r}, which cannot be read: "
                                 f"{e.strerror or e}") from None
            except ValueError as e:
                raise LogKeyError(f"FSMTRAIN_LOG_KEY_FILE: {e}; give a regular file holding the secret") from None
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
