"""Calls evaluated once per compilation for each distinct set of inputs.

The language has no side effects and no hidden inputs: a call's value is determined by its expression
and the values of the names it reads (a function body sees only its arguments and its defining module).
So a call met again with the same inputs, typically one inside a function body that does not depend on
the argument that changes from one call to the next (`prompts(sentences, identify)` in a function
called 1600 times from a sweep), takes the value computed the first time instead of evaluating again.

The one input a call can read besides its names is the plain values of its block that a template names
(`{{ word }}`, see `Context.named_template_values`): what a call read is recorded with its value and
must be the same for the value to be reused. Inputs are compared by value for plain data (strings,
numbers, booleans, lists, records), by identity for everything else (IR values, frozen): the same value
reused keeps its identity, so the calls downstream of a reused one are reused too.

Only calls that succeeded without a diagnostic are kept, so errors are found and reported exactly as
without the memo. A name not evaluated yet (a module's declaration is evaluated on first use) turns the
memo off for that call, so declarations are still evaluated, and their errors reported, in the same order.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from . import ast
from .template_sandbox import read_names

if TYPE_CHECKING:
    from .evaluate import Evaluator, Scope

# A template read: the templates' texts, and the plain values of the block they read.
Read = tuple[tuple[str, ...], tuple[tuple[str, Any], ...]]
# One call's value, the template reads it made, and its inputs (held, so that the identities in its key
# remain those of live objects).
Entry = tuple[Any, tuple[Read, ...], tuple[Any, ...]]


class _Variants:
    """The values of one call with the same inputs that read template values, by the values they read.

    For the same inputs a call reads the same templates; which values it finds depends on the block. The
    names that matter are those bound around the call that its templates read (the same names each time a
    block is run): their values are read again to find the variant that matches.
    """

    __slots__ = ("texts", "names", "entries")

    def __init__(self, reads: tuple[Read, ...], scope: Scope):
        self.texts = tuple(text for text, _ in reads)
        read = frozenset().union(*map(template_names, self.texts))
        self.names = tuple(sorted(read & scope.bound_names()))
        self.entries: dict[tuple[Any, ...], Entry] = {}

    def find(self, scope: Scope) -> Entry | None:
        read = scope.template_value
        return self.entries.get(tuple(_plain_key(read(name)) for name in self.names))

    def add(self, entry: Entry) -> None:
        if tuple(text for text, _ in entry[1]) == self.texts:
            named = {name: value for _, pairs in entry[1] for name, value in pairs}
            self.entries[tuple(_plain_key(named.get(name)) for name in self.names)] = entry


def _plain_key(value: Any) -> Any:
    """`_key` of a template value (or of None, where a name has no plain value)."""
    return None if value is None else _key(value)


_PLAIN = frozenset({str, int, bool, float, tuple, dict})  # what `_key` keys by value
# After this many evaluations without reusing a value, a call is evaluated without the memo: looking up and
# keeping values that are never reused costs about a fifth of the check of a sweep over a function.
HOPELESS = 256


class _Site:
    """A call expression, and the names whose values are its inputs.

    Once all its names have values, only those bound in the blocks around it (parameters, lets, loop
    variables: the same names each time its block is run) remain inputs: the others are a module's
    declarations or builtins, the same values for the whole compilation.
    """

    __slots__ = ("node", "names", "arguments", "settled", "function", "plain", "misses", "reused", "hopeless")

    def __init__(self, node: ast.Call):
        self.node = node  # held: its id, the memo's key for it, stays its own
        self.names = tuple(dict.fromkeys(name.id for name in names_in(node)))
        self.arguments = frozenset(_argument_names(node))  # the names it reads as values
        self.settled = False
        self.function: Any = None  # once settled, the function it calls where its name is not bound around it
        self.plain: Any = None  # and a builtin's functions.PlainCall, where it is one
        self.misses = 0
        self.reused = False
        # Whether each of its first evaluations had inputs of its own (a call that depends on the value
        # that changes from one call of its function to the next): from then on it is just evaluated.
        self.hopeless = False

    def missed(self) -> None:
        self.misses += 1
        self.hopeless = self.misses >= HOPELESS and not self.reused

    def evaluate(self, ev: Evaluator) -> Any:
        """The call's value, computed."""
        if self.plain is not None:
            return self.plain.evaluate(ev)
        return ev.evaluate_call(self.node, self.function)

    def settle(self, inputs: tuple[Any, ...], scope: Scope) -> tuple[Any, ...]:
        """Keep as inputs the names bound around the call, given the values of all its names."""
        bound = scope.bound_names()
        values = dict(zip(self.names, inputs, strict=True))
        if isinstance(self.node.func, ast.Name) and self.node.func.id not in bound:
            self.function = values[self.node.func.id]
            from .functions import PlainCall  # functions.py imports this module

            self.plain = PlainCall.of(self.function, self.node)
        self.names = tuple(name for name in self.names if name in bound)
        self.settled = True
        return tuple(values[name] for name in self.names)


class Unknown(Exception):
    """A name `Scope.peek` cannot read without evaluating something (a module's declaration not evaluated
    yet, a failed one, an unknown name): the call is evaluated without the memo."""


class CallMemo:
    """One compilation's evaluated calls, by call expression and input values."""

    def __init__(self) -> None:
        self._sites: dict[int, _Site] = {}
        self._entries: dict[tuple[Any, ...], Entry] = {}  # calls that read no template values
        self._variants: dict[tuple[Any, ...], _Variants] = {}  # calls that did
        # A list's key is one object per distinct list (hashed at once, where a tuple of its items' keys
        # would be hashed item by item at each lookup): by the items' keys, and by the list's identity.
        self._lists: dict[Any, object] = {}
        self._list_keys: dict[int, tuple[tuple[Any, ...], object]] = {}  # each held with its list
        # The values of user functions' default arguments, by their expression's identity (functions.py).
        self.defaults: dict[int, tuple[ast.Expr, Any]] = {}

    def clear(self) -> None:
        """Forget every call (at the end of a compilation)."""
        for table in (
            self._sites,
            self._entries,
            self._variants,
            self._lists,
            self._list_keys,
            self.defaults,
        ):
            table.clear()

    def evaluate(self, node: ast.Call, ev: Evaluator) -> Any:
        """The value of `node` in `ev`: reused when its inputs match an earlier evaluation, else computed."""
        try:
            site = self._sites[id(node)]
        except KeyError:
            site = self._sites[id(node)] = _Site(node)
        if site.hopeless or ev.computing is not None and not site.arguments < ev.computing:
            # (or a call within one being computed that reads the same values: computed last time too)
            return site.evaluate(ev)
        try:
            inputs = tuple(map(ev.scope.peek, site.names))
        except Unknown:
            return site.evaluate(ev)
        if not site.settled:
            inputs = site.settle(inputs, ev.scope)
        key = (id(node), *map(self._key, inputs))
        entry = self._entries.get(key)
        if entry is None and self._variants:
            variants = self._variants.get(key)
            entry = None if variants is None else variants.find(ev.scope)
        if entry is None:
            site.missed()
            return self._compute(site, key, inputs, ev)
        site.reused = True
        log = ev.ctx.template_reads
        if log is not None and entry[1]:
            log.extend(entry[1])
        return entry[0]

    def _compute(self, site: _Site, key: tuple[Any, ...], inputs: tuple[Any, ...], ev: Evaluator) -> Any:
        ctx = ev.ctx
        outermost = ctx.template_reads is None
        log: list[Read] = [] if ctx.template_reads is None else ctx.template_reads
        ctx.template_reads = log
        start, diagnostics = len(log), len(ctx.sink.items)
        computing, ev.computing = ev.computing, site.arguments
        try:
            value = site.evaluate(ev)
        finally:
            ev.computing = computing
            if outermost:
                ctx.template_reads = None
        if len(ctx.sink.items) == diagnostics:
            reads = tuple(log[start:]) if len(log) > start else ()
            self._store(key, (value, reads, inputs), ev.scope)
        return value

    def _store(self, key: tuple[Any, ...], entry: Entry, scope: Scope) -> None:
        if not entry[1]:
            self._entries[key] = entry
            return
        variants = self._variants.get(key)
        if variants is None:
            variants = self._variants[key] = _Variants(entry[1], scope)
        variants.add(entry)

    def _key(self, value: Any) -> Any:
        """`_key(value)`, but a list's key is one object for all equal lists, found once per list."""
        kind = type(value)
        if kind is str:
            return value
        if kind is not tuple:
            return id(value) if kind not in _PLAIN else _key(value)
        known = self._list_keys.get(id(value))
        if known is None:
            known = self._list_keys[id(value)] = (value, self._lists.setdefault(_key(value), object()))
        return known[1]


@functools.lru_cache(maxsize=4096)
def template_names(templates: tuple[str, ...]) -> frozenset[str]:
    """The names any of `templates` reads (as jinja parses them: a name only mentioned in prose is not)."""
    return frozenset().union(*map(read_names, templates))


def named_values(value_of: Callable[[str], Any], templates: tuple[str, ...]) -> tuple[tuple[str, Any], ...]:
    """The plain values the templates read, by name: `value_of(name)` is a name's value, None for none."""
    named = ((name, value_of(name)) for name in sorted(template_names(templates)))
    return tuple((name, value) for name, value in named if value is not None)


def _key(value: Any) -> Any:
    """A hashable stand-in for `value`, equal only for values that evaluate alike.

    Types are part of it (1, 1.0 and True are equal in Python, but print apart), a float keys by its
    exact form (0.0 and -0.0 differ), and any other value by its identity: an int, where plain values
    key as strings and tuples, so the two never meet.
    """
    kind = type(value)
    if kind is str:
        return value
    if kind is int or kind is bool:
        return (kind, value)
    if kind is float:
        return (float, value.hex())
    if kind is tuple:
        return (tuple, *map(_key, value))
    if kind is dict:
        return (dict, *((name, _key(item)) for name, item in value.items()))
    return id(value)


def _argument_names(node: ast.Call) -> Iterator[str]:
    """The names a call reads as values: in its arguments and theirs, not where they name a function."""
    for part in (*node.args, *(named.value for named in node.kwargs)):
        yield from (name.id for name in names_in(part, functions=False))


def names_in(node: ast.Expr, functions: bool = True) -> Iterator[ast.Name]:
    """The names an expression looks up (not attribute, argument or field names); with `functions`
    False, not those that name the function a call calls."""
    match node:
        case ast.Name():
            yield node
        case ast.Attr():
            yield from names_in(node.value, functions)
        case ast.Call():
            parts = (node.func, *node.args) if functions else node.args
            for part in (*parts, *(named.value for named in node.kwargs)):
                yield from names_in(part, functions)
        case ast.ListExpr() | ast.TupleExpr():
            for item in node.items:
                yield from names_in(item, functions)
        case ast.Record():
            for field in node.fields:
                yield from names_in(field.value, functions)
        case ast.Unary():
            yield from names_in(node.operand, functions)
        case ast.Binary():
            yield from names_in(node.left, functions)
            yield from names_in(node.right, functions)
