"""Prompt templates (jinja2): rendered in a bounded sandbox, and checked against their rows before a run.

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

`intro check` renders every template against every row it can be rendered with (`check_rows`,
`check_questions`, `check_hypothetical`). Lowering renders the same templates on a subset of those rows
(without the clock, so a check that passed cannot fail later under load), so compile, plan and run
never meet a template error the check did not report. A template that only substitutes names
(`"Next after {{ sequence }}?"`) is checked without rendering: every row must have the names.
"""

from __future__ import annotations

import functools
import math
import os
import re
import string
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, NoReturn

import jinja2
import jinja2.meta
from attrs import frozen
from jinja2 import nodes
from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .diagnostics import Span, did_you_mean

if TYPE_CHECKING:
    from . import ir
    from .evaluate import Context

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
    return _METER.get() or _Meter(_budget_or_default(), clock=False)


def _budget_or_default() -> Budget:
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
        self.filters = {name: _metered_filter(name, f) for name, f in self.filters.items()}
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
    return _render_metered(parsed, values, budget or Budget.from_environment(), clock)


def _render_metered(parsed: Parsed, values: Mapping[str, Any], budget: Budget, clock: bool) -> str:
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


# ---------------------------------------------------------------- checks, reported to the compiler's sink
@frozen
class Rows:
    """Rows a template is rendered with, and how messages name them (`'animals.jsonl'`, its id column)."""

    rows: Sequence[Mapping[str, Any]]
    label: str  # names one row's source: "row 'a1' of {label}"
    plural: str  # names them all: "which {plural} do not have"
    id_column: str = "id"

    def row_id(self, row: Mapping[str, Any]) -> str:
        return repr(str(row.get(self.id_column, "?")))

    def row_name(self, row: Mapping[str, Any]) -> str:
        return f"row {self.row_id(row)} of {self.label}"


def check_syntax(ctx: Context, text: str, span: Span) -> Parsed:
    """Parse a template, reporting a syntax error or a refused construct at its line."""
    try:
        return parse(text)
    except TemplateProblem as problem:
        fail(ctx, problem, text, span)


def check_rows(ctx: Context, text: str, span: Span, rows: Rows) -> None:
    """Render a template against every row (or, for plain substitution, check every row has its names)."""
    parsed = check_syntax(ctx, text, span)
    problem = _rows_problem(parsed, rows, _budget(ctx, text, span))
    if problem is not None:
        fail(ctx, problem, text, span)


def _budget(ctx: Context, text: str, span: Span) -> Budget:
    try:
        return Budget.from_environment()
    except TemplateProblem as problem:
        fail(ctx, problem, text, span)


def _rows_problem(parsed: Parsed, rows: Rows, budget: Budget) -> TemplateProblem | None:
    if parsed.parts is not None:
        return _substitution_problem(parsed, rows, budget)
    for row in rows.rows:
        try:
            _render_metered(parsed, row, budget, clock=True)
        except TemplateProblem as problem:
            return _on_row(problem, rows, row)
    return None


def _substitution_problem(parsed: Parsed, rows: Rows, budget: Budget) -> TemplateProblem | None:
    parts = parsed.parts or ()
    names = [name for is_name, name in parts if is_name]
    fixed = sum(len(part) for is_name, part in parts if not is_name)
    for row in rows.rows:
        missing = [n for n in names if n not in row and n not in _SANDBOX.globals]
        if missing:
            return _missing(missing[0], rows, row, parsed.line_of(missing[0]))
        if fixed + sum(len(str(row[n])) for n in names if n in row) > budget.output:
            return _on_row(
                TemplateProblem(BUDGET, f"more than {budget.output:,} characters of output"), rows, row
            )
    return None


def _missing(name: str, rows: Rows, row: Mapping[str, Any], line: int | None = None) -> TemplateProblem:
    having = sum(1 for r in rows.rows if name in r)
    fields = ", ".join(sorted(row))
    problem = TemplateProblem(UNDEFINED, "", line, name)
    if having == 0:
        return problem.about(
            f"uses {name!r}, which {rows.plural} do not have",
            *did_you_mean(name, row),
            f"row fields: {fields}",
        )
    return problem.about(
        f"uses {name!r}, which {rows.row_name(row)} does not have",
        *did_you_mean(name, row),
        f"{having} of {len(rows.rows)} rows have it; row {rows.row_id(row)} has: {fields}",
    )


_VERB = {FAILED: "fails", UNSAFE: "breaks the sandbox", BUDGET: "exceeds its budget"}


def _on_row(problem: TemplateProblem, rows: Rows, row: Mapping[str, Any]) -> TemplateProblem:
    if problem.code == UNDEFINED and problem.name is not None:
        return _missing(problem.name, rows, row, problem.line)
    return problem.about(f"{_VERB.get(problem.code, 'fails')} on {rows.row_name(row)}: {problem.message}")


def fail(ctx: Context, problem: TemplateProblem, text: str, span: Span, what: str = "template") -> NoReturn:
    """Report a template's problem at the template (at its line, when the template is a literal)."""
    where, line_note = locate(span, text, problem.line, ctx.sources)
    message = f"{what} {problem.message}" if problem.predicate else problem.message
    notes = [*line_note, *problem.notes]
    if problem.code == UNSAFE and problem.predicate:
        notes.append("templates may read fields and use jinja's filters and tests, not Python internals")
    if problem.code == BUDGET:
        budget, env = _budget_or_default().describe(), ", ".join((STEPS_ENV, OUTPUT_ENV, SECONDS_ENV))
        notes.append(f"a template may take {budget}; set {env} to change that")
    ctx.fail(problem.code, message, where, *notes)


# ---------------------------------------------------------------- where in the spec a template line is
def locate(
    span: Span, text: str, line: int | None, sources: Mapping[str, str]
) -> tuple[Span, tuple[str, ...]]:
    """The span of line `line` of a template written as a literal at `span`; else `span` and a note."""
    if line is None or ("\n" not in text and "\r" not in text):
        return span, ()
    lines = _literal_lines(span, text, sources.get(span.path))
    if lines is None or not 1 <= line <= len(lines):
        return span, (f"at line {line} of the template",)
    return lines[line - 1], ()


def _literal_lines(span: Span, text: str, source: str | None) -> list[Span] | None:
    """Each template line's span in the source, when the template is exactly the literal at `span`."""
    literal = _span_text(span, source)
    if literal is None or not literal.startswith('"'):
        return None
    quote = 3 if literal.startswith('"""') else 1
    chars = list(_literal_chars(literal[quote:-quote], span.line, span.column + quote))
    if "".join(char for char, _, _ in chars) != text:
        return None
    breaks = [i for i, (char, _, _) in enumerate(chars) if _breaks_line(chars, i)]
    starts = [0, *(i + 1 for i in breaks)]
    ends = [*breaks, len(chars)]
    return [_line_span(span, chars, start, end) for start, end in zip(starts, ends, strict=True)]


def _breaks_line(chars: list[tuple[str, int, int]], index: int) -> bool:
    # jinja's line breaks: \n, \r\n (counted at its \n) and a lone \r.
    char = chars[index][0]
    return char == "\n" or (char == "\r" and (index + 1 == len(chars) or chars[index + 1][0] != "\n"))


def _line_span(span: Span, chars: list[tuple[str, int, int]], start: int, end: int) -> Span:
    piece = [(line, column) for char, line, column in chars[start:end] if char != "\r"]
    if not piece:  # an empty line: point where it starts
        line, column = chars[start][1:] if start < len(chars) else (span.end_line, span.end_column - 1)
        return Span.point(span.path, line, column)
    (line, column), (last_line, last_column) = piece[0], piece[-1]
    return Span(span.path, line, column, line, last_column + 1 if last_line == line else column + 1)


def _literal_chars(body: str, line: int, column: int) -> Iterator[tuple[str, int, int]]:
    """The characters a literal's body means, each with the source line and column it starts at."""
    escapes = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "r": "\r", "{": "{"}
    index = 0
    while index < len(body):
        char = body[index]
        if char == "\\" and index + 1 < len(body):
            yield escapes.get(body[index + 1], body[index + 1]), line, column
            index, column = index + 2, column + 2
            continue
        yield char, line, column
        index += 1
        line, column = (line + 1, 1) if char == "\n" else (line, column + 1)


def _span_text(span: Span, source: str | None) -> str | None:
    if source is None:
        return None
    lines = source.split("\n")
    if not 1 <= span.line <= span.end_line <= len(lines):
        return None
    if span.line == span.end_line:
        return lines[span.line - 1][span.column - 1 : span.end_column - 1]
    first, last = lines[span.line - 1][span.column - 1 :], lines[span.end_line - 1][: span.end_column - 1]
    return "\n".join([first, *lines[span.line : span.end_line - 1], last])


# ---------------------------------------------------------------- property questions and hypothetical templates
def check_questions(
    ctx: Context, tasks: Sequence[ir.Task], properties: Sequence[ir.Property], fallback: Span
) -> None:
    """Each property question, rendered against every row of each task it is asked about."""
    for prop in properties:
        span = prop.question_span or fallback
        budget = _budget(ctx, prop.question, span)
        for task in tasks:
            if prop.reads_task(task):
                problem = _question_problem(prop.question, task, budget)
                if problem is not None:
                    fail(ctx, problem, prop.question, span, f"the question of property '{prop.name}'")


@functools.lru_cache(maxsize=1024)
def _question_problem(question: str, task: ir.Task, budget: Budget) -> TemplateProblem | None:
    # Parsed without error where the property is declared.
    return _rows_problem(
        parse(question),
        Rows(task.rows, f"task '{task.name}'", f"the rows of task '{task.name}'", task.id_column),
        budget,
    )


HYPOTHETICAL_VALUES = ("object_prompt", "question")


def check_hypothetical(
    ctx: Context, text: str, span: Span, tasks: Sequence[ir.Task], properties: Sequence[ir.Property]
) -> None:
    """A hypothetical template is given `object_prompt` and `question`; render it as lowering will."""
    parsed = check_syntax(ctx, text, span)
    budget = _budget(ctx, text, span)
    if parsed.parts is not None:
        missing = sorted(
            n for n in parsed.names if n not in HYPOTHETICAL_VALUES and n not in _SANDBOX.globals
        )
        if missing:
            unknown = TemplateProblem(UNDEFINED, "", parsed.line_of(missing[0]), missing[0])
            fail(ctx, _not_given(unknown), text, span, "the hypothetical template")
        return
    for task in tasks:
        readers = tuple(p for p in properties if p.reads_task(task))
        problem = _hypothetical_problem(text, task, readers, budget)
        if problem is not None:
            fail(ctx, problem, text, span, "the hypothetical template")


def _not_given(problem: TemplateProblem) -> TemplateProblem:
    name = problem.name or "?"
    return problem.about(
        f"uses {name!r}, which is not one of its values",
        *did_you_mean(name, HYPOTHETICAL_VALUES),
        f"a hypothetical template is given: {', '.join(HYPOTHETICAL_VALUES)}",
    )


@functools.lru_cache(maxsize=256)
def _hypothetical_problem(
    text: str, task: ir.Task, properties: tuple[ir.Property, ...], budget: Budget
) -> TemplateProblem | None:
    """Render the template for each (row, property) of `task`, as lowering does for the rows it picks."""
    parsed = parse(text)
    for row in task.rows:
        object_prompt = render(task.prompt, row, budget)
        for prop in properties:
            values = {"object_prompt": object_prompt, "question": render(prop.question, row, budget)}
            try:
                _render_metered(parsed, values, budget, clock=True)
            except TemplateProblem as problem:
                if problem.code == UNDEFINED and problem.name is not None:
                    return _not_given(problem)
                where = f"row {task.row_id(row)!r} of task '{task.name}' with property '{prop.name}'"
                return problem.about(f"{_VERB.get(problem.code, 'fails')} on {where}: {problem.message}")
    return None


# ---------------------------------------------------------------- str.format templates (concept prompts)
def format_problem(text: str, names: Sequence[str], what: str = "the template") -> str | None:
    """Why `text.format(**names)` could fail or do more than fill the names in; None when it cannot.

    The runtime fills a concept template with `str.format`: a field it is not given, a positional or
    attribute field (`{word.__class__}`), a format spec or a stray brace would fail (or reach into
    Python objects) mid-run, after the work before it.
    """
    try:
        fields = [(field, spec, conversion) for _, field, spec, conversion in string.Formatter().parse(text)]
    except ValueError as error:
        return f"{what} is not a valid format string: {error}"
    for field, spec, conversion in fields:
        if field is None:
            continue
        if field not in names:
            return f"{what} may only fill in {', '.join('{' + n + '}' for n in names)}, not {{{field}}}"
        if spec or conversion:
            return f"{what} fills in {{{field}}} as it is: no conversion or format spec"
    filled = {field for field, _, _ in fields}
    missing = [name for name in names if name not in filled]
    if missing:
        return f"{what} must contain {{{missing[0]}}}"
    return None
