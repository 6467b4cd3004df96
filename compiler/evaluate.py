"""Resolve names, load imports, check types and evaluate a study into IR.

The language is total (no recursion, finite loops), so "resolving" a study means evaluating it: each
expression becomes a typed IR value (a study's statements, its axes and measure points, are
`compiler/study.py`'s). Calls, of builtins and of user functions (`fn`), are bound and run by
`compiler/functions.py`.
Errors are reported to a `Sink` with the span of the expression at fault; evaluation of that statement
stops (`_Abort`) and the next statement goes on, so one run reports many independent errors.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

from attrs import evolve

from . import ast, ir
from .builtins import FUNCTIONS
from .call_memo import CallMemo, Unknown, named_values
from .declarations import build_decl, build_model
from .diagnostics import CompileError, Diagnostic, Sink, Span, did_you_mean
from .files import OUTSIDE_NOTE, SPEC_LIMIT_ENV, Confinement, FileProblem, read_bytes, utf8_error_position
from .parser import parse
from .types import CHECKS, Function, Module, UserFunction, describe_type, type_name


class _Abort(Exception):
    """An error was reported; stop evaluating the current statement."""


class Context:
    """What builtins and declarations need from the evaluator: error reporting and file resolution."""

    def __init__(self, sink: Sink, directory: Path, confinement: Confinement | None = None):
        self.sink = sink
        self.directory = directory
        self.confinement = confinement or Confinement(None)
        self.sources: Mapping[str, str] = {}  # the program's texts: a template's lines are found in them
        # The block a builtin is called from (set by each call): prompt templates see the plain values
        # (strings, numbers, booleans) bound there, loop variables, lets, a function's parameters.
        self.template_scope: Scope | None = None
        # What is read once per compilation and shared by its contexts (the budget templates get).
        self.compilation: dict[str, Any] = {}
        # While a call's value is computed for the memo (call_memo.py): the template values it read.
        self.template_reads: list[tuple[tuple[str, ...], tuple[tuple[str, Any], ...]]] | None = None

    def named_template_values(self, *templates: str | None) -> tuple[tuple[str, Any], ...]:
        """The plain values in scope (loop variables, lets, parameters) that any of the templates reads."""
        # Read only by the few builtins that write templates: not gathered for every call.
        texts = tuple(t for t in templates if t)
        scope = self.template_scope
        named = named_values(scope.template_value, texts) if scope is not None else ()
        if self.template_reads is not None:
            self.template_reads.append((texts, named))
        return named

    def confined(self, relative: str, span: Span) -> Path:
        """`relative` resolved against this file's folder; an error unless it lies inside the allowed ones."""
        path = self.directory / relative
        if self.confinement.outside(path):
            self.fail("E147", f"'{relative}' lies outside the spec's folder", span, OUTSIDE_NOTE)
        return path

    def abort(self) -> NoReturn:
        """Stop this statement without a new error (one was already reported for its cause)."""
        raise _Abort

    def fail(self, code: str, message: str, span: Span, *notes: str) -> NoReturn:
        self.sink.error(code, message, span, *notes)
        raise _Abort


class Program:
    """All files of one compilation: the spec and every module it imports, parsed once."""

    def __init__(self, sink: Sink, confinement: Confinement | None = None):
        self.sink = sink
        self.confinement = confinement or Confinement(None)
        self.sources: dict[str, str] = {}
        self._namespaces: dict[str, _Namespace] = {}
        self._loading: list[str] = []
        self.calls: list[tuple[Span, str]] = []  # the user functions being evaluated: declaration, name
        self.memo = CallMemo()
        self.compilation: dict[str, Any] = {}  # see Context.compilation

    def load_spec(self, path: Path, source: str | None = None) -> tuple[_Namespace, ast.Module]:
        """Load the spec at `path`; `source` stands in for the file's text (an editor's unsaved buffer)."""
        source = read_source(path) if source is None else source
        self.sources[str(path)] = source
        module = parse(source, str(path))
        namespace = _Namespace(self, module, path.parent, name=path.stem)
        self._namespaces[str(path)] = namespace
        return namespace, module

    def import_module(self, use: ast.Use, directory: Path) -> _Namespace:
        path = self._module_path(use, directory)
        key = str(path)
        if key in self._loading:
            cycle = " -> ".join([*self._loading[self._loading.index(key) :], key])
            self.sink.error("E110", f"import cycle: {cycle}", use.span)
            raise _Abort
        if key not in self._namespaces:
            self._loading.append(key)
            try:
                source = read_source(path)
                self.sources[key] = source
                module = parse(source, key)
                self._namespaces[key] = _Namespace(self, module, path.parent, name=use.module[-1])
            except CompileError as error:
                self.sink.items.extend(error.diagnostics)
                raise _Abort from None
            finally:
                self._loading.pop()
        return self._namespaces[key]

    def _module_path(self, use: ast.Use, directory: Path) -> Path:
        parts = use.module
        path = module_file(parts, directory)
        if not path.is_file():
            where = "the standard library" if parts[0] == "stdlib" else str(directory)
            siblings = [p.stem for p in path.parent.glob("*.intro")] if path.parent.is_dir() else []
            notes = did_you_mean(path.stem, siblings)
            self.sink.error("E111", f"no module '{'.'.join(parts)}' in {where}", use.span, *notes)
            raise _Abort
        if self.confinement.outside(path):
            name = ".".join(parts)
            self.sink.error("E112", f"module '{name}' lies outside the spec's folder", use.span, OUTSIDE_NOTE)
            raise _Abort
        return path


def module_file(parts: tuple[str, ...], directory: Path) -> Path:
    """Where `use a.b.c` looks: `stdlib.*` in the standard library, anything else next to the importing file."""
    if parts[0] == "stdlib":
        return Path(str(resources.files("intro.stdlib"))).joinpath(*parts[1:]).with_suffix(".intro")
    return directory.joinpath(*parts).with_suffix(".intro")


def read_source(path: Path) -> str:
    """A spec or module's text: a regular UTF-8 file within the size limit, else a positioned CompileError."""
    try:
        data = read_bytes(path, SPEC_LIMIT_ENV)
    except FileProblem as problem:
        raise CompileError([_file_error(path, f"cannot read file: {problem.message}")]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = utf8_error_position(data, exc.start)
        bad = data[exc.start : exc.start + 1].hex()
        message = f"byte 0x{bad} is not valid UTF-8; save the file as UTF-8"
        raise CompileError([_file_error(path, message, line, column)]) from None


def _file_error(path: Path, message: str, line: int = 1, column: int = 1) -> Diagnostic:
    return Diagnostic("E000", message, Span.point(str(path), line, column))


# ---------------------------------------------------------------- module namespaces
class _Namespace:
    """A file's top-level names. Each declaration is evaluated the first time it is used."""

    def __init__(self, program: Program, module: ast.Module, directory: Path, name: str):
        self.program = program
        self.ctx = Context(program.sink, directory, program.confinement)
        self.ctx.sources = program.sources
        self.ctx.compilation = program.compilation
        self.name = name
        self.decls: dict[str, ast.Item] = {}
        self.values: dict[str, Any] = {}
        self._evaluating: set[str] = set()
        self.studies: list[ast.Study] = []
        self._collect(module)

    def _collect(self, module: ast.Module) -> None:
        for item in module.items:
            if isinstance(item, ast.Study):
                self.studies.append(item)
                continue
            for name, span in _declared_names(item):
                if name in self.decls:
                    self.ctx.sink.error("E101", f"'{name}' is declared twice", span)
                elif name in FUNCTIONS:
                    self.ctx.sink.error("E102", f"'{name}' is a built-in function; choose another name", span)
                else:
                    self.decls[name] = item

    def names(self) -> tuple[str, ...]:
        return tuple(self.decls)

    def as_module(self) -> Module:
        return Module(self.name, self.lookup, self.names)

    def lookup(self, name: str) -> Any:
        if name in self.values:
            return self.values[name]
        item = self.decls.get(name)
        if item is None:
            return _MISSING
        if name in self._evaluating:
            self.ctx.sink.error("E103", f"'{name}' is defined in terms of itself", item.span)
            raise _Abort
        self._evaluating.add(name)
        try:
            self._evaluate_item(item)
        except _Abort:
            self.values.setdefault(name, _POISON)
            raise
        finally:
            self._evaluating.discard(name)
        return self.values.get(name, _MISSING)

    def _evaluate_item(self, item: ast.Item) -> None:
        scope = Scope(self, {})
        match item:
            case ast.Use():
                self._bind_use(item)
            case ast.ModelDecl():
                self.values[item.name] = build_model(item, Evaluator(self.ctx, scope), self.ctx)
            case ast.Decl():
                self.values[item.name] = build_decl(item, Evaluator(self.ctx, scope), self.ctx)
            case ast.Let():
                self.values[item.name] = _label(Evaluator(self.ctx, scope).expr(item.value), item.name)
            case ast.FnDecl():
                from .functions import declare

                self.values[item.name] = declare(item, self)

    def _bind_use(self, use: ast.Use) -> None:
        namespace = self.program.import_module(use, self.ctx.directory)
        if use.names is None:
            self.values[use.alias or use.module[-1]] = namespace.as_module()
            return
        for name in use.names:
            value = namespace.lookup(name.id)
            if value is _MISSING:
                notes = did_you_mean(name.id, namespace.names())
                self.ctx.sink.error(
                    "E104", f"module '{'.'.join(use.module)}' has no '{name.id}'", name.span, *notes
                )
                continue
            self.values[name.id] = value


def _declared_names(item: ast.Item) -> Iterator[tuple[str, Span]]:
    match item:
        case ast.Use(names=None):
            yield item.alias or item.module[-1], item.span
        case ast.Use(names=names):
            yield from ((n.id, n.span) for n in names or ())
        case ast.ModelDecl() | ast.Decl() | ast.Let() | ast.FnDecl():
            yield item.name, item.span


_MISSING = object()
# The value of a name whose definition failed: using it aborts quietly, so one error is reported once.
_POISON = object()


# ---------------------------------------------------------------- expressions
_PLAIN = (str, int, float, bool)  # the values a template may read from the block around a call


class Scope:
    def __init__(self, namespace: _Namespace, local: dict[str, Any], parent: Scope | None = None):
        self.namespace = namespace
        self.local = local
        self.parent = parent

    def child(self, local: dict[str, Any]) -> Scope:
        return Scope(self.namespace, local, self)

    def lookup(self, name: str) -> Any:
        scope: Scope | None = self
        while scope is not None:
            if name in scope.local:
                return scope.local[name]
            scope = scope.parent
        namespace = self.namespace
        if name in FUNCTIONS and name not in namespace.values and name not in namespace.decls:
            return FUNCTIONS[name]  # what the module's lookup would come to, without it
        value = namespace.lookup(name)
        if value is _MISSING and name in FUNCTIONS:
            return FUNCTIONS[name]
        return value

    def peek(self, name: str) -> Any:
        """What `lookup` gives, where that evaluates nothing and reports nothing; else raises Unknown."""
        value = self.local.get(name, _MISSING)
        scope = self.parent
        while value is _MISSING and scope is not None:
            value = scope.local.get(name, _MISSING)
            scope = scope.parent
        if value is _MISSING:
            value = self.namespace.values.get(name, _MISSING)
            if value is _MISSING and name not in self.namespace.decls:
                value = FUNCTIONS.get(name, _MISSING)
        if value is _MISSING or value is _POISON:
            raise Unknown(name)
        return value

    def template_value(self, name: str) -> Any:
        """The plain value (a string, number, boolean or list of them) of `name` bound in this block or the
        blocks around it (the innermost plain one); None where there is none."""
        scope: Scope | None = self
        while scope is not None:
            value = scope.local.get(name)
            if _plain(value):
                return value
            scope = scope.parent
        return None

    def bound_names(self) -> set[str]:
        """The names bound in this block and the blocks around it (the same each time a block is run)."""
        names: set[str] = set()
        scope: Scope | None = self
        while scope is not None:
            names.update(scope.local)
            scope = scope.parent
        return names

    def visible_names(self) -> set[str]:
        names = set(self.namespace.names()) | set(FUNCTIONS)
        scope: Scope | None = self
        while scope is not None:
            names |= set(scope.local)
            scope = scope.parent
        return names


class Evaluator:
    def __init__(self, ctx: Context, scope: Scope):
        self.ctx = ctx
        self.scope = scope
        # While the memo computes a call (call_memo.py): the names it reads as arguments.
        self.computing: frozenset[str] | None = None

    def expr(self, node: ast.Expr) -> Any:
        try:
            method = _METHODS[type(node)]
        except KeyError:  # the first node of its kind: its method, found by name
            method = _METHODS[type(node)] = getattr(Evaluator, "_" + type(node).__name__)
        return method(self, node)

    def expect(self, node: ast.Expr, type_: str, what: str) -> Any:
        """Evaluate `node` and check it has type `type_`, else report `what` had the wrong type."""
        value = self.expr(node)
        if not CHECKS[type_](value):
            self.ctx.fail(
                "E201", f"{what} must be a {describe_type(type_)}, not a {type_name(value)}", node.span
            )
        return value

    def _Str(self, node: ast.Str) -> str:
        return node.value

    def _Num(self, node: ast.Num) -> int | float:
        return node.value

    def _Bool(self, node: ast.Bool) -> bool:
        return node.value

    def _ListExpr(self, node: ast.ListExpr | ast.TupleExpr) -> tuple[Any, ...]:
        return tuple(map(self.expr, node.items))

    _TupleExpr = _ListExpr  # `(a, b)` is a list written in parentheses

    def _Record(self, node: ast.Record) -> Mapping[str, Any]:
        seen: dict[str, Any] = {}
        for field in node.fields:
            if field.name in seen:
                self.ctx.fail("E105", f"field '{field.name}' is given twice", field.span)
            seen[field.name] = self.expr(field.value)
        return seen

    def _Name(self, node: ast.Name) -> Any:
        value = self.scope.lookup(node.id)
        if value is _POISON:
            raise _Abort
        if value is _MISSING:
            self.ctx.fail(
                "E100",
                f"unknown name '{node.id}'",
                node.span,
                *did_you_mean(node.id, self.scope.visible_names()),
            )
        return value

    def _Attr(self, node: ast.Attr) -> Any:
        base = self.expr(node.value)
        if isinstance(base, Module):
            value = base.lookup(node.name)
            if value is _POISON:
                raise _Abort
            if value is _MISSING:
                notes = did_you_mean(node.name, base.names())
                self.ctx.fail("E104", f"module '{base.name}' has no '{node.name}'", node.span, *notes)
            return value
        readable = _readable_fields(base)
        if node.name in readable:
            return getattr(base, readable[node.name])
        if isinstance(base, Mapping) and node.name in base:
            return base[node.name]
        fields = _fields_of(base)
        notes = did_you_mean(node.name, fields) or ((f"it has: {', '.join(fields)}",) if fields else ())
        self.ctx.fail("E106", f"a {type_name(base)} has no field '{node.name}'", node.span, *notes)

    def _Unary(self, node: ast.Unary) -> Any:
        value = self.expr(node.operand)
        return self._arith("*", -1, value, node)

    def _Binary(self, node: ast.Binary) -> Any:
        return self._arith(node.op, self.expr(node.left), self.expr(node.right), node)

    def _arith(self, op: str, left: Any, right: Any, node: ast.Expr) -> Any:
        if op in _COMPARISONS:
            return self._compare(op, left, right, node)
        number, vector = CHECKS["number"], CHECKS["vector"]
        if op == "+" and isinstance(left, str) and isinstance(right, str):
            return left + right
        if op == "+" and isinstance(left, tuple) and isinstance(right, tuple):
            return left + right  # lists join
        if number(left) and number(right):
            if op == "/" and right == 0:
                self.ctx.fail("E202", "division by zero", node.span)
            result = {"+": left + right, "-": left - right, "*": left * right}.get(op)
            return result if op != "/" else left / right
        if op in ("+", "-") and vector(left) and vector(right):
            return ir.SumVector(left, right if op == "+" else ir.ScaledVector(right, -1.0))
        if op == "*" and number(left) and vector(right):
            return ir.ScaledVector(right, float(left))
        if op in ("*", "/") and vector(left) and number(right):
            if op == "/" and right == 0:
                self.ctx.fail("E202", "division by zero", node.span)
            return ir.ScaledVector(left, float(right) if op == "*" else 1.0 / right)
        self.ctx.fail(
            "E203", f"cannot apply '{op}' to a {type_name(left)} and a {type_name(right)}", node.span
        )

    def _compare(self, op: str, left: Any, right: Any, node: ast.Expr) -> bool:
        """Numbers compare by size; `==` and `!=` also compare strings, booleans and lists of them."""
        number = CHECKS["number"]
        if number(left) and number(right):
            return bool(_COMPARISONS[op](left, right))
        if op in ("==", "!=") and _plain(left) and _plain(right):
            same = type(left) is type(right) and left == right  # 1 and true are not equal
            return same if op == "==" else not same
        self.ctx.fail(
            "E203", f"cannot compare a {type_name(left)} and a {type_name(right)} with '{op}'", node.span
        )

    def _Call(self, node: ast.Call) -> Any:
        return self.scope.namespace.program.memo.evaluate(node, self)

    def evaluate_call(self, node: ast.Call, func: Any = None) -> Any:
        """The value of a call, evaluated (`_Call` reuses it where the memo has it); `func`, where given,
        is the function its name stands for (a module's or a builtin: the same at each call)."""
        if func is None:
            func = self.expr(node.func)
        if not isinstance(func, Function | UserFunction):
            self.ctx.fail("E204", f"a {type_name(func)} cannot be called", node.func.span)
        return functions.call(func, node, self)

    def _NamedArg(self, node: ast.NamedArg) -> Any:  # pragma: no cover - handled by call()
        return self.expr(node.value)


_COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


def _plain(value: Any) -> bool:
    """A string, boolean, number or a list of them: what `==` compares."""
    return isinstance(value, _PLAIN) or isinstance(value, tuple) and all(map(_plain, value))


# Each expression node's type -> the Evaluator method that evaluates it (`_Name` for ast.Name, ...).
_METHODS: dict[type, Callable[[Evaluator, Any], Any]] = {}


# The fields of declared values a spec may read (`mysplit.train`, `li.first_character.question`), by the
# names their declarations use: what was declared, never rows, spans or bookkeeping.
_READABLE: dict[type, dict[str, str]] = {
    ir.BaseModel: {"name": "name", "backend": "backend", "locator": "locator"},
    ir.Task: {f: f for f in ("name", "prompt", "answer", "choices", "system")} | {"id": "id_column"},
    ir.Property: {f: f for f in ("name", "extract", "question", "choices")},
    ir.Split: {f: f for f in ("name", "train", "test")},
    ir.Selection: {f: f for f in ("tasks", "items", "seed")},
    ir.Sampling: {f: f for f in ("temperature", "samples", "max_tokens", "seed", "stop", "reduce")},
}


def _readable_fields(value: Any) -> dict[str, str]:
    """Field name -> attribute of `value` a spec may read; a field that is not set (None) is not readable."""
    fields = _READABLE.get(type(value), {})
    return {name: attr for name, attr in fields.items() if getattr(value, attr) is not None}


def _fields_of(value: Any) -> tuple[str, ...]:
    if isinstance(value, Mapping):
        return tuple(value)
    return tuple(_readable_fields(value))


def _label(value: Any, name: str) -> Any:
    """Give a derived model the name it was bound to, for readable step ids (not part of its meaning)."""
    if isinstance(value, ir.FinetunedModel | ir.SteeredModel):
        return evolve(value, label=name)
    return value


# Calls are bound and run by functions.py, which imports this module: imported last, read at call time.
from . import functions  # noqa: E402
