"""Statistics the dataflow steps and `intro diff` use: pure numpy functions, seeded and vectorised.

Nothing here knows about cubes, plans or models. Answers are compared after normalisation (Binder et al.
2024 compare a model's prediction with its own answer this way); intervals are 1000-resample percentile
bootstraps, paired by item where two measures score the same items, or Wilson intervals for small n.
Empty inputs give NaN rather than raising, because an empty cell in a sweep is a fact to record, not an
error.
"""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special

Statistic = Callable[..., Any]  # called as statistic(array, axis=-1), like np.mean or np.median

_ASCII_PUNCTUATION = frozenset(string.punctuation)


# ---------------------------------------------------------------------------------------------------
# Answers (Binder et al. 2024)


def normalise_answer(text: str) -> str:
    """Lowercase and strip surrounding whitespace and punctuation, as Looking Inward compares answers.

    Only the ends are stripped, so "new york" and "a, b" keep their inner characters while
    '"Dog."', " dog " and "**DOG**" all become "dog". Unicode punctuation (curly quotes, the
    ideographic full stop) counts as punctuation because models emit it.
    """
    lowered = text.lower()
    start, end = 0, len(lowered)
    while start < end and _is_strippable(lowered[start]):
        start += 1
    while end > start and _is_strippable(lowered[end - 1]):
        end -= 1
    return lowered[start:end]


def _is_strippable(char: str) -> bool:
    return char.isspace() or char in _ASCII_PUNCTUATION or unicodedata.category(char).startswith("P")


# ---------------------------------------------------------------------------------------------------
# Bootstrap


def bootstrap_ci(
    values: ArrayLike,
    *,
    statistic: Statistic = np.mean,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over 1-D `values` (Looking Inward: 1000 resamples).

    All resamples are drawn at once as one [resamples, n] index array and `statistic` is applied
    along the last axis, so it must accept `axis=` (np.mean, np.median, ...). NaN for empty input.
    """
    data = _as_sample(values)
    if data.size == 0:
        return _nan_pair()
    rng = np.random.default_rng(seed)
    replicates = statistic(data[_resample_indices(rng, data.size, resamples)], axis=-1)
    return _percentile_interval(replicates, level)


def paired_bootstrap_diff_ci(
    a: ArrayLike,
    b: ArrayLike,
    *,
    statistic: Statistic = np.mean,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of statistic(a) - statistic(b) over items scored by both.

    Items are resampled jointly (the same indices for `a` and `b`), which keeps the pairing: the
    interval reflects how the two predictors differ on the same items, not two independent samples.
    """
    first, second = _as_sample(a), _as_sample(b)
    if first.shape != second.shape:
        raise ValueError(f"paired samples differ in length: {first.size} vs {second.size}")
    if first.size == 0:
        return _nan_pair()
    indices = _resample_indices(np.random.default_rng(seed), first.size, resamples)
    replicates = statistic(first[indices], axis=-1) - statistic(second[indices], axis=-1)
    return _percentile_interval(replicates, level)


def unpaired_bootstrap_diff_ci(
    a: ArrayLike,
    b: ArrayLike,
    *,
    statistic: Statistic = np.mean,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of statistic(a) - statistic(b) for two independent samples (no item
    scored by both): each is resampled on its own, so the interval carries both sides' sampling noise."""
    first, second = _as_sample(a), _as_sample(b)
    if first.size == 0 or second.size == 0:
        return _nan_pair()
    rng = np.random.default_rng(seed)
    replicates = statistic(first[_resample_indices(rng, first.size, resamples)], axis=-1) - statistic(
        second[_resample_indices(rng, second.size, resamples)], axis=-1
    )
    return _percentile_interval(replicates, level)


def _as_sample(values: ArrayLike) -> NDArray[np.float64]:
    data = np.asarray(values)
    if data.ndim != 1:
        raise ValueError(f"expected a 1-D sample, got shape {data.shape}")
    # bools become 0/1 floats so np.median and friends work on correctness arrays
    return data.astype(np.float64)


def _resample_indices(rng: np.random.Generator, n: int, resamples: int) -> NDArray[np.intp]:
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    return rng.integers(0, n, size=(resamples, n))


def _percentile_interval(replicates: NDArray[np.float64], level: float) -> tuple[float, float]:
    tail = _tail_probability(level)
    low, high = np.quantile(replicates, [tail, 1.0 - tail])
    return float(low), float(high)


def _tail_probability(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
    return (1.0 - level) / 2.0


def _nan_pair() -> tuple[float, float]:
    return float("nan"), float("nan")


def wilson_interval(successes: ArrayLike, n: ArrayLike, *, level: float = 0.95) -> tuple[Any, Any]:
    """Wilson score interval for a proportion: an analytic alternative to the bootstrap for small n.

    Unlike the bootstrap it does not collapse to a point at 0/n or n/n, which matters for 50-trial
    cells with no detections. Broadcasts over arrays; NaN where n is 0.
    """
    k, total = np.asarray(successes, dtype=np.float64), np.asarray(n, dtype=np.float64)
    z = special.ndtri(1.0 - _tail_probability(level))
    with np.errstate(divide="ignore", invalid="ignore"):
        share = k / total
        denominator = 1.0 + z**2 / total
        centre = (share + z**2 / (2.0 * total)) / denominator
        half_width = z * np.sqrt(share * (1.0 - share) / total + z**2 / (4.0 * total**2)) / denominator
    empty = total <= 0
    # the bounds are exactly 0 at k = 0 and exactly 1 at k = n; say so instead of leaving rounding dust
    low = np.where(empty, np.nan, np.where(k <= 0, 0.0, np.clip(centre - half_width, 0.0, 1.0)))
    high = np.where(empty, np.nan, np.where(k >= total, 1.0, np.clip(centre + half_width, 0.0, 1.0)))
    return _scalar_or_array(low), _scalar_or_array(high)


def _scalar_or_array(values: NDArray[np.float64]) -> Any:
    return float(values) if values.ndim == 0 else values
