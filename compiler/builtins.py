"""The language's built-in functions: one table, each entry a signature and a small builder.

Builders receive the checked arguments (plus their spans for error messages) and return IR values;
they do the semantic checks that need more than a type (capabilities, property applicability, ranges).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import ir, templates
from .diagnostics import Span
from .primitives import PRIMITIVES
from .prompt_sets import named_values
from .types import Function, Param, entry

if TYPE_CHECKING:
    from .evaluate import Context

Spans = Mapping[str, Span]


def require_capability(ctx: Context, model: ir.Model, capability: str, span: Span, purpose: str) -> None:
    """An error unless `model` has `capability` (activations, finetune, logprobs), saying how to get it."""
    if capability not in model.capabilities:
        root = ir.root_model(model)
        hint = {
            "activations": "activation access needs an in-process model (embedded or local)",
            "finetune": "declare it with { finetune: true } if the provider can finetune it",
            "logprobs": "declare it with { logprobs: true } if the provider returns logprobs",
        }[capability]
        ctx.fail(
            "E300",
            f"model '{root.name}' cannot {purpose}: it lacks the '{capability}' capability",
            span,
            hint,
        )


def _layer(ctx: Context, model: ir.Model, layer: float, span: Span) -> int:
    depth = ir.root_model(model).layers
    if isinstance(layer, float) and 0 < layer < 1:
        if depth is None:
            ctx.fail("E305", "a fractional layer needs a model whose depth is known", span)
        return round(layer * depth)
    if layer != int(layer) or layer < 0 or (depth is not None and layer >= depth):
        limit = f" (0..{depth - 1})" if depth else ""
        ctx.fail("E306", f"layer {layer} is not a layer of this model{limit}", span)
    return int(layer)


# ---------------------------------------------------------------- models from models
def _finetune(ctx: Context, spans: Spans, at: Span, **a: Any) -> ir.FinetunedModel:
    require_capability(ctx, a["model"], "finetune", spans["model"], "be finetuned")
    for name in ("rank", "epochs", "batch"):
        if a[name] < 1:
            ctx.fail("E307", f"{name} must be at least 1", spans[name])
    if not 0 < a["lr"] < 1:
        ctx.fail("E307", "lr must be between 0 and 1", spans["lr"])
    hparams = tuple((k, a[k]) for k in ("rank", "alpha", "lr", "epochs", "batch", "seed"))
    return ir.FinetunedModel(a["model"], a["data"], hparams + _provider_hparams(ctx, spans, at, a), span=at)


def _provider_hparams(ctx: Context, spans: Spans, at: Span, a: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """An API model's own fine-tuning settings, which in-process training has no use for.

    `lr_multiplier` goes to the provider as its learning-rate multiplier: OpenAI scales a base rate of its
    own choosing, so no `lr` names the paper's setting (issue 11, item 3). Uploads are shuffled (seeded by
    `seed`, as in-process training shuffles every epoch); `shuffle` in the step's identity keeps a cached
    job trained on rows in their data order from standing in for it. Only what is set joins the identity,
    so in-process models' steps keep their hashes."""
    api = ir.root_model(a["model"]).backend == "litellm"
    multiplier = a["lr_multiplier"]
    if multiplier is None:
        return (("shuffle", True),) if api else ()
    if not api:
        ctx.fail(
            "E307",
            "lr_multiplier is an API provider's setting; an in-process model trains at lr",
            spans["lr_multiplier"],
        )
    if spans["lr"] != at:  # both given: one of them would be silently ignored
        ctx.fail("E307", "give lr or lr_multiplier, not both", spans["lr_multiplier"])
    if not 0 < multiplier <= 100:
        ctx.fail("E307", "lr_multiplier must be above 0 and at most 100", spans["lr_multiplier"])
    return (("lr_multiplier", multiplier), ("shuffle", True))


def _steer(ctx: Context, spans: Spans, at: Span, **a: Any) -> ir.SteeredModel:
    require_capability(ctx, a["model"], "activations", spans["model"], "be steered")
    layer = _layer(ctx, a["model"], a["layer"], spans["layer"])
    steered = (a["model"], a["vector"], layer, float(a["strength"]), a["start"])
    if a["span"] is None:
        return ir.SteeredModel(*steered, span=at)
    if a["start"] is not None:
        ctx.fail("E339", "steer() takes `start` or `span`, not both", spans["span"])
    if not a["span"].strip():
        ctx.fail("E339", "the steering span is empty", spans["span"])
    values = named_values(ctx, a["span"])
    return ir.SteeredModel(*steered, span_text=a["span"], span_values=values, span=at)


# ---------------------------------------------------------------- vectors
def _concept(ctx: Context, spans: Spans, at: Span, **a: Any) -> ir.ConceptVector:
    require_capability(ctx, a["model"], "activations", spans["model"], "give activations")
    if not a["baseline"]:
        ctx.fail("E310", "a concept vector needs baseline words", spans["baseline"])
    # The runtime fills it with str.format: anything else it could do must fail here, not mid-run.
    problem = templates.format_problem(a["template"], ("word",), "the concept template")
    if problem is not None:
        ctx.fail("E311", problem, spans["template"], "braces other than {word} are written {{ and }}")
    layer = _layer(ctx, a["model"], a["layer"], spans["layer"])
    baseline = tuple(w for w in a["baseline"] if w != a["word"])
    return ir.ConceptVector(a["model"], a["word"], layer, baseline, a["template"])


def _random_like(ctx: Context, spans: Spans, at: Span, **a: Any) -> ir.RandomVector:
    return ir.RandomVector(a["vector"], a["seed"])


def _vector_file(ctx: Context, spans: Spans, at: Span, **a: Any) -> ir.FileVector:
    from .files import DATA_LIMIT_ENV, FileProblem, read_bytes

    path = ctx.confined(a["path"], spans["path"])
    if not path.is_file():
        ctx.fail("E312", f"no vector file '{a['path']}'", spans["path"])
    try:
        content = read_bytes(path, DATA_LIMIT_ENV)
    except FileProblem as problem:
        ctx.fail("E312", f"cannot load '{a['path']}': {problem.message}", spans["path"])
    return ir.FileVector(str(path), hashlib.sha256(content).hexdigest())


# ---------------------------------------------------------------- lists and data
def _pairs(ctx: Context, spans: Spans, at: Span, **a: Any) -> tuple[tuple[Any, Any], ...]:
    """All ordered pairs of distinct items: (subject, other) for every subject and every other."""
    return tuple(itertools.permutations(a["items"], 2))


def _product(ctx: Context, spans: Spans, at: Span, **a: Any) -> tuple[tuple[Any, Any], ...]:
    return tuple(itertools.product(a["first"], a["second"]))


def _take(ctx: Context, spans: Spans, at: Span, **a: Any) -> tuple[Any, ...]:
    if a["n"] < 0:
        ctx.fail("E313", "take() needs a count of at least 0", spans["n"])
    return tuple(a["items"][: a["n"]])


def _without(ctx: Context, spans: Spans, at: Span, **a: Any) -> tuple[Any, ...]:
    """The list without the given items and without repeats, in its order."""
    drop = a["drop"] if isinstance(a["drop"], tuple) else (a["drop"],)
    return tuple(item for item in dict.fromkeys(a["items"]) if item not in drop)


def _sample(ctx: Context, spans: Spans, at: Span, **a: Any) -> tuple[Any, ...]:
    """`n` distinct items of the list in a random order, drawn with a generator seeded by `seed` and the
    list itself: the same call draws the same items at every compilation, another list (the pool without
    another word) draws others."""
    import random

    items = tuple(dict.fromkeys(a["items"]))
    if not 0 <= a["n"] <= len(items):
        ctx.fail("E313", f"sample() draws from 0 to {len(items)} items of this list", spans["n"])
    key = hashlib.sha256(repr((a["seed"], items)).encode()).digest()
    return tuple(random.Random(key).sample(items, a["n"]))


def _joined(ctx: Context, spans: Spans, at: Span, **a: Any) -> str:
    if not all(isinstance(item, str | int | float) for item in a["items"]):
        ctx.fail("E201", "joined() takes a list of strings or numbers", spans["items"])
    return a["separator"].join(str(item) for item in a["items"])


def _capitalized(ctx: Context, spans: Spans, at: Span, **a: Any) -> str | tuple[str, ...]:
    def first_upper(text: str) -> str:
        return text[:1].upper() + text[1:]

    value = a["text"]
    if isinstance(value, str):
        return first_upper(value)
    if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
        ctx.fail("E201", "capitalized() takes a string or a list of strings", spans["text"])
    return tuple(first_upper(v) for v in value)


def _layers(ctx: Context, spans: Spans, at: Span, **a: Any) -> tuple[int, ...]:
    """`count` evenly spaced layer indices of `model`, from `low` to `high` as fractions of depth."""
    depth = ir.root_model(a["model"]).layers
    if depth is None:
        ctx.fail("E305", "layers() needs a model whose depth is known", spans["model"])
    if not 1 <= a["count"] <= depth:
        ctx.fail("E313", f"count must be between 1 and {depth}", spans["count"])
    low, high = a["low"], a["high"]
    if not 0 <= low <= high <= 1:
        ctx.fail("E313", "low and high are fractions of depth with 0 <= low <= high <= 1", at)
    if a["count"] == 1:
        return (round(low * (depth - 1)),)
    step = (high - low) / (a["count"] - 1)
    return tuple(sorted({round((low + i * step) * (depth - 1)) for i in range(a["count"])}))


def _column(ctx: Context, spans: Spans, at: Span, **a: Any) -> tuple[str, ...]:
    from .datasets import DataError, load_rows

    path = ctx.confined(a["path"], spans["path"])
    try:
        rows = load_rows(path)
    except DataError as error:
        if error.line is not None:
            ctx.fail("E141", error.message, Span.point(error.path, error.line, error.column or 1))
        ctx.fail("E140", f"cannot load '{a['path']}': {error.message}", spans["path"])
    if rows and a["field"] not in rows[0]:
        ctx.fail("E146", f"'{Path(a['path']).name}' rows have no field '{a['field']}'", spans["field"])
    return tuple(str(row[a["field"]]) for row in rows)


# ---------------------------------------------------------------- the table
_fn = entry


FUNCTIONS: dict[str, Function] = dict(
    [
        _fn(
            "finetune",
            _finetune,
            Param("model", "model"),
            Param("data", "data"),
            Param("rank", "int", 8),
            Param("alpha", "number", 16),
            Param("lr", "number", 1e-4),
            Param("epochs", "int", 1),
            Param("batch", "int", 8),
            Param("seed", "int", 0),
            Param("lr_multiplier", "number", None),
            doc="a new model: `model` trained with LoRA (or the provider's finetuning) on `data`; an API model "
            "takes the provider's `lr_multiplier` (its learning-rate multiplier) instead of `lr`",
            returns="model",
            example="finetune(qwen, li.hypothetical_examples(qwen, mini.train, props), rank: 8, lr: 5e-4)",
        ),
        _fn(
            "concept",
            _concept,
            Param("model", "model"),
            Param("word", "string"),
            Param("layer", "number"),
            Param("baseline", "strings"),
            Param("template", "string", "Tell me about {word}"),
            doc="a vector: `model`'s activation at `layer` on the last token of `template` with `word`, minus "
            "the mean over the `baseline` words",
            returns="vector",
            example='concept(qwen, "dog", 16, baseline)',
        ),
        _fn(
            "random_like",
            _random_like,
            Param("vector", "vector"),
            Param("seed", "int", 0),
            doc="a vector: a seeded Gaussian direction with the norm and shape of `vector` (a control)",
            returns="vector",
            example="random_like(dog, seed: 1)",
        ),
        _fn(
            "vector_file",
            _vector_file,
            Param("path", "string"),
            doc="a vector read from a safetensors file next to the spec, its tensor named `vector` "
            "(hashed by content)",
            returns="vector",
            example='vector_file("vectors/dog.safetensors")',
        ),
        _fn(
            "pairs",
            _pairs,
            Param("items", "list"),
            doc="every ordered pair of distinct items: (a, b) and (b, a)",
            returns="list",
            example="pairs([qwen, gemma])",
        ),
        _fn(
            "product",
            _product,
            Param("first", "list"),
            Param("second", "list"),
            doc="every pair (a, b) with a from `first` and b from `second`",
            returns="list",
            example="product([qwen, gemma], [2, 4, 8])",
        ),
        _fn(
            "take",
            _take,
            Param("items", "list"),
            Param("n", "int"),
            doc="the first `n` items of a list",
            returns="list",
            example="take(intro.sentences, 3)",
        ),
        _fn(
            "without",
            _without,
            Param("items", "list"),
            Param("drop", "any"),
            doc="the list without `drop` (an item or a list of items) and without repeats, in its order "
            "(lists also join with `+`)",
            returns="list",
            example='without(intro.candidates, "dog")',
        ),
        _fn(
            "sample",
            _sample,
            Param("items", "list"),
            Param("n", "int"),
            Param("seed", "int", 0),
            doc="`n` distinct items of a list in a random order, seeded by `seed` and the list itself (the same "
            "at every compilation; another list draws others): random distractors, a shuffled list",
            returns="list",
            example='sample(without(intro.concepts, "dog"), 9)',
        ),
        _fn(
            "joined",
            _joined,
            Param("items", "list"),
            Param("separator", "string", "\n"),
            doc="one string: the items of a list (strings or numbers) with `separator` between them (a list a "
            "template can read)",
            returns="string",
            example='joined(["dog", "ocean"], ", ")',
        ),
        _fn(
            "capitalized",
            _capitalized,
            Param("text", "any"),
            doc="`text` with its first character upper-cased and the rest as it is (given a list of strings, "
            "the list of them so capitalized)",
            returns="string",
            example='capitalized("dog")',
        ),
        _fn(
            "layers",
            _layers,
            Param("model", "model"),
            Param("count", "int"),
            Param("low", "number", 0.0),
            Param("high", "number", 1.0),
            doc="`count` evenly spaced layer indices of `model`, from `low` to `high` as fractions of its depth",
            returns="list",
            example="layers(qwen, 3, 0.5, 0.8)",
        ),
        _fn(
            "column",
            _column,
            Param("path", "string"),
            Param("field", "string"),
            doc="the values of `field` in every row of a data file (a list of strings)",
            returns="list",
            example='column("data/capitals.jsonl", "country")',
        ),
        _fn(
            "steer",
            _steer,
            Param("model", "model"),
            Param("vector", "vector"),
            Param("layer", "number"),
            Param("strength", "number"),
            Param("start", "string", None),
            Param("span", "string", None),
            doc="a new model: `model` whose every call (generate, score, choose) runs with `strength * vector` "
            "added to the residual stream after `layer`, from the token before `start` on; or, given `span` "
            "(a template over each prompt's row), only on the prompt tokens of that text",
            returns="model",
            example="steer(qwen, dog, 16, 4)",
        ),
        *PRIMITIVES.items(),
    ]
)
