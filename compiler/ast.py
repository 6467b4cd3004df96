"""The syntax tree: one frozen node class per construct, a source span on every node.

Spans are kept out of equality, so two specs that differ only in layout or comments have equal trees.
"""

from __future__ import annotations

from attrs import field, frozen

from .diagnostics import Span


def _span() -> Span:
    return field(eq=False, kw_only=True, repr=False)  # type: ignore[no-any-return]


# ---------------------------------------------------------------- expressions
@frozen
class Name:
    id: str
    span: Span = _span()


@frozen
class Str:
    value: str
    long: bool = False  # written with triple quotes
    span: Span = _span()


@frozen
class Num:
    value: int | float
    text: str = field(eq=False, default="")  # as written, so `fmt` keeps 1e-4 as 1e-4
    span: Span = _span()


@frozen
class Bool:
    value: bool
    span: Span = _span()


@frozen
class ListExpr:
    items: tuple[Expr, ...]
    span: Span = _span()


@frozen
class TupleExpr:
    """`(a, b)` or `(a,)`: a list written in parentheses (the same value as `[a, b]`)."""

    items: tuple[Expr, ...]
    span: Span = _span()


@frozen
class Field:
    name: str
    value: Expr
    span: Span = _span()  # the field name


@frozen
class Record:
    fields: tuple[Field, ...]
    span: Span = _span()

    def get(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)


@frozen
class NamedArg:
    name: str
    value: Expr
    span: Span = _span()


@frozen
class Call:
    func: Expr
    args: tuple[Expr, ...]
    kwargs: tuple[NamedArg, ...]
    span: Span = _span()


@frozen
class Attr:
    value: Expr
    name: str
    span: Span = _span()  # the attribute name


@frozen
class Unary:
    op: str
    operand: Expr
    span: Span = _span()


@frozen
class Binary:
    op: str
    left: Expr
    right: Expr
    span: Span = _span()


Expr = Name | Str | Num | Bool | ListExpr | TupleExpr | Record | Call | Attr | Unary | Binary


# ---------------------------------------------------------------- statements and declarations
@frozen
class Use:
    module: tuple[str, ...]
    names: tuple[Name, ...] | None
    alias: str | None
    span: Span = _span()


@frozen
class ModelDecl:
    name: str
    backend: Name
    locator: Str
    options: Record | None
    span: Span = _span()  # the declared name


@frozen
class Decl:
    kind: str  # task | property | split | sampling
    name: str
    body: Record
    span: Span = _span()  # the declared name


@frozen
class Let:
    name: str
    value: Expr
    span: Span = _span()


@frozen
class Measure:
    name: str
    value: Expr
    span: Span = _span()


@frozen
class Return:
    value: Expr
    span: Span = _span()  # the whole statement


@frozen
class Binding:
    targets: tuple[str, ...]
    iterable: Expr
    span: Span = _span()


@frozen
class For:
    bindings: tuple[Binding, ...]
    body: tuple[Statement, ...]
    span: Span = _span()


Statement = Let | Measure | For


@frozen
class Study:
    name: str
    body: tuple[Statement, ...]
    span: Span = _span()


@frozen
class Param:
    """A function parameter: `name`, `name: type`, `name = default` or `name: type = default`."""

    name: str
    type: Name | None  # a type name as written (checked against the language's types when declared)
    default: Expr | None
    span: Span = _span()  # the parameter's name


@frozen
class FnDecl:
    """`fn name(params) { let ... return expr }`. The body keeps any statement the parser accepts (a
    misplaced `return`, a `for`) so the evaluator can say what is wrong with it."""

    name: str
    params: tuple[Param, ...]
    body: tuple[Statement | Return, ...]
    span: Span = _span()  # the declared name
    params_span: Span = _span()  # the parameter list, parentheses included
    end: Span = _span()  # the closing brace


Item = Use | ModelDecl | Decl | Let | FnDecl | Study


@frozen
class Module:
    path: str = field(eq=False)
    items: tuple[Item, ...]
