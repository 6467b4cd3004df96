"""The values of the open language: rows, prompts, model outputs, grades and statistics over them.

A study written on these primitives is a dataflow graph: `generate` turns a prompt set into texts,
`extract` and `judge` turn texts into values, `filter` keeps some texts, `consensus` the answer a prompt's
samples agree on, `examples` turns prompts and texts
into training data, and `rate`, `mean`, `accuracy`, `difference`, `correlation` summarise values with
confidence intervals. A prompt set built from *results* (a model's own earlier answers, a teacher's outputs)
is rendered at run time; everything else is rendered while lowering. Like the rest of the IR, every value is
frozen and compares by meaning, so the same computation reached twice is one plan step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrs import field, frozen

from . import ir

Scalar = str | int | float | bool


@frozen
class Items:
    """Rows to build prompts from: a data file's rows or a literal list. Each row is keyed `name/id`."""

    name: str
    digest: str
    rows: tuple[Mapping[str, Any], ...] = field(eq=False, repr=False)
    id_column: str = "id"

    def keyed(self) -> list[tuple[str, Mapping[str, Any]]]:
        return [(f"{self.name}/{row[self.id_column]}", row) for row in self.rows]


@frozen
class PromptSet:
    """One chat prompt per row of `source`: the user turn is `template` rendered with the row's fields.

    A source of results (texts, values) adds `text` (the answer), `sample` and `prompt` (the user turn
    it answered) to the item's fields, and makes the set a run-time one. A task selection adds `task` and
    `object_prompt` (the task's own prompt for the row); with no template, that prompt is the user turn,
    and the task's system message is used unless `system` is given.
    """

    source: Any  # Items | ir.Selection | Texts
    template: str | None
    system: str | None = None
    prefill: str = ""
    # A property the prompts ask about (a selection only): rows of tasks it cannot read are left out, and
    # the template also sees `question`, the property's question for the row. About a list of properties,
    # each row is asked once per property it can read, keyed `item#property`, in item order.
    about: ir.Property | tuple[ir.Property, ...] | None = None
    # Plain values bound where the prompts are written (loop variables, lets, parameters) that the
    # template names; a row's own field of the same name wins.
    values: tuple[tuple[str, Scalar], ...] = ()
    # Earlier turns of the conversation, (role, text), before the templated user turn; with no template
    # they are the whole prompt (the last one a user turn).
    turns: tuple[tuple[str, str], ...] = ()
    # Whether the turns are templates over the row (a conversation asked once per row of its source).
    templated_turns: bool = False

    def fields(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return {**dict(self.values), **row}

    def properties(self) -> tuple[ir.Property, ...]:
        return self.about if isinstance(self.about, tuple) else (self.about,) if self.about else ()


@frozen
class Rule:
    """A leaf function of `stdlib.rules`, with its arguments: text (and item) in, a value or None out."""

    name: str
    args: tuple[tuple[str, Scalar], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "args": dict(self.args)}


# ---------------------------------------------------------------- texts
@frozen
class Generate:
    """`model`'s answers to `prompts`: `sampling.samples` texts per prompt."""

    model: ir.Model
    prompts: PromptSet
    sampling: ir.Sampling


@frozen
class Filter:
    """The texts for which `rule` gives a value other than None, "false" or "no"."""

    texts: Texts
    rule: Rule


@frozen
class Consensus:
    """Per prompt, the answer its samples agree on: the most common of its texts, compared normalised (case,
    punctuation and spacing aside), as the first sample to give it wrote it; no text where no answer is more
    common than every other (the samples all differ, or two answers tie). A prompt sampled once keeps its
    answer. Binder et al. 2024 take the mode of 5 samples at temperature 0 this way for API models."""

    texts: Texts


Texts = Generate | Filter | Consensus


# ---------------------------------------------------------------- values
@frozen
class Extract:
    """`rule`'s value for each text (None where the text has no such value: not compliant). Given several
    properties (`each`), one value per text and property, keyed `item#property`."""

    texts: Texts | Values  # values: the rule reads each value as its text
    rule: Rule
    each: tuple[tuple[str, Rule], ...] = ()


@frozen
class Judge:
    """A grader model's label for each text, asked with `rubric` (a template over the item's fields, `text`
    and `prompt`); the label is the first of `labels` the reply starts with, or a 0-100 number when
    `labels` is empty."""

    grader: ir.Model
    texts: Texts
    rubric: str
    labels: tuple[str, ...]
    sampling: ir.Sampling
    values: tuple[tuple[str, Scalar], ...] = ()  # as PromptSet.values, for the rubric


@frozen
class Choose:
    """`model`'s probability of each option as its reply to each prompt, read in one pass; the value is
    the most probable option."""

    model: ir.Model
    prompts: PromptSet
    options: tuple[str, ...]


@frozen
class Score:
    """The total log-probability `model` gives `continuation` (a template over the item's fields) as its
    reply to each prompt."""

    model: ir.Model
    prompts: PromptSet
    continuation: str


@frozen
class Differs:
    """Per item: "true" where the most common values of `a` and `b` differ, "false" where they agree, none
    where either has no value (a behaviour that changed, for behaviour-change studies)."""

    a: Values
    b: Values


@frozen
class Balance:
    """Per item: "true" for the items kept on the side of `values` when the distributions of `first` and
    `second` are made equal, as Binder et al. 2024's entropy control does (their adjust_for_entropy):
    within each task, among the items where `where` is true-like and both sides have a value, for each of
    the `top` most common values v of `first`, min(#first == v, #second == v) of the items whose `values`
    value is v, chosen by a shuffle seeded with `seed`; "false" for every other item."""

    values: Values
    first: Values
    second: Values
    where: Values | None = None
    top: int = 10
    seed: int = 42


@frozen
class AllOf:
    """Per trial (an item's sample): "true" where `a` and `b` (if given) both pass, "false" where either
    does not; a grade with one value per item stands for each of the item's samples (see all_of's doc)."""

    a: Values
    b: Values | None = None


@frozen
class Probability:
    """Per prompt of `choices` (a choose): the probability it gave `option`, normalised over its options;
    given `against`, the log-odds log P(option) - log P(against) instead."""

    choices: Choose
    option: str
    against: str | None = None


@frozen
class Residuals:
    """`model`'s residual stream after `layer` for each prompt: the mean over the prompt tokens of `span`
    (a template over the row; the reply's prefill is part of the prompt), or the last token's."""

    model: ir.Model
    prompts: PromptSet
    layer: int
    span: str | None = None
    values: tuple[tuple[str, Scalar], ...] = ()  # as PromptSet.values, for the span


@frozen
class Cosine:
    """Per prompt of `residuals`: the cosine similarity with `vectors` (with several, one value per prompt
    and vector, keyed `item#k` from 1)."""

    residuals: Residuals
    vectors: tuple[Any, ...]  # ir.Vector
    several: bool = False


Values = Extract | Judge | Choose | Score | Differs | Balance | AllOf | Probability | Cosine


# ---------------------------------------------------------------- statistics
@frozen
class Estimate:
    """A statistic of values over items, with a bootstrap confidence interval over items.

    rate: the share of values equal to `equals` (or true-like when `equals` is None); mean: the mean of
    numeric values; accuracy: how often `values` equals the mode of `other` on the same item (a missing
    value counts as wrong; items where `other` has none are left out);
    mode_baseline: how often an item's value is the most common value overall; calibration: how far the
    distribution of `values` (predictions, sampled) is from that of `other` (behaviour, sampled) per item,
    as Looking Inward's mean absolute deviation x 100 over equal-frequency bins of the top-k behaviours.
    """

    statistic: str
    values: Values
    other: Values | None = None
    equals: Scalar | None = None
    by: str | None = None  # one estimate per value of this item field ("task": the item's task or file)
    over: str = "items"  # the unit resampled: items, or samples (trials of one prompt, as concept injection)
    where: Values | None = None  # only the items whose value here is true-like
    top_k: int = 3  # calibration: the behaviours per item the curve is drawn over


@frozen
class Comparison:
    """difference: a - b, paired by item where both have the item; correlation: Pearson's r of the two
    estimates' per-item scores. Both with a bootstrap interval over items."""

    statistic: str
    a: Estimate
    b: Estimate


# ---------------------------------------------------------------- training data
@frozen
class Examples:
    """Chat examples to finetune on: `prompts` answered by `completions` (texts joined by item, or a template
    over the item's fields), or the rows of a chat / prompt-completion data file (`fixed`)."""

    prompts: PromptSet | None = None
    completions: Texts | str | None = None
    fixed: tuple[tuple[tuple[tuple[str, str], ...], str], ...] = field(default=(), eq=False, repr=False)
    digest: str = ""


TEXTS = (Generate, Filter, Consensus)
VALUES = (Extract, Judge, Choose, Score, Differs, Balance, AllOf, Probability, Cosine)
MEASURABLE = (*TEXTS, *VALUES, Estimate, Comparison)


def upstream(value: Any) -> Any:
    """The result a value is computed from (the first of two), towards the prompts its items came from."""
    if isinstance(value, Differs | AllOf):
        return value.a
    if isinstance(value, Balance):
        return value.values
    if isinstance(value, Probability):
        return value.choices
    if isinstance(value, Cosine):
        return value.residuals
    return value.texts


def is_run_time(prompts: PromptSet) -> bool:
    """Whether the prompt set can only be rendered once its source's results exist."""
    return isinstance(prompts.source, (*TEXTS, *VALUES))


def measure_kind(value: Any) -> str:
    """The kind of measure a dataflow value makes in the plan (and so the layout of its cube)."""
    if isinstance(value, TEXTS):
        return "texts"
    if isinstance(value, VALUES):
        return "values"
    if isinstance(value, Estimate):
        return "estimate"
    return "comparison"
