"""Calls: binding arguments to parameters, for builtins and for functions declared in `.intro` with `fn`.

    fn rate_of(model: model, asks: any, n: int = 5, label: string = "yes") {
      let x = ...
      return expr
    }

A user function is a value like any declaration: importable with `use`, passable as an argument. A call
binds its arguments exactly as a builtin's are bound (positional, then named, each type-checked), evaluates
left-out defaults in the defining module, then evaluates the body in a new scope whose parent is the
*defining* module's namespace (lexical scoping: a body never sees the caller's names). The language is
total, so a call that re-enters a function still being evaluated is an error. An error inside a body is
reported at the body's span, in the module that declares it, with a note naming each call site that led
there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from . import ast
from .builtins import FUNCTIONS
from .call_memo import Unknown
from .call_sites import CallSite, parameter_origins
from .diagnostics import Span, did_you_mean
from .evaluate import Context, Evaluator, Scope, _label, _Namespace
from .types import CHECKS, INSTANCES, REQUIRED, Function, Param, UserFunction, describe_type, type_name


def call(func: Function | UserFunction, node: ast.Call, ev: Evaluator) -> Any:
    """The value of `node`, a call of `func` evaluated by `ev`."""
    if isinstance(func, UserFunction):
        return _call_user(func, node, ev)
    values, spans = bind(func.name, func.params, node, ev)
    ev.ctx.template_scope = ev.scope
    return func.build(ev.ctx, spans, node.span, **values)


# ---------------------------------------------------------------- a builtin called plainly
class PlainCall:
    """A builtin call given its first arguments in order, each a name, a literal or another call, and
    its other parameters' defaults: most calls. Bound without `bind`'s walk through the parameters, for
    the same values and spans; at the first thing it cannot do (a name with no value yet, an argument of
    the wrong type), the call is evaluated again by `call`, which reports it."""

    def __init__(self, func: Function, node: ast.Call, defaults: dict[str, Any]):
        self.func, self.node, self.defaults = func, node, defaults
        params = func.params[: len(node.args)]
        # Each: name, literal value, expression, the classes its values are instances of, else its check.
        self.arguments = tuple(
            (param.name, _literal(arg), arg, INSTANCES.get(param.type), _check_of(param.type))
            for param, arg in zip(params, node.args, strict=True)
        )
        self.spans = {param.name: arg.span for param, arg in zip(params, node.args, strict=True)}
        self.spans.update(dict.fromkeys(defaults, node.span))

    @classmethod
    def of(cls, func: Any, node: ast.Call) -> PlainCall | None:
        if not isinstance(func, Function) or node.kwargs or len(node.args) > len(func.params):
            return None
        rest = func.params[len(node.args) :]
        if any(param.default is REQUIRED for param in rest):
            return None
        return cls(func, node, {param.name: param.default for param in rest})

    def evaluate(self, ev: Evaluator) -> Any:
        values = dict(self.defaults)
        for name, literal, arg, _, _ in self.arguments:
            if literal is not _NOT_LITERAL:
                values[name] = literal
            elif type(arg) is ast.Name:
                try:
                    values[name] = ev.scope.peek(arg.id)
                except Unknown:
                    return call(self.func, self.node, ev)
            else:
                values[name] = ev.expr(arg)
        for name, _, _, kinds, check in self.arguments:
            if kinds is not None and not isinstance(values[name], kinds):
                return call(self.func, self.node, ev)
            if check is not None and not check(values[name]):
                return call(self.func, self.node, ev)
        ev.ctx.template_scope = ev.scope
        return self.func.build(ev.ctx, dict(self.spans), self.node.span, **values)


_NOT_LITERAL = object()


def _check_of(type_: str) -> Callable[[Any], bool] | None:
    """A parameter type's check, where its values are not just the instances of some classes."""
    return None if type_ == "any" or type_ in INSTANCES else CHECKS[type_]


def _literal(node: ast.Expr) -> Any:
    """The value of a literal string, number or boolean (what the evaluator gives for it)."""
    return node.value if isinstance(node, ast.Str | ast.Num | ast.Bool) else _NOT_LITERAL


# ---------------------------------------------------------------- binding
# Where a left-out parameter's value comes from: (value, span), already type-checked.
DefaultOf = Callable[[Param], tuple[Any, Span]]


def bind(
    name: str, params: tuple[Param, ...], node: ast.Call, ev: Evaluator, default: DefaultOf | None = None
) -> tuple[dict[str, Any], dict[str, Span]]:
    """Bind arguments to parameters (positional, then named) and check each type.

    A left-out parameter takes `default(param)` when given (a user function's default expression), else a
    builtin's `param.default` as it is.
    """
    args = node.args
    if len(args) > len(params):
        message = f"{name}() takes at most {len(params)} arguments, got {len(args)}"
        ev.ctx.fail("E205", message, args[len(params)].span)
    # The positional arguments are the first parameters, in order: bound as they are evaluated.
    given = tuple(zip(params, args, strict=False))
    values: dict[str, Any] = {}
    spans: dict[str, Span] = {}
    for param, arg in given:
        values[param.name] = ev.expr(arg)
        spans[param.name] = arg.span
    named = _named_arguments(name, params, node, ev, values) if node.kwargs else {}
    for param, arg in given:  # checked once all are evaluated: an error in any is reported first
        if param.type != "any" and not CHECKS[param.type](values[param.name]):
            check_argument(ev.ctx, name, param, values[param.name], arg.span)
    defaults = None if named or default is not None else _builtin_defaults(params, len(args))
    if defaults is not None:  # a builtin given its first arguments: the others are its defaults
        values.update(defaults)
        spans.update(dict.fromkeys(defaults, node.span))
        return values, spans
    for param in params[len(args) :]:
        if param.name in named:
            values[param.name], spans[param.name] = named[param.name]
            check_argument(ev.ctx, name, param, *named[param.name])
        elif param.default is REQUIRED:
            ev.ctx.fail("E208", f"{name}() is missing argument '{param.name}'", node.span)
        elif default is not None:
            values[param.name], spans[param.name] = default(param)
        else:
            values[param.name], spans[param.name] = param.default, node.span
    return values, spans


# A builtin's defaults after its first n parameters, in order (None where one of them has none), by the
# identity of its parameters and n: each held with its parameters. Builtins live as long as the process.
_DEFAULTS: dict[tuple[int, int], tuple[tuple[Param, ...], dict[str, Any] | None]] = {}


def _builtin_defaults(params: tuple[Param, ...], given: int) -> dict[str, Any] | None:
    known = _DEFAULTS.get((id(params), given))
    if known is None:
        rest = params[given:]
        defaults = None if any(p.default is REQUIRED for p in rest) else {p.name: p.default for p in rest}
        known = _DEFAULTS[(id(params), given)] = (params, defaults)
    return known[1]


def _named_arguments(
    name: str, params: tuple[Param, ...], node: ast.Call, ev: Evaluator, positional: dict[str, Any]
) -> dict[str, tuple[Any, Span]]:
    """Each argument the call names, by parameter name, with the span of its expression."""
    names = [p.name for p in params]
    bound: dict[str, tuple[Any, Span]] = {}
    for named in node.kwargs:
        if named.name not in names:
            notes = (*did_you_mean(named.name, names), _parameters_note(name, names))
            ev.ctx.fail("E206", f"{name}() has no parameter '{named.name}'", named.span, *notes)
        if named.name in bound or named.name in positional:
            ev.ctx.fail("E207", f"{name}() got '{named.name}' twice", named.span)
        bound[named.name] = (ev.expr(named.value), named.value.span)
    return bound


def check_argument(ctx: Context, function: str, param: Param, value: Any, span: Span) -> None:
    """An E201 error unless `value` has the parameter's type."""
    if not CHECKS[param.type](value):
        message = (
            f"{function}() argument '{param.name}' must be a {describe_type(param.type)}, "
            f"not a {type_name(value)}"
        )
        ctx.fail("E201", message, span)


def _parameters_note(function: str, names: list[str]) -> str:
    """The parameters a misnamed argument could have meant, all of them: the list is short."""
    if not names:
        return f"{function}() takes no arguments"
    return f"{function}() parameters: {', '.join(names)}"


# ---------------------------------------------------------------- declaring a function
def declare(decl: ast.FnDecl, home: _Namespace) -> UserFunction:
    """The function `decl` declares, after checking its shape, its parameter types and the names it uses."""
    problems = [*_shape_problems(decl), *_parameter_problems(decl), *_unknown_names(decl, home)]
    for code, message, span, notes in problems:
        home.ctx.sink.error(code, message, span, *notes)
    if problems:
        home.ctx.abort()
    params = tuple(_parameter(p) for p in decl.params)
    return UserFunction(decl.name, params, decl, home)


def _parameter(param: ast.Param) -> Param:
    default = REQUIRED if param.default is None else param.default
    return Param(param.name, "any" if param.type is None else param.type.id, default)


Problem = tuple[str, str, Span, tuple[str, ...]]


def _shape_problems(decl: ast.FnDecl) -> Iterator[Problem]:
    """A body is `let`s, then one `return`."""
    for index, stmt in enumerate(decl.body):
        last = index == len(decl.body) - 1
        if isinstance(stmt, ast.Return) and not last:
            yield "E240", f"`return` must be the last statement of '{decl.name}'", stmt.span, ()
        elif isinstance(stmt, ast.For | ast.Measure):
            keyword = "for" if isinstance(stmt, ast.For) else "measure"
            note = "a function holds `let`s and one final `return`; sweeps and measures belong in a study"
            yield "E241", f"`{keyword}` cannot be used in a function", _keyword_span(stmt), (note,)
    returns = [stmt for stmt in decl.body if isinstance(stmt, ast.Return)]
    if not returns:
        yield "E240", f"function '{decl.name}' must end with `return EXPR`", decl.end, ()


def _keyword_span(stmt: ast.For | ast.Measure) -> Span:
    if isinstance(stmt, ast.Measure):
        return stmt.span
    return Span(stmt.span.path, stmt.span.line, stmt.span.column, stmt.span.line, stmt.span.column + 3)


def _parameter_problems(decl: ast.FnDecl) -> Iterator[Problem]:
    """Each parameter is named once, with a type the language knows; a `let` cannot reuse a name."""
    seen: set[str] = set()
    for param in decl.params:
        if param.name in seen:
            yield "E101", f"parameter '{param.name}' is declared twice", param.span, ()
        seen.add(param.name)
        if param.type is not None and param.type.id not in CHECKS:
            notes = did_you_mean(param.type.id, CHECKS) or (f"types: {', '.join(sorted(CHECKS))}",)
            yield "E242", f"unknown type '{param.type.id}'", param.type.span, notes
    for stmt in decl.body:
        if isinstance(stmt, ast.Let):
            if stmt.name in seen:
                yield "E101", f"'{stmt.name}' is declared twice in function '{decl.name}'", stmt.span, ()
            seen.add(stmt.name)


def _unknown_names(decl: ast.FnDecl, home: _Namespace) -> Iterator[Problem]:
    """Names the body uses that nothing defines: found when the function is declared, not when called."""
    module = set(home.names()) | set(FUNCTIONS)
    for param in decl.params:
        if param.default is not None:  # defaults are evaluated in the module, without the parameters
            yield from _undefined(param.default, module)
    visible = module | {p.name for p in decl.params}
    for stmt in decl.body:
        if isinstance(stmt, ast.Let | ast.Return):
            yield from _undefined(stmt.value, visible)
        if isinstance(stmt, ast.Let):
            visible = visible | {stmt.name}


def _undefined(node: ast.Expr, visible: set[str]) -> Iterator[Problem]:
    for name in _names_in(node):
        if name.id not in visible:
            yield "E100", f"unknown name '{name.id}'", name.span, did_you_mean(name.id, visible)


def _names_in(node: ast.Expr) -> Iterator[ast.Name]:
    """The names an expression looks up (not attribute, argument or field names)."""
    match node:
        case ast.Name():
            yield node
        case ast.Attr():
            yield from _names_in(node.value)
        case ast.Call():
            for part in (node.func, *node.args, *(named.value for named in node.kwargs)):
                yield from _names_in(part)
        case ast.ListExpr() | ast.TupleExpr():
            for item in node.items:
                yield from _names_in(item)
        case ast.Record():
            for field in node.fields:
                yield from _names_in(field.value)
        case ast.Unary():
            yield from _names_in(node.operand)
        case ast.Binary():
            yield from _names_in(node.left)
            yield from _names_in(node.right)


# ---------------------------------------------------------------- calling a function
def _call_user(func: UserFunction, node: ast.Call, ev: Evaluator) -> Any:
    home: _Namespace = func.home
    calls = home.program.calls
    _refuse_recursion(func, node, ev, calls)
    ctx, sink = _body_context(func, node, ev.ctx)
    values, spans = bind(func.name, func.params, node, ev, lambda param: _default(func, param, ctx))
    given = {*(p.name for p in func.params[: len(node.args)]), *(named.name for named in node.kwargs)}
    sink.arguments.update((name, spans[name]) for name in given)
    calls.append((func.decl.span, func.name))
    try:
        return _run_body(func, values, ctx)
    finally:
        calls.pop()


def _refuse_recursion(
    func: UserFunction, node: ast.Call, ev: Evaluator, calls: list[tuple[Span, str]]
) -> None:
    active = [declared for declared, _ in calls]
    if func.decl.span not in active:
        return
    chain = [name for _, name in calls[active.index(func.decl.span) :]] + [func.name]
    how = "itself" if len(chain) == 2 else "itself through " + " -> ".join(chain)
    note = "the language is total: a function cannot call itself, directly or through others"
    ev.ctx.fail("E243", f"'{func.name}' calls {how}", node.span, note)


def _body_context(func: UserFunction, node: ast.Call, caller: Context) -> tuple[Context, CallSite]:
    """The context a body is evaluated in: the defining module's folder, errors told at the argument that
    caused them or noted with the call site (call_sites.py)."""
    home: _Namespace = func.home
    known: dict[int, tuple[ast.FnDecl, dict[Span, frozenset[str]]]] = home.ctx.compilation.setdefault(
        "origins", {}
    )
    if id(func.decl) not in known:
        known[id(func.decl)] = (func.decl, parameter_origins(func.decl))  # the declaration held: its id
    origins = known[id(func.decl)][1]
    sink = CallSite(
        caller.sink.items, caller=caller.sink, function=func.name, call=node.span, origins=origins
    )
    ctx = Context(sink, home.ctx.directory, home.ctx.confinement)
    ctx.sources = home.ctx.sources
    ctx.compilation = home.ctx.compilation
    return ctx, sink


def _default(func: UserFunction, param: Param, ctx: Context) -> tuple[Any, Span]:
    """A left-out parameter's default, evaluated in the defining module and checked like an argument.

    It reads nothing but the module: once it has a value, that is its value at every call.
    """
    expression: ast.Expr = param.default
    defaults = func.home.program.memo.defaults
    if id(expression) in defaults:
        return defaults[id(expression)][1], expression.span
    value = Evaluator(ctx, Scope(func.home, {})).expr(expression)
    check_argument(ctx, func.name, param, value, expression.span)
    defaults[id(expression)] = (expression, value)  # the expression held: its id stays its own
    return value, expression.span


def _run_body(func: UserFunction, arguments: dict[str, Any], ctx: Context) -> Any:
    local = dict(arguments)
    ev = Evaluator(ctx, Scope(func.home, local))
    *lets, result = func.decl.body  # `declare` checked the shape: lets, then one return
    for let in lets:
        assert isinstance(let, ast.Let)
        local[let.name] = _label(ev.expr(let.value), let.name)
    assert isinstance(result, ast.Return)
    return ev.expr(result.value)
