"""The bounded jinja2 sandbox every prompt template renders in: budgets, the meter, parsing and rendering.

A template renders with `StrictUndefined` (a misspelt name is an error, never an empty string) in jinja's
immutable sandbox, tightened so that no template can hang a check or a run or exhaust memory:

- a render may take a number of *steps* (loop iterations, calls of functions, macros and methods,
  attribute and item lookups), write a number of characters, and run for a number of seconds;
- `range()` longer than the step budget fails at once, as do operations that would build a string, list
  or number larger than the output budget in one go (`"x" * n`, `10 ** n`, `"%9999999d"`, widths and
  counts given to `center`, `indent`, `join`, `replace`, `batch`, `slice`, ...);
- `{% include %}`, `{% import %}` and `{% extends %}` are refused: a spec's template stands alone.

The budgets come from the environment (see `Budget`): INTRO_TEMPLATE_STEPS, INTRO_TEMPLATE_OUTPUT and
INTRO_TEMPLATE_SECONDS. Steps and output are deterministic; the clock is the backstop for a step that is
slow in a way the other limits do not foresee.

This module only renders and reports a failure as a `TemplateProblem`; checking templates against their
rows and telling the problems as positioned diagnostics is `templates.py`'s work. Kept apart because the
sandbox is a security boundary: it is read and changed on its own, against its own tests.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
import string
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

import jinja2
import jinja2.meta
from attrs import frozen
from jinja2 import nodes
from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment

STEPS_ENV, OUTPUT_ENV, SECONDS_ENV = "INTRO_TEMPLATE_STEPS", "INTRO_TEMPLATE_OUTPUT", "INTRO_TEMPLATE_SECONDS"

SYNTAX, UNDEFINED, FAILED, UNSAFE, BUDGET, SETTING = "E144", "E146", "E181", "E182", "E183", "E184"


# ---------------------------------------------------------------- budgets and problems
@frozen
class Budget:
    """What one render may spend: steps, characters of output, and wall-clock seconds (None: no clock)."""

    steps: int = 100_000
    output: int = 1_000_000
    seconds: float | None = 2.0

    @classmethod
    def from_environment(cls) -> Budget:
        """The budget the environment sets; a bad setting is a `TemplateProblem` (code E184)."""
        values = (os.environ.get(STEPS_ENV), os.environ.get(OUTPUT_ENV), os.environ.get(SECONDS_ENV))
        return _budget_from(values)

    def describe(self) -> str:
        clock = f" and {self.seconds:g} s" if self.seconds is not None else ""
        return f"{self.steps:,} steps, {self.output:,} characters{clock} per render"


@functools.lru_cache(maxsize=16)
def _budget_from(values: tuple[str | None, str | None, str | None]) -> Budget:
    default = Budget()
    steps = _setting(STEPS_ENV, values[0], int, default.steps)
    output = _setting(OUTPUT_ENV, values[1], int, default.output)
    seconds = _setting(SECONDS_ENV, values[2], float, default.seconds or 0.0)
    return Budget(int(steps), int(output), float(seconds))


def _setting(name: str, text: str | None, kind: type, default: float) -> float:
    if text is None or not text.strip():
        return default
    try:
        value = kind(text)
    except ValueError:
        value = 0
    if not value > 0 or (kind is float and not math.isfinite(value)):
        noun = "a positive whole number" if kind is int else "a positive number of seconds"
        raise TemplateProblem(SETTING, f"{name} must be {noun}, not {text!r}")
    return float(value)


class TemplateProblem(Exception):
    """Why a template cannot be rendered: a diagnostic code, a message, and the template line if known."""

    def __init__(self, code: str, message: str, line: int | None = None, name: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.line = line
        self.name = name  # the undefined top-level name, for E146
        self.notes: tuple[str, ...] = ()
        self.predicate = False  # the message goes on from the template's name ("uses 'x', which ...")

    def about(self, message: str, *notes: str) -> TemplateProblem:
        """This problem told as what the template does wrong, with notes."""
        self.message, self.notes, self.predicate = message, notes, True
        return self.with_traceback(None)  # kept in caches: hold no frames


class _Exceeded(Exception):
    """The render went over its budget."""


class _Refused(jinja2.TemplateSyntaxError):
    """A construct a spec's template may not use (it is a syntax error with its own code)."""


# ---------------------------------------------------------------- the meter: one per render
class _Meter:
    __slots__ = ("budget", "deadline", "steps")

    def __init__(self, budget: Budget, clock: bool):
        self.budget = budget
        self.steps = 0
        self.deadline = time.monotonic() + budget.seconds if clock and budget.seconds else None

    def step(self) -> None:
        self.steps += 1
        if self.steps > self.budget.steps:
            raise _Exceeded(f"more than {self.budget.steps:,} steps (loop iterations, calls and lookups)")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise _Exceeded(f"more than {self.budget.seconds:g} s")

    def size(self, value: Any) -> Any:
        if (
            isinstance(value, str | list | tuple | dict | set | frozenset | bytes)
            and len(value) > self.budget.output
        ):
            raise _Exceeded(f"a value of more than {self.budget.output:,} characters or items")
        return value

    def allow(self, size: float, what: str) -> None:
        if size > self.budget.output:
            raise _Exceeded(f"{what} would hold about {size:,.0f} characters or items")


_METER: ContextVar[_Meter | None] = ContextVar("intro_template_meter", default=None)


def _meter() -> _Meter:
    # Outside a render (jinja folds constants while compiling) a budget still applies.
    return _METER.get() or _Meter(budget_or_default(), clock=False)


def budget_or_default() -> Budget:
    """The environment's budget, or the default one where a setting is bad (reported elsewhere)."""
    try:
        return Budget.from_environment()
    except TemplateProblem:
        return Budget()


# ---------------------------------------------------------------- guards on what can blow up in one step
# A %-conversion: flags, then width and precision (a number, or `*` taken from the arguments).
_PERCENT = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")
_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
_WIDTH_FILTERS = frozenset({"center", "batch", "slice"})


def _format_sizes(text: str, percent: bool) -> tuple[list[str], bool]:
    """The widths and precisions a format string asks for, and whether some come from its arguments."""
    if percent:
        found = [n for match in _PERCENT.finditer(text) for n in match.groups() if n]
    else:
        try:
            specs = [spec for _, _, spec, _ in string.Formatter().parse(text) if spec]
        except ValueError:
            return [], False  # str.format reports the malformed string itself
        found = [n for spec in specs for n in re.findall(r"\d+|\{", spec)]
    return [n for n in found if n.isdigit()], any(n in ("*", "{") for n in found)


def _check_format(text: Any, args: Sequence[Any], meter: _Meter, percent: bool) -> None:
    """A width or precision in a format string allocates that many characters."""
    if not isinstance(text, str):
        return
    sizes, from_arguments = _format_sizes(text, percent)
    for size in sizes:
        meter.allow(float(size), "a formatted field")
    if from_arguments:
        flat = [a for arg in args for a in (arg if isinstance(arg, tuple) else (arg,))]
        _check_int_arguments(flat, meter, "a formatted field")


def _check_int_arguments(args: Iterable[Any], meter: _Meter, what: str) -> None:
    for arg in args:
        if isinstance(arg, int) and not isinstance(arg, bool):
            meter.allow(arg, what)


def _length(value: Any) -> int:
    try:
        return len(value)
    except TypeError:
        return 0


def _lines(value: Any) -> int:
    return value.count("\n") + 1 if isinstance(value, str) else _length(value) + 1


def _check_replace(text: Any, old: Any, new: Any, meter: _Meter) -> None:
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str) and len(new) > len(old):
        count = len(text) + 1 if old == "" else text.count(old)
        meter.allow(len(text) + count * (len(new) - len(old)), "the replaced text")


def _check_join(items: Any, separator: Any, meter: _Meter) -> None:
    meter.allow(_length(items) * _length(separator), "the joined text")


def _check_translate(text: str, table: Any, meter: _Meter) -> None:
    if isinstance(table, dict) and table:
        longest = max(_length(v) if isinstance(v, str) else 1 for v in table.values())
        meter.allow(len(text) * longest, "the translated text")


def _check_method(obj: Any, args: Sequence[Any], meter: _Meter) -> None:
    name = getattr(obj, "__name__", "")
    owner = getattr(getattr(obj, "__wrapped__", obj), "__self__", None)
    if not isinstance(owner, str):
        return
    if name in _WIDTH_METHODS:
        _check_int_arguments(args, meter, f"{name}()")
    elif name in ("format", "format_map"):
        _check_format(owner, args, meter, percent=False)
    elif name == "join" and args:
        _check_join(args[0], owner, meter)
    elif name == "replace" and len(args) >= 2:
        _check_replace(owner, args[0], args[1], meter)
    elif name == "translate" and args:
        _check_translate(owner, args[0], meter)


def _check_filter(name: str, args: Sequence[Any], kwargs: Mapping[str, Any], meter: _Meter) -> None:
    value, extra = (args[0], args[1:]) if args else (None, ())
    if name in _WIDTH_FILTERS:
        _check_int_arguments((*extra, *kwargs.values()), meter, f"the {name} filter")
    elif name == "format":
        _check_format(value, (*extra, *kwargs.values()), meter, percent=True)
    elif name == "join":
        _check_join(value, extra[0] if extra else kwargs.get("d", ""), meter)
    elif name == "replace" and len(extra) >= 2:
        _check_replace(value, extra[0], extra[1], meter)
    elif name in ("indent", "tojson"):
        # Each line (or item) gains the indent: the product is what gets built.
        for arg in (*extra, *kwargs.values()):
            width = arg if isinstance(arg, int) and not isinstance(arg, bool) else _length(arg)
            meter.allow(_lines(value) * width, f"the {name} filter's result")
    elif name == "wordwrap":
        width = extra[0] if extra and isinstance(extra[0], int) else kwargs.get("width", 79)
        wrap = max([_length(a) for a in (*extra[2:3], kwargs.get("wrapstring")) if isinstance(a, str)] or [1])
        meter.allow((_length(value) // max(int(width), 1) + _lines(value)) * wrap, "the wrapped text")


def _metered_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    passes_argument = hasattr(function, "jinja_pass_arg")

    @functools.wraps(function)
    def metered(*args: Any, **kwargs: Any) -> Any:
        meter = _meter()
        meter.step()
        _check_filter(name, args[1:] if passes_argument else args, kwargs, meter)
        return meter.size(function(*args, **kwargs))

    return metered


def _drawn(items: Any, count: int, key: Any) -> list[Any]:
    """`count` distinct items of `items` in a random order, drawn with a generator seeded by `key` (the row's
    prompt and sample, say): a random choice per row of a prompt set, the same at every render."""
    import random

    pool = list(dict.fromkeys(items))
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= len(pool):
        raise ValueError(f"drawn() takes from 0 to {len(pool)} of these {len(pool)} items, not {count!r}")
    seed = hashlib.sha256(repr((str(key), tuple(map(str, pool)))).encode()).digest()
    return random.Random(seed).sample(pool, count)


def _bounded_range(*args: int) -> range:
    numbers = range(*args)
    limit = _meter().budget.steps
    if len(numbers) > limit:
        shown = ", ".join(str(a) for a in args)
        raise _Exceeded(f"range({shown}) has {len(numbers):,} items, more than the {limit:,} steps allowed")
    return numbers


def _metered_iter(iterable: Any) -> Iterator[Any]:
    meter = _meter()
    for item in iterable:
        meter.step()
        yield item


def _guarded_binop(operator: str, left: Any, right: Any, meter: _Meter) -> None:
    if operator == "*":
        for sequence, count in ((left, right), (right, left)):
            if isinstance(sequence, str | list | tuple) and isinstance(count, int):
                meter.allow(len(sequence) * count, "the repeated value")
    elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
        bits = right * math.log2(abs(left))
        if bits > 64 * 1024:
            raise _Exceeded(f"{left} ** {right} has about {bits:,.0f} bits")
    elif operator == "%":
        _check_format(left, right if isinstance(right, tuple) else (right,), meter, percent=True)


# ---------------------------------------------------------------- the sandbox
class _Sandbox(ImmutableSandboxedEnvironment):
    """jinja's immutable sandbox with StrictUndefined, every step metered and the amplifiers guarded."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self) -> None:
        super().__init__(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
        self.globals["range"] = _bounded_range
        # lorem ipsum of any length in one call; a prompt has no use for it.
        self.globals.pop("lipsum", None)
        self.filters = {
            name: _metered_filter(name, f) for name, f in {**self.filters, "drawn": _drawn}.items()
        }
        self.metered_iter = _metered_iter

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        _refuse_other_templates(tree)
        for loop in tree.find_all(nodes.For):
            # Every loop's items pass through the meter: empty nested loops have no other step to count.
            metered = nodes.EnvironmentAttribute("metered_iter", lineno=loop.iter.lineno)
            loop.iter = nodes.Call(metered, [loop.iter], [], None, None, lineno=loop.iter.lineno)
        return tree

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        meter = _meter()
        meter.step()
        for value in (*args, *kwargs.values()):
            meter.size(value)
        _check_method(__obj, args, meter)
        if isinstance(__obj, LoopContext) and args:  # a recursive loop's next level
            args = (_metered_iter(args[0]), *args[1:])
        return meter.size(super().call(__context, __obj, *args, **kwargs))

    def getattr(self, obj: Any, attribute: str) -> Any:
        meter = _meter()
        meter.step()
        return meter.size(super().getattr(obj, attribute))

    def getitem(self, obj: Any, argument: Any) -> Any:
        meter = _meter()
        meter.step()
        return meter.size(super().getitem(obj, argument))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        meter = _meter()
        meter.step()
        _guarded_binop(operator, left, right, meter)
        return meter.size(super().call_binop(context, operator, left, right))


def _refuse_other_templates(tree: nodes.Template) -> None:
    for node in tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        tag = {nodes.Extends: "extends", nodes.Include: "include"}.get(type(node), "import")
        raise _Refused(
            f"a template cannot use {{% {tag} %}}: a spec's template stands alone", node.lineno or 1
        )


_SANDBOX = _Sandbox()
# The names every template has without a row giving them (`range`, `dict`, `cycler`, ...).
GLOBAL_NAMES = frozenset(_SANDBOX.globals)


# ---------------------------------------------------------------- parsing and rendering
@frozen
class Parsed:
    """A compiled template, the names it reads, and its parts when it only substitutes names."""

    template: jinja2.Template
    names: frozenset[str]
    parts: tuple[tuple[bool, str], ...] | None  # (is a name, text or name); None: needs jinja to render
    lines: Mapping[str, int]  # the line each name is first read on

    def line_of(self, name: str) -> int | None:
        return self.lines.get(name)


@functools.lru_cache(maxsize=512)
def parse(text: str) -> Parsed:
    """Compile a template once; a syntax error or a refused construct is a `TemplateProblem`."""
    try:
        tree = _SANDBOX.parse(text)
        names = frozenset(jinja2.meta.find_undeclared_variables(tree))
        template = _SANDBOX.from_string(tree)  # compiles the parsed (and metered) tree: no second parse
    except _Refused as error:
        raise TemplateProblem(UNSAFE, error.message or "refused", error.lineno) from None
    except jinja2.TemplateSyntaxError as error:
        raise TemplateProblem(SYNTAX, f"template syntax error: {error.message}", error.lineno) from None
    lines: dict[str, int] = {}
    for node in tree.find_all(nodes.Name):
        lines.setdefault(node.name, node.lineno)
    return Parsed(template, names, _substitution_parts(tree), lines)


@functools.lru_cache(maxsize=4096)
def read_names(text: str) -> frozenset[str]:
    """The names a template reads from its values (jinja's own analysis, not its text: a name mentioned in
    prose is not read); none for a template that does not parse, whose check reports why."""
    try:
        return frozenset(jinja2.meta.find_undeclared_variables(_SANDBOX.parse(text)))
    except jinja2.TemplateSyntaxError:  # _Refused is one
        return frozenset()


def _substitution_parts(tree: nodes.Template) -> tuple[tuple[bool, str], ...] | None:
    """Text and `{{ name }}` only: rendering is then joining, and can fail only for a missing name."""
    parts: list[tuple[bool, str]] = []
    for output in tree.body:
        if not isinstance(output, nodes.Output):
            return None
        for node in output.nodes:
            if isinstance(node, nodes.TemplateData):
                parts.append((False, node.data))
            elif isinstance(node, nodes.Name) and node.ctx == "load":
                parts.append((True, node.name))
            else:
                return None
    return tuple(parts)


def render(text: str, values: Mapping[str, Any], budget: Budget | None = None, clock: bool = False) -> str:
    """Render a template in the bounded sandbox; any failure is a `TemplateProblem` with its line."""
    parsed = parse(text)
    if parsed.parts is not None and all(name in values for is_name, name in parsed.parts if is_name):
        # The same text jinja writes: `{{ x }}` is str(x), and the parsed text is already normalised.
        return "".join(str(values[part]) if is_name else part for is_name, part in parsed.parts)
    return render_parsed(parsed, values, budget or Budget.from_environment(), clock)


def render_parsed(parsed: Parsed, values: Mapping[str, Any], budget: Budget, clock: bool) -> str:
    """Render a parsed template through jinja under `budget` (the clock only if `clock`), always metered."""
    meter = _Meter(budget, clock)
    token = _METER.set(meter)
    written: list[str] = []
    total = 0
    try:
        for chunk in parsed.template.generate(values):
            total += len(chunk)
            if total > budget.output:
                raise _Exceeded(f"more than {budget.output:,} characters of output")
            written.append(chunk)
            meter.step()
    except Exception as error:  # noqa: BLE001 - every failure of user code becomes a TemplateProblem
        raise _problem(error) from None
    finally:
        _METER.reset(token)
    return "".join(written)


def _problem(error: BaseException) -> TemplateProblem:
    line = _template_line(error)
    if isinstance(error, _Exceeded):
        return TemplateProblem(BUDGET, str(error), line)
    if isinstance(error, jinja2.exceptions.SecurityError):
        return TemplateProblem(UNSAFE, str(error), line)
    if isinstance(error, jinja2.UndefinedError):
        match = re.fullmatch(r"'(\w+)' is undefined", str(error))
        return TemplateProblem(UNDEFINED, str(error), line, match[1] if match else None)
    if isinstance(error, RecursionError):
        return TemplateProblem(
            FAILED, "calls nest too deeply (a macro or a recursive loop that never stops?)", line
        )
    if isinstance(error, MemoryError):
        return TemplateProblem(BUDGET, "ran out of memory", line)
    return TemplateProblem(
        FAILED, f"{type(error).__name__}: {error}" if str(error) else type(error).__name__, line
    )


def _template_line(error: BaseException) -> int | None:
    line, trace = None, error.__traceback__
    while trace is not None:
        if trace.tb_frame.f_code.co_filename == "<template>":
            line = trace.tb_lineno
        trace = trace.tb_next
    return line
