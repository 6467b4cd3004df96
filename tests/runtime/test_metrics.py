"""Each statistic is checked against an independent computation: scipy.stats, plain-Python loops, or
numbers worked out by hand in the comments."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from intro.runtime.analysis.metrics import (
    MCNEMAR_EXACT_BELOW,
    Rate,
    accuracy,
    bootstrap_ci,
    calibration_curve,
    calibration_mad,
    detection_rates,
    group_mode_predictions,
    mcnemar,
    mode_baseline,
    mode_baseline_by_group,
    normalise_answer,
    paired_bootstrap_diff_ci,
    sample_distributions,
    two_proportion_ztest,
    wilson_interval,
)

# ---------------------------------------------------------------------------------------------------
# normalise_answer, accuracy


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


def test_accuracy_counts_true_entries():
    assert accuracy([True, False, True, True]) == 0.75
    assert accuracy(np.array([1, 0, 0, 0])) == 0.25
    assert accuracy([True] * 7) == 1.0


def test_accuracy_of_nothing_is_nan():
    assert math.isnan(accuracy([]))


def test_accuracy_rejects_non_boolean_numbers():
    with pytest.raises(ValueError, match="booleans"):
        accuracy([0.5, 1.0])


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
# mode baseline


def test_mode_baseline_in_sample_is_the_share_of_the_most_common_value():
    assert mode_baseline(["a", "b", "a", "c", "a"]) == pytest.approx(3 / 5)
    assert mode_baseline([True, True, False]) == pytest.approx(2 / 3)


def test_mode_baseline_scored_on_other_values_uses_the_object_mode():
    # the mode of the behaviour is "b"; two of the four test values are "b"
    assert mode_baseline(["b", "b", "a"], ["b", "a", "b", "z"]) == 0.5


def test_mode_baseline_tie_picks_the_value_that_sorts_first():
    assert mode_baseline(["y", "x", "x", "y"], ["x", "x", "y"]) == pytest.approx(2 / 3)


def test_mode_baseline_edge_cases():
    assert mode_baseline(["same"] * 4) == 1.0
    assert math.isnan(mode_baseline([]))
    assert math.isnan(mode_baseline([], ["a"]))
    assert math.isnan(mode_baseline(["a"], []))


def _counter_baselines(values, groups):
    """Independent reference: a dict of Counters, one per group."""
    per_group: dict = {}
    for value, group in zip(values, groups, strict=True):
        per_group.setdefault(group, Counter())[value] += 1
    return {group: max(counts.values()) / sum(counts.values()) for group, counts in per_group.items()}


def test_mode_baseline_by_group_matches_a_counter_reference():
    rng = np.random.default_rng(7)
    values = rng.choice(["a", "b", "c", "d"], size=300, p=[0.5, 0.3, 0.15, 0.05])
    tasks = rng.choice(["animals", "mmlu", "stories"], size=300)
    properties = rng.choice(["first_character", "starts_with_vowel"], size=300)
    keys = list(zip(tasks.tolist(), properties.tolist(), strict=True))
    expected = _counter_baselines(values.tolist(), keys)
    got = mode_baseline_by_group(values, np.column_stack([tasks, properties]))
    assert got.keys() == expected.keys()
    for key, share in expected.items():
        assert got[key] == pytest.approx(share)


def test_mode_baseline_by_group_with_one_group_and_held_out_groups():
    assert mode_baseline_by_group(["x", "x", "y"], ["only"] * 3) == {"only": pytest.approx(2 / 3)}
    # the test split's "new" task has no behaviour to take a mode from
    got = mode_baseline_by_group(["x", "x", "y"], ["t", "t", "t"], ["x", "y", "q"], ["t", "t", "new"])
    assert got["t"] == 0.5
    assert math.isnan(got["new"])


def test_mode_baseline_by_group_rejects_misaligned_labels():
    with pytest.raises(ValueError, match="groups"):
        mode_baseline_by_group(["a", "b"], ["g"])
    with pytest.raises(ValueError, match="together"):
        mode_baseline_by_group(["a"], ["g"], test_values=["a"])


def test_group_mode_predictions_give_the_pooled_baseline():
    values = np.array(["a", "a", "b", "x", "y", "y", "y"])
    groups = np.array([1, 1, 1, 2, 2, 2, 2])
    predictions = group_mode_predictions(values, groups)
    assert predictions.tolist() == ["a", "a", "a", "y", "y", "y", "y"]
    # pooled: (2 + 3) hits over 7 items, the item-weighted mean of 2/3 and 3/4
    assert accuracy(predictions == values) == pytest.approx(5 / 7)
    assert group_mode_predictions(values, groups, target_groups=[2, 3]).tolist() == ["y", None]


# ---------------------------------------------------------------------------------------------------
# two-proportion z-test


def _hand_ztest(sa, na, sb, nb):
    pooled = (sa + sb) / (na + nb)
    z = (sa / na - sb / nb) / math.sqrt(pooled * (1 - pooled) * (1 / na + 1 / nb))
    return z, math.erfc(abs(z) / math.sqrt(2))


def test_two_proportion_ztest_matches_hand_computation_and_normal_tail():
    # Looking Inward's headline: 48.5% self vs 31.8% cross prediction
    z, p = two_proportion_ztest(485, 1000, 318, 1000)
    ref_z, ref_p = _hand_ztest(485, 1000, 318, 1000)
    assert z == pytest.approx(ref_z, rel=1e-12)
    assert p == pytest.approx(ref_p, rel=1e-9)
    assert p == pytest.approx(2 * stats.norm.sf(abs(ref_z)), rel=1e-9)
    assert p < 0.01


def test_two_proportion_ztest_squared_is_pearson_chi_square():
    table = np.array([[37, 63], [22, 78]])
    z, p = two_proportion_ztest(37, 100, 22, 100)
    chi2, chi2_p, _, _ = stats.chi2_contingency(table, correction=False)
    assert z**2 == pytest.approx(chi2, rel=1e-10)
    assert p == pytest.approx(chi2_p, rel=1e-8)


def test_two_proportion_ztest_is_antisymmetric_and_broadcasts():
    z_ab, p_ab = two_proportion_ztest(30, 80, 20, 90)
    z_ba, p_ba = two_proportion_ztest(20, 90, 30, 80)
    assert z_ab == pytest.approx(-z_ba)
    assert p_ab == pytest.approx(p_ba)
    zs, ps = two_proportion_ztest(
        np.array([30, 20]), np.array([80, 90]), np.array([20, 30]), np.array([90, 80])
    )
    assert zs.tolist() == pytest.approx([z_ab, z_ba])
    assert ps.tolist() == pytest.approx([p_ab, p_ba])


def test_two_proportion_ztest_edge_cases():
    assert all(math.isnan(x) for x in two_proportion_ztest(0, 0, 3, 10))
    assert two_proportion_ztest(10, 10, 20, 20) == (0.0, 1.0)  # both all-correct
    assert two_proportion_ztest(0, 10, 0, 5) == (0.0, 1.0)  # both all-wrong


# ---------------------------------------------------------------------------------------------------
# McNemar


def _paired(only_a, only_b, both=5, neither=5):
    a = [True] * only_a + [False] * only_b + [True] * both + [False] * neither
    b = [False] * only_a + [True] * only_b + [True] * both + [False] * neither
    return a, b


def test_mcnemar_small_counts_use_the_exact_binomial():
    a, b = _paired(only_a=9, only_b=2)
    statistic, p = mcnemar(a, b)
    assert statistic == 2
    assert p == pytest.approx(stats.binomtest(2, 11, 0.5).pvalue, rel=1e-12)
    # by hand: 2 * (1 + 11 + 55) / 2**11
    assert p == pytest.approx(2 * 67 / 2048, rel=1e-12)


def test_mcnemar_balanced_discordance_has_p_one():
    a, b = _paired(only_a=4, only_b=4)
    assert mcnemar(a, b) == (4.0, 1.0)


def test_mcnemar_large_counts_use_chi_square_with_continuity_correction():
    a, b = _paired(only_a=30, only_b=12, both=40, neither=18)
    statistic, p = mcnemar(a, b)
    assert statistic == pytest.approx((abs(30 - 12) - 1) ** 2 / 42)
    assert p == pytest.approx(stats.chi2.sf((abs(30 - 12) - 1) ** 2 / 42, df=1), rel=1e-12)
    # the corrected chi-square tracks the exact test at this size
    assert p == pytest.approx(stats.binomtest(12, 42, 0.5).pvalue, abs=0.005)


def test_mcnemar_switches_method_at_the_documented_threshold():
    below = _paired(only_a=MCNEMAR_EXACT_BELOW - 5, only_b=4)
    at = _paired(only_a=MCNEMAR_EXACT_BELOW - 4, only_b=4)
    assert mcnemar(*below)[0] == 4  # exact: min(b, c)
    assert mcnemar(*at)[0] == pytest.approx((MCNEMAR_EXACT_BELOW - 8 - 1) ** 2 / MCNEMAR_EXACT_BELOW)
    assert mcnemar(*at, exact=True) == (4.0, pytest.approx(stats.binomtest(4, MCNEMAR_EXACT_BELOW).pvalue))


def test_mcnemar_edge_cases():
    assert mcnemar([True, False], [True, False]) == (0.0, 1.0)
    assert mcnemar([], []) == (0.0, 1.0)
    with pytest.raises(ValueError, match="length"):
        mcnemar([True], [True, False])


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


# ---------------------------------------------------------------------------------------------------
# calibration


def test_sample_distributions_by_hand():
    categories, objects, hypotheticals = sample_distributions(
        [["a", "a", "b", "a"], ["c"]], [["a", "b", "b", "x"], ["c", "c"]]
    )
    assert categories == ["a", "b", "c", "x"]
    np.testing.assert_allclose(objects, [[0.75, 0.25, 0, 0], [0, 0, 1, 0]])
    # the hypothetical "x" (no such behaviour) keeps its share of the mass
    np.testing.assert_allclose(hypotheticals, [[0.25, 0.5, 0, 0.25], [0, 0, 1, 0]])


def test_calibration_is_zero_when_hypothetical_rates_equal_behaviour_rates():
    objects = np.random.default_rng(8).dirichlet(np.ones(6), size=40)
    assert calibration_mad(objects, objects) == pytest.approx(0.0, abs=1e-12)


def test_calibration_by_hand():
    # item 1 behaviours (0.6, 0.3, 0.1), hypothetical (0.2, 0.2, 0.6); item 2 behaviour (1.0), hypothetical 0.5
    objects = [[0.6, 0.3, 0.1, 0.0], [0.0, 0.0, 0.0, 1.0]]
    hypotheticals = [[0.2, 0.2, 0.6, 0.0], [0.0, 0.0, 0.0, 0.5]]
    # pairs sorted by object prob: (0.1, 0.6) (0.3, 0.2) (0.6, 0.2) (1.0, 0.5); two bins of two pairs
    curve = calibration_curve(objects, hypotheticals, bins=2)
    np.testing.assert_allclose(curve.object_mean, [0.2, 0.8])
    np.testing.assert_allclose(curve.hypothetical_mean, [0.4, 0.35])
    assert curve.counts.tolist() == [2, 2]
    assert curve.mad == pytest.approx(100 * (0.2 + 0.45) / 2)
    # top-1 keeps (0.6, 0.2) and (1.0, 0.5): one pair per bin
    assert calibration_mad(objects, hypotheticals, top_k=1, bins=2) == pytest.approx(100 * (0.4 + 0.5) / 2)


def _loop_calibration(objects, hypotheticals, top_k, bins):
    """Independent reference in plain Python: sorted pairs cut into equal-sized runs."""
    pairs = []
    for obj_row, hyp_row in zip(objects.tolist(), hypotheticals.tolist(), strict=True):
        ranked = sorted(range(len(obj_row)), key=lambda column: -obj_row[column])[:top_k]
        pairs += [(obj_row[c], hyp_row[c]) for c in ranked if obj_row[c] > 0]
    pairs.sort(key=lambda pair: pair[0])
    size, extra = divmod(len(pairs), bins)
    deviations, start = [], 0
    for index in range(bins):
        chunk = pairs[start : start + size + (1 if index < extra else 0)]
        start += len(chunk)
        deviations.append(abs(sum(o for o, _ in chunk) - sum(h for _, h in chunk)) / len(chunk))
    return 100 * sum(deviations) / bins


def test_calibration_matches_a_loop_reference_on_sampled_distributions():
    rng = np.random.default_rng(9)
    behaviours = rng.dirichlet(np.full(5, 0.5), size=60)
    object_samples = [rng.choice(5, size=20, p=p).tolist() for p in behaviours]
    # a partly calibrated predictor: answers follow a blend of the behaviour and a uniform guess
    hypothetical_samples = [rng.choice(5, size=20, p=0.5 * p + 0.1).tolist() for p in behaviours]
    _, objects, hypotheticals = sample_distributions(object_samples, hypothetical_samples)
    curve = calibration_curve(objects, hypotheticals)
    assert curve.counts.sum() == np.count_nonzero(np.sort(objects, axis=1)[:, -3:])
    assert curve.counts.max() - curve.counts.min() <= 1  # equal-frequency bins
    assert np.all(np.diff(curve.object_mean) >= 0)
    assert curve.mad == pytest.approx(_loop_calibration(objects, hypotheticals, 3, 10), rel=1e-12)
    assert 0 < curve.mad < 100


def test_calibration_edge_cases():
    assert math.isnan(calibration_mad(np.zeros((2, 3)), np.zeros((2, 3))))
    one = calibration_curve([[1.0, 0.0]], [[0.25, 0.75]])  # one pair: one bin
    assert one.counts.tolist() == [1]
    assert one.mad == pytest.approx(75.0)
    with pytest.raises(ValueError, match="shape"):
        calibration_mad([[1.0]], [[1.0, 0.0]])
    with pytest.raises(ValueError, match="probabilities"):
        calibration_mad([[0.9, 0.9]], [[0.5, 0.5]])


# ---------------------------------------------------------------------------------------------------
# concept injection


def test_detection_rates_by_hand():
    detected = [True, True, False, True, True]
    identified = [True, False, False, True, True]
    coherent = [True, True, True, False, True]
    controls = [False, True, False, False]
    rates = detection_rates(detected, identified, coherent, controls, seed=1)
    assert rates.detection.estimate == pytest.approx(4 / 5)
    assert rates.identification.estimate == pytest.approx(2 / 5)  # trials 1 and 5 are coherent and identified
    assert rates.false_positive.estimate == pytest.approx(1 / 4)
    assert rates.net.estimate == pytest.approx(2 / 5 - 1 / 4)
    assert (rates.detection.n, rates.false_positive.n, rates.net.n) == (5, 4, 9)
    for rate in (rates.detection, rates.identification, rates.false_positive, rates.net):
        assert rate.low <= rate.estimate <= rate.high


def test_detection_rate_intervals_agree_with_the_plain_bootstrap():
    rng = np.random.default_rng(10)
    detected = rng.random(50) < 0.4
    identified = detected & (rng.random(50) < 0.6)
    coherent = rng.random(50) < 0.9
    rates = detection_rates(detected, identified, coherent, rng.random(50) < 0.1, seed=4)
    # the injected trials are resampled first, with the same draws bootstrap_ci makes
    assert (rates.detection.low, rates.detection.high) == bootstrap_ci(detected, seed=4)
    assert (rates.identification.low, rates.identification.high) == bootstrap_ci(
        identified & coherent, seed=4
    )


def test_net_score_interval_matches_scipy_two_sample_bootstrap():
    rng = np.random.default_rng(11)
    successes = rng.random(200) < 0.3
    controls = rng.random(150) < 0.1
    rates = detection_rates(successes, successes, np.ones(200, bool), controls, resamples=20_000)

    def difference(x, y, axis):
        return np.mean(x, axis=axis) - np.mean(y, axis=axis)

    ref_low, ref_high = _scipy_percentile_ci((successes.astype(float), controls.astype(float)), difference)
    assert rates.net.low == pytest.approx(ref_low, abs=0.012)
    assert rates.net.high == pytest.approx(ref_high, abs=0.012)


def test_detection_rates_edge_cases():
    nan_rate = detection_rates([True, False], [True, False], [True, True], [])
    assert math.isnan(nan_rate.false_positive.estimate) and nan_rate.false_positive.n == 0
    assert math.isnan(nan_rate.net.estimate)
    assert nan_rate.identification.estimate == 0.5
    perfect = detection_rates([True] * 10, [True] * 10, [True] * 10, [False] * 10)
    assert perfect.net == Rate(1.0, 1.0, 1.0, 20)
    empty = detection_rates([], [], [], [False])
    assert math.isnan(empty.detection.estimate) and empty.false_positive.estimate == 0.0
    with pytest.raises(ValueError, match="aligned"):
        detection_rates([True], [True, False], [True], [False])
