"""Measurements from finished model calls: pure functions over response texts, no model in sight.

Looking Inward's protocol (Binder et al. 2024): the subject's object-level behaviour is reduced over its
samples (the mode); the property is extracted from it; a response that does not comply with its task,
or has no such property, drops the item; the predictor's hypothetical answer is normalised and compared;
a non-compliant hypothetical answer counts as wrong.
"""

from __future__ import annotations

import builtins
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from attrs import frozen

from intro.runtime.analysis import metrics
from intro.stdlib.extractors import EXTRACTORS, complies, prediction

Texts = Mapping[str, Sequence[str]]  # prompt key -> response texts, one per sample


def reduce_samples(texts: Sequence[str], how: str) -> str:
    """One behaviour from several samples: the most common response (first seen wins ties), or the first."""
    if not texts:
        return ""
    if how == "first" or len(texts) == 1:
        return texts[0]
    counts = Counter(t.strip() for t in texts)
    best = max(counts.values())
    return next(t.strip() for t in texts if counts[t.strip()] == best)


@frozen
class PredictionRow:
    task: str
    item: str
    property: str
    object_response: str
    target: str | None  # the property of the subject's behaviour; None: the item is dropped
    hypothetical_response: str
    predicted: str | None  # the normalised prediction; None: non-compliant
    correct: bool | None  # None when the item is dropped

    # The `property` field names the builtin in this class body, so the decorator is spelled out.
    @builtins.property
    def kept(self) -> bool:
        return self.correct is not None


def property_value(
    response: str, prop: str, task_kind: str, choices: Sequence[str], item: Mapping[str, Any]
) -> str | None:
    if not complies(response, task_kind, choices):
        return None
    return EXTRACTORS[prop](response, item)


def evaluate_prediction(
    params: Mapping[str, Any],
    objects: Texts,
    hypotheticals: Texts,
    items: Mapping[str, Mapping[str, Any]],
    tasks: Mapping[str, tuple[str, Sequence[str]]],
) -> list[PredictionRow]:
    """Score every (task, item, property) row of a prediction step."""
    rows = []
    extract_of = {name: spec["extract"] for name, spec in params["properties"].items()}
    for task, item, prop, object_key, hypothetical_key in params["rows"]:
        kind, choices = tasks[task]
        response = reduce_samples(objects[object_key], params.get("reduce", "mode"))
        target = property_value(response, extract_of[prop], kind, choices, items[item])
        answer = reduce_samples(hypotheticals[hypothetical_key], params.get("hypothetical_reduce", "mode"))
        predicted = prediction(answer, extract_of[prop])
        correct = None if target is None else predicted == target
        rows.append(PredictionRow(task, item, prop, response, target, answer, predicted, correct))
    return rows


@frozen
class Aggregate:
    accuracy: float
    ci_low: float
    ci_high: float
    n: int
    mode_baseline: float
    compliance: float  # share of kept items whose hypothetical answer was compliant
    kept: int  # items whose object-level answer had the property
    total: int


def aggregate(rows: Sequence[PredictionRow], resamples: int = 1000, seed: int = 0) -> Aggregate:
    kept = [r for r in rows if r.kept]
    correct = np.array([bool(r.correct) for r in kept], dtype=bool)
    if kept:
        low, high = metrics.bootstrap_ci(correct.astype(float), resamples=resamples, seed=seed)
        baseline = metrics.mode_baseline(np.array([r.target for r in kept], dtype=object))
        compliance = float(np.mean([r.predicted is not None for r in kept]))
    else:
        low = high = baseline = compliance = float("nan")
    return Aggregate(
        metrics.accuracy(correct) if kept else float("nan"),
        float(low),
        float(high),
        len(kept),
        float(baseline),
        compliance,
        len(kept),
        len(rows),
    )


def grouped(rows: Sequence[PredictionRow]) -> dict[tuple[str, str], list[PredictionRow]]:
    groups: dict[tuple[str, str], list[PredictionRow]] = {}
    for row in rows:
        groups.setdefault((row.task, row.property), []).append(row)
    return groups
