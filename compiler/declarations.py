"""Top-level declarations (`model`, `task`, `property`, `split`, `sampling`) into IR values.

Each kind has a field table: name, type, default. Unknown fields get a "did you mean", missing ones
point at the declaration, wrong types at the value.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from intro.stdlib.extractors import EXTRACTORS

from . import ast, ir, template_sandbox, templates
from .datasets import DataError, data_digest, load_rows
from .diagnostics import Span, did_you_mean
from .models import (
    API_CAPABILITIES,
    API_OPTIONAL_CAPABILITIES,
    BACKENDS,
    EMBEDDED,
    IN_PROCESS_CAPABILITIES,
    SERVING_OPTIONS,
    looks_like_hub_id,
)
from .types import CHECKS, REQUIRED, describe_type, type_name
from .weights import ModelDirectoryError, directory_problem, read_config, weights_digest

if TYPE_CHECKING:
    from .evaluate import Context, Evaluator

ANSWER_KINDS = ("text", "choice", "number_sequence")
REDUCERS = ("mode", "first")

FIELDS: dict[str, dict[str, tuple[str, Any]]] = {
    "task": {
        "data": ("string", REQUIRED),
        "prompt": ("string", REQUIRED),
        "answer": ("string", "text"),
        "choices": ("strings", ()),
        "system": ("string", None),
        "id": ("string", "id"),
    },
    "property": {
        "extract": ("string", REQUIRED),
        "question": ("string", REQUIRED),
    },
    "split": {
        "train": ("tasks", ()),
        "test": ("tasks", ()),
        "items": ("int", 100),
        "seed": ("int", 0),
    },
    "sampling": {
        "temperature": ("number", 0.0),
        "samples": ("int", 1),
        "max_tokens": ("int", 16),
        "seed": ("int", 0),
        "stop": ("strings", ()),
        "reduce": ("string", "mode"),
    },
    "model": {
        "logprobs": ("bool", False),
        "finetune": ("bool", False),
        "api_base": ("string", None),
        "api_key_env": ("string", None),
        "concurrency": ("int", 16),
        "timeout": ("number", 60),
        "device": ("string", None),
        "batch_size": ("int", 16),
    },
}


def read_fields(
    kind: str, record: ast.Record | None, ev: Evaluator, ctx: Context, at: Span
) -> dict[str, Any]:
    """Evaluate a declaration's fields against its table; report unknown, missing and mistyped fields."""
    table = FIELDS[kind]
    given: dict[str, tuple[Any, Span]] = {}
    misspelled = False
    for field in record.fields if record else ():
        if field.name not in table:
            misspelled = True
            notes = did_you_mean(field.name, table) or (f"{kind} fields: {', '.join(table)}",)
            ctx.sink.error("E120", f"unknown field '{field.name}' in {kind}", field.span, *notes)
            continue
        if field.name in given:
            ctx.sink.error("E105", f"field '{field.name}' is given twice", field.span)
            continue
        given[field.name] = (ev.expr(field.value), field.value.span)
    values: dict[str, Any] = {"_spans": {}}
    for name, (type_, default) in table.items():
        if name not in given:
            if default is REQUIRED:
                if misspelled:  # most likely the misspelled field, already reported with a suggestion
                    ctx.abort()
                ctx.fail("E121", f"{kind} is missing field '{name}'", at)
            values[name] = default
            continue
        value, span = given[name]
        if not CHECKS[type_](value):
            ctx.fail(
                "E201", f"field '{name}' must be a {describe_type(type_)}, not a {type_name(value)}", span
            )
        values[name] = value
        values["_spans"][name] = span
    return values


def build_decl(decl: ast.Decl, ev: Evaluator, ctx: Context) -> Any:
    fields = read_fields(decl.kind, decl.body, ev, ctx, decl.span)
    builder = {"task": _task, "property": _property, "split": _split, "sampling": _sampling}[decl.kind]
    return builder(decl, fields, ctx)


# ---------------------------------------------------------------- model
def build_model(decl: ast.ModelDecl, ev: Evaluator, ctx: Context) -> ir.BaseModel:
    backend = decl.backend.id
    if backend not in BACKENDS:
        notes = did_you_mean(backend, BACKENDS) or (f"backends: {', '.join(BACKENDS)}",)
        ctx.fail("E130", f"unknown model backend '{backend}'", decl.backend.span, *notes)
    options = read_fields("model", decl.options, ev, ctx, decl.span)
    locator = decl.locator.value
    serving = tuple((k, options[k]) for k in SERVING_OPTIONS if options.get(k) is not None)
    if backend == "embedded":
        return _embedded(decl, locator, serving, ctx)
    if backend == "local":
        return _local(decl, locator, serving, ctx)
    capabilities = API_CAPABILITIES | {c for c in API_OPTIONAL_CAPABILITIES if options[c]}
    return ir.BaseModel(
        decl.name,
        "litellm",
        locator,
        frozenset(capabilities),
        f"litellm:{locator}",
        None,
        True,
        serving,
        span=decl.span,
    )


def _embedded(decl: ast.ModelDecl, name: str, serving: tuple[Any, ...], ctx: Context) -> ir.BaseModel:
    info = EMBEDDED.get(name)
    if info is None:
        notes = did_you_mean(name, EMBEDDED) or (f"embedded models: {', '.join(EMBEDDED)}",)
        ctx.fail("E131", f"no embedded model '{name}'", decl.locator.span, *notes)
    return ir.BaseModel(
        decl.name,
        "embedded",
        name,
        IN_PROCESS_CAPABILITIES,
        f"embedded:{name}:{info.sha256}",
        info.layers,
        info.chat,
        serving,
        span=decl.span,
    )


def _local(decl: ast.ModelDecl, locator: str, serving: tuple[Any, ...], ctx: Context) -> ir.BaseModel:
    path = (ctx.directory / locator).expanduser()
    if not path.is_dir():
        note = (
            "this looks like a model hub id; intro never downloads weights: point at a local directory"
            if looks_like_hub_id(locator)
            else "a local model is a directory of transformers weights (config.json, *.safetensors)"
        )
        ctx.fail("E132", f"no model directory '{locator}'", decl.locator.span, note)
    identity = f"local:{_checked_digest(decl, locator, path, ctx)}"
    layers = _config_layers(path)
    return ir.BaseModel(
        decl.name,
        "local",
        str(path.resolve()),
        IN_PROCESS_CAPABILITIES,
        identity,
        layers,
        True,
        serving,
        span=decl.span,
    )


def _checked_digest(decl: ast.ModelDecl, locator: str, path: Path, ctx: Context) -> str:
    """The weights' content digest, once the directory has passed the checks that need no loading."""
    try:
        problem = directory_problem(path)
        if problem is None:
            return weights_digest(path)
    except ModelDirectoryError as error:
        problem = str(error)
    ctx.fail("E133", f"broken model directory '{locator}': {problem}", decl.locator.span)


def _config_layers(path: Path) -> int | None:
    try:
        config = read_config(path)
    except ModelDirectoryError:
        return None  # a directory holding one GGUF file: its depth is known once it is converted
    text = config.get("text_config", config)
    layers = (text.get("num_hidden_layers") or text.get("n_layer")) if isinstance(text, dict) else None
    return int(layers) if isinstance(layers, int) else None


# ---------------------------------------------------------------- task
def _task(decl: ast.Decl, fields: dict[str, Any], ctx: Context) -> ir.Task:
    spans = fields["_spans"]
    path = ctx.confined(fields["data"], spans["data"])
    try:
        rows = load_rows(path, fields["id"])
        digest = data_digest(path, fields["id"])
    except DataError as error:
        if error.line is None:
            ctx.fail("E140", f"cannot load data for task '{decl.name}': {error.message}", spans["data"])
        ctx.fail("E141", error.message, Span.point(error.path, error.line or 1, error.column or 1))
    if fields["answer"] not in ANSWER_KINDS:
        notes = did_you_mean(fields["answer"], ANSWER_KINDS) or (f"answer kinds: {', '.join(ANSWER_KINDS)}",)
        ctx.fail("E142", f"unknown answer kind '{fields['answer']}'", spans["answer"], *notes)
    if fields["answer"] == "choice" and not fields["choices"]:
        ctx.fail("E143", 'a task with answer "choice" needs `choices`', decl.span)
    _check_template(fields["prompt"], spans["prompt"], rows, path, fields["id"], ctx)
    return ir.Task(
        decl.name,
        digest,
        rows,
        fields["prompt"],
        fields["answer"],
        tuple(fields["choices"]),
        fields["system"],
        fields["id"],
        span=decl.span,
    )


def _check_template(
    template: str, span: Span, rows: tuple[Mapping[str, Any], ...], path: Path, id_column: str, ctx: Context
) -> None:
    templates.check_syntax(ctx, template, span)
    if not rows:
        ctx.fail("E145", f"dataset '{path.name}' has no rows", span)
    # Every row, not a sample: lowering renders whichever rows a split picks.
    labels = f"'{path.name}'", f"'{path.name}' rows"
    templates.check_rows(ctx, template, span, templates.Rows(rows, *labels, id_column))


# ---------------------------------------------------------------- property, split, sampling
def _property(decl: ast.Decl, fields: dict[str, Any], ctx: Context) -> ir.Property:
    name = fields["extract"]
    extractor = EXTRACTORS.get(name)
    if extractor is None:
        notes = did_you_mean(name, EXTRACTORS) or (f"extractors: {', '.join(sorted(EXTRACTORS))}",)
        ctx.fail("E150", f"no property extractor '{name}'", fields["_spans"]["extract"], *notes)
    templates.check_syntax(ctx, fields["question"], fields["_spans"]["question"])
    return ir.Property(
        decl.name,
        name,
        fields["question"],
        extractor.reads,
        extractor.needs,
        tuple(extractor.values or ()),
        span=decl.span,
        question_span=fields["_spans"].get("question"),
        options=extractor.options,
    )


def _split(decl: ast.Decl, fields: dict[str, Any], ctx: Context) -> ir.Split:
    spans = fields["_spans"]
    if fields["items"] < 1:
        ctx.fail("E160", "items must be at least 1", spans["items"])
    if fields["items"] > 1_000_000:
        ctx.fail("E160", "items must be at most 1,000,000", spans["items"])
    overlap = {t.name for t in fields["train"]} & {t.name for t in fields["test"]}
    if overlap:
        ctx.fail(
            "E161", f"task(s) {', '.join(sorted(overlap))} are both trained on and held out", spans["test"]
        )
    train = ir.Selection(tuple(fields["train"]), "train", fields["items"], fields["seed"])
    test = ir.Selection(tuple(fields["test"]), "val", fields["items"], fields["seed"])
    for selection, name in ((train, "train"), (test, "test")):
        _check_part_has_rows(decl, selection, name, spans.get(name, decl.span), ctx)
    return ir.Split(decl.name, train, test)


def _check_part_has_rows(
    decl: ast.Decl, selection: ir.Selection, name: str, span: Span, ctx: Context
) -> None:
    """Each task of a split part needs at least one row in that part, or its measurements would be empty."""
    share = "1 in 5" if selection.part == "val" else "4 in 5"
    for task in selection.tasks:
        if not any(task.part_of(row) == selection.part for row in task.rows):
            ctx.fail(
                "E162",
                f"task '{task.name}' has no rows in the {name} part of split '{decl.name}'",
                span,
                f'a row is in the {name} part when its "split" field is "{selection.part}", or, when it has '
                f"no such field, for about {share} row ids",
            )


def _sampling(decl: ast.Decl, fields: dict[str, Any], ctx: Context) -> ir.Sampling:
    spans = fields["_spans"]
    if not 0 <= fields["temperature"] <= 5:
        ctx.fail("E170", "temperature must be between 0 and 5", spans["temperature"])
    if not 1 <= fields["samples"] <= 10_000:
        ctx.fail("E171", "samples must be between 1 and 10,000", spans["samples"])
    if not 1 <= fields["max_tokens"] <= 100_000:
        ctx.fail("E172", "max_tokens must be between 1 and 100,000", spans["max_tokens"])
    if fields["reduce"] not in REDUCERS:
        notes = did_you_mean(fields["reduce"], REDUCERS) or (f"reducers: {', '.join(REDUCERS)}",)
        ctx.fail("E173", f"unknown reducer '{fields['reduce']}'", spans["reduce"], *notes)
    return ir.Sampling(
        float(fields["temperature"]),
        fields["samples"],
        fields["max_tokens"],
        fields["seed"],
        tuple(fields["stop"]),
        fields["reduce"],
    )


def render(template: str, values: Mapping[str, Any]) -> str:
    """Render a template in the bounded sandbox (see `template_sandbox`); `intro check` has rendered it
    already."""
    return template_sandbox.render(template, values)
