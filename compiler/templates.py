"""Prompt templates checked against their rows before a run, and their problems told as diagnostics.

`intro check` renders every template against every row it can be rendered with (`check_rows`,
`check_questions`). Lowering renders the same templates on a subset of those rows
(without the clock, so a check that passed cannot fail later under load), so compile, plan and run
never meet a template error the check did not report. A template that only substitutes names
(`"Next after {{ sequence }}?"`) is checked without rendering: every row must have the names.

Rendering itself, in a bounded sandbox, is `template_sandbox.py`; this module decides which rows and
values each template is rendered with, and reports a `TemplateProblem` at the template's line in the
spec. Concept templates, filled by `str.format` at run time, are checked here too (`format_problem`).
"""

from __future__ import annotations

import functools
import string
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from attrs import frozen

from .diagnostics import Span, did_you_mean
from .template_sandbox import (
    BUDGET,
    FAILED,
    GLOBAL_NAMES,
    OUTPUT_ENV,
    SECONDS_ENV,
    STEPS_ENV,
    UNDEFINED,
    UNSAFE,
    Budget,
    Parsed,
    TemplateProblem,
    budget_or_default,
    parse,
    render_parsed,
)

if TYPE_CHECKING:
    from . import ir
    from .evaluate import Context


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
    budget = _budget(ctx, text, span)
    passed = (text, id(rows.rows), budget)
    if isinstance(rows.rows, tuple) and _PASSED.get(passed) is rows.rows:
        return
    problem = _rows_problem(parsed, rows, budget)
    if problem is not None:
        fail(ctx, problem, text, span)
    if isinstance(rows.rows, tuple):
        _remember(passed, rows.rows)


# The templates that rendered against a tuple of rows (a data file's or a list's, met again by each call
# that prompts with them), by text, the rows' identity and the budget: each held with its rows, so that
# the identity stays theirs. Bounded: a long-lived process (the language server) checks many versions.
_PASSED: dict[tuple[str, int, Budget], Sequence[Mapping[str, Any]]] = {}
_PASSED_LIMIT = 4096


def _remember(passed: tuple[str, int, Budget], rows: Sequence[Mapping[str, Any]]) -> None:
    if len(_PASSED) >= _PASSED_LIMIT:
        _PASSED.clear()
    _PASSED[passed] = rows


def _budget(ctx: Context, text: str, span: Span) -> Budget:
    """The environment's budget, read once per compilation (a bad setting is an error at each template)."""
    budget: Budget | None = ctx.compilation.get("template budget")
    if budget is None:
        try:
            budget = ctx.compilation["template budget"] = Budget.from_environment()
        except TemplateProblem as problem:
            fail(ctx, problem, text, span)
    return budget


def _rows_problem(parsed: Parsed, rows: Rows, budget: Budget) -> TemplateProblem | None:
    if parsed.parts is not None:
        return _substitution_problem(parsed, rows, budget)
    for row in rows.rows:
        try:
            render_parsed(parsed, row, budget, clock=True)
        except TemplateProblem as problem:
            return _on_row(problem, rows, row)
    return None


def _substitution_problem(parsed: Parsed, rows: Rows, budget: Budget) -> TemplateProblem | None:
    parts = parsed.parts or ()
    names = [name for is_name, name in parts if is_name]
    fixed = sum(len(part) for is_name, part in parts if not is_name)
    for row in rows.rows:
        missing = [n for n in names if n not in row and n not in GLOBAL_NAMES]
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
        budget, env = budget_or_default().describe(), ", ".join((STEPS_ENV, OUTPUT_ENV, SECONDS_ENV))
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
