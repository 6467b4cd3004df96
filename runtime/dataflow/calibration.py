"""Looking Inward's calibration (Binder et al. 2024: are hypothetical answer rates calibrated against the
model's own behaviour rates?) on the open language's rows.

Both the object-level prompt and the hypothetical prompt are sampled several times at temperature 1. Per
item, the property values of the subject's answers give the distribution of its behaviour (answers without
the property are left out), and the predictor's answers the distribution of its predictions (an answer that
is no value of the property stays in as a non-answer, so it takes probability from every behaviour). Each
item's `top_k` most likely behaviours give points (object-level probability, hypothetical probability);
the points are cut into equal-frequency bins as the paper's code cuts them (`pandas.qcut(..., q=10,
duplicates="drop")`: edges at the quantiles of the object-level probabilities, a repeated edge dropped, so
tied probabilities always share a bin), and the score is the mean absolute deviation between the bins'
mean object-level and mean hypothetical probabilities, x 100. Its interval is a percentile bootstrap over
items (each resampled item brings all its points; 1000 resamples, seed 0), the binning redone each time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from attrs import frozen

BINS = 10
RESAMPLES = 1000
# Normalised answers never contain "<" (punctuation is stripped), so this cannot collide with a real value.
NON_ANSWER = "<non-answer>"

Row = Mapping[str, Any]


@frozen(eq=False)
class Points:
    """The calibration points: object-level and hypothetical probability, and the item each belongs to."""

    object: np.ndarray
    hypothetical: np.ndarray
    owner: np.ndarray  # index of the point's item, 0..items-1
    items: int


def points(predicted: Sequence[Row], behaviour: Sequence[Row], top_k: int) -> Points:
    """Each item's top-k behaviours against the share of predictions naming them (items with no behaviour
    are left out; among equally likely behaviours the one seen first comes first, as in the paper's code)."""
    seen: dict[str, list[str]] = {}
    for row in behaviour:
        if row.get("value") is not None:
            seen.setdefault(row["item"], []).append(str(row["value"]))
    answers: dict[str, list[str]] = {}
    for row in predicted:
        answers.setdefault(row["item"], []).append(
            NON_ANSWER if row.get("value") is None else str(row["value"])
        )
    rows = [_item_points(seen[item], answers[item], top_k) for item in answers if seen.get(item)]
    owner = [index for index, pairs in enumerate(rows) for _ in pairs]
    flat = [pair for pairs in rows for pair in pairs]
    array = np.array(flat, dtype=float).reshape(-1, 2)
    return Points(array[:, 0], array[:, 1], np.array(owner, dtype=np.intp), len(rows))


def _item_points(behaviour: list[str], predictions: list[str], top_k: int) -> list[tuple[float, float]]:
    counts, asked = Counter(behaviour), Counter(predictions)
    top = sorted(counts, key=lambda value: -counts[value])[:top_k]  # stable: first seen wins a tie
    return [(counts[v] / len(behaviour), asked[v] / len(predictions)) for v in top]


def equal_frequency_bins(values: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Each value's bin as `pandas.qcut(values, bins, duplicates="drop")` assigns it: edges at the quantiles
    of `values` (linear interpolation), repeated edges dropped, bins (e_i, e_i+1] with the lowest value in
    the first. Where every value is the same (qcut would leave them all out) they make one bin."""
    edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)))
    if edges.size < 2:
        return np.zeros(values.size, dtype=np.intp)
    return np.clip(np.searchsorted(edges, values, side="left") - 1, 0, edges.size - 2)


@frozen(eq=False)
class Curve:
    """The binned points: per non-empty bin, the mean object-level and hypothetical probability and the
    number of points; `mad` the paper's score (NaN without points)."""

    object_mean: np.ndarray
    hypothetical_mean: np.ndarray
    counts: np.ndarray
    mad: float


def curve(object_probs: np.ndarray, hypothetical_probs: np.ndarray, bins: int = BINS) -> Curve:
    """The calibration curve of some points. An empty bin (qcut's edges can leave one) has no mean and is
    left out, where the paper's code would pass a NaN to its mean absolute error."""
    if not object_probs.size:
        empty = np.zeros(0)
        return Curve(empty, empty, np.zeros(0, dtype=np.intp), float("nan"))
    assigned = equal_frequency_bins(object_probs, bins)
    counts = np.bincount(assigned)
    kept = counts > 0
    object_mean = (np.bincount(assigned, weights=object_probs) / np.maximum(counts, 1))[kept]
    hypothetical_mean = (np.bincount(assigned, weights=hypothetical_probs) / np.maximum(counts, 1))[kept]
    mad = 100.0 * float(np.abs(object_mean - hypothetical_mean).mean())
    return Curve(object_mean, hypothetical_mean, counts[kept], mad)


def bootstrap_interval(found: Points, bins: int = BINS, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the MAD, items resampled with replacement, each with all its points."""
    if found.items < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(0)
    replicates = []
    for _ in range(RESAMPLES):
        weights = np.bincount(rng.integers(0, found.items, found.items), minlength=found.items)[found.owner]
        drawn = curve(np.repeat(found.object, weights), np.repeat(found.hypothetical, weights), bins)
        replicates.append(drawn.mad)
    low, high = np.quantile(np.array(replicates), [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def calibration(
    predicted: Sequence[Row], behaviour: Sequence[Row], top_k: int, bins: int = BINS
) -> dict[str, Any]:
    """The `calibration_curve` statistic: the MAD of the curve with its bootstrap interval, over the items
    that have a behaviour."""
    found = points(predicted, behaviour, top_k)
    low, high = bootstrap_interval(found, bins)
    drawn = curve(found.object, found.hypothetical, bins)
    return {
        "statistic": "calibration",
        "estimate": drawn.mad,
        "ci_low": low,
        "ci_high": high,
        "n": found.items,
        "items": found.items,
        "compliance": float("nan"),
        "scores": {},
        # the curve itself, per non-empty bin (the paper's figure): cubes.py writes it over a `bin` dim
        "curve": {
            "object": drawn.object_mean.tolist(),
            "hypothetical": drawn.hypothetical_mean.tolist(),
            "count": drawn.counts.tolist(),
        },
    }
