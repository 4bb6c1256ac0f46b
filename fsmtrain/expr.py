"""The condition expression language of ``fsmtrain whatif --condition EXPR``.

An expression names registered condition factories (see
:data:`fsmtrain.stopping.CONDITIONS` and :func:`fsmtrain.stopping.register`),
calls them with literal arguments, and combines them with ``&``, ``|``, ``~``
and parentheses::

    early_stopping(val_loss, patience=3, min_delta=0.01) | max_epochs(n=50)

Literals are numbers, quoted strings, ``True``/``False``/``None`` and
``setting('key')``; a bare name as an argument is a string (``val_loss`` is
``'val_loss'``), so a condition's own name parses back to the same condition.
The text is parsed with :mod:`ast` and checked node by node; it is never
evaluated, and anything else is refused with an error that points at the
offending part.

>>> parse("early_stopping(val_loss, patience=3) | max_epochs(n=50)").name
'early_stopping(val_loss, patience=3) | max_epochs(50)'
>>> parse("max_epochs(n=5) + 1")
Traceback (most recent call last):
...
fsmtrain.errors.ExpressionError: operator `+` is not allowed: combine conditions with &, | and ~
  max_epochs(n=5) + 1
  ^^^^^^^^^^^^^^^^^^^
"""

from __future__ import annotations

import ast
import difflib
import inspect
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from .conditions import Condition
from .errors import ExpressionError, FsmtrainError
from .stopping import CONDITIONS, Setting, setting

__all__ = ["parse"]

MAX_LENGTH = 2000
MAX_DEPTH = 40
"""How deeply an expression may nest (operators, ``~``, parentheses and calls)."""

_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**",
        ast.BitXor: "^", ast.LShift: "<<", ast.RShift: ">>", ast.MatMult: "@"}


def parse(text: str, *, conditions: Mapping[str, Callable[..., Condition]] | None = None) -> Condition:
    """The :class:`~fsmtrain.Condition` that ``text`` describes; :class:`ExpressionError` if it is not valid.

    ``conditions`` (default: the registry) maps the names an expression may call
    to condition factories.
    """
    if not isinstance(text, str):
        raise ExpressionError(f"a condition expression must be a str, got {type(text).__name__}")
    flat = " ".join(text.split())
    if not flat:
        raise ExpressionError("the condition expression is empty; e.g. early_stopping(val_loss, patience=3)")
    if len(flat) > MAX_LENGTH:
        raise ExpressionError(f"the condition expression is {len(flat)} characters long; at most {MAX_LENGTH}")
    try:
        with warnings.catch_warnings():  # e.g. "invalid decimal literal" for `1and 2`: the error below says it
            warnings.simplefilter("ignore")
            tree = ast.parse(flat, mode="eval")
    except SyntaxError as e:
        col = (e.offset or 1) - 1
        raise ExpressionError(_point(flat, col, col + 1, f"not a valid expression ({e.msg})")) from None
    except (ValueError, RecursionError, MemoryError) as e:
        raise ExpressionError(f"cannot parse the condition expression: {_depth_hint(e)}") from None
    depth = _depth(tree.body)
    if depth > MAX_DEPTH:
        raise ExpressionError(f"the condition expression nests {depth} deep; at most {MAX_DEPTH} "
                              "(write it without so many ~, parentheses or nested calls)")
    return _Parser(flat, CONDITIONS if conditions is None else conditions).condition(tree.body)


def _depth(node: ast.AST) -> int:
    """How deeply ``node`` nests, counted without recursion (so any depth is measured safely)."""
    deepest, todo = 0, [(node, 1)]
    while todo:
        n, d = todo.pop()
        deepest = max(deepest, d)
        todo.extend((child, d + 1) for child in ast.iter_child_nodes(n)
                    if not isinstance(child, (ast.expr_context, ast.operator, ast.unaryop, ast.boolop, ast.cmpop)))
    return deepest


def _depth_hint(e: BaseException) -> str:
    if isinstance(e, RecursionError) or "too many nested" in str(e) or "recursion" in str(e).lower():
        return f"it nests too deeply (at most {MAX_DEPTH} levels)"
    return str(e) or type(e).__name__


class _Parser:
    def __init__(self, text: str, known: Mapping[str, Callable[..., Condition]]) -> None:
        self.text = text
        self.known = known
        self._bytes = text.encode()

    def fail(self, node: ast.AST, message: str) -> ExpressionError:
        start = self._char(getattr(node, "col_offset", 0))
        end = self._char(getattr(node, "end_col_offset", None) or getattr(node, "col_offset", 0) + 1)
        return ExpressionError(_point(self.text, start, end, message))

    def _char(self, byte_offset: int) -> int:
        """ast offsets count UTF-8 bytes; the pointer counts characters."""
        return len(self._bytes[:byte_offset].decode(errors="ignore"))

    def known_names(self) -> str:
        return ", ".join(sorted(self.known))

    # -- conditions -------------------------------------------------------------------
    def condition(self, node: ast.expr) -> Condition:
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, (ast.BitAnd, ast.BitOr)):
                left, right = self.condition(node.left), self.condition(node.right)
                return left & right if isinstance(node.op, ast.BitAnd) else left | right
            raise self.fail(node, f"operator `{_OPS.get(type(node.op), '?')}` is not allowed: "
                                  "combine conditions with &, | and ~")
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Invert):
                return ~self.condition(node.operand)
            op = "not" if isinstance(node.op, ast.Not) else "-" if isinstance(node.op, ast.USub) else "+"
            raise self.fail(node, f"`{op}` is not allowed here: negate a condition with ~")
        if isinstance(node, ast.BoolOp):
            word = "and" if isinstance(node.op, ast.And) else "or"
            raise self.fail(node, f"`{word}` is not allowed: use {'&' if word == 'and' else '|'} to combine conditions")
        if isinstance(node, ast.Compare):
            raise self.fail(node, "comparisons are not conditions here; use e.g. target(val_acc, value=0.9, mode='max')")
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, ast.Name):
            if node.id in self.known:
                raise self.fail(node, f"`{node.id}` is a condition factory: call it, e.g. {node.id}(...)")
            raise self.fail(node, f"unknown condition `{node.id}` (known: {self.known_names()})")
        raise self.fail(node, f"{_a(_kind(node))} is not a condition (known conditions: {self.known_names()})")

    def call(self, node: ast.Call) -> Condition:
        if not isinstance(node.func, ast.Name):
            raise self.fail(node.func, "only a condition's plain name can be called, e.g. max_epochs(n=10)")
        name = node.func.id
        factory = self.known.get(name)
        if factory is None:
            hint = " (setting(...) is a parameter, not a condition)" if name == "setting" else ""
            raise self.fail(node.func, f"unknown condition `{name}`{hint} (known: {self.known_names()})")
        args = []
        for a in node.args:
            if isinstance(a, ast.Starred):
                raise self.fail(a, "*arguments are not allowed; write each argument out")
            args.append(self.literal(a))
        kwargs: dict[str, Any] = {}
        accepted = _parameters(factory)
        for k in node.keywords:
            if k.arg is None:
                raise self.fail(k.value, "**arguments are not allowed; write each argument out")
            if accepted is not None and k.arg not in accepted:
                close = difflib.get_close_matches(k.arg, accepted, n=1)
                hint = f" (did you mean `{close[0]}`?)" if close else ""
                raise self.fail(k, f"{name} has no argument `{k.arg}`{hint}; it takes {name}{_signature(factory)}")
            kwargs[k.arg] = self.literal(k.value)
        try:
            inspect.signature(factory).bind(*args, **kwargs)
        except TypeError as e:
            raise self.fail(node, f"{name}{_signature(factory)}: {e}") from None
        except ValueError:  # no signature to check (a builtin): the call below reports
            pass
        try:
            made = factory(*args, **kwargs)
        except FsmtrainError as e:
            raise self.fail(node, str(e)) from None
        except (TypeError, ValueError) as e:
            text = str(e)  # a factory's own message may already name it: say it once
            raise self.fail(node, text if text.startswith(name) else f"{name}: {text}") from None
        if not isinstance(made, Condition):
            raise self.fail(node, f"`{name}` returned {type(made).__name__}, not a Condition")
        return made

    # -- arguments --------------------------------------------------------------------
    def literal(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, (bool, int, float, str))):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)) \
                and isinstance(node.operand, ast.Constant) and isinstance(node.operand.value, (int, float)) \
                and not isinstance(node.operand.value, bool):
            v = node.operand.value
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.Name):
            return node.id  # a bare name is a string: early_stopping(val_loss, ...)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setting":
            if len(node.args) != 1 or node.keywords:
                raise self.fail(node, "setting takes one state key: setting('max_epochs')")
            key = self.literal(node.args[0])
            if not isinstance(key, str):
                raise self.fail(node.args[0], f"setting needs a state key (a str), got {key!r}")
            s: Setting = setting(key)
            return s
        raise self.fail(node, f"{_a(_kind(node))} is not allowed as an argument: use a number, a string, "
                              "True/False/None or setting('key')")


def _kind(node: ast.AST) -> str:
    names = {ast.Call: "call", ast.List: "list", ast.Tuple: "tuple", ast.Dict: "dict", ast.Set: "set",
             ast.Attribute: "attribute", ast.Subscript: "subscript", ast.Lambda: "lambda",
             ast.BinOp: "arithmetic expression", ast.Constant: "constant", ast.JoinedStr: "f-string"}
    return names.get(type(node), type(node).__name__.lower())


def _parameters(factory: Callable[..., Any]) -> list[str] | None:
    """The keyword arguments ``factory`` accepts; None when it takes ``**kwargs`` or has no signature."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _a(noun: str) -> str:
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def _signature(factory: Callable[..., Any]) -> str:
    """``(metric, patience, *, min_delta=0.0, ...)``: the call's shape without annotations."""
    try:
        params = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        return "(...)"
    out, star = [], False
    for p in params:
        if p.kind is p.KEYWORD_ONLY and not star:
            out.append("*")
            star = True
        if p.kind is p.VAR_POSITIONAL:
            star = True
        prefix = "*" if p.kind is p.VAR_POSITIONAL else "**" if p.kind is p.VAR_KEYWORD else ""
        out.append(prefix + p.name + ("" if p.default is p.empty else f"={p.default!r}"))
    return f"({', '.join(out)})"


def _point(text: str, start: int, end: int, message: str) -> str:
    end = max(end, start + 1)
    return f"{message}\n  {text}\n  {' ' * start}{'^' * min(end - start, max(1, len(text) - start))}"
