"""Statistics for the two papers' measurements: pure numpy functions, seeded and vectorised.

Nothing here knows about cubes, plans or models; the measurement steps feed arrays in and write the
numbers into cubes. Two protocols are served:

- Looking Inward (Binder et al. 2024, DESIGN.md §6): answers are compared after normalisation;
  accuracy is reported against the mode baseline with 1000-resample percentile bootstrap CIs and a
  pooled two-proportion z-test; calibration is the mean absolute deviation (x100) between object-level
  and hypothetical probabilities of the top-3 behaviours over 10 equal-frequency bins.
- Emergent Introspective Awareness (Lindsey 2025, DESIGN.md §7): per-trial grades become detection,
  identification (success), false-positive and net rates, each with a bootstrap CI.

Paired comparisons of two predictors scored on the same items (McNemar, paired bootstrap) and the
Wilson interval for small n complete the set. Empty inputs give NaN rather than raising, because an
empty cell in a sweep is a fact to record, not an error.
"""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np
from attrs import field, frozen
from numpy.typing import ArrayLike, NDArray
from scipy import special, stats

Statistic = Callable[..., Any]  # called as statistic(array, axis=-1), like np.mean or np.median

# Below this many discordant pairs McNemar's chi-square approximation is poor; use the exact binomial.
MCNEMAR_EXACT_BELOW = 25

_ASCII_PUNCTUATION = frozenset(string.punctuation)


# ---------------------------------------------------------------------------------------------------
# Answers and accuracy (Binder et al. 2024)


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


def accuracy(correct: ArrayLike) -> float:
    """Fraction of true entries; NaN when there are none (an empty cell has no accuracy)."""
    hits = _as_bool(correct)
    return float(hits.mean()) if hits.size else float("nan")


def _as_bool(values: ArrayLike) -> NDArray[np.bool_]:
    """Booleans, or 0/1 numbers; anything else is a caller's mistake worth catching early."""
    array = np.asarray(values)
    if array.dtype == np.bool_:
        return array.reshape(-1)
    if array.size and not np.isin(array, (0, 1)).all():
        raise ValueError("expected booleans (or 0/1), got other values")
    return array.astype(bool).reshape(-1)


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


# ---------------------------------------------------------------------------------------------------
# Mode baseline (Binder et al. 2024: always predict the most common property value per (task, property))


def mode_baseline(object_values: ArrayLike, test_values: ArrayLike | None = None) -> float:
    """Accuracy of always predicting the most common value of `object_values`.

    Scored against `test_values` when given (a mode learnt on one split, scored on another), else
    against `object_values` themselves: the best any constant predictor could do, which is what the
    paper reports. Ties between modes do not change the in-sample score; out of sample the value that
    sorts first wins, so the result is deterministic. NaN when either side is empty.
    """
    groups = np.zeros(len(np.asarray(object_values)), dtype=np.intp)
    test_groups = None if test_values is None else np.zeros(len(np.asarray(test_values)), dtype=np.intp)
    scores = mode_baseline_by_group(object_values, groups, test_values, test_groups)
    return scores.get(0, float("nan"))


def mode_baseline_by_group(
    object_values: ArrayLike,
    groups: ArrayLike,
    test_values: ArrayLike | None = None,
    test_groups: ArrayLike | None = None,
) -> dict[Hashable, float]:
    """Mode-baseline accuracy per group, e.g. per (task, property).

    `groups` holds one label per value: a 1-D array of labels, or a 2-D array whose rows are
    composite keys (`np.column_stack([task, property])`), in which case the dict keys are tuples.
    Groups present only in the test side score NaN: there is no behaviour to take a mode from.
    """
    predictions, targets, target_groups = _mode_predictions(object_values, groups, test_values, test_groups)
    labels, codes = _group_codes(target_groups)
    hits = np.where(np.isnan(predictions), np.nan, predictions == targets)
    return {label: _nanless_mean(hits[codes == index]) for index, label in enumerate(labels)}


def group_mode_predictions(
    object_values: ArrayLike,
    groups: ArrayLike,
    target_groups: ArrayLike | None = None,
) -> NDArray[Any]:
    """The mode baseline's prediction for each item: its group's most common object-level value.

    Handy for a pooled baseline with a CI: `accuracy(group_mode_predictions(v, g) == v)` weighs
    every item once, like the paper's aggregate over tasks and properties. Items whose group has no
    object-level values get None.
    """
    values, source_groups = np.asarray(object_values), np.asarray(groups)
    _check_lengths(values, source_groups, "object_values", "groups")
    result = np.full(len(source_groups if target_groups is None else np.asarray(target_groups)), None)
    if values.size == 0:
        return result
    value_labels, value_codes = np.unique(values, return_inverse=True)
    predicted = _predicted_codes(value_codes, len(value_labels), source_groups, target_groups)
    known = predicted >= 0
    result[known] = value_labels[predicted[known]]
    return result


def _mode_predictions(
    object_values: ArrayLike,
    groups: ArrayLike,
    test_values: ArrayLike | None,
    test_groups: ArrayLike | None,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[Any]]:
    """Predicted and target value codes in one shared code space (NaN where no prediction exists)."""
    if (test_values is None) != (test_groups is None):
        raise ValueError("test_values and test_groups go together")
    objects, source_groups = np.asarray(object_values), np.asarray(groups)
    targets = objects if test_values is None else np.asarray(test_values)
    target_groups = source_groups if test_groups is None else np.asarray(test_groups)
    _check_lengths(objects, source_groups, "object_values", "groups")
    _check_lengths(targets, target_groups, "test_values", "test_groups")
    if objects.size == 0 or targets.size == 0:
        return np.full(len(targets), np.nan), np.zeros(len(targets)), target_groups
    _, codes = np.unique(np.concatenate([objects, targets]), return_inverse=True)
    object_codes, target_codes = codes[: len(objects)], codes[len(objects) :]
    predicted = _predicted_codes(object_codes, int(codes.max()) + 1, source_groups, test_groups)
    return np.where(predicted >= 0, predicted, np.nan), target_codes.astype(np.float64), target_groups


def _predicted_codes(
    value_codes: NDArray[np.intp],
    value_count: int,
    groups: ArrayLike,
    target_groups: ArrayLike | None,
) -> NDArray[np.intp]:
    """Each target item's group mode as a value code; -1 where its group has no object values.

    Without `target_groups` the targets are the object items themselves.
    """
    source = np.asarray(groups)
    targets = source if target_groups is None else np.asarray(target_groups)
    labels, codes = _group_codes(np.concatenate([source, targets]))
    counts = np.zeros((len(labels), max(value_count, 1)), dtype=np.int64)
    np.add.at(counts, (codes[: len(source)], value_codes), 1)
    # argmax picks the lowest code among tied modes: the value that sorts first
    modes = np.where(counts.sum(axis=1) > 0, counts.argmax(axis=1), -1)
    return modes[codes[len(source) :]]


def _group_codes(groups: ArrayLike) -> tuple[list[Hashable], NDArray[np.intp]]:
    """Distinct group labels (tuples for composite keys) and each row's index into them."""
    array = np.asarray(groups)
    if array.ndim == 2:
        labels, codes = np.unique(array, axis=0, return_inverse=True)
        return [tuple(row.tolist()) for row in labels], codes.reshape(-1)
    labels, codes = np.unique(array, return_inverse=True)
    return labels.tolist(), codes.reshape(-1)


def _check_lengths(values: NDArray[Any], groups: NDArray[Any], values_name: str, groups_name: str) -> None:
    if len(values) != len(groups):
        raise ValueError(f"{values_name} has {len(values)} entries but {groups_name} has {len(groups)}")


def _nanless_mean(hits: NDArray[np.float64]) -> float:
    return float("nan") if hits.size == 0 or np.isnan(hits).any() else float(hits.mean())


# ---------------------------------------------------------------------------------------------------
# Tests of difference


def two_proportion_ztest(
    successes_a: ArrayLike, n_a: ArrayLike, successes_b: ArrayLike, n_b: ArrayLike
) -> tuple[Any, Any]:
    """Pooled two-sided z-test of p_a == p_b (Looking Inward: self vs cross prediction, p < 0.01).

    z = (p_a - p_b) / sqrt(p (1 - p) (1/n_a + 1/n_b)) with p the pooled proportion. Broadcasts over
    arrays (one test per cube cell). NaN when either n is 0; when the pooled proportion is 0 or 1
    both groups agree exactly, so z = 0 and p = 1.
    """
    sa, na, sb, nb = (np.asarray(x, dtype=np.float64) for x in (successes_a, n_a, successes_b, n_b))
    with np.errstate(divide="ignore", invalid="ignore"):
        pooled = (sa + sb) / (na + nb)
        spread = np.sqrt(pooled * (1.0 - pooled) * (1.0 / na + 1.0 / nb))
        z = np.where(spread > 0, (sa / na - sb / nb) / spread, 0.0)
    empty = (na <= 0) | (nb <= 0)
    z = np.where(empty, np.nan, z)
    p = np.where(empty, np.nan, 2.0 * special.ndtr(-np.abs(z)))
    return _scalar_or_array(z), _scalar_or_array(p)


def mcnemar(a_correct: ArrayLike, b_correct: ArrayLike, *, exact: bool | None = None) -> tuple[float, float]:
    """McNemar's test that two predictors scored on the same items are equally accurate.

    Only discordant items count: b = a right and b wrong, c = a wrong and b right. With fewer than
    MCNEMAR_EXACT_BELOW (25) discordant items (or `exact=True`) the test is the exact two-sided
    binomial (statistic = min(b, c), p = 2 P(X <= min(b, c)) for X ~ Bin(b + c, 1/2), capped at 1);
    otherwise the chi-square with continuity correction (statistic = (|b - c| - 1)^2 / (b + c),
    1 degree of freedom). No discordant items gives (0, 1): nothing distinguishes the two.
    """
    first, second = _as_bool(a_correct), _as_bool(b_correct)
    if first.shape != second.shape:
        raise ValueError(f"paired samples differ in length: {first.size} vs {second.size}")
    only_a = int(np.sum(first & ~second))
    only_b = int(np.sum(~first & second))
    discordant = only_a + only_b
    if discordant == 0:
        return 0.0, 1.0
    if exact if exact is not None else discordant < MCNEMAR_EXACT_BELOW:
        smaller = min(only_a, only_b)
        return float(smaller), float(min(1.0, 2.0 * stats.binom.cdf(smaller, discordant, 0.5)))
    statistic = (abs(only_a - only_b) - 1.0) ** 2 / discordant
    return float(statistic), float(stats.chi2.sf(statistic, 1))


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


# ---------------------------------------------------------------------------------------------------
# Calibration (Binder et al. 2024)


@frozen(eq=False)
class CalibrationCurve:
    """Binned calibration points: per bin, mean object-level vs mean hypothetical probability.

    `mad` is the paper's score: the mean absolute deviation between the two means over bins, x100
    (0 is perfect calibration). NaN when no item had an object-level behaviour.
    """

    object_mean: NDArray[np.float64] = field(repr=False)
    hypothetical_mean: NDArray[np.float64] = field(repr=False)
    counts: NDArray[np.intp] = field(repr=False)
    mad: float


def sample_distributions(
    object_samples: Sequence[Sequence[Hashable]],
    hypothetical_samples: Sequence[Sequence[Hashable]],
) -> tuple[list[Hashable], NDArray[np.float64], NDArray[np.float64]]:
    """Per-item distributions from samples: (categories, object probs, hypothetical probs).

    Each item's object-level samples (the property of each T=1 response, non-compliant ones already
    dropped) and hypothetical answers (normalised; non-compliant answers kept, so they take mass from
    every behaviour) become rows of two [items, categories] probability arrays over shared columns.
    """
    if len(object_samples) != len(hypothetical_samples):
        raise ValueError("object and hypothetical samples must cover the same items")
    everything = [value for item in (*object_samples, *hypothetical_samples) for value in item]
    categories, codes = np.unique(np.asarray(everything), return_inverse=True)
    split = sum(len(item) for item in object_samples)
    objects = _row_frequencies(object_samples, codes[:split], len(categories))
    hypotheticals = _row_frequencies(hypothetical_samples, codes[split:], len(categories))
    return categories.tolist(), objects, hypotheticals


def _row_frequencies(
    samples: Sequence[Sequence[Hashable]], codes: NDArray[np.intp], width: int
) -> NDArray[np.float64]:
    lengths = np.array([len(item) for item in samples], dtype=np.intp)
    rows = np.repeat(np.arange(len(samples)), lengths)
    counts = np.zeros((len(samples), width), dtype=np.float64)
    np.add.at(counts, (rows, codes), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(lengths[:, None] > 0, counts / lengths[:, None], 0.0)


def calibration_curve(
    object_distributions: ArrayLike,
    hypothetical_distributions: ArrayLike,
    *,
    top_k: int = 3,
    bins: int = 10,
) -> CalibrationCurve:
    """Looking Inward's calibration: do hypothetical answer rates track object-level behaviour rates?

    Rows are items, columns the property's values (shared between the two arrays; see
    `sample_distributions`). For each item take its `top_k` most likely object-level behaviours
    (those with positive probability), pair each behaviour's object-level probability with the
    probability of giving it as the hypothetical answer, sort all pairs by object-level probability
    and cut them into `bins` equal-frequency bins (by rank, so ties may straddle a bin edge; fewer
    bins when there are fewer pairs).
    """
    objects, hypotheticals = _distribution_pair(object_distributions, hypothetical_distributions)
    object_probs, hypothetical_probs = _top_behaviour_pairs(objects, hypotheticals, top_k)
    order = np.argsort(object_probs, kind="stable")
    groups = (
        [chunk for chunk in np.array_split(order, min(bins, order.size)) if chunk.size] if order.size else []
    )
    object_mean = np.array([object_probs[chunk].mean() for chunk in groups])
    hypothetical_mean = np.array([hypothetical_probs[chunk].mean() for chunk in groups])
    counts = np.array([chunk.size for chunk in groups], dtype=np.intp)
    mad = 100.0 * float(np.abs(object_mean - hypothetical_mean).mean()) if groups else float("nan")
    return CalibrationCurve(object_mean, hypothetical_mean, counts, mad)


def calibration_mad(
    object_distributions: ArrayLike,
    hypothetical_distributions: ArrayLike,
    *,
    top_k: int = 3,
    bins: int = 10,
) -> float:
    """The paper's calibration score (MAD x 100); see `calibration_curve` for the points behind it."""
    return calibration_curve(object_distributions, hypothetical_distributions, top_k=top_k, bins=bins).mad


def _distribution_pair(
    object_distributions: ArrayLike, hypothetical_distributions: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    objects = np.asarray(object_distributions, dtype=np.float64)
    hypotheticals = np.asarray(hypothetical_distributions, dtype=np.float64)
    if objects.ndim != 2 or objects.shape != hypotheticals.shape:
        raise ValueError(
            f"expected two [items, categories] arrays of one shape, got {objects.shape} and {hypotheticals.shape}"
        )
    for name, array in (("object", objects), ("hypothetical", hypotheticals)):
        if ((array < 0) | (array > 1)).any() or (array.sum(axis=1) > 1 + 1e-9).any():
            raise ValueError(f"{name} distributions must be probabilities with rows summing to at most 1")
    return objects, hypotheticals


def _top_behaviour_pairs(
    objects: NDArray[np.float64], hypotheticals: NDArray[np.float64], top_k: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(object prob, hypothetical prob) for each item's top-k object-level behaviours, flattened."""
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    # stable sort on the negated probabilities: among equally likely behaviours the first column wins
    top = np.argsort(-objects, axis=1, kind="stable")[:, :top_k]
    object_probs = np.take_along_axis(objects, top, axis=1)
    hypothetical_probs = np.take_along_axis(hypotheticals, top, axis=1)
    observed = object_probs > 0
    return object_probs[observed], hypothetical_probs[observed]


# ---------------------------------------------------------------------------------------------------
# Concept injection (Lindsey 2025)


@frozen
class Rate:
    """A rate with its percentile bootstrap interval and the number of trials behind it."""

    estimate: float
    low: float
    high: float
    n: int


@frozen
class DetectionRates:
    """Lindsey 2025's headline numbers for one (layer, strength) cell.

    detection: injected trials answered with an affirmative detection.
    identification: injected trials that are coherent and identify the concept (the paper's success;
        its identification rubric already requires an affirmative detection).
    false_positive: control trials answered with an affirmative detection.
    net: identification minus false_positive; injected and control trials are resampled separately.
    """

    detection: Rate
    identification: Rate
    false_positive: Rate
    net: Rate


def detection_rates(
    injected_detected: ArrayLike,
    injected_identified: ArrayLike,
    injected_coherent: ArrayLike,
    control_detected: ArrayLike,
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> DetectionRates:
    """Detection, identification, false-positive and net rates from per-trial grades, with CIs.

    The three injected arrays are aligned per trial; a control trial only matters through its
    detection grade. Empty injected or control sets give NaN rates for what depends on them.
    """
    detected, identified, coherent = (
        _as_bool(x) for x in (injected_detected, injected_identified, injected_coherent)
    )
    if not detected.shape == identified.shape == coherent.shape:
        raise ValueError("injected grades must be aligned per trial")
    injected = np.stack([detected, coherent & identified]).astype(np.float64)
    controls = _as_bool(control_detected).astype(np.float64)[None, :]
    rng = np.random.default_rng(seed)
    # detection and success share resampled trials; controls are an independent sample of trials
    detection_draws, success_draws = _bootstrap_means(injected, rng, resamples)
    (control_draws,) = _bootstrap_means(controls, rng, resamples)
    detection, success, false_positive = (
        _rate(draws, row, level)
        for draws, row in (
            (detection_draws, injected[0]),
            (success_draws, injected[1]),
            (control_draws, controls[0]),
        )
    )
    net = _difference_rate(success, false_positive, success_draws - control_draws, level)
    return DetectionRates(detection=detection, identification=success, false_positive=false_positive, net=net)


def _bootstrap_means(
    rows: NDArray[np.float64], rng: np.random.Generator, resamples: int
) -> NDArray[np.float64]:
    """Bootstrap means of each row, resampling columns (trials) with one shared index array."""
    if rows.shape[1] == 0:
        return np.full((rows.shape[0], resamples), np.nan)
    return rows[:, _resample_indices(rng, rows.shape[1], resamples)].mean(axis=-1)


def _rate(replicates: NDArray[np.float64], trials: NDArray[np.float64], level: float) -> Rate:
    if trials.size == 0:
        return Rate(float("nan"), float("nan"), float("nan"), 0)
    low, high = _percentile_interval(replicates, level)
    return Rate(float(trials.mean()), low, high, trials.size)


def _difference_rate(first: Rate, second: Rate, replicates: NDArray[np.float64], level: float) -> Rate:
    if first.n == 0 or second.n == 0:
        return Rate(float("nan"), float("nan"), float("nan"), 0)
    low, high = _percentile_interval(replicates, level)
    return Rate(first.estimate - second.estimate, low, high, first.n + second.n)
