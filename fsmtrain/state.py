"""Immutable run state: JSON values (non-finite floats included) plus :class:`Ref`.

A :class:`State` is a read-only mapping.  Updating one returns a new State that
shares every unchanged value with the old one; lists are stored as :class:`Seq`,
an immutable sequence whose appends share the prefix, so appending to a long
metric history costs O(1) instead of O(len).
"""

from __future__ import annotations

import json
import json.scanner
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any, overload

import attrs

from .errors import UndeclaredRead, UnserializableValue

__all__ = ["Append", "Encoded", "FrozenDict", "Ref", "Seq", "State", "append", "dumps", "freeze", "loads", "thaw"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _check_relative(_: Any, __: Any, path: str) -> None:
    if not isinstance(path, str) or not path:
        raise ValueError("Ref.path must be a non-empty string")
    parts = path.replace("\\", "/").split("/")
    if path.startswith(("/", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", path):
        raise ValueError(
            f"Ref.path {path!r} must be relative to the log's artifact folder, without '..'"
        )


def _check_sha(_: Any, __: Any, digest: str) -> None:
    if not isinstance(digest, str) or not _SHA256.match(digest):
        raise ValueError(f"Ref.sha256 must be 64 lowercase hex digits, got {digest!r}")


def _check_size(_: Any, __: Any, size: int) -> None:
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"Ref.size must be a non-negative int, got {size!r}")


@attrs.frozen
class Ref:
    """A reference to an artifact file: path relative to the artifact folder, sha256, size."""

    path: str = attrs.field(validator=_check_relative)
    sha256: str = attrs.field(validator=_check_sha)
    size: int = attrs.field(validator=_check_size)

    def to_json(self) -> dict[str, Any]:
        """The Ref as it is stored: ``{"$ref": {"path", "sha256", "size"}}``."""
        return {"$ref": {"path": self.path, "sha256": self.sha256, "size": self.size}}


class Seq(Sequence[Any]):
    """An immutable list.  ``appended`` shares storage with the original when it can."""

    __slots__ = ("_items", "_n")

    def __init__(self, items: Iterable[Any] = ()) -> None:
        self._items = [freeze(v) for v in items]
        self._n = len(self._items)

    @classmethod
    def _share(cls, items: list[Any], n: int) -> Seq:
        new = cls.__new__(cls)
        new._items = items
        new._n = n
        return new

    def appended(self, *values: Any) -> Seq:
        """A new Seq with ``values`` added at the end; this one is unchanged."""
        frozen = [freeze(v) for v in values]
        if self._n == len(self._items):
            # Nobody has appended past our end yet: extend the shared list in place.
            # Older Seqs keep seeing only their own prefix (their _n is smaller).
            self._items.extend(frozen)
            return Seq._share(self._items, self._n + len(frozen))
        end = self._n + len(frozen)
        if self._items[self._n:end] == frozen:
            # Someone appended these very values already (an action that looked ahead, a redone step):
            # share their storage too, so that folds keyed on it go on incrementally.
            return Seq._share(self._items, end)
        return Seq._share(self._items[: self._n] + frozen, end)

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> Any: ...
    @overload
    def __getitem__(self, i: slice) -> list[Any]: ...
    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return self._items[: self._n][i]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError("Seq index out of range")
        return self._items[i]

    def __iter__(self) -> Iterator[Any]:
        items, n = self._items, self._n
        for i in range(n):
            yield items[i]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Seq, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Seq({list(self)!r})"

    def tolist(self) -> list[Any]:
        return self._items[: self._n]


class FrozenDict(Mapping[str, Any]):
    """An immutable dict with string keys."""

    __slots__ = ("_d",)

    def __init__(self, d: Mapping[str, Any] = ()) -> None:  # type: ignore[assignment]
        self._d = dict(d)

    def __getitem__(self, k: str) -> Any:
        return self._d[k]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self._d) == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"FrozenDict({self._d!r})"


@attrs.frozen
class Append:
    """An update that appends ``items`` to a list in state instead of replacing it."""

    items: tuple[Any, ...]


def append(*items: Any) -> Append:
    """Return an update that appends ``items`` to the list at that key.

    >>> s = State({"h": [1]})
    >>> s.apply({"h": append(2, 3)})["h"]
    Seq([1, 2, 3])
    """
    return Append(tuple(items))


_set = object.__setattr__

_ATOMS = frozenset({type(None), bool, int, float, str, Ref, Seq, FrozenDict})


def freeze(value: Any, where: str = "value") -> Any:
    """Validate that ``value`` is a JSON value or Ref and return its immutable form."""
    t = type(value)
    if t in _ATOMS:
        return value
    if isinstance(value, (list, tuple)):
        return Seq._share([freeze(v, f"{where}[{i}]") for i, v in enumerate(value)], len(value))
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise UnserializableValue(
                    f"{where} has key {k!r} of type {type(k).__name__}; state dict keys must be str"
                )
            if k == "$ref":
                raise UnserializableValue(f"{where} uses the reserved key '$ref'; use fsmtrain.Ref")
            out[k] = freeze(v, f"{where}[{k!r}]")
        fd = FrozenDict.__new__(FrozenDict)
        fd._d = out
        return fd
    if isinstance(value, (bool, int, float, str)):  # subclasses such as IntEnum or numpy scalars
        base = bool if isinstance(value, bool) else int if isinstance(value, int) else float if isinstance(value, float) else str
        return base(value)
    raise UnserializableValue(
        f"{where} is a {t.__module__}.{t.__qualname__}, which is not a JSON value or a Ref; "
        "store plain numbers/strings/lists/dicts, or save the object as an artifact and store its Ref"
    )


def thaw(value: Any) -> Any:
    """The plain-Python (list/dict) form of a frozen value; Refs stay Refs."""
    if isinstance(value, Seq):
        return [thaw(v) for v in value]
    if isinstance(value, FrozenDict):
        return {k: thaw(v) for k, v in value.items()}
    return value


def _default(o: Any) -> Any:
    if type(o) is Seq:
        return o.tolist()
    if type(o) is FrozenDict:
        return o._d
    if type(o) is Ref:
        return o.to_json()
    raise TypeError(f"{type(o).__qualname__} is not serialisable")


_encoder = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), allow_nan=True, ensure_ascii=False, default=_default
)
# The same encoder, built once: JSONEncoder.encode rebuilds its C encoder on every call,
# which costs more than encoding a step's small update.  (markers=None: no cycle check;
# frozen values cannot be cyclic.)
_c_encode = (
    None if c_make_encoder is None
    else c_make_encoder(None, _default, encode_basestring, None, ":", ",", True, False, True)
)


class Encoded(str):
    """JSON text that is already canonical; :func:`dumps` passes it through unchanged."""

    __slots__ = ()


def dumps(value: Any) -> str:
    """Canonical JSON text: sorted keys, no spaces, NaN/Infinity tokens, Refs as ``{"$ref": ...}``."""
    if type(value) is Encoded:
        return value
    if _c_encode is not None:
        return "".join(_c_encode(value, 0))
    return _encoder.encode(value)


def _hook(d: dict[str, Any]) -> Any:
    if "$ref" in d and len(d) == 1:
        return Ref(**d["$ref"])
    return d


_decoder = json.JSONDecoder(object_hook=_hook)
_plain_decoder = json.JSONDecoder()
_scan = json.scanner.make_scanner(_plain_decoder)  # type: ignore[arg-type]


def loads(text: str) -> Any:
    """Inverse of :func:`dumps` (Refs come back as :class:`Ref`; lists and dicts are plain)."""
    # Folding decodes one small document per event, so skip what canonical text does not
    # need: the object hook (a Python call per dict) unless a Ref is present, and the
    # whitespace handling of JSONDecoder.decode (canonical text has none).
    if '"$ref"' in text:
        return _decoder.decode(text)
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        end = -1
    if end != len(text):
        return _plain_decoder.decode(text)  # raises the usual error, or handles odd spacing
    return value


def loads_plain(text: str) -> Any:
    """Like :func:`loads`, but Refs stay ``{"$ref": {...}}`` dicts (faster, for bulk reading)."""
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        end = -1
    if end != len(text):
        return _plain_decoder.decode(text)
    return value


class State(Mapping[str, Any]):
    """An immutable mapping from str keys to JSON values and Refs.

    >>> s = State({"epoch": 0, "loss": []})
    >>> t = s.apply({"epoch": 1, "loss": append(float("nan"))})
    >>> s["epoch"], t["epoch"], len(t["loss"])
    (0, 1, 1)
    """

    __slots__ = ("_allowed", "_data", "_elapsed", "_reader")
    _data: dict[str, Any]
    _allowed: frozenset[str] | None
    _reader: str
    _elapsed: float | None

    def __init__(self, values: Mapping[str, Any] | None = None, /, **kw: Any) -> None:
        data: dict[str, Any] = {}
        for source in (values or {}), kw:
            for k, v in source.items():
                if not isinstance(k, str):
                    raise UnserializableValue(f"state key {k!r} must be a str")
                data[k] = freeze(v, f"state[{k!r}]")
        _set(self, "_data", data)
        _set(self, "_allowed", None)
        _set(self, "_reader", "")
        _set(self, "_elapsed", None)

    @classmethod
    def _wrap(cls, data: dict[str, Any], allowed: frozenset[str] | None = None, reader: str = "") -> State:
        s = cls.__new__(cls)
        _set(s, "_data", data)
        _set(s, "_allowed", allowed)
        _set(s, "_reader", reader)
        _set(s, "_elapsed", None)
        return s

    @classmethod
    def _at(cls, data: dict[str, Any], elapsed: float) -> State:
        s = cls.__new__(cls)
        _set(s, "_data", data)
        _set(s, "_allowed", None)
        _set(s, "_reader", "")
        _set(s, "_elapsed", elapsed)
        return s

    @property
    def elapsed(self) -> float | None:
        """The run's active time in seconds, measured from the log, when this state came from a run.

        Not part of the state's data (it is not stored, compared or hashed): the
        runner and ``whatif`` attach it so that :func:`~fsmtrain.stopping.time_budget`
        can read it.  ``None`` for a state built by hand; see :meth:`with_elapsed`.
        """
        return self._elapsed

    def with_elapsed(self, seconds: float) -> State:
        """The same state, seen ``seconds`` of active time into its run."""
        s = State._wrap(self._data, self._allowed, self._reader)
        _set(s, "_elapsed", float(seconds))
        return s

    # -- reading ---------------------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        if self._allowed is not None and key not in self._allowed:
            raise UndeclaredRead(
                f"action `{self._reader}` read `{key}`, which it does not declare; "
                f"add it to reads=[...]"
            )
        try:
            return self._data[key]
        except KeyError:
            raise KeyError(f"state has no key {key!r} (keys: {sorted(self._data)})") from None

    def __contains__(self, key: object) -> bool:
        if self._allowed is not None and key not in self._allowed:
            return False
        return bool(key in self._data)

    def __iter__(self) -> Iterator[str]:
        if self._allowed is None:
            return iter(self._data)
        return (k for k in self._data if k in self._allowed)

    def __len__(self) -> int:
        if self._allowed is None:
            return len(self._data)
        return sum(1 for _ in self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, State):
            return bool(self._data == other._data)
        if isinstance(other, Mapping):
            return bool(self._data == dict(other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"State({self.to_dict()!r})"

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("State is immutable; use state.apply({...}) to get a new one")

    def only(self, keys: frozenset[str], reader: str) -> State:
        """A view that raises :class:`UndeclaredRead` for any key not in ``keys``."""
        s = State._wrap(self._data, keys, reader)
        _set(s, "_elapsed", self._elapsed)
        return s

    # -- updating --------------------------------------------------------------------
    def apply(self, updates: Mapping[str, Any], *, elapsed: float | None = None) -> State:
        """A new State with ``updates`` applied (values set, or appended via :func:`append`).

        ``elapsed`` (optional) is the new state's active time (see :attr:`elapsed`).
        """
        data = dict(self._data)
        for k, v in updates.items():
            if type(v) is Append:
                data[k] = _append(data.get(k), v.items, k)
            else:
                data[k] = freeze(v, f"state[{k!r}]")
        s = State._wrap(data)
        if elapsed is not None:
            _set(s, "_elapsed", elapsed)
        return s

    def update(self, **values: Any) -> State:
        """A new State with these keys set."""
        return self.apply(values)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and dicts (Refs stay Refs)."""
        return {k: thaw(v) for k, v in self._data.items()}

    def to_json(self) -> str:
        """Canonical JSON text of the whole state."""
        return dumps(self._data)

    @classmethod
    def from_json(cls, text: str) -> State:
        """A state from its canonical JSON text (:meth:`to_json`)."""
        return cls(loads(text))


def _append(current: Any, items: tuple[Any, ...], key: str) -> Seq:
    if current is None:
        return Seq(items)
    if type(current) is not Seq:
        raise UnserializableValue(
            f"cannot append to state[{key!r}]: it holds a {type(current).__name__}, not a list"
        )
    return current.appended(*items)

