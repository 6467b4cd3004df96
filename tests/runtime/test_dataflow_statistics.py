"""The open language's statistics (runtime/dataflow/statistics.py) and rules (stdlib/rules.py), on rows
built by hand so that every expected number can be worked out on paper."""

from __future__ import annotations

import math

import numpy as np
import pytest

from intro.runtime.dataflow.statistics import comparison, estimate, item_scores
from intro.stdlib.rules import RULES, apply, parse_label, passes


def rows(*values_by_item: tuple[str, list]) -> list[dict]:
    """Value rows: each item's values as its samples 0, 1, ..."""
    return [
        {"item": item, "sample": k, "value": value}
        for item, values in values_by_item
        for k, value in enumerate(values)
    ]


def assert_interval_holds(result: dict) -> None:
    assert result["ci_low"] <= result["estimate"] <= result["ci_high"]


# ---------------------------------------------------------------- estimates
def test_rate_without_equals_counts_true_like_values_per_item_then_over_items() -> None:
    # a: 1 of 2 samples true (0.5); b: 1 of 1 (1.0); c: "no" and "0" are false-like (0.0)
    result = estimate("rate", rows(("a", ["true", "false"]), ("b", ["yes"]), ("c", ["no", "0"])), None, None)
    assert result["scores"] == {"a": 0.5, "b": 1.0, "c": 0.0}
    assert result["estimate"] == pytest.approx(0.5)
    assert result["n"] == 3
    assert result["compliance"] == 1.0
    assert_interval_holds(result)


def test_rate_with_equals_compares_normalised_answers() -> None:
    values = rows(("a", ["Yes.", "**yes**"]), ("b", ["No", "yes"]), ("c", ["maybe"]))
    result = estimate("rate", values, None, "yes")
    assert result["scores"] == {"a": 1.0, "b": 0.5, "c": 0.0}
    assert result["estimate"] == pytest.approx(0.5)


def test_values_that_are_none_are_left_out_and_lower_compliance() -> None:
    values = rows(("a", ["true", None]), ("b", [None, None]), ("c", ["false", "true"]))
    result = estimate("rate", values, None, None)
    # b has no compliant value at all: it is not an item of the estimate
    assert result["scores"] == {"a": 1.0, "c": 0.5}
    assert result["n"] == 2
    assert result["compliance"] == pytest.approx(3 / 6)
    assert result["estimate"] == pytest.approx(0.75)


def test_an_estimate_over_nothing_is_nan_not_an_error() -> None:
    result = estimate("rate", rows(("a", [None])), None, None)
    assert result["n"] == 0 and result["compliance"] == 0.0
    assert math.isnan(result["estimate"]) and math.isnan(result["ci_low"]) and math.isnan(result["ci_high"])
    empty = estimate("mean", [], None, None)
    assert math.isnan(empty["estimate"]) and math.isnan(empty["compliance"])


def test_mean_averages_numbers_per_item_and_ignores_values_that_are_not_numbers() -> None:
    values = rows(("a", ["-1.5", "-2.5"]), ("b", [-4.0]), ("c", ["lots"]), ("d", ["3", "not a number"]))
    result = estimate("mean", values, None, None)
    assert result["scores"] == {"a": -2.0, "b": -4.0, "d": 3.0}
    assert result["estimate"] == pytest.approx(-1.0)
    assert_interval_holds(result)


def test_accuracy_is_agreement_with_the_mode_of_the_other_values_on_the_same_item() -> None:
    predicted = rows(("a", ["Dog"]), ("b", ["cat", "bird"]), ("c", ["ant"]), ("z", ["only here"]))
    # a's mode is "dog" (2 of 3), b's mode is "cat" (a tie goes to the value seen first), c's mode is "bee"
    observed = rows(("a", ["dog.", "cow", "DOG"]), ("b", ["cat", "bird"]), ("c", ["bee"]))
    result = estimate("accuracy", predicted, observed, None)
    assert result["scores"] == {"a": 1.0, "b": 0.5, "c": 0.0}  # z has no observed values: not counted
    assert result["estimate"] == pytest.approx(0.5)
    assert result["n"] == 3


def test_mode_baseline_is_how_often_an_item_mode_is_the_overall_most_common_mode() -> None:
    values = rows(("a", ["red", "red", "blue"]), ("b", ["Red"]), ("c", ["blue"]), ("d", ["green", "red"]))
    # item modes: red, red, blue, green -> the overall mode is red
    result = estimate("mode_baseline", values, None, None)
    assert result["scores"] == {"a": 1.0, "b": 1.0, "c": 0.0, "d": 0.0}
    assert result["estimate"] == pytest.approx(0.5)


def test_an_unknown_statistic_is_refused() -> None:
    with pytest.raises(ValueError, match="median"):
        item_scores("median", rows(("a", ["1"])), None, None)


# ---------------------------------------------------------------- comparisons
def scored(scores: dict[str, float]) -> dict:
    """An estimate's summary with these per-item scores (as `estimate` returns it)."""
    return estimate("mean", rows(*((item, [score]) for item, score in scores.items())), None, None)


def test_difference_is_paired_on_shared_items() -> None:
    a = scored({"i1": 1.0, "i2": 0.0, "i3": 1.0, "i4": 1.0, "only_a": 0.0})
    b = scored({"i1": 0.0, "i2": 0.0, "i3": 1.0, "i4": 0.0, "only_b": 1.0})
    result = comparison("difference", a, b)
    assert result["paired"] is True
    assert result["n"] == 4
    # over the shared items only: 3/4 - 1/4
    assert result["estimate"] == pytest.approx(0.5)
    assert (result["a"], result["b"]) == (a["estimate"], b["estimate"])
    assert_interval_holds(result)
    assert result["ci_low"] > -0.5  # the pairing narrows it: each item differs by 0 or +1


def test_difference_without_shared_items_resamples_each_side_on_its_own() -> None:
    a = scored({f"a{i}": float(i % 2) for i in range(10)})
    b = scored({f"b{i}": float(i % 5 == 0) for i in range(10)})
    result = comparison("difference", a, b)
    assert result["paired"] is False
    assert result["n"] == 20
    assert result["estimate"] == pytest.approx(0.5 - 0.2)
    assert_interval_holds(result)


def test_correlation_is_pearson_r_of_the_per_item_scores() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=40)
    y = 0.6 * x + rng.normal(scale=0.5, size=40)
    a = scored({f"i{k}": float(v) for k, v in enumerate(x)})
    b = scored({f"i{k}": float(v) for k, v in enumerate(y)} | {"extra": 9.0})
    result = comparison("correlation", a, b)
    assert result["estimate"] == pytest.approx(float(np.corrcoef(x, y)[0, 1]), abs=1e-12)
    assert result["n"] == 40
    assert 0.5 < result["estimate"] < 1
    assert_interval_holds(result)
    assert -1 <= result["ci_low"] < result["ci_high"] <= 1


def test_correlation_of_a_constant_or_of_too_few_items_is_nan() -> None:
    constant = comparison(
        "correlation", scored({"i1": 1, "i2": 1, "i3": 1}), scored({"i1": 0, "i2": 1, "i3": 2})
    )
    too_few = comparison("correlation", scored({"i1": 1, "i2": 2}), scored({"i1": 2, "i2": 4}))
    for result in (constant, too_few):
        assert math.isnan(result["estimate"]) and math.isnan(result["ci_low"])


# ---------------------------------------------------------------- rules
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1, 2, 3", "1, 2, 3"),
        ("(4 5 6).", "4, 5, 6"),
        ("[7; 8; 9]", "7, 8, 9"),
        ("  10,11 ,12\n", "10, 11, 12"),
        ("007, 999", "7, 999"),
    ],
)
def test_number_list_accepts_lists_of_numbers(text: str, expected: str) -> None:
    assert apply("number_list", {"min": 1, "max": 999}, text, {}) == expected


@pytest.mark.parametrize(
    "text",
    ["1, 2, three", "", "Sure: 1, 2, 3", "1000, 2", "-1, 2", "1.5, 2", "1, 2, 3, and 4", "9" * 5000],
)
def test_number_list_refuses_anything_else(text: str) -> None:
    assert apply("number_list", {"min": 1, "max": 999}, text, {}) is None


def test_number_list_wants_at_least_min_numbers() -> None:
    assert apply("number_list", {"min": 3, "max": 999}, "1, 2", {}) is None
    assert apply("number_list", {"min": 3, "max": 999}, "1, 2, 3", {}) == "1, 2, 3"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The owl flew.", "true"),
        ("Owls are birds.", "true"),
        ("I like OWL!", "true"),
        ("A bowl of soup.", "false"),
        ("An owlet.", "false"),
        ("", "false"),
    ],
)
def test_contains_matches_whole_words_and_plurals_in_any_case(text: str, expected: str) -> None:
    assert apply("contains", {"word": "owl"}, text, {}) == expected


def test_matches_the_whole_stripped_text() -> None:
    assert apply("matches", {"pattern": "[A-D]"}, " B\n", {}) == "true"
    assert apply("matches", {"pattern": "[A-D]"}, "B because", {}) == "false"
    assert apply("matches", {"pattern": "a.*z"}, "a\nz", {}) == "true"  # . crosses lines


def test_nth_word_is_normalised_and_none_past_the_end() -> None:
    assert apply("nth_word", {"n": 2}, "Hello, World! Again", {}) == "world"
    assert apply("nth_word", {"n": 4}, "Hello, World! Again", {}) is None
    assert apply("nth_word", {"n": 0}, "Hello", {}) is None


def test_answer_is_reads_the_item_field() -> None:
    assert apply("answer_is", {"field": "a"}, "42.", {"a": "42"}) == "true"
    assert apply("answer_is", {"field": "a"}, "41", {"a": "42"}) == "false"
    assert apply("answer_is", {"field": "a"}, "42", {}) is None


def test_every_rule_has_a_builtin_of_the_same_name() -> None:
    from intro.compiler.builtins import FUNCTIONS

    assert set(RULES) - {"property"} <= set(FUNCTIONS)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, False),
        ("", False),
        ("false", False),
        (" No ", False),
        ("0", False),
        ("true", True),
        ("3", True),
    ],
)
def test_passes_is_false_for_none_and_false_like_values(value: str | None, expected: bool) -> None:
    assert passes(value) is expected


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Yes.", "yes"),
        ("**Yes**, it is.", "yes"),
        ("> No", "no"),
        ('"no"', "no"),
        ("Not sure", "not sure"),  # the longest label that fits wins
        ("Yesterday I said no", None),  # a label is a whole word
        ("It is yes", None),  # labels are read at the start of the reply
    ],
)
def test_parse_label_reads_the_first_label_after_markdown(reply: str, expected: str | None) -> None:
    assert parse_label(reply, ["yes", "no", "not sure"]) == expected


def test_parse_label_reads_labels_that_end_in_punctuation() -> None:
    assert parse_label("(A) because it is", ["(A)", "(B)"]) == "(A)"
    assert parse_label("(B)", ["(A)", "(B)"]) == "(B)"


@pytest.mark.parametrize(
    ("reply", "expected"),
    [("85", "85"), ("**72**/100", "72"), ("Score: 100.", "100"), ("I'd say 37.5 of 100", "37.5"),
     ("150", None), ("-3", None), ("no idea", None)],
)  # fmt: skip
def test_parse_label_without_labels_reads_a_0_to_100_score(reply: str, expected: str | None) -> None:
    assert parse_label(reply, []) == expected
