"""The builtins of the open language: the model primitives, rules, vectors and statistics (where prompts and
training data come from is `prompt_sets.py`).

Each builder checks what a type cannot (capabilities, templates against their rows, matching item sets)
and returns a value of `compiler/dataflow.py`. They join the one registry of `builtins.FUNCTIONS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from . import dataflow as df
from . import ir
from .diagnostics import Span
from .prompt_sets import PROMPT_SETS, check_template, named_values, sample_rows, with_values
from .readings import READINGS
from .requirements import REQUIREMENTS
from .types import Function, Param, entry

if TYPE_CHECKING:
    from .evaluate import Context

Spans = Mapping[str, Span]
GREEDY = ir.Sampling()
JUDGE_SAMPLING = ir.Sampling(temperature=0.0, samples=1, max_tokens=8)


# ---------------------------------------------------------------- rows and prompts
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
    _check_span(ctx, model, prompts, spans["model"])


def _check_span(ctx: Context, model: ir.Model, prompts: df.PromptSet, span: Span) -> None:
    """A steering span is rendered with each prompt's row while lowering: the rows must be known then."""
    if not isinstance(model, ir.SteeredModel) or model.span_text is None:
        return
    if df.is_run_time(prompts):
        ctx.fail(
            "E340",
            "a model steered on a span reads prompts known before the run (not built from results)",
            span,
        )
    check_template(ctx, model.span_text, span, with_values(sample_rows(prompts.source), model.span_values))


def _choose(ctx: Context, spans: Spans, at: Span, **a: Any) -> df.Choose:
    _require(ctx, a["model"], "logprobs", spans["model"], "read a distribution over options")
    options = tuple(a["options"])
    if len(options) < 2 or len(set(options)) != len(options):
        ctx.fail("E332", "choose() needs at least two distinct options", spans["options"])
    if df.is_run_time(a["prompts"]):
        ctx.fail(
            "E333", "choose() reads prompts known before the run (not built from results)", spans["prompts"]
        )
    _check_span(ctx, a["model"], a["prompts"], spans["model"])
    return df.Choose(a["model"], a["prompts"], options)


def _score(ctx: Context, spans: Spans, at: Span, **a: Any) -> df.Score:
    _require(ctx, a["model"], "logprobs", spans["model"], "score a continuation")
    if df.is_run_time(a["prompts"]):
        ctx.fail(
            "E333", "score() reads prompts known before the run (not built from results)", spans["prompts"]
        )
    check_template(ctx, a["continuation"], spans["continuation"], sample_rows(a["prompts"].source))
    _check_span(ctx, a["model"], a["prompts"], spans["model"])
    return df.Score(a["model"], a["prompts"], a["continuation"])


def _judge(ctx: Context, spans: Spans, at: Span, **a: Any) -> df.Judge:
    labels = tuple(a["labels"])
    if len(set(labels)) != len(labels) or len(labels) == 1:
        ctx.fail(
            "E335", "judge() labels must be distinct: two or more, or none for a 0-100 score", spans["labels"]
        )
    values = named_values(ctx, a["rubric"])
    check_template(ctx, a["rubric"], spans["rubric"], with_values(sample_rows(a["texts"]), values))
    sampling = ir.Sampling(temperature=0.0, samples=1, max_tokens=a["max_tokens"])
    return df.Judge(a["grader"], a["texts"], a["rubric"], labels, sampling, values)


def _rule_of(ctx: Context, value: Any, span: Span) -> df.Rule:
    if isinstance(value, df.Rule):
        return value
    if isinstance(value, ir.Property):
        return df.Rule("property", (("name", value.extract),))
    ctx.fail("E201", "a rule must be a rule (contains, matches, number_list, ...) or a property", span)


def _extract(ctx: Context, spans: Spans, at: Span, **a: Any) -> df.Extract:
    if not isinstance(a["texts"], (*df.TEXTS, *df.VALUES)):
        ctx.fail("E201", "extract() reads texts or values", spans["texts"])
    if isinstance(a["rule"], tuple):  # a list of properties: one value per text and property
        rules = [_rule_of(ctx, p, spans["rule"]) for p in a["rule"]]
        if not rules or not all(isinstance(p, ir.Property) for p in a["rule"]):
            ctx.fail(
                "E201", "extract() takes a rule, a property or a non-empty list of properties", spans["rule"]
            )
        each = tuple((p.name, r) for p, r in zip(a["rule"], rules, strict=True))
        return df.Extract(a["texts"], rules[0], each)
    return df.Extract(a["texts"], _rule_of(ctx, a["rule"], spans["rule"]))


def _all_of(ctx: Context, spans: Spans, at: Span, **a: Any) -> df.AllOf:
    return df.AllOf(a["a"], a["b"])


def _probability(ctx: Context, spans: Spans, at: Span, **a: Any) -> df.Probability:
    choices = a["choices"]
    if not isinstance(choices, df.Choose):
        ctx.fail("E341", "probability() reads the distribution of a choose()", spans["choices"])
    for name in ("option", "against"):
        if a[name] is not None and a[name] not in choices.options:
            listed = ", ".join(repr(o) for o in choices.options)
            ctx.fail("E341", f"{a[name]!r} is not one of the options chosen from ({listed})", spans[name])
    return df.Probability(choices, a["option"], a["against"])


def _filter(ctx: Context, spans: Spans, at: Span, **a: Any) -> df.Filter:
    return df.Filter(a["texts"], _rule_of(ctx, a["rule"], spans["rule"]))


def _consensus(ctx: Context, spans: Spans, at: Span, **a: Any) -> df.Consensus:
    return df.Consensus(a["texts"])


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
    if a["draw"] is None:
        return evolve(a["sampling"], samples=a["samples"])
    return evolve(a["sampling"], samples=a["samples"], seed=_draw_seed(ctx, a["draw"], spans["draw"]))


def _draw_seed(ctx: Context, draw: Any, span: Span) -> int:
    """The seed a `draw` names: a stable digest of its plain values, so that trials named apart (a cell's
    own controls) are drawn apart, and the same name draws the same trials at every compilation."""
    import hashlib
    import json

    flat = draw if isinstance(draw, tuple) else (draw,)
    if not all(isinstance(v, str | int | float | bool) for v in flat):
        ctx.fail("E201", "repeat() `draw` is a plain value or a list of them (words, numbers)", span)
    digest_ = hashlib.sha256(json.dumps(list(flat)).encode()).digest()
    return int.from_bytes(digest_[:4], "big") % 2**30  # room for the sample index added to it


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


def _balance(ctx: Context, spans: Spans, at: Span, **a: Any) -> df.Balance:
    if a["top"] < 1:
        ctx.fail("E307", "top must be at least 1", spans["top"])
    return df.Balance(a["values"], a["first"], a["second"], a.get("where"), a["top"], a["seed"])


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
_fn = entry


_VALUES = Param("values", "values")
_BY = Param("by", "string", None)
_OVER = Param("over", "string", "items")
_WHERE = Param("where", "values", None)

_MODEL_AND_STATISTICS: dict[str, Function] = dict(
    [
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
            Param("draw", "any", None),
            doc="a sampling: `sampling` with `samples` answers per prompt (trials of one prompt); given `draw` "
            "(a word, a number or a list of them), seeded from it, so that trials named apart are drawn apart",
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
            Param("texts", "any"),
            Param("rule", "any"),
            doc="values: `rule` (a rule or a property) applied to each text (or to each value, read as a "
            "text); None where it does not apply",
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
            "consensus",
            _consensus,
            Param("texts", "texts"),
            doc="texts: one per prompt, the answer its samples agree on (the most common, compared "
            "normalised: case, punctuation and spacing aside); left out where the samples all differ or two "
            "answers tie; a prompt sampled once keeps its answer",
            returns="texts",
            example='consensus(generate(qwen, prompts(["Name a colour."]), repeat(li.object_level, 5)))',
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
            "verdict",
            _rule_builder("verdict"),
            doc='a rule: "yes" or "no", the verdict a judge told to end its reply with YES or NO ends with '
            "(after thinking out loud); none when it ends with neither",
            returns="rule",
            example="verdict()",
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
            "same_as",
            _rule_builder("same_as", "value"),
            Param("value", "string"),
            doc='a rule: "true" when the text is `value` (both lowercased, punctuation stripped)',
            returns="rule",
            example='same_as("Paris")',
        ),
        _fn(
            "quotes",
            _rule_builder("quotes", "field"),
            Param("field", "string"),
            doc='a rule: "true" when the row\'s `field` appears in the text, both lowercased (Lindsey 2025)',
            returns="rule",
            example='quotes("text")',
        ),
        _fn(
            "disowns",
            _rule_builder("disowns"),
            doc='a rule: "true" when the reply disowns what was said before (an accident, a mistake, an '
            'apology; "not an accident" owns it)',
            returns="rule",
            example="disowns()",
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
            "balance",
            _balance,
            Param("values", "values"),
            Param("first", "values"),
            Param("second", "values"),
            _WHERE,
            Param("top", "int", 10),
            Param("seed", "int", 42),
            doc='values: per item, "true" for the items kept on the side of `values` when the distributions '
            "of `first` and `second` are made equal (Binder et al. 2024's entropy control): within each task, "
            "among the items where `where` holds and both have a value, for each of the `top` most common "
            "values v of `first`, min(#first = v, #second = v) of the items whose `values` is v, chosen by a "
            'shuffle seeded with `seed`; "false" for the others. Use as `where:` of each side\'s statistic',
            returns="values",
            example='balance(extract(generate(gemma, prompts(["Name a colour."])), nth_word(1)), '
            'extract(generate(qwen, prompts(["Name a colour."])), nth_word(1)), '
            'extract(generate(gemma, prompts(["Name a colour."])), nth_word(1)))',
        ),
        _fn(
            "all_of",
            _all_of,
            Param("a", "values"),
            Param("b", "values", None),
            doc='values: per trial (one sample of an item), "true" where `a` and `b` both pass (have a value '
            'other than none, false or no), "false" where either does not: a none (a rule that does not '
            "apply, a judge that did not commit) does not pass. Samples pair by index, and a grade with one "
            "value per item stands for each of the item's samples; with one sample per item it is per item. "
            'Without `b`, `a` alone as "true" or "false". None where `a` or `b` has no row for the trial '
            "(a filtered text)",
            returns="values",
            example='all_of(extract(generate(qwen, prompts(["Name a colour."])), contains("blue")), '
            'judge(qwen, generate(qwen, prompts(["Name a colour."])), "Is this a colour? {{ text }}"))',
        ),
        _fn(
            "probability",
            _probability,
            Param("choices", "values"),
            Param("option", "string"),
            Param("against", "string", None),
            doc="values: per prompt, the probability `choices` (a choose()) gave `option`, normalised over its "
            "options; given `against`, the log-odds log P(option) - log P(against) instead",
            returns="values",
            example='probability(choose(qwen, prompts(["Yes or no?"]), ["yes", "no"]), "yes")',
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
            "item's `top_k` behaviours, cut as pandas.qcut cuts them (tied probabilities share a bin), with a "
            "bootstrap interval over items (Looking Inward's calibration; 0 is perfect)",
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
# Where prompts come from first, then what models do with them and the statistics: the reference's order.
PRIMITIVES: dict[str, Function] = {**PROMPT_SETS, **_MODEL_AND_STATISTICS, **READINGS, **REQUIREMENTS}
