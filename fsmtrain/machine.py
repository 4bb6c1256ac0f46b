"""Machine: actions, guarded transitions in priority order, an entry and terminal actions.

The whole definition is validated when it is built, and every problem is listed
in one :class:`~fsmtrain.errors.InvalidDefinition`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Union

from .actions import Action
from .conditions import Condition, default
from .errors import FsmtrainError, InvalidDefinition, NoTransition, UnknownAction
from .state import State

__all__ = ["Machine", "Transition"]

TransitionSpec = Union[tuple[Any, str], tuple[Any, str, Condition]]


class Transition:
    """``source -> target`` taken when ``condition`` fires."""

    __slots__ = ("condition", "source", "target")

    def __init__(self, source: str, target: str, condition: Condition = default) -> None:
        self.source, self.target, self.condition = source, target, condition

    def __repr__(self) -> str:
        return f"Transition({self.source!r} -> {self.target!r} if {self.condition.name})"


class Machine:
    """A state-machine definition.

    >>> from fsmtrain import action, when
    >>> @action(reads=["n"], writes=["n"])
    ... def tick(state):
    ...     return {"n": state["n"] + 1}
    >>> @action()
    ... def done(state):
    ...     return None
    >>> m = Machine("counter", [tick, done],
    ...             [("tick", "done", when(n=3)), ("tick", "tick")],
    ...             entry="tick", terminal=["done"])
    >>> m.next("tick", State(n=3))
    ('done', 'when(n=3)', 'when(n=3)')
    """

    def __init__(
        self,
        name: str,
        actions: Iterable[Action],
        transitions: Iterable[TransitionSpec | Transition],
        *,
        entry: str,
        terminal: Iterable[str] = (),
        initial: Mapping[str, Any] | None = None,
    ) -> None:
        problems: list[str] = []
        self.name = name
        if not isinstance(name, str) or not name:
            problems.append(f"machine name must be a non-empty string, got {name!r}")
        self.actions: dict[str, Action] = {}
        for a in actions:
            if not isinstance(a, Action):
                problems.append(f"{a!r} is not an Action; decorate it with @action(...)")
            elif a.name in self.actions:
                problems.append(f"two actions are named `{a.name}`")
            else:
                self.actions[a.name] = a
        self.entry = entry
        self.terminal = frozenset(terminal) if not isinstance(terminal, str) else frozenset([terminal])
        self.initial = State(initial or {})
        self.transitions: list[Transition] = []
        for spec in transitions:
            try:
                self.transitions.extend(_expand(spec))
            except (TypeError, ValueError) as e:
                problems.append(str(e))
        self._out: dict[str, list[Transition]] = {n: [] for n in self.actions}
        for t in self.transitions:
            for end, label in ((t.source, "source"), (t.target, "target")):
                if end not in self.actions:
                    problems.append(f"transition {t.source} -> {t.target}: {label} `{end}` is not an action")
            if t.source in self._out:
                self._out[t.source].append(t)
        if entry not in self.actions:
            problems.append(f"entry `{entry}` is not an action")
        for n in sorted(self.terminal - set(self.actions)):
            problems.append(f"terminal `{n}` is not an action")
        for n, outs in self._out.items():
            if n in self.terminal:
                if outs:
                    problems.append(f"terminal action `{n}` has outgoing transitions; they would never be taken")
                continue
            if not outs:
                problems.append(f"action `{n}` is not terminal and has no transition out (the run would get stuck)")
            defaults = [t for t in outs if t.condition is default]
            if len(defaults) > 1:
                problems.append(f"action `{n}` has {len(defaults)} default transitions; only the first could ever be taken")
            if defaults and outs[-1] is not defaults[0]:
                problems.append(
                    f"action `{n}` has transitions after its default one; they would never be taken "
                    "(transitions are tried in order, so put the default last)"
                )
        if entry in self.actions:
            seen, todo = {entry}, [entry]
            while todo:
                for t in self._out.get(todo.pop(), []):
                    if t.target in self.actions and t.target not in seen:
                        seen.add(t.target)
                        todo.append(t.target)
            for n in self.actions:
                if n not in seen:
                    problems.append(f"action `{n}` is unreachable from entry `{entry}`")
        if problems:
            raise InvalidDefinition(f"machine `{name}`", problems)
        self.fingerprint = self._fingerprint()

    def _fingerprint(self) -> str:
        doc = {
            "name": self.name,
            "entry": self.entry,
            "terminal": sorted(self.terminal),
            "actions": sorted(self.actions),
            "transitions": [[t.source, t.target, t.condition.name] for t in self.transitions],
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    def swap(self, old: Condition | str, new: Condition | str) -> Machine:
        """The same machine with condition ``old`` replaced by ``new`` wherever a transition uses it, also
        inside ``&``, ``|``, ``~``.

        ``old`` matches by name: a condition built anew equal to the one inside (a resume in a new process
        never has the original object), or its name or expression as text (``"max_epochs(12)"``); ``new``
        may be an expression too, as ``fsmtrain whatif -c`` takes them.  This is how a run started with
        one stop condition is resumed with another:
        ``Runner.resume(machine.swap(old, new), log, run_id, allow_changed_machine=True)`` (or
        ``Trainer(machine.swap(old, new), ...).fit(config, allow_changed_machine=True)``) records the
        change (which transitions, the old and new condition names) in the ``resume`` event.  Conditions
        read the recorded history, so no counter is lost.
        """
        from .expr import parse

        if isinstance(new, str):
            new = parse(new)
        if not isinstance(new, Condition):
            raise TypeError(f"swap needs a Condition (or an expression) to put in, got {type(new).__name__}")
        if isinstance(old, str):
            try:
                old = parse(old).name  # the canonical name of an expression, however it was spelled
            except FsmtrainError:
                pass  # a plain name that is not an expression (a user's own condition)
        swapped = [Transition(t.source, t.target, t.condition.replace(old, new)) for t in self.transitions]
        if all(a.condition is b.condition for a, b in zip(swapped, self.transitions, strict=True)):
            names = sorted({a.name for t in self.transitions if t.condition is not default for a in t.condition.atoms()})
            what = old if isinstance(old, str) else old.name
            raise InvalidDefinition(f"machine `{self.name}`", [
                f"no transition uses a condition named `{what}`; the conditions its transitions are made of: "
                f"{'; '.join(names) or 'none'}"])
        return Machine(self.name, self.actions.values(), swapped, entry=self.entry, terminal=self.terminal,
                       initial=self.initial._data)

    def describe(self) -> dict[str, Any]:
        """The graph as JSON data, recorded in each run's ``start`` event: actions (with what they read,
        write and need as input), transitions (with their conditions' names), entry and terminal actions.

        It lets tools show the graph, and read a run efficiently, without importing its code.
        """
        return {
            "name": self.name,
            "entry": self.entry,
            "terminal": sorted(self.terminal),
            "actions": {n: {"reads": sorted(a.reads), "writes": sorted(a.writes),
                            "inputs": [i.to_json() for i in a.inputs]} for n, a in self.actions.items()},
            "transitions": [[t.source, t.target, t.condition.name] for t in self.transitions],
        }

    def action(self, name: str) -> Action:
        """The action named ``name`` (``UnknownAction`` when the machine has none)."""
        try:
            return self.actions[name]
        except KeyError:
            raise UnknownAction(
                f"machine `{self.name}` has no action `{name}` (actions: {', '.join(self.actions)})"
            ) from None

    def next(self, source: str, state: State) -> tuple[str, str, str]:
        """``(target, condition name, reason)`` of the first transition out of ``source`` that fires."""
        for t in self._out[source]:
            fired, reason = t.condition.evaluate(state)
            if fired:
                return t.target, t.condition.name, reason
        tried = ", ".join(t.condition.name for t in self._out[source])
        raise NoTransition(
            f"no transition out of `{source}` fired (tried: {tried}); add a default transition"
        )

    # -- export ---------------------------------------------------------------------
    def to_mermaid(self, highlight: str | None = None) -> str:
        """Mermaid ``stateDiagram-v2`` text."""
        lines = ["stateDiagram-v2", f"    [*] --> {self.entry}"]
        for t in self.transitions:
            label = "" if t.condition is default else ": " + _mermaid_label(t.condition.name)
            lines.append(f"    {t.source} --> {t.target}{label}")
        for n in sorted(self.terminal):
            lines.append(f"    {n} --> [*]")
        if highlight is not None:
            lines.append("    classDef current fill:#fde68a,stroke:#b45309")
            lines.append(f"    class {highlight} current")
        return "\n".join(lines) + "\n"

    def to_dot(self, highlight: str | None = None) -> str:
        """Graphviz DOT text."""
        q = _dot_quote
        lines = [f"digraph {q(self.name)} {{", "    rankdir=LR;",
                 '    node [shape=box, style="rounded"];',
                 '    "__start__" [shape=point, label=""];',
                 f'    "__start__" -> {q(self.entry)};']
        for n in self.actions:
            attrs = []
            if n in self.terminal:
                attrs.append("peripheries=2")
            if self.actions[n].inputs:
                attrs.append("shape=hexagon")
            if n == highlight:
                attrs.append('style="rounded,filled", fillcolor="#fde68a"')
            if attrs:
                lines.append(f"    {q(n)} [{', '.join(attrs)}];")
        for t in self.transitions:
            label = "" if t.condition is default else f" [label={q(t.condition.name)}]"
            lines.append(f"    {q(t.source)} -> {q(t.target)}{label};")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def __repr__(self) -> str:
        return f"<Machine {self.name} actions={list(self.actions)} fingerprint={self.fingerprint[:12]}>"


def _expand(spec: Any) -> list[Transition]:
    if isinstance(spec, Transition):
        return [spec]
    if not isinstance(spec, Sequence) or isinstance(spec, str) or len(spec) not in (2, 3):
        raise ValueError(f"transition {spec!r} must be (source, target) or (source, target, condition)")
    sources = [spec[0]] if isinstance(spec[0], str) else list(spec[0])
    cond = spec[2] if len(spec) == 3 else default
    if not isinstance(cond, Condition):
        raise TypeError(f"transition {spec[0]} -> {spec[1]}: {cond!r} is not a Condition")
    return [Transition(s, spec[1], cond) for s in sources]


def _mermaid_label(text: str) -> str:
    return "".join(f"#{ord(c)};" if c in ':;#"<>{}' else c for c in text)


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
