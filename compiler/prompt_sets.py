"""Where prompts and training data come from: rows of a file or a list, prompt sets over rows, task
selections or earlier results, whole conversations, and training examples. Their builtins join the one
registry of `builtins.FUNCTIONS` (the model primitives and statistics are in `primitives.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import dataflow as df
from . import ir, templates
from .diagnostics import Span
from .plan import digest
from .types import Function, Param, entry

if TYPE_CHECKING:
    from .evaluate import Context

Spans = Mapping[str, Span]
# Fields a run-time prompt template sees besides the item's own.
RESULT_FIELDS = {"text": "an answer", "sample": 0, "prompt": "the question it answered", "value": "a value"}


# ---------------------------------------------------------------- rows and prompts
def _load(ctx: Context, relative: str, span: Span, id_column: str) -> tuple[tuple[dict[str, Any], ...], str]:
    """A data file's rows and content digest; a problem is a diagnostic at its line, or at the call."""
    from .datasets import DataError, data_digest, load_rows

    path = ctx.confined(relative, span)
    try:
        return load_rows(path, id_column), data_digest(path, id_column)
    except DataError as error:
        if error.line is not None:
            ctx.fail("E141", error.message, Span.point(error.path, error.line, error.column or 1))
        ctx.fail("E140", f"cannot load '{relative}': {error.message}", span)


def _rows(ctx: Context, spans: Spans, at: Span, **a: Any) -> df.Items:
    rows, content = _load(ctx, a["path"], spans["path"], a["id"])
    if not rows:
        ctx.fail("E330", f"'{a['path']}' has no rows", spans["path"])
    return df.Items(Path(a["path"]).stem, content, rows, a["id"])


def _literal_items(ctx: Context, values: tuple[Any, ...], span: Span) -> df.Items:
    """A list of strings (each row `{id, text}`) or of records (ids are their `id` field, else 1, 2, ...).

    Built once per compilation for a list met again (a module's list, prompted by each call of a function).
    """
    built: dict[int, tuple[tuple[Any, ...], df.Items]] = ctx.compilation.setdefault("literal items", {})
    if id(values) in built:
        return built[id(values)][1]
    items = _items_of(ctx, values, span)
    built[id(values)] = (values, items)  # the list held: its id stays its own
    return items


def _items_of(ctx: Context, values: tuple[Any, ...], span: Span) -> df.Items:
    if not values:
        ctx.fail("E330", "an empty list has no rows to prompt with", span)
    rows = []
    for index, value in enumerate(values, start=1):
        if isinstance(value, str):
            rows.append({"id": str(index), "text": value})
        elif isinstance(value, Mapping) and all(
            isinstance(v, str | int | float | bool) for v in value.values()
        ):
            rows.append({"id": str(index), **dict(value)} if "id" not in value else dict(value))
        else:
            ctx.fail("E201", "prompts() rows must be strings or records of plain values", span)
    ids = [str(r["id"]) for r in rows]
    if len(set(ids)) != len(ids):
        ctx.fail("E330", "the rows' ids are not unique", span)
    content = digest(["items", rows])
    # Named by content: item keys (`name/id`) carry the row's fields to run-time templates and rules and
    # pair items across estimates, so two different lists must not share keys; the same list reached
    # twice (two models asked it) does.
    return df.Items(f"list-{content[:8]}", content, tuple(rows))


def _prompts(ctx: Context, spans: Spans, at: Span, **a: Any) -> df.PromptSet:
    source, template = a["source"], a["template"]
    if isinstance(source, tuple):
        source = _literal_items(ctx, source, spans["source"])
        template = "{{ text }}" if template is None and "text" in source.rows[0] else template
    if not isinstance(source, (df.Items, ir.Selection, *df.TEXTS, *df.VALUES)):
        ctx.fail(
            "E201",
            "prompts() source must be rows, a list, a task selection, texts or values",
            spans["source"],
        )
    if template is None and not isinstance(source, ir.Selection):
        ctx.fail("E208", "prompts() needs a `template` for rows that are not a task selection", at)
    about = a["about"]
    if isinstance(about, tuple):
        if not about or not all(isinstance(p, ir.Property) for p in about):
            ctx.fail(
                "E201",
                "prompts() `about` must be a property or a non-empty list of properties",
                spans["about"],
            )
        for prop in about:
            _check_about(ctx, source, prop, spans)
    elif about is not None:
        if not isinstance(about, ir.Property):
            ctx.fail("E201", "prompts() `about` must be a property or a list of properties", spans["about"])
        _check_about(ctx, source, about, spans)
    values = named_values(ctx, template, a["system"], a["prefill"])
    prompt_set = df.PromptSet(source, template, a["system"], a["prefill"], about, values)
    if template is not None:
        check_template(ctx, template, spans["template"], with_values(sample_rows(source, prompt_set), values))
    if "{" in a["prefill"]:  # a template over the row too: the reply can start with the row's own text
        check_template(
            ctx, a["prefill"], spans["prefill"], with_values(sample_rows(source, prompt_set), values)
        )
    return prompt_set


def named_values(ctx: Context, *templates_: str | None) -> tuple[tuple[str, Any], ...]:
    """The plain values in scope (loop variables, lets, parameters) that any of the templates names."""
    return ctx.named_template_values(*templates_)


def with_values(rows: templates.Rows, values: tuple[tuple[str, Any], ...]) -> templates.Rows:
    if not values:
        return rows
    merged = [{**dict(values), **dict(row)} for row in rows.rows]
    return templates.Rows(merged, rows.label, rows.plural, rows.id_column)


def _check_about(ctx: Context, source: Any, about: ir.Property, spans: Spans) -> None:
    if not isinstance(source, ir.Selection):
        ctx.fail("E336", "prompts() `about` a property needs a task selection as its source", spans["about"])
    if not any(about.reads_task(task) for task in source.tasks):
        names = ", ".join(t.name for t in source.tasks)
        ctx.fail(
            "E303",
            f"property '{about.name}' cannot read the answers of any selected task ({names})",
            spans["about"],
            _unread(about, source.tasks),
        )
    # Against every row of each task it is asked about, so that a message names the property and the task.
    templates.check_questions(ctx, source.tasks, (about,), spans["about"])


def _unread(about: ir.Property, tasks: tuple[ir.Task, ...]) -> str:
    """Why a property applies to none of the tasks: their answer kinds, the row fields it needs, or the
    options it is about (compiler/ir.py Property.reads_task)."""
    kinds = ", ".join(sorted({t.answer for t in tasks}))
    readable = [t for t in tasks if t.answer in about.reads]
    if not readable:
        return f"'{about.name}' reads {', '.join(sorted(about.reads))} answers; the tasks give {kinds}"
    if not any(about.needs <= set(t.rows[0]) for t in readable):
        return f"'{about.name}' needs the rows' fields {', '.join(sorted(about.needs))}, which no task's rows have"
    return f"'{about.name}' is about options {', '.join(about.options)}, which no task offers all of"


def sample_rows(source: Any, prompt_set: df.PromptSet | None = None) -> templates.Rows:
    """The rows a template over `source` will meet (result fields filled with placeholders)."""
    about = prompt_set.properties() if prompt_set else ()
    if isinstance(source, df.Items):
        return templates.Rows(source.rows, "the rows", "the rows", source.id_column)
    if isinstance(source, ir.Selection):
        extra = {"task": "a task", "object_prompt": "the task's prompt"} | (
            {"question": "?"} if about else {}
        )
        tasks = [task for task in source.tasks if not about or any(p.reads_task(task) for p in about)]
        rows = [{**dict(row), **extra} for task in tasks for row in task.rows]
        return templates.Rows(rows, "the selected tasks", "the tasks' rows")
    items = sample_rows(prompts_of(source).source)
    fields = _result_fields(source)  # the same for every row: once, not per row (tens of thousands)
    rows = [{**dict(row), **fields} for row in items.rows]
    return templates.Rows(rows, items.label, items.plural, items.id_column)


def _result_fields(source: Any) -> dict[str, Any]:
    """The fields a result adds to its item's: `value` only where the results are values, not texts."""
    if isinstance(source, df.VALUES):
        return RESULT_FIELDS
    return {name: example for name, example in RESULT_FIELDS.items() if name != "value"}


def prompts_of(value: Any) -> df.PromptSet:
    """The prompt set a result's items came from (walking through filters, extracts and judges)."""
    while not isinstance(value, df.Generate | df.Choose | df.Score | df.Residuals):
        value = df.upstream(value)
    return value.prompts


def check_template(ctx: Context, template: str, span: Span, rows: templates.Rows) -> None:
    templates.check_rows(ctx, template, span, rows)


def _examples(ctx: Context, spans: Spans, at: Span, **a: Any) -> df.Examples:
    source, completions = a["source"], a["completions"]
    if isinstance(source, str):
        if completions is not None:
            ctx.fail("E205", "examples() from a file takes no `completions`", spans["completions"])
        return _file_examples(ctx, source, spans["source"])
    if not isinstance(source, df.PromptSet):
        ctx.fail(
            "E201", "examples() takes a prompt set (with completions) or a data file's path", spans["source"]
        )
    if completions is None:
        ctx.fail("E208", "examples() of a prompt set needs `completions` (texts or a template)", at)
    if isinstance(completions, str):
        check_template(ctx, completions, spans["completions"], sample_rows(source.source))
    elif not isinstance(completions, (*df.TEXTS, *df.VALUES)):
        ctx.fail("E201", "examples() completions must be texts, values or a template", spans["completions"])
    return df.Examples(source, completions)


def _file_examples(ctx: Context, relative: str, span: Span) -> df.Examples:
    from .datasets import LINE_IDS

    # chat files rarely have ids, and examples need none: a row is named by its line
    rows, content = _load(ctx, relative, span, LINE_IDS)
    path = ctx.confined(relative, span)
    chats = []
    for row in rows:
        chat = _chat_example(row)
        if chat is None:
            ctx.fail(
                "E331",
                f"this row of '{relative}' is not a training example",
                Span.point(str(path), int(row[LINE_IDS]), 1),
                'each row needs "messages" ending with an assistant turn, or "prompt" and "completion"',
                f"read by examples() at {span.path}:{span.line}:{span.column}",
            )
        chats.append(chat)
    if not chats:
        ctx.fail("E330", f"'{relative}' has no rows", span)
    return df.Examples(fixed=tuple(chats), digest=content)


def _chat_example(row: Mapping[str, Any]) -> tuple[tuple[tuple[str, str], ...], str] | None:
    if isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
        return (("user", row["prompt"]),), row["completion"]
    messages = row.get("messages")
    if not isinstance(messages, list) or len(messages) < 2:
        return None
    turns = []
    for message in messages:
        if not isinstance(message, Mapping) or message.get("role") not in ("system", "user", "assistant"):
            return None
        if not isinstance(message.get("content"), str):
            return None
        turns.append((message["role"], message["content"]))
    if turns[-1][0] != "assistant":
        return None
    return tuple(turns[:-1]), turns[-1][1]


def _text_file(ctx: Context, spans: Spans, at: Span, **a: Any) -> str:
    from .files import DATA_LIMIT_ENV, FileProblem, read_bytes

    path = ctx.confined(a["path"], spans["path"])
    try:
        return read_bytes(path, DATA_LIMIT_ENV).decode("utf-8")
    except (FileProblem, UnicodeDecodeError) as problem:
        reason = getattr(problem, "message", "it is not UTF-8 text")
        ctx.fail("E140", f"cannot read '{a['path']}': {reason}", spans["path"])


ROLES = ("system", "user", "assistant")


def turns_of(ctx: Context, turns: tuple[Any, ...], span: Span) -> tuple[tuple[str, str], ...]:
    """A list of one-field records, `{ user: "..." }`, as (role, content) pairs."""
    messages = []
    for turn in turns:
        if not isinstance(turn, Mapping) or len(turn) != 1:
            ctx.fail(
                "E320",
                "each turn of a conversation is a record with one field: user, assistant or system",
                span,
            )
        (role, content), *_ = turn.items()
        if role not in ROLES or not isinstance(content, str):
            ctx.fail("E320", f"a turn must be {{ user | assistant | system: \"text\" }}, not '{role}'", span)
        messages.append((role, content))
    if not messages or messages[-1][0] != "user":
        ctx.fail("E321", "the conversation must end with a user turn (the trial question)", span)
    return tuple(messages)


def _conversation(ctx: Context, spans: Spans, at: Span, **a: Any) -> df.PromptSet:
    turns = turns_of(ctx, a["turns"], spans["turns"])
    source = a["source"]
    if source is None:
        items = df.Items("conversation", digest(["conversation", turns]), ({"id": "1"},))
        return df.PromptSet(items, None, prefill=a["prefill"], turns=turns)
    if isinstance(source, tuple):
        source = _literal_items(ctx, source, spans["source"])
    if not isinstance(source, df.Items):
        ctx.fail("E201", "conversation() source must be rows or a list", spans["source"])
    values = named_values(ctx, a["prefill"], *(content for _, content in turns))
    prompt_set = df.PromptSet(
        source, None, prefill=a["prefill"], values=values, turns=turns, templated_turns=True
    )
    rows = with_values(sample_rows(source), values)
    for _, content in turns:
        check_template(ctx, content, spans["turns"], rows)
    check_template(ctx, a["prefill"], spans["prefill"], rows)
    return prompt_set


# ---------------------------------------------------------------- the table
_fn = entry


PROMPT_SETS: dict[str, Function] = dict(
    [
        _fn(
            "rows",
            _rows,
            Param("path", "string"),
            Param("id", "string", "id"),
            doc="the rows of a JSONL or CSV file next to the spec (each needs a unique `id`), to build prompts from",
            returns="rows",
            example='rows("data/capitals.jsonl")',
        ),
        _fn(
            "text_file",
            _text_file,
            Param("path", "string"),
            doc="the text of a UTF-8 file next to the spec (a long rubric or template)",
            returns="string",
            example='text_file("data/capitals.jsonl")',
        ),
        _fn(
            "prompts",
            _prompts,
            Param("source", "any"),
            Param("template", "string", None),
            Param("system", "string", None),
            Param("prefill", "string", ""),
            Param("about", "any", None),
            doc="one chat prompt per row of `source` (rows, a list of strings or records, a task selection, or "
            "results): the user turn is `template` rendered with the row's fields (and the reply starts with "
            "`prefill`, a template too); results add `text`, "
            "`sample` and `prompt`, and make the prompts rendered at run time; a task selection adds `task` and "
            "`object_prompt` (the task's prompt for the row), and `about` a property keeps only the tasks it can "
            "read and adds `question` (the property's question for the row); templates also see the plain values "
            "bound where they are written (strings, numbers, lists of them), and jinja's filters plus `drawn`: "
            "`pool | drawn(n, [seed, prompt, sample])` is `n` items of `pool` in a random order, drawn anew for "
            "each row (random distractors per trial)",
            returns="prompts",
            example='prompts(["What is 2 + 2?", "Name a colour."])',
        ),
        _fn(
            "conversation",
            _conversation,
            Param("turns", "list"),
            Param("source", "any", None),
            Param("prefill", "string", ""),
            doc="prompts: one chat prompt that is the whole conversation `turns` (records `{ user: ... }`, "
            "`{ assistant: ... }`, `{ system: ... }`, the last a user turn); given `source` (rows or a list), "
            "one per row, each turn (and `prefill`) a template over the row; the reply starts with `prefill`",
            returns="prompts",
            example='conversation([{ user: "Hello." }, { assistant: "Hi." }, { user: "Do you notice anything?" }])',
        ),
        _fn(
            "examples",
            _examples,
            Param("source", "any"),
            Param("completions", "any", None),
            doc="training data: `source` prompts answered by `completions` (texts, joined by item, or a "
            "template over the row), or the path of a JSONL/CSV file of chat rows (`messages`) or "
            "`prompt`/`completion` rows",
            returns="training data",
            example='examples(prompts(["Name a colour."]), "Blue.")',
        ),
    ]
)
