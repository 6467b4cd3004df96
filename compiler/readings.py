"""Reading a model's residual stream per prompt, and comparing it with vectors: `residuals` (the mean over
a span of each prompt, the model's own reply included when it is the prefill), `cosine` (values: the
similarity with a vector or with each of several) and `concept_vectors` (one concept vector per word). Lindsey
2025's think / don't think experiment is written with them (stdlib/introspection.intro).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from . import dataflow as df
from . import ir
from .diagnostics import Span
from .prompt_sets import check_template, named_values, sample_rows, with_values
from .types import CHECKS, Function, Param, entry

if TYPE_CHECKING:
    from .evaluate import Context

Spans = Mapping[str, Span]


def _residuals(ctx: Context, spans: Spans, at: Span, **a: Any) -> df.Residuals:
    from .builtins import _layer, require_capability

    require_capability(ctx, a["model"], "activations", spans["model"], "give activations")
    if not isinstance(a["model"], ir.BaseModel):
        ctx.fail(
            "E338",
            "residuals() reads a declared model's own weights (not a finetuned or steered one)",
            spans["model"],
        )
    if df.is_run_time(a["prompts"]):
        message = "residuals() reads prompts known before the run (not built from results)"
        ctx.fail("E333", message, spans["prompts"])
    values: tuple[tuple[str, Any], ...] = ()
    if a["span"] is not None:
        values = named_values(ctx, a["span"])
        rows = with_values(sample_rows(a["prompts"].source), values)
        check_template(ctx, a["span"], spans["span"], rows)
    layer = _layer(ctx, a["model"], a["layer"], spans["layer"])
    return df.Residuals(a["model"], a["prompts"], layer, a["span"], values)


def _cosine(ctx: Context, spans: Spans, at: Span, **a: Any) -> df.Cosine:
    vectors, several = a["vectors"], isinstance(a["vectors"], tuple)
    if not several:
        vectors = (vectors,)
    if not vectors or not all(CHECKS["vector"](v) for v in vectors):
        ctx.fail("E201", "cosine() compares with a vector or a non-empty list of vectors", spans["vectors"])
    return df.Cosine(a["residuals"], vectors, several)


def _concept_vectors(ctx: Context, spans: Spans, at: Span, **a: Any) -> tuple[ir.ConceptVector, ...]:
    from .builtins import _concept

    if not a["words"]:
        ctx.fail("E310", "concept_vectors() needs at least one word", spans["words"])
    fixed = {k: v for k, v in a.items() if k != "words"}
    return tuple(_concept(ctx, {**spans, "word": spans["words"]}, at, word=w, **fixed) for w in a["words"])


_fn = entry


READINGS: dict[str, Function] = dict(
    [
        _fn(
            "residuals",
            _residuals,
            Param("model", "model"),
            Param("prompts", "prompts"),
            Param("layer", "number"),
            Param("span", "string", None),
            doc="activations: `model`'s residual stream after `layer` for each prompt, the mean over the tokens "
            "of `span` (a template over the row, found in the prompt as the model reads it, prefill included) "
            "or the last token's; one model pass per prompt",
            returns="activations",
            example='residuals(qwen, prompts(["I love dogs."], "{{ text }}", prefill: "Dogs."), 16, '
            'span: "Dogs.")',
        ),
        _fn(
            "cosine",
            _cosine,
            Param("residuals", "activations"),
            Param("vectors", "any"),
            doc="values: the cosine similarity of each prompt's `residuals` with a vector, or with each vector "
            "of a list (one value per prompt and vector, keyed `item#k` from 1)",
            returns="values",
            example='cosine(residuals(qwen, prompts(["I love dogs."]), 16), dog)',
        ),
        _fn(
            "concept_vectors",
            _concept_vectors,
            Param("model", "model"),
            Param("words", "strings"),
            Param("layer", "number"),
            Param("baseline", "strings"),
            Param("template", "string", "Tell me about {word}"),
            doc="a list of vectors: the concept vector of each of `words`, as `concept()` reads one",
            returns="list",
            example='concept_vectors(qwen, ["cat", "tree"], 16, baseline)',
        ),
    ]
)
