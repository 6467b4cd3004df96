"""Each statistic is checked against an independent computation: scipy.stats, plain-Python loops, or
numbers worked out by hand in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from intro.runtime.analysis.metrics import (
    bootstrap_ci,
    normalise_answer,
    paired_bootstrap_diff_ci,
    wilson_interval,
)

# ---------------------------------------------------------------------------------------------------
# normalise_answer


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Dog", "dog"),
        ('  "Dog." ', "dog"),
        ("**DOG**", "dog"),
        ("(B)", "b"),
        ("“Tokyo”。", "tokyo"),
        ("New York!", "new york"),
        ("a, b", "a, b"),
        ("\tTrue\n", "true"),
        ("...", ""),
        ("", ""),
        ("75", "75"),
    ],
)
def test_normalise_answer_strips_case_and_surrounding_punctuation(raw, expected):
    assert normalise_answer(raw) == expected


# ---------------------------------------------------------------------------------------------------
# bootstrap


def _scipy_percentile_ci(data, statistic, level=0.95, resamples=20_000, paired=False):
    result = stats.bootstrap(
        data,
        statistic,
        n_resamples=resamples,
        confidence_level=level,
        method="percentile",
        paired=paired,
        vectorized=True,
        rng=np.random.default_rng(12345),
    )
    return result.confidence_interval.low, result.confidence_interval.high


def test_bootstrap_ci_matches_scipy_percentile_bootstrap():
    correct = np.random.default_rng(1).random(200) < 0.4
    low, high = bootstrap_ci(correct, resamples=20_000, seed=3)
    ref_low, ref_high = _scipy_percentile_ci((correct.astype(float),), np.mean)
    # two independent Monte Carlo runs of 20k resamples agree to well under a percentage point
    assert low == pytest.approx(ref_low, abs=0.01)
    assert high == pytest.approx(ref_high, abs=0.01)


def test_bootstrap_ci_with_median_and_other_level_matches_scipy():
    values = np.random.default_rng(2).normal(size=101)
    low, high = bootstrap_ci(values, statistic=np.median, level=0.8, resamples=20_000)
    ref_low, ref_high = _scipy_percentile_ci((values,), np.median, level=0.8)
    assert low == pytest.approx(ref_low, abs=0.03)
    assert high == pytest.approx(ref_high, abs=0.03)


def test_bootstrap_ci_is_close_to_the_normal_approximation_for_a_large_sample():
    correct = np.arange(1000) % 4 == 0  # p = 0.25 exactly
    low, high = bootstrap_ci(correct)
    half_width = 1.959964 * math.sqrt(0.25 * 0.75 / 1000)
    assert low == pytest.approx(0.25 - half_width, abs=0.006)
    assert high == pytest.approx(0.25 + half_width, abs=0.006)


def test_bootstrap_ci_is_reproducible_from_its_seed():
    values = np.random.default_rng(4).random(30)
    assert bootstrap_ci(values, seed=9) == bootstrap_ci(values, seed=9)
    assert bootstrap_ci(values, seed=9) != bootstrap_ci(values, seed=10)


def test_bootstrap_ci_edge_cases():
    assert all(math.isnan(x) for x in bootstrap_ci([]))
    assert bootstrap_ci([0.7]) == (0.7, 0.7)
    assert bootstrap_ci([True] * 20) == (1.0, 1.0)


def test_bootstrap_ci_rejects_bad_arguments():
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1.0, 2.0], level=1.0)
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_ci([1.0, 2.0], resamples=0)
    with pytest.raises(ValueError, match="1-D"):
        bootstrap_ci([[1.0, 2.0]])


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(
        st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False),
        min_size=1,
        max_size=40,
    ),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    level=st.floats(min_value=0.5, max_value=0.99),
)
def test_bootstrap_ci_contains_the_point_estimate(values, seed, level):
    low, high = bootstrap_ci(values, resamples=200, level=level, seed=seed)
    point = float(np.mean(values))
    # resampled means sum in a different order than the original, so allow rounding at float precision
    slack = 1e-9 * max(1.0, float(np.max(np.abs(values))))
    assert low - slack <= point <= high + slack


def test_paired_bootstrap_diff_ci_matches_scipy_paired_bootstrap():
    rng = np.random.default_rng(5)
    a = rng.random(150) < 0.55
    b = rng.random(150) < 0.35
    low, high = paired_bootstrap_diff_ci(a, b, resamples=20_000)

    def difference(x, y, axis):
        return np.mean(x, axis=axis) - np.mean(y, axis=axis)

    ref_low, ref_high = _scipy_percentile_ci((a.astype(float), b.astype(float)), difference, paired=True)
    assert low == pytest.approx(ref_low, abs=0.012)
    assert high == pytest.approx(ref_high, abs=0.012)


def test_paired_bootstrap_is_narrower_than_unpaired_when_scores_are_correlated():
    rng = np.random.default_rng(6)
    a = rng.random(200) < 0.5
    b = a.copy()
    b[:10] = ~b[:10]  # the two predictors disagree on 10 items only
    low, high = paired_bootstrap_diff_ci(a, b)

    def difference(x, y, axis):
        return np.mean(x, axis=axis) - np.mean(y, axis=axis)

    # the unpaired bootstrap treats the same items as two independent samples: about +-0.1 here
    unpaired_low, unpaired_high = _scipy_percentile_ci((a.astype(float), b.astype(float)), difference)
    assert high - low < 0.5 * (unpaired_high - unpaired_low)


def test_paired_bootstrap_edge_cases():
    same = [True, False, True]
    assert paired_bootstrap_diff_ci(same, same) == (0.0, 0.0)
    assert all(math.isnan(x) for x in paired_bootstrap_diff_ci([], []))
    with pytest.raises(ValueError, match="length"):
        paired_bootstrap_diff_ci([1, 0], [1])


# ---------------------------------------------------------------------------------------------------
# Wilson interval


@pytest.mark.parametrize(("k", "n"), [(0, 50), (1, 50), (10, 20), (50, 50), (3, 7), (1, 1)])
@pytest.mark.parametrize("level", [0.95, 0.99])
def test_wilson_interval_matches_scipy(k, n, level):
    reference = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    low, high = wilson_interval(k, n, level=level)
    assert low == pytest.approx(reference.low, abs=1e-12)
    assert high == pytest.approx(reference.high, abs=1e-12)


def test_wilson_interval_by_hand_and_bounds():
    # k=10, n=20, z=1.959964: centre 0.5, half-width z*sqrt(0.25/20 + z^2/1600)/(1 + z^2/20)
    z = 1.959963984540054
    half = z * math.sqrt(0.25 / 20 + z**2 / 1600) / (1 + z**2 / 20)
    assert wilson_interval(10, 20) == (pytest.approx(0.5 - half), pytest.approx(0.5 + half))
    assert wilson_interval(0, 50)[0] == 0.0
    assert wilson_interval(50, 50)[1] == 1.0


def test_wilson_interval_broadcasts_and_gives_nan_for_empty():
    lows, highs = wilson_interval(np.array([0, 5, 0]), np.array([10, 10, 0]))
    assert lows[1] == pytest.approx(wilson_interval(5, 10)[0])
    assert math.isnan(lows[2]) and math.isnan(highs[2])
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
