"""Looking Inward's calibration measurement (Binder et al. 2024, DESIGN.md §6): pure functions over texts.

Both the subject's object-level prompt and the predictor's hypothetical prompt are sampled n times at T=1.
Per item, the property of each object-level sample gives the distribution of the subject's behaviour (samples
that do not comply with the task, or lack the property, are left out); the predictor's normalised answers give
the distribution of its predictions (an answer outside the property's values stays in as a non-answer, so it
takes probability from every behaviour). `metrics.calibration_curve` pairs the two for each item's top-k
behaviours over 10 equal-frequency bins; its mean absolute deviation x 100 is the paper's score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from attrs import frozen

from intro.compiler.plan import digest
from intro.runtime.analysis import metrics
from intro.runtime.analysis.measures import Texts, property_value
from intro.stdlib.extractors import prediction

BINS = 10
# Normalised answers never contain "<" (punctuation is stripped), so this cannot collide with a real value.
NON_ANSWER = "<non-answer>"
POOLED = None  # the task key of a cell pooled over every task


@frozen
class ItemSamples:
    """One (task, item, property): the property of each object-level sample and each hypothetical answer."""

    task: str
    item: str
    property: str
    object_values: tuple[str, ...]
    hypothetical_values: tuple[str, ...]


@frozen(eq=False)
class CalibrationCell:
    items: int  # items with at least one object-level sample that has the property
    pairs: int  # (item, behaviour) points behind the curve
    curve: metrics.CalibrationCurve


def item_samples(
    params: Mapping[str, Any],
    objects: Texts,
    hypotheticals: Texts,
    items: Mapping[str, Mapping[str, Any]],
    tasks: Mapping[str, tuple[str, Sequence[str]]],
) -> list[ItemSamples]:
    """The samples behind every (task, item, property) row of a calibration step."""
    rows = []
    for task, item, prop, object_key, hypothetical_key in params["rows"]:
        kind, choices = tasks[task]
        extract = params["properties"][prop]["extract"]
        values = (property_value(text, extract, kind, choices, items[item]) for text in objects[object_key])
        answers = (prediction(text, extract) or NON_ANSWER for text in hypotheticals[hypothetical_key])
        rows.append(ItemSamples(task, item, prop, tuple(v for v in values if v is not None), tuple(answers)))
    return rows


def calibrate(samples: Sequence[ItemSamples], top_k: int, bins: int = BINS) -> CalibrationCell:
    """The calibration curve of some items (those without any object-level behaviour are left out)."""
    usable = [s for s in samples if s.object_values]
    if not usable:
        empty = np.zeros((0, 1))
        return CalibrationCell(0, 0, metrics.calibration_curve(empty, empty, top_k=top_k, bins=bins))
    _, objects, hypotheticals = metrics.sample_distributions(
        [s.object_values for s in usable], [s.hypothetical_values for s in usable]
    )
    curve = metrics.calibration_curve(objects, hypotheticals, top_k=top_k, bins=bins)
    return CalibrationCell(len(usable), int(curve.counts.sum()), curve)


def calibration_cells(
    samples: Sequence[ItemSamples], top_k: int, bins: int = BINS
) -> dict[tuple[str | None, str], CalibrationCell]:
    """A cell per (task, property), and per property pooled over tasks (task key `POOLED`)."""
    groups: dict[tuple[str | None, str], list[ItemSamples]] = {}
    for sample in samples:
        groups.setdefault((sample.task, sample.property), []).append(sample)
        groups.setdefault((POOLED, sample.property), []).append(sample)
    return {key: calibrate(group, top_k, bins) for key, group in groups.items()}


# ---------------------------------------------------------------------------------------------------------
# The hypothetical distribution read from logprobs (in-process predictors)
#
# Sampling the hypothetical prompt n times estimates how often the predictor gives each answer; an
# in-process predictor can instead be asked directly: the probability that its reply to the hypothetical
# prompt is each of the item's object-level behaviours (scored as whole continuations, so multi-token
# values count exactly). Whatever probability no behaviour takes is the non-answer mass.


def behaviours(sample: ItemSamples) -> tuple[str, ...]:
    """The distinct object-level behaviours of one item, in a stable order: what the readout scores."""
    return tuple(sorted(set(sample.object_values)))


def readout_key(step_hash: str) -> str:
    """One cache record holds a calibration step's readouts; the step's hash covers all they depend on."""
    return digest(
        ["calibration_readout", step_hash]
    )  # runtime/engine/experiment_calls.py counts it for `intro plan`


def readout_distribution(raw_logprobs: Mapping[str, float]) -> dict[str, float]:
    """Absolute probabilities of the scored answers; renormalised only if overlapping answers exceed 1."""
    probs = {value: float(np.exp(logprob)) for value, logprob in raw_logprobs.items()}
    total = sum(probs.values())
    return {value: p / total for value, p in probs.items()} if total > 1.0 else probs


def calibrate_readout(
    samples: Sequence[ItemSamples], readouts: Sequence[Mapping[str, float]], top_k: int, bins: int = BINS
) -> CalibrationCell:
    """The calibration curve against read-out hypothetical probabilities (one mapping per sample)."""
    usable = [(s, r) for s, r in zip(samples, readouts, strict=True) if s.object_values]
    if not usable:
        return calibrate([], top_k, bins)
    categories, objects, _ = metrics.sample_distributions(
        [s.object_values for s, _ in usable], [() for _ in usable]
    )
    column = {value: index for index, value in enumerate(categories)}
    hypotheticals = np.zeros_like(objects)
    for row, (_, readout) in enumerate(usable):
        for value, probability in readout.items():
            if value in column:
                hypotheticals[row, column[value]] = probability
    curve = metrics.calibration_curve(objects, hypotheticals, top_k=top_k, bins=bins)
    return CalibrationCell(len(usable), int(curve.counts.sum()), curve)


def readout_cells(
    samples: Sequence[ItemSamples], readouts: Sequence[Mapping[str, float]], top_k: int, bins: int = BINS
) -> dict[tuple[str | None, str], CalibrationCell]:
    """Like `calibration_cells`, against the read-out distributions."""
    groups: dict[tuple[str | None, str], list[int]] = {}
    for index, sample in enumerate(samples):
        groups.setdefault((sample.task, sample.property), []).append(index)
        groups.setdefault((POOLED, sample.property), []).append(index)
    return {
        key: calibrate_readout([samples[i] for i in rows], [readouts[i] for i in rows], top_k, bins)
        for key, rows in groups.items()
    }
