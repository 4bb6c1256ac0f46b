"""Actions: named steps with declared reads, writes and inputs.

An action is a function of a read-only view of the state (plus its declared
inputs, and the run's resources when it asks for them) that returns the updates
it makes.  The engine refuses undeclared reads and writes, naming the action and
the key.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, overload

import attrs

from .errors import InvalidDefinition, InvalidInput, UndeclaredWrite, UnserializableValue
from .state import Append, State, freeze

__all__ = ["Action", "Input", "action", "gate"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
_TYPES: dict[str, type] = {"str": str, "int": int, "float": float, "bool": bool}
_TYPE_NAMES = {v: k for k, v in _TYPES.items()}


def _type_name(t: Any) -> str:
    if isinstance(t, str) and t in _TYPES:
        return t
    if t in _TYPE_NAMES:
        return _TYPE_NAMES[t]
    raise InvalidDefinition("input", [f"type {t!r} is not one of str, int, float, bool"])


def _tuple_or_none(c: Iterable[Any] | None) -> tuple[Any, ...] | None:
    return None if c is None else tuple(c)


@attrs.frozen
class Input:
    """A declared input of an action: ``Input("decision", choices=["go", "no-go"])``."""

    name: str
    type: str = attrs.field(default="str", converter=_type_name)
    required: bool = True
    choices: tuple[Any, ...] | None = attrs.field(default=None, converter=_tuple_or_none)
    min: float | None = None
    max: float | None = None
    help: str = ""

    def validate(self, value: Any, action: str) -> Any:
        """Return ``value`` checked against this declaration, or raise :class:`InvalidInput`."""
        where = f"input `{self.name}` of action `{action}`"
        t = _TYPES[self.type]
        ok = isinstance(value, t) and not (t is int and isinstance(value, bool))
        if t is float and isinstance(value, int) and not isinstance(value, bool):
            try:
                value, ok = float(value), True
            except OverflowError:
                raise InvalidInput(f"{where} must be a finite number, got an integer too large for a float") from None
        if not ok:
            raise InvalidInput(f"{where} must be {self.type}, got {type(value).__name__} {_clip(repr(value))}")
        if t is str:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                raise InvalidInput(f"{where} holds bytes that are not valid UTF-8 (at character {e.start}); "
                                   "give plain UTF-8 text") from None
        if t is float and not math.isfinite(value):
            raise InvalidInput(f"{where} must be a finite number, got {_clip(repr(value))}")
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(repr(c) for c in self.choices)
            raise InvalidInput(f"{where} must be one of {allowed}; got {_clip(repr(value))}")
        if self.min is not None and value < self.min:
            raise InvalidInput(f"{where} must be >= {self.min}; got {_clip(repr(value))}")
        if self.max is not None and value > self.max:
            raise InvalidInput(f"{where} must be <= {self.max}; got {_clip(repr(value))}")
        return value

    def parse(self, text: str, action: str) -> Any:
        """Parse command-line text into this input's type, then validate it."""
        where = f"input `{self.name}` of action `{action}`"
        try:
            if self.type == "bool":
                low = text.strip().lower()
                if low not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                value: Any = low in ("true", "1", "yes")
            elif self.type == "int":
                value = int(text)
            elif self.type == "float":
                value = float(text)
            else:
                value = text
        except ValueError:
            raise InvalidInput(f"{where} must be {self.type}; cannot read {_clip(repr(text))} as one") from None
        return self.validate(value, action)

    def to_json(self) -> dict[str, Any]:
        """The declaration as plain JSON (recorded in a ``waiting`` event's ``needs``)."""
        return {
            "name": self.name, "type": self.type, "required": self.required,
            "choices": None if self.choices is None else list(self.choices),
            "min": self.min, "max": self.max, "help": self.help,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Input:
        """The input declaration from its JSON form (:meth:`to_json`)."""
        return cls(**dict(d))


def _clip(text: str, width: int = 80) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def validate_inputs(specs: Iterable[Input], given: Mapping[str, Any], action: str) -> tuple[dict[str, Any], list[Input]]:
    """Check ``given`` against ``specs``: returns (validated values, missing required inputs)."""
    by_name = {s.name: s for s in specs}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        known = ", ".join(by_name) or "none"
        raise InvalidInput(
            f"action `{action}` has no input named {', '.join(map(repr, unknown))} (its inputs: {known})"
        )
    values = {k: by_name[k].validate(v, action) for k, v in given.items()}
    missing = [s for s in by_name.values() if s.required and s.name not in values]
    return values, missing


class Action:
    """A named step of a machine.  Build one with :func:`action`."""

    __slots__ = ("_input_names", "barrier", "fn", "inputs", "name", "reads", "wants_resources", "writes")

    def __init__(
        self,
        fn: Callable[..., Mapping[str, Any] | None],
        *,
        name: str | None = None,
        reads: Iterable[str] = (),
        writes: Iterable[str] = (),
        inputs: Iterable[Input | str] = (),
        barrier: bool = False,
    ) -> None:
        self.name: str = name or str(getattr(fn, "__name__", ""))
        self.barrier = bool(barrier)
        """The commit of each of its steps is a barrier (durable at once): the action did something the
        outside world sees (launched a job, sent a message) that a power loss must not make the log forget."""
        problems = []
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            problems.append(f"name {self.name!r} must be an identifier (letters, digits, _ or -)")
        self.reads = _keys("reads", reads, problems)
        self.writes = _keys("writes", writes, problems)
        self.inputs = tuple(i if isinstance(i, Input) else Input(i) for i in inputs)
        self._input_names = frozenset(i.name for i in self.inputs)
        self.fn = fn
        self.wants_resources = False
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            params = {}  # type: ignore[assignment]
        if params:
            names = list(params)
            takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
            self.wants_resources = "resources" in params
            for i in self.inputs:
                if i.name not in params and not takes_kwargs:
                    problems.append(f"input `{i.name}` is declared but `{self.name}` has no parameter of that name")
            for pname in names[1:]:
                p = params[pname]
                if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or pname == "resources":
                    continue
                if pname not in self._input_names and p.default is p.empty:
                    problems.append(
                        f"parameter `{pname}` of `{self.name}` is neither the state, `resources` "
                        f"nor a declared input; declare inputs=[Input({pname!r})] or give it a default"
                    )
        if problems:
            raise InvalidDefinition(f"action `{self.name}`", problems)

    def __repr__(self) -> str:
        return f"<Action {self.name} reads={sorted(self.reads)} writes={sorted(self.writes)}>"

    def __call__(self, state: State | Mapping[str, Any], resources: Any = None, **inputs: Any) -> dict[str, Any]:
        """Run the action outside a machine (handy in tests); returns validated updates."""
        if not isinstance(state, State):
            state = State(state)
        return self.execute(state, inputs, resources)

    def execute(self, state: State, inputs: Mapping[str, Any], resources: Any) -> dict[str, Any]:
        """Run on a read-restricted view of ``state``; return frozen, declared updates."""
        view = state.only(self.reads, self.name)
        result = self.fn(view, resources=resources, **inputs) if self.wants_resources else self.fn(view, **inputs)
        if result is None:
            return {}
        if type(result) is not dict and not isinstance(result, Mapping):
            raise UndeclaredWrite(
                f"action `{self.name}` returned a {type(result).__name__}; "
                "it must return a dict of updates (or None)"
            )
        extra = [k for k in result if k not in self.writes]
        if extra:
            keys = ", ".join(f"`{k}`" for k in extra)
            raise UndeclaredWrite(
                f"action `{self.name}` wrote {keys}, which it does not declare; "
                f"add {'it' if len(extra) == 1 else 'them'} to writes=[...]"
            )
        out: dict[str, Any] = {}
        for k, v in result.items():
            try:
                if type(v) is Append:
                    out[k] = Append(tuple(freeze(x, "an appended item") for x in v.items))
                else:
                    out[k] = freeze(v, "the value")
            except UnserializableValue as e:
                raise UnserializableValue(f"action `{self.name}` wrote `{k}`: {e}") from None
        return out


def _keys(what: str, keys: Iterable[str], problems: list[str]) -> frozenset[str]:
    if isinstance(keys, str):
        problems.append(f"{what} must be a list of key names, got the string {keys!r}; write {what}=[{keys!r}]")
        return frozenset()
    out = frozenset(keys)
    bad = [k for k in out if not isinstance(k, str)]
    if bad:
        problems.append(f"{what} has non-string keys {bad!r}")
    return out


@overload
def action(fn: Callable[..., Any], *, name: str | None = None, reads: Iterable[str] = (),
           writes: Iterable[str] = (), inputs: Iterable[Input | str] = (), barrier: bool = False) -> Action: ...
@overload
def action(fn: None = None, *, name: str | None = None, reads: Iterable[str] = (),
           writes: Iterable[str] = (), inputs: Iterable[Input | str] = (),
           barrier: bool = False) -> Callable[[Callable[..., Any]], Action]: ...
def action(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    reads: Iterable[str] = (),
    writes: Iterable[str] = (),
    inputs: Iterable[Input | str] = (),
    barrier: bool = False,
) -> Action | Callable[[Callable[..., Any]], Action]:
    """Decorate a function ``f(state, [resources], **inputs) -> dict`` as an :class:`Action`.

    ``barrier=True``: each of its steps is committed as a barrier (durable at once, see
    :class:`~fsmtrain.log.EventLog`), for an action whose effect the outside world sees.

    >>> @action(reads=["count"], writes=["count"])
    ... def inc(state):
    ...     return {"count": state["count"] + 1}
    >>> inc({"count": 1})
    {'count': 2}
    """

    def wrap(f: Callable[..., Any]) -> Action:
        return Action(f, name=name, reads=reads, writes=writes, inputs=inputs, barrier=barrier)

    return wrap(fn) if fn is not None else wrap



def gate(name: str = "review", *, decision: Iterable[str] | None = ("go", "no-go"), comment: bool = True,
         inputs: Iterable[Input] = ()) -> Action:
    """A human gate: the run waits here until a person gives ``decision`` (and any other ``inputs``).

    Each input given is written to the state under its own name (an optional one
    not given as None), so transitions can branch on it:
    ``("review", "export", when(decision="go"))``.  ``comment`` adds an optional
    free-text ``comment`` input.  Give input with ``fsmtrain approve``/``reject``/
    ``input``, or ``runner.run(inputs={...})``.

    >>> g = gate(inputs=[Input("lr", type="float", required=False, min=0)])
    >>> [i.name for i in g.inputs], sorted(g.writes)
    (['decision', 'comment', 'lr'], ['comment', 'decision', 'lr'])
    >>> g({}, decision="go")
    {'decision': 'go', 'comment': None, 'lr': None}
    """
    specs: list[Input] = []
    if decision is not None:
        specs.append(Input("decision", choices=list(decision), help="the reviewer's decision"))
    if comment:
        specs.append(Input("comment", required=False, help="why"))
    specs += list(inputs)
    names = [i.name for i in specs]
    if len(set(names)) != len(names):
        raise InvalidDefinition(f"gate `{name}`", [f"inputs are named twice: {names}"])
    if not specs:
        raise InvalidDefinition(f"gate `{name}`", ["a gate needs at least one input (a decision, or inputs=[...])"])

    def fn(state: State, **given: Any) -> dict[str, Any]:
        return {n: given.get(n) for n in names}

    return Action(fn, name=name, writes=names, inputs=specs)
