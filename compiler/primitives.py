"""The builtins of the open language: rows and prompts, the model primitives, rules and statistics.

Each builder checks what a type cannot (capabilities, templates against their rows, matching item sets)
and returns a value of `compiler/dataflow.py`. They join the one registry of `builtins.FUNCTIONS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import dataflow as df
from . import ir, templates
from .diagnostics import Span
from .plan import digest
from .types import Function, Param

if TYPE_CHECKING:
    from .evaluate import Context

Spans = Mapping[str, Span]
GREEDY = ir.Sampling()
JUDGE_SAMPLING = ir.Sampling(temperature=0.0, samples=1, max_tokens=8)
# Fields a run-time prompt template sees besides the item's own.
RESULT_FIELDS = {"text": "an answer", "sample": 0, "prompt": "the question it answered", "value": "a value"}


# ---------------------------------------------------------------- rows and prompts
def _rows(ctx: Context, spans: Spans, at: Span, **a: Any) -> df.Items:
    from .datasets import DataError, data_digest, load_rows

    path = ctx.confined(a["path"], spans["path"])
    try:
        rows = load_rows(path, a["id"])
        content = data_digest(path, a["id"])
    except DataError as error:
        if error.line is not None:
            ctx.fail("E141", error.message, Span.point(error.path, error.line, error.column or 1))
        ctx.fail("E140", f"cannot load '{a['path']}': {error.message}", spans["path"])
    if not rows:
        ctx.fail("E330", f"'{a['path']}' has no rows", spans["path"])
    return df.Items(Path(a["path"]).stem, content, rows, a["id"])


def _literal_items(ctx: Context, values: tuple[Any, ...], span: Span) -> df.Items:
    """A list of strings (each row `{id, text}`) or of records (ids are their `id` field, else 1, 2, ...)."""
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
    return df.Items("list", digest(["items", rows]), tuple(rows))


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
    values = _named_values(ctx, template, a["system"], a["prefill"])
    prompt_set = df.PromptSet(source, template, a["system"], a["prefill"], about, values)
    if template is not None:
        _check_template(
            ctx, template, spans["template"], _with_values(_sample_rows(source, prompt_set), values)
        )
    return prompt_set


def _named_values(ctx: Context, *templates_: str | None) -> tuple[tuple[str, Any], ...]:
    """The plain values in scope (loop variables, lets, parameters) that any of the templates names."""
    text = " ".join(t for t in templates_ if t)
    return tuple(sorted((k, v) for k, v in ctx.template_values.items() if k in text))


def _with_values(rows: templates.Rows, values: tuple[tuple[str, Any], ...]) -> templates.Rows:
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
        )
    check = about.question_span or spans["about"]
    rows = [dict(row) for task in source.tasks if about.reads_task(task) for row in task.rows]
    _check_template(ctx, about.question, check, templates.Rows(rows, "the selected tasks", "the tasks' rows"))


def _sample_rows(source: Any, prompt_set: df.PromptSet | None = None) -> templates.Rows:
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
    items = _sample_rows(_prompts_of(source).source)
    rows = [{**dict(row), **_result_fields(source)} for row in items.rows]
    return templates.Rows(rows, items.label, items.plural, items.id_column)


def _result_fields(source: Any) -> dict[str, Any]:
    """The fields a result adds to its item's: `value` only where the results are values, not texts."""
    if isinstance(source, df.VALUES):
        return RESULT_FIELDS
    return {name: example for name, example in RESULT_FIELDS.items() if name != "value"}


def _prompts_of(value: Any) -> df.PromptSet:
    """The prompt set a result's items came from (walking through filters, extracts and judges)."""
    while not isinstance(value, df.Generate | df.Choose | df.Score):
        value = value.a if isinstance(value, df.Differs) else value.texts
    return value.prompts


def _check_template(ctx: Context, template: str, span: Span, rows: templates.Rows) -> None:
    templates.check_rows(ctx, template, span, rows)


# ---------------------------------------------------------------- model primitives
def _require(ctx: Context, model: ir.Model, capability: str, span: Span, purpose: str) -> None:
    from .builtins import require_capability

    require_capability(ctx, model, capability, span, purpose)


def _generate(ctx: Context, spans: Spans, at: Span, **a: Any) -> df.Generate:
    _check_model_prompts(ctx, a["model"], a["prompts"], spans)
    return df.Generate(a["model"], a["prompts"], a["sampling"])


def _check_model_prompts(ctx: Context, model: ir.Model, prompts: df.PromptSet, spans: Spans) -> None:
    if prompts.prefill and not ir.root_model(model).chat:
        pass  # a base model continues the rendered text, prefill included: nothing to refuse
    if isinstance(model, ir.SteeredModel):
        _require(ctx, model, "activations", spans["model"], "be steered")


def _choose(ctx: Context, spans: Spans, at: Span, **a: Any) -> df.Choose:
    _require(ctx, a["model"], "logprobs", spans["model"], "read a distribution over options")
    options = tuple(a["options"])
    if len(options) < 2 or len(set(options)) != len(options):
        ctx.fail("E332", "choose() needs at least two distinct options", spans["options"])
    if df.is_run_time(a["prompts"]):
        ctx.fail(
            "E333", "choose() reads prompts known before the run (not built from results)", spans["prompts"]
        )
    return df.Choose(a["model"], a["prompts"], options)


def _score(ctx: Context, spans: Spans, at: Span, **a: Any) -> df.Score:
    _require(ctx, a["model"], "logprobs", spans["model"], "score a continuation")
    if df.is_run_time(a["prompts"]):
        ctx.fail(
            "E333", "score() reads prompts known before the run (not built from results)", spans["prompts"]
        )
    _check_template(ctx, a["continuation"], spans["continuation"], _sample_rows(a["prompts"].source))
    return df.Score(a["model"], a["prompts"], a["continuation"])


def _judge(ctx: Context, spans: Spans, at: Span, **a: Any) -> df.Judge:
    labels = tuple(a["labels"])
    if len(set(labels)) != len(labels) or len(labels) == 1:
        ctx.fail(
            "E335", "judge() labels must be distinct: two or more, or none for a 0-100 score", spans["labels"]
        )
    values = _named_values(ctx, a["rubric"])
    _check_template(ctx, a["rubric"], spans["rubric"], _with_values(_sample_rows(a["texts"]), values))
    sampling = ir.Sampling(temperature=0.0, samples=1, max_tokens=a["max_tokens"])
    return df.Judge(a["grader"], a["texts"], a["rubric"], labels, sampling, values)


def _rule_of(ctx: Context, value: Any, span: Span) -> df.Rule:
    if isinstance(value, df.Rule):
        return value
    if isinstance(value, ir.Property):
        return df.Rule("property", (("name", value.extract),))
    ctx.fail("E201", "a rule must be a rule (contains, matches, number_list, ...) or a property", span)


def _extract(ctx: Context, spans: Spans, at: Span, **a: Any) -> df.Extract:
    if isinstance(a["rule"], tuple):  # a list of properties: one value per text and property
        rules = [_rule_of(ctx, p, spans["rule"]) for p in a["rule"]]
        if not rules or not all(isinstance(p, ir.Property) for p in a["rule"]):
            ctx.fail(
                "E201", "extract() takes a rule, a property or a non-empty list of properties", spans["rule"]
            )
        each = tuple((p.name, r) for p, r in zip(a["rule"], rules, strict=True))
        return df.Extract(a["texts"], rules[0], each)
    return df.Extract(a["texts"], _rule_of(ctx, a["rule"], spans["rule"]))


def _filter(ctx: Context, spans: Spans, at: Span, **a: Any) -> df.Filter:
    return df.Filter(a["texts"], _rule_of(ctx, a["rule"], spans["rule"]))


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
        _check_template(ctx, completions, spans["completions"], _sample_rows(source.source))
    elif not isinstance(completions, (*df.TEXTS, *df.VALUES)):
        ctx.fail("E201", "examples() completions must be texts, values or a template", spans["completions"])
    return df.Examples(source, completions)


def _file_examples(ctx: Context, relative: str, span: Span) -> df.Examples:
    from .datasets import LINE_IDS, DataError, data_digest, load_rows

    path = ctx.confined(relative, span)
    try:  # chat files rarely have ids, and examples need none: a row is named by its line
        rows, content = load_rows(path, LINE_IDS), data_digest(path, LINE_IDS)
    except DataError as error:
        if error.line is not None:
            ctx.fail("E141", error.message, Span.point(error.path, error.line, error.column or 1))
        ctx.fail("E140", f"cannot load '{relative}': {error.message}", span)
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


def _conversation(ctx: Context, spans: Spans, at: Span, **a: Any) -> df.PromptSet:
    from .injected_thought import _conversation as turns_of

    turns = turns_of(ctx, a["turns"], spans["turns"])
    items = df.Items("conversation", digest(["conversation", turns]), ({"id": "1"},))
    return df.PromptSet(items, None, turns=turns)


def _activations(ctx: Context, spans: Spans, at: Span, **a: Any) -> ir.ActivationVector:
    from .builtins import _layer

    _require(ctx, a["model"], "activations", spans["model"], "give activations")
    if not isinstance(a["model"], ir.BaseModel):
        ctx.fail(
            "E338",
            "activations() reads a declared model's own weights (not a finetuned or steered one)",
            spans["model"],
        )
    if df.is_run_time(a["prompts"]):
        ctx.fail(
            "E333",
            "activations() reads prompts known before the run (not built from results)",
            spans["prompts"],
        )
    layer = _layer(ctx, a["model"], a["layer"], spans["layer"])
    return ir.ActivationVector(a["model"], a["prompts"], layer)


def _repeat(ctx: Context, spans: Spans, at: Span, **a: Any) -> ir.Sampling:
    from attrs import evolve

    if a["samples"] < 1:
        ctx.fail("E307", "samples must be at least 1", spans["samples"])
    return evolve(a["sampling"], samples=a["samples"])


# ---------------------------------------------------------------- rules
def _rule_builder(name: str, *params: str) -> Any:
    def build(ctx: Context, spans: Spans, at: Span, **a: Any) -> df.Rule:
        if name == "matches":
            import re

            try:
                re.compile(a["pattern"])
            except re.error as error:
                ctx.fail("E334", f"bad regular expression: {error}", spans["pattern"])
        return df.Rule(name, tuple((p, a[p]) for p in params))

    return build


def _predicted(ctx: Context, spans: Spans, at: Span, **a: Any) -> df.Rule:
    return df.Rule("predicted", (("name", a["property"].extract),))


def _differs(ctx: Context, spans: Spans, at: Span, **a: Any) -> df.Differs:
    return df.Differs(a["a"], a["b"])


# ---------------------------------------------------------------- statistics
def _estimate(statistic: str) -> Any:
    def build(ctx: Context, spans: Spans, at: Span, **a: Any) -> df.Estimate:
        if a.get("over", "items") not in ("items", "samples"):
            ctx.fail("E337", f'{statistic}() `over` must be "items" or "samples"', spans["over"])
        where, top_k = a.get("where"), a.get("top_k", 3)
        if top_k < 1:
            ctx.fail("E307", "top_k must be at least 1", spans["top_k"])
        over = a.get("over", "items")
        return df.Estimate(
            statistic, a["values"], a.get("other"), a.get("equals"), a["by"], over, where, top_k
        )

    return build


def _comparison(statistic: str) -> Any:
    def build(ctx: Context, spans: Spans, at: Span, **a: Any) -> df.Comparison:
        return df.Comparison(statistic, a["a"], a["b"])

    return build


# ---------------------------------------------------------------- the table
def _fn(name: str, build: Any, *params: Param, doc: str, returns: str, example: str) -> tuple[str, Function]:
    return name, Function(name, params, build, doc, returns, example)


_VALUES = Param("values", "values")
_BY = Param("by", "string", None)
_OVER = Param("over", "string", "items")
_WHERE = Param("where", "values", None)

PRIMITIVES: dict[str, Function] = dict(
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
            "results): the user turn is `template` rendered with the row's fields; results add `text`, "
            "`sample` and `prompt`, and make the prompts rendered at run time; a task selection adds `task` and "
            "`object_prompt` (the task's prompt for the row), and `about` a property keeps only the tasks it can "
            "read and adds `question` (the property's question for the row)",
            returns="prompts",
            example='prompts(["What is 2 + 2?", "Name a colour."])',
        ),
        _fn(
            "conversation",
            _conversation,
            Param("turns", "list"),
            doc="prompts: one chat prompt that is the whole conversation `turns` (records `{ user: ... }`, "
            "`{ assistant: ... }`, `{ system: ... }`, the last a user turn)",
            returns="prompts",
            example='conversation([{ user: "Hello." }, { assistant: "Hi." }, { user: "Do you notice anything?" }])',
        ),
        _fn(
            "activations",
            _activations,
            Param("model", "model"),
            Param("prompts", "prompts"),
            Param("layer", "number"),
            doc="a vector: the mean of `model`'s residual stream after `layer` on the last token of each prompt "
            "(vectors add and subtract: a contrast of two prompt sets is a steering vector)",
            returns="vector",
            example='activations(qwen, prompts(["I love dogs.", "Dogs are great."]), 16)',
        ),
        _fn(
            "repeat",
            _repeat,
            Param("sampling", "sampling"),
            Param("samples", "int"),
            doc="a sampling: `sampling` with `samples` answers per prompt (trials of one prompt)",
            returns="sampling",
            example="repeat(li.object_level, 5)",
        ),
        _fn(
            "generate",
            _generate,
            Param("model", "model"),
            Param("prompts", "prompts"),
            Param("sampling", "sampling", GREEDY),
            doc="texts: `model`'s answers to `prompts`, `sampling.samples` per prompt",
            returns="texts",
            example='generate(qwen, prompts(["Name a colour."]), li.object_level)',
        ),
        _fn(
            "score",
            _score,
            Param("model", "model"),
            Param("prompts", "prompts"),
            Param("continuation", "string"),
            doc="values: the total log-probability of `continuation` (a template over the row) as `model`'s "
            "reply to each prompt",
            returns="values",
            example='score(qwen, prompts(["Say yes."]), "yes")',
        ),
        _fn(
            "choose",
            _choose,
            Param("model", "model"),
            Param("prompts", "prompts"),
            Param("options", "strings"),
            doc="values: the most probable of `options` as `model`'s reply to each prompt, from one forward "
            "pass (the normalised distribution is kept in the cube)",
            returns="values",
            example='choose(qwen, prompts(["Yes or no?"]), ["yes", "no"])',
        ),
        _fn(
            "extract",
            _extract,
            Param("texts", "texts"),
            Param("rule", "any"),
            doc="values: `rule` (a rule or a property) applied to each text; None where it does not apply",
            returns="values",
            example='extract(generate(qwen, prompts(["Name a colour."])), nth_word(1))',
        ),
        _fn(
            "judge",
            _judge,
            Param("grader", "model"),
            Param("texts", "texts"),
            Param("rubric", "string"),
            Param("labels", "strings", ("yes", "no")),
            Param("max_tokens", "int", 8),
            doc="values: `grader`'s label for each text, asked `rubric` (a template over the row's fields, "
            "`text` and `prompt`); the first label the reply starts with, or a 0-100 score when `labels` is "
            "empty; the raw reply is kept",
            returns="values",
            example='judge(qwen, generate(qwen, prompts(["Tell a joke."])), "Is this funny? {{ text }}")',
        ),
        _fn(
            "filter",
            _filter,
            Param("texts", "texts"),
            Param("rule", "any"),
            doc="texts: only those for which `rule` gives a value other than none, false or no",
            returns="texts",
            example='filter(generate(qwen, prompts(["Count to 5."])), number_list())',
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
        _fn(
            "contains",
            _rule_builder("contains", "word"),
            Param("word", "string"),
            doc='a rule: "true" when the text mentions `word` (a whole word, any case, plurals too)',
            returns="rule",
            example='contains("owl")',
        ),
        _fn(
            "matches",
            _rule_builder("matches", "pattern"),
            Param("pattern", "string"),
            doc='a rule: "true" when the whole text matches the regular expression `pattern`',
            returns="rule",
            example='matches("[A-D]")',
        ),
        _fn(
            "number_list",
            _rule_builder("number_list", "min", "max"),
            Param("min", "int", 1),
            Param("max", "int", 999),
            doc="a rule: the numbers when the text is only a list of at least `min` integers up to `max`",
            returns="rule",
            example="number_list(min: 5)",
        ),
        _fn(
            "answer_is",
            _rule_builder("answer_is", "field"),
            Param("field", "string"),
            doc="a rule: \"true\" when the text's first word is the row's `field` (both lowercased, punctuation "
            "stripped)",
            returns="rule",
            example='answer_is("capital")',
        ),
        _fn(
            "predicted",
            _predicted,
            Param("property", "property"),
            doc="a rule: an answer to a hypothetical question about `property`, normalised as the property's "
            "values are (none when it is not such a value)",
            returns="rule",
            example="predicted(li.first_character)",
        ),
        _fn(
            "detects",
            _rule_builder("detects"),
            doc='a rule: "true" when the reply\'s first word is yes (an affirmed detection)',
            returns="rule",
            example="detects()",
        ),
        _fn(
            "identifies",
            _rule_builder("identifies", "word"),
            Param("word", "string"),
            doc='a rule: "true" when the reply affirms a detection, names `word` and is coherent (not empty, '
            "not a loop)",
            returns="rule",
            example='identifies("ocean")',
        ),
        _fn(
            "nth_word",
            _rule_builder("nth_word", "n"),
            Param("n", "int", 1),
            doc="a rule: the text's `n`-th word (from 1), lowercased and without punctuation",
            returns="rule",
            example="nth_word(1)",
        ),
        _fn(
            "differs",
            _differs,
            Param("a", "values"),
            Param("b", "values"),
            doc='values: per item, "true" where the most common values of `a` and `b` differ, "false" where '
            "they agree, none where either has none (use as `where:` to score only changed items)",
            returns="values",
            example='differs(extract(generate(qwen, prompts(["Name a colour."])), nth_word(1)), '
            'extract(generate(gemma, prompts(["Name a colour."])), nth_word(1)))',
        ),
        _fn(
            "rate",
            _estimate("rate"),
            _VALUES,
            Param("equals", "any", None),
            _BY,
            _OVER,
            _WHERE,
            doc="an estimate: the share of values equal to `equals` (true-like values when not given), "
            "averaged per item, with a bootstrap 95% CI over items",
            returns="estimate",
            example='rate(extract(generate(qwen, prompts(["Name a colour."])), contains("blue")))',
        ),
        _fn(
            "mean",
            _estimate("mean"),
            _VALUES,
            _BY,
            _OVER,
            _WHERE,
            doc="an estimate: the mean of numeric values (per item, then over items), with a bootstrap CI",
            returns="estimate",
            example='mean(score(qwen, prompts(["Say yes."]), "yes"))',
        ),
        _fn(
            "accuracy",
            _estimate("accuracy"),
            _VALUES,
            Param("other", "values"),
            _BY,
            _OVER,
            _WHERE,
            doc="an estimate: how often `values` equals the most common of `other`'s values on the same item",
            returns="estimate",
            example='accuracy(choose(qwen, prompts(["Pick A or B."]), ["A", "B"]), '
            'extract(generate(qwen, prompts(["Pick A or B."])), nth_word(1)))',
        ),
        _fn(
            "mode_baseline",
            _estimate("mode_baseline"),
            _VALUES,
            _BY,
            _OVER,
            _WHERE,
            doc="an estimate: how often an item's value is the most common value over all items",
            returns="estimate",
            example='mode_baseline(extract(generate(qwen, prompts(["Name a colour."])), nth_word(1)))',
        ),
        _fn(
            "calibration_curve",
            _estimate("calibration"),
            Param("values", "values"),
            Param("other", "values"),
            Param("top_k", "int", 3),
            _BY,
            doc="an estimate: how far the sampled distribution of `values` (predictions) is from that of `other` "
            "(behaviour) per item: the mean absolute deviation x 100 over 10 equal-frequency bins of each "
            "item's `top_k` behaviours (Looking Inward's calibration; 0 is perfect)",
            returns="estimate",
            example='calibration_curve(extract(generate(qwen, prompts(["Name a colour."])), nth_word(1)), '
            'extract(generate(gemma, prompts(["Name a colour."])), nth_word(1)))',
        ),
        _fn(
            "difference",
            _comparison("difference"),
            Param("a", "estimate"),
            Param("b", "estimate"),
            doc="a comparison: `a` minus `b`, paired by item where both have it, with a bootstrap 95% CI",
            returns="comparison",
            example='difference(rate(extract(generate(qwen, prompts(["Name a bird."])), contains("owl"))), '
            'rate(extract(generate(gemma, prompts(["Name a bird."])), contains("owl"))))',
        ),
        _fn(
            "correlation",
            _comparison("correlation"),
            Param("a", "estimate"),
            Param("b", "estimate"),
            doc="a comparison: Pearson's r of `a`'s and `b`'s per-item scores on their shared items, with a "
            "bootstrap 95% CI",
            returns="comparison",
            example='correlation(mean(score(qwen, prompts(["Say yes."]), "yes")), '
            'mean(score(qwen, prompts(["Say yes."]), "no")))',
        ),
    ]
)
