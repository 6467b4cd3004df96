"""Text to syntax tree. The one place that talks to lark: its exceptions never escape this module."""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import Any

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from . import ast
from .diagnostics import CompileError, Diagnostic, Span

# Friendly names for terminals in "expected ..." messages.
_TOKEN_NAMES = {
    "NAME": "a name",
    "STRING": "a string",
    "LONG_STRING": "a string",
    "NUMBER": "a number",
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "LSQB": "'['",
    "RSQB": "']'",
    "LPAR": "'('",
    "RPAR": "')'",
    "COLON": "':'",
    "COMMA": "','",
    "EQUAL": "'='",
    "DOT": "'.'",
    "MINUS": "'-'",
    "PLUS": "'+'",
    "STAR": "'*'",
    "SLASH": "'/'",
    "COMPARE": "a comparison",
    "$END": "end of file",
}
_MAX_NUMBER_DIGITS = 30
# Every later pass recurses over the tree; real specs nest about 15 levels, Python's stack allows ~1000 frames.
_MAX_DEPTH = 100


@functools.cache
def _lark() -> Lark:
    grammar = resources.files("intro.compiler").joinpath("grammar/intro.lark").read_text()
    return Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=True)


# The syntax tree is frozen: a module's text met again (the stdlib modules, at each check of a spec that
# uses them) is parsed once.
@functools.lru_cache(maxsize=64)
def parse(source: str, path: str) -> ast.Module:
    """Parse one file. Raises CompileError (never a lark exception) for malformed input."""
    if "\x00" in source:
        line = source.count("\n", 0, source.index("\x00")) + 1
        column = source.index("\x00") - (source.rfind("\n", 0, source.index("\x00")) + 1) + 1
        raise CompileError([Diagnostic("E001", "NUL byte in source", Span.point(path, line, column))])
    try:
        tree = _lark().parse(source)
    except UnexpectedInput as exc:
        raise CompileError([_syntax_diagnostic(exc, path, source)]) from None
    _check_depth(tree, path)
    try:
        items = _ToAst(path).transform(tree)
    except VisitError as exc:
        if isinstance(exc.orig_exc, CompileError):
            raise exc.orig_exc from None
        raise
    return ast.Module(path=path, items=tuple(items.children if hasattr(items, "children") else items))


def _check_depth(tree: Tree[Token], path: str) -> None:
    """Reject nesting deeper than _MAX_DEPTH, walking with an explicit stack so this check cannot overflow."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > _MAX_DEPTH:
            span = Span.point(path, node.meta.line, node.meta.column)
            message = f"nesting is too deep (more than {_MAX_DEPTH} levels)"
            raise CompileError([Diagnostic("E005", message, span, ("split it into several `let`s",))])
        stack.extend((child, depth + 1) for child in node.children if isinstance(child, Tree))


def _syntax_diagnostic(exc: UnexpectedInput, path: str, source: str) -> Diagnostic:
    line, column = max(exc.line, 1), max(exc.column, 1)
    if isinstance(exc, UnexpectedCharacters):
        position = exc.pos_in_stream or 0
        char = source[position] if position < len(source) else "?"
        message = "unterminated string" if char == '"' else f"unexpected character {char!r}"
        return Diagnostic("E001", message, Span.point(path, line, column))
    if isinstance(exc, UnexpectedEOF) or (isinstance(exc, UnexpectedToken) and exc.token.type == "$END"):
        line, column = _end_position(source)
        return Diagnostic("E002", "unexpected end of file", Span.point(path, line, column), _expected(exc))
    assert isinstance(exc, UnexpectedToken)
    token = exc.token
    width = max(1, len(str(token)) if "\n" not in str(token) else 1)
    span = Span(path, line, column, line, column + width)
    return Diagnostic("E002", f"unexpected {_describe(token)}", span, _expected(exc))


def _expected(exc: UnexpectedInput) -> tuple[str, ...]:
    # `accepts` is what the parser would really take next; `expected` may hold more, because LALR merges
    # states (a `return` may follow a `let` in a function, so `expected` offers it in a study too).
    expected = (
        getattr(exc, "accepts", None)
        or getattr(exc, "expected", None)
        or getattr(exc, "allowed", None)
        or set()
    )
    names = sorted({_TOKEN_NAMES.get(t, _keyword(t)) for t in expected if not t.startswith("__")})
    if not names:
        return ()
    return ("expected " + (names[0] if len(names) == 1 else "one of " + ", ".join(names)),)


def _keyword(terminal: str) -> str:
    return f"'{terminal.lower()}'" if terminal.isupper() and terminal.isalpha() else terminal


def _describe(token: Token) -> str:
    if token.type in ("NAME",):
        return f"name '{token}'"
    if token.type in ("STRING", "LONG_STRING"):
        return "string"
    if token.type == "NUMBER":
        return f"number {token}"
    return f"'{token}'"


def _end_position(source: str) -> tuple[int, int]:
    lines = source.split("\n")
    return len(lines), len(lines[-1]) + 1


_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "r": "\r", "{": "\\{"}


def _unescape(body: str, span: Span) -> str:
    def replace(match: re.Match[str]) -> str:
        char = match.group(1)
        if char not in _ESCAPES:
            raise CompileError([Diagnostic("E003", f"unknown escape '\\{char}' in string", span)])
        return _ESCAPES[char] if char != "{" else "{"

    return re.sub(r"\\(.)", replace, body)


@v_args(meta=True, inline=True)
class _ToAst(Transformer[Any, Any]):
    """One method per grammar rule; each returns an AST node with its span."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    # -- positions
    def _span(self, meta: Any) -> Span:
        if getattr(meta, "empty", True):
            return Span.point(self.path, 1, 1)
        return Span(self.path, meta.line, meta.column, meta.end_line, meta.end_column)

    def _tok(self, token: Token) -> Span:
        return Span(
            self.path,
            token.line or 1,
            token.column or 1,
            token.end_line or token.line or 1,
            token.end_column or (token.column or 1) + len(token),
        )

    # -- top level
    def start(self, meta: Any, *items: Any) -> list[Any]:
        return list(items)

    def use_decl(self, meta: Any, *parts: Any) -> ast.Use:
        names: tuple[ast.Name, ...] | None = None
        alias: str | None = None
        module: list[str] = []
        for part in parts:
            if isinstance(part, Token):
                module.append(str(part))
            elif isinstance(part, tuple) and part and part[0] == "alias":
                alias = part[1]
            elif isinstance(part, tuple):
                names = part
        return ast.Use(tuple(module), names, alias, span=self._span(meta))

    def use_names(self, meta: Any, *names: Token) -> tuple[ast.Name, ...]:
        return tuple(ast.Name(str(n), span=self._tok(n)) for n in names)

    def alias(self, meta: Any, name: Token) -> tuple[str, str]:
        return ("alias", str(name))

    def model_decl(
        self, meta: Any, name: Token, backend: Token, locator: Token, options: Any
    ) -> ast.ModelDecl:
        return ast.ModelDecl(
            str(name),
            ast.Name(str(backend), span=self._tok(backend)),
            self.string(None, locator),
            options,
            span=self._tok(name),
        )

    def decl_kind(self, meta: Any, kind: Token) -> str:
        return str(kind)

    def decl(self, meta: Any, kind: str, name: Token, body: ast.Record) -> ast.Decl:
        return ast.Decl(kind, str(name), body, span=self._tok(name))

    def study(self, meta: Any, name: Token, *body: Any) -> ast.Study:
        return ast.Study(str(name), tuple(body), span=self._tok(name))

    def fn_decl(
        self, meta: Any, name: Token, params: tuple[Span, tuple[ast.Param, ...]], *body: Any
    ) -> ast.FnDecl:
        # The closing brace is the last character of the declaration.
        end = Span(self.path, meta.end_line, meta.end_column - 1, meta.end_line, meta.end_column)
        where, found = params
        return ast.FnDecl(str(name), found, tuple(body), span=self._tok(name), params_span=where, end=end)

    def params(self, meta: Any, *params: ast.Param | None) -> tuple[Span, tuple[ast.Param, ...]]:
        return self._span(meta), tuple(p for p in params if p is not None)

    def param(self, meta: Any, name: Token, type_: Token | None, default: ast.Expr | None) -> ast.Param:
        written = None if type_ is None else ast.Name(str(type_), span=self._tok(type_))
        return ast.Param(str(name), written, default, span=self._tok(name))

    def return_stmt(self, meta: Any, value: ast.Expr) -> ast.Return:
        return ast.Return(value, span=self._span(meta))

    # -- statements
    def for_stmt(self, meta: Any, *parts: Any) -> ast.For:
        bindings = tuple(p for p in parts if isinstance(p, ast.Binding))
        body = tuple(p for p in parts if not isinstance(p, ast.Binding))
        return ast.For(bindings, body, span=self._span(meta))

    def binding(self, meta: Any, targets: tuple[str, ...], iterable: ast.Expr) -> ast.Binding:
        return ast.Binding(targets, iterable, span=self._span(meta))

    def single_target(self, meta: Any, name: Token) -> tuple[str, ...]:
        return (str(name),)

    def tuple_target(self, meta: Any, *names: Token) -> tuple[str, ...]:
        return tuple(str(n) for n in names)

    def let_stmt(self, meta: Any, name: Token, value: ast.Expr) -> ast.Let:
        return ast.Let(str(name), value, span=self._tok(name))

    def measure_stmt(self, meta: Any, name: Token, value: ast.Expr) -> ast.Measure:
        return ast.Measure(str(name), value, span=self._tok(name))

    # -- expressions
    def add(self, meta: Any, left: ast.Expr, right: ast.Expr) -> ast.Binary:
        return ast.Binary("+", left, right, span=self._span(meta))

    def sub(self, meta: Any, left: ast.Expr, right: ast.Expr) -> ast.Binary:
        return ast.Binary("-", left, right, span=self._span(meta))

    def mul(self, meta: Any, left: ast.Expr, right: ast.Expr) -> ast.Binary:
        return ast.Binary("*", left, right, span=self._span(meta))

    def div(self, meta: Any, left: ast.Expr, right: ast.Expr) -> ast.Binary:
        return ast.Binary("/", left, right, span=self._span(meta))

    def compare(self, meta: Any, left: ast.Expr, op: Token, right: ast.Expr) -> ast.Binary:
        return ast.Binary(str(op), left, right, span=self._span(meta))

    def neg(self, meta: Any, operand: ast.Expr) -> ast.Unary:
        return ast.Unary("-", operand, span=self._span(meta))

    def call(self, meta: Any, func: ast.Expr, args: Any) -> ast.Call:
        positional = tuple(a for a in (args or ()) if not isinstance(a, ast.NamedArg))
        named = tuple(a for a in (args or ()) if isinstance(a, ast.NamedArg))
        return ast.Call(func, positional, named, span=self._span(meta))

    def args(self, meta: Any, *items: Any) -> tuple[Any, ...]:
        return items

    def named_arg(self, meta: Any, name: Token, value: ast.Expr) -> ast.NamedArg:
        return ast.NamedArg(str(name), value, span=self._tok(name))

    def attr(self, meta: Any, value: ast.Expr, name: Token) -> ast.Attr:
        return ast.Attr(value, str(name), span=self._tok(name))

    def name(self, meta: Any, token: Token) -> ast.Name:
        return ast.Name(str(token), span=self._tok(token))

    def string(self, meta: Any, token: Token) -> ast.Str:
        text = str(token)
        span = self._tok(token)
        if text.startswith('"""'):
            return ast.Str(_unescape(text[3:-3], span), long=True, span=span)
        return ast.Str(_unescape(text[1:-1], span), span=span)

    def number(self, meta: Any, token: Token) -> ast.Num:
        text = str(token)
        span = self._tok(token)
        digits = text.replace("_", "")
        if len(digits) > _MAX_NUMBER_DIGITS:
            raise CompileError([Diagnostic("E004", "number literal is too long", span)])
        is_float = any(c in digits for c in ".eE")
        try:
            value: int | float = float(digits) if is_float else int(digits)
        except ValueError:
            raise CompileError([Diagnostic("E004", f"malformed number '{text}'", span)]) from None
        if is_float and value in (float("inf"), float("-inf")):
            raise CompileError([Diagnostic("E004", f"number '{text}' is out of range", span)])
        return ast.Num(value, text=text, span=span)

    def true(self, meta: Any) -> ast.Bool:
        return ast.Bool(True, span=self._span(meta))

    def false(self, meta: Any) -> ast.Bool:
        return ast.Bool(False, span=self._span(meta))

    def list(self, meta: Any, *items: Any) -> ast.ListExpr:
        return ast.ListExpr(tuple(i for i in items if i is not None), span=self._span(meta))

    def tuple(self, meta: Any, *items: Any) -> ast.TupleExpr:
        return ast.TupleExpr(tuple(i for i in items if i is not None), span=self._span(meta))

    def record(self, meta: Any, *fields: ast.Field) -> ast.Record:
        return ast.Record(tuple(fields), span=self._span(meta))

    def field(self, meta: Any, name: Token, value: ast.Expr) -> ast.Field:
        return ast.Field(str(name), value, span=self._tok(name))
