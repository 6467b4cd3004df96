"""Where an error inside a function's body is told: at the argument that caused it, where one did.

A function's body checks its arguments through the builtins it calls: `repeat(sampling, trials)` fails
on `trials`. That check is in the function's file (a stdlib module, often), but its cause is the caller's
argument. So an error at an argument of a call in the body (or at a field read from a value) that depends
on exactly one of the parameters the call gave (directly, or through the body's `let`s) is reported at
that argument's span, with a note naming the function and where in it the check failed. A requirement
the body states (`require`, requirements.py) is the caller's whatever it reads: at the one argument, else
at the call. Nested calls pass an error on outwards, to the argument or call in the user's spec. Any
other error (one about how the body is written, a call that recurses) stays in the body, with a note
naming the call site.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path

from attrs import field, frozen

from . import ast
from .diagnostics import Sink, Span
from .requirements import UNMET

_STDLIB = Path(str(resources.files("intro.stdlib")))


def shown(span: Span) -> str:
    """`path:line:col` of a span, a standard library module's path as `stdlib/...` (not where it is
    installed), another as it was given."""
    path = Path(span.path)
    if path.is_relative_to(_STDLIB):
        return f"stdlib/{path.relative_to(_STDLIB).as_posix()}:{span.line}:{span.column}"
    return f"{span.path}:{span.line}:{span.column}"


@frozen
class CallSite(Sink):
    """The sink of one call's body: an error is told at the argument it comes from, or at the body with a
    note naming the call site; then it goes on to the caller's sink."""

    caller: Sink = field(kw_only=True)
    function: str = field(kw_only=True)
    call: Span = field(kw_only=True)
    origins: Mapping[Span, frozenset[str]] = field(kw_only=True)  # see `parameter_origins`
    # The spans of the arguments the call gave, by parameter: filled in once they are bound.
    arguments: dict[str, Span] = field(kw_only=True, factory=dict)

    def error(self, code: str, message: str, span: Span, *notes: str) -> None:
        given = [name for name in self.origins.get(span, ()) if name in self.arguments]
        if len(given) == 1 and code not in _ABOUT_THE_BODY:
            note = f"in {self.function}() at {shown(span)}, on its parameter '{given[0]}'"
            self.caller.error(code, message, self.arguments[given[0]], *notes, note)
        elif code == UNMET:  # a requirement the call does not meet: the caller's, whatever it reads
            self.caller.error(code, message, self.call, *notes, f"in {self.function}() at {shown(span)}")
        else:
            self.caller.error(
                code, message, span, *notes, f"in {self.function}(), called from {shown(self.call)}"
            )


Dependencies = dict[str, frozenset[str]]
# Errors about how the body is written, whatever its arguments: a call that recurses.
_ABOUT_THE_BODY = frozenset({"E243"})


def parameter_origins(decl: ast.FnDecl) -> dict[Span, frozenset[str]]:
    """The parameters each of the body's arguments and field reads depends on, by its span."""
    depends: Dependencies = {p.name: frozenset({p.name}) for p in decl.params}
    origins: dict[Span, frozenset[str]] = {}
    for stmt in decl.body:
        if isinstance(stmt, ast.Let | ast.Return):
            found = _parameters_of(stmt.value, depends, origins)
            if isinstance(stmt, ast.Let):
                depends[stmt.name] = found
    return origins


def _parameters_of(
    node: ast.Expr, depends: Dependencies, origins: dict[Span, frozenset[str]]
) -> frozenset[str]:
    """The parameters `node` depends on; each argument or field read in it is entered in `origins`."""
    if isinstance(node, ast.Name):
        return depends.get(node.id, frozenset())
    parts = {id(part): (part, _parameters_of(part, depends, origins)) for part in _parts(node)}
    found = frozenset().union(*(parameters for _, parameters in parts.values()))
    if isinstance(node, ast.Call):
        for argument in (*node.args, *(named.value for named in node.kwargs)):
            _enter(argument, parts[id(argument)][1], origins)
    elif isinstance(node, ast.Attr):
        _enter(node, found, origins)
    return found


def _enter(node: ast.Expr, parameters: frozenset[str], origins: dict[Span, frozenset[str]]) -> None:
    origins[node.span] = parameters


def _parts(node: ast.Expr) -> Iterator[ast.Expr]:
    match node:
        case ast.Attr():
            yield node.value
        case ast.Call():
            yield from (node.func, *node.args, *(named.value for named in node.kwargs))
        case ast.ListExpr() | ast.TupleExpr():
            yield from node.items
        case ast.Record():
            yield from (f.value for f in node.fields)
        case ast.Unary():
            yield node.operand
        case ast.Binary():
            yield from (node.left, node.right)
