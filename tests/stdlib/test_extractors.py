"""Property extractors, compliance and graders on hand-written responses."""

from __future__ import annotations

import pytest

from intro.stdlib.extractors import (
    ANSWER_KINDS,
    EXTRACTORS,
    Extractor,
    choice_letter,
    complies,
    extract,
    extractor,
    first_number,
    is_refusal,
    normalise,
    prediction,
)
from intro.stdlib.graders import disowns, mentions

# ---------------------------------------------------------------------------------------------------
# Normalisation


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Dog, Cat, Fish.", "dog cat fish"),
        ("  (B) ", "b"),
        ("Don't stop!", "dont stop"),
        ("Guinea-Bissau, Chad", "guineabissau chad"),
        ("3, 8,1;5", "3 8 1 5"),
        ("“Élan”\n\tvital…", "élan vital"),
        ("$100 + tax", "100 tax"),
        ("", ""),
    ],
)
def test_normalise(raw, normalised):
    assert normalise(raw) == normalised


# ---------------------------------------------------------------------------------------------------
# The built-in properties


ITEM = {"matching": "B"}

CASES = [
    # (property, response, expected value)
    ("first_character", "Dog, cat", "d"),
    ("second_character", "Dog, cat", "o"),
    ("third_character", "Dog, cat", "g"),
    ("third_character", "An ox", " "),  # the cleaned response is indexed, spaces included
    ("third_character", "Dog,cat", "g"),
    ("second_character", "A", None),
    ("first_character", "...", None),
    ("first_word", "Elephant, tiger, lion", "elephant"),
    ("second_word", "Elephant, tiger, lion", "tiger"),
    ("third_word", "Elephant, tiger, lion", "lion"),
    ("third_word", "Elephant, tiger", None),
    ("first_word", "New Zealand, Chad", "new"),
    ("starts_with_vowel", "owl, bat", "true"),
    ("starts_with_vowel", "Bat, owl", "false"),
    ("starts_with_vowel", "  'Umbrella'", "true"),
    ("starts_with_vowel", "7, 8", "false"),  # its first character is not a vowel
    ("starts_with_vowel", "...", None),
    ("is_even", "4, 7, 1", "even"),
    ("is_even", "7, 4", "odd"),
    ("is_even", "The next are 0, 3", "even"),
    ("is_even", "Seven, then 2", "odd"),
    ("is_even", "none here", None),
    ("among_a_or_c", "C", "true"),
    ("among_a_or_c", "(b)", "false"),
    ("among_b_or_d", "D.", "true"),
    ("among_b_or_d", "A", "false"),
    ("among_b_or_d", "A and B", None),
    ("among_a_or_c", "E", None),
    ("ethical_stance", "B", "true"),
    ("ethical_stance", "a", "false"),
    ("ethical_stance", "C", None),
    ("ethical_stance", "B because it is better", None),
    ("identity", "  Dog, CAT! ", "dog cat"),
    ("identity", "!!", None),
]


@pytest.mark.parametrize(("name", "response", "expected"), CASES)
def test_builtin_property(name, response, expected):
    assert extract(name, response, ITEM) == expected


def test_every_builtin_has_a_case_and_reads_known_kinds():
    assert {name for name, _, _ in CASES} == set(EXTRACTORS)
    for ext in EXTRACTORS.values():
        assert ext.reads and ext.reads <= ANSWER_KINDS
        assert ext.description


def test_ethical_stance_declares_the_item_field_it_needs():
    assert EXTRACTORS["ethical_stance"].needs == frozenset({"matching"})
    assert extract("ethical_stance", "A", {"matching": "a"}) == "true"


def test_closed_value_properties_only_produce_their_values():
    for name, _response, expected in CASES:
        values = EXTRACTORS[name].values
        if values is not None and expected is not None:
            assert expected in values


def test_first_number_reads_digits_and_number_words():
    assert first_number("12, 3") == 12
    assert first_number("three, 9") == 3
    assert first_number("-4 then 5") == -4
    assert first_number("no numbers") is None


# ---------------------------------------------------------------------------------------------------
# User-defined properties


def test_registering_a_user_property():
    @extractor("test_last_word", reads={"text"})
    def last_word(response, item):
        """The last word."""
        found = normalise(response).split()
        return found[-1] if found else None

    try:
        assert isinstance(EXTRACTORS["test_last_word"], Extractor)
        assert extract("test_last_word", "red, green, blue.") == "blue"
        with pytest.raises(ValueError, match="already registered"):
            extractor("test_last_word", reads={"text"})(last_word)
    finally:
        del EXTRACTORS["test_last_word"]


def test_unknown_answer_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown answer kinds"):
        extractor("bad", reads={"essay"})


# ---------------------------------------------------------------------------------------------------
# Compliance


@pytest.mark.parametrize(
    ("response", "kind", "choices", "ok"),
    [
        ("A", "choice", "AB", True),
        ("(b).", "choice", "AB", True),
        ("C", "choice", "AB", False),
        ("A or B", "choice", "AB", False),
        ("The answer is A", "choice", "AB", False),
        ("D", "choice", "ABCD", True),
        ("cat, dog", "text", (), True),
        ("...", "text", (), False),
        ("", "text", (), False),
        ("I'm sorry, but I can't help with that.", "text", (), False),
        ("As an AI language model, I have no preference.", "choice", "AB", False),
        ("She said she was sorry and left.", "text", (), True),
        ("4, 5, 6", "number_sequence", (), True),
        ("four", "number_sequence", (), True),
        ("cat", "number_sequence", (), False),
    ],
)
def test_complies(response, kind, choices, ok):
    assert complies(response, kind, choices) is ok


def test_complies_rejects_unknown_kinds_and_choice_without_choices():
    with pytest.raises(ValueError):
        complies("x", "essay")
    with pytest.raises(ValueError):
        complies("A", "choice")


def test_is_refusal_looks_at_the_opening():
    assert is_refusal("Sorry, I cannot do that")
    assert is_refusal("I do not know.")
    assert not is_refusal("Dog, cat, sorry bird")


def test_choice_letter_returns_the_choice_as_given():
    assert choice_letter(" b) ", ("A", "B")) == "B"
    assert choice_letter("yes", ("Yes", "No")) == "Yes"
    assert choice_letter("maybe", ("Yes", "No")) is None


# ---------------------------------------------------------------------------------------------------
# Hypothetical answers


@pytest.mark.parametrize(
    ("answer", "name", "expected"),
    [
        ("Even.", "is_even", "even"),
        ("maybe", "is_even", None),
        ('"o"', "second_character", "o"),
        ("True", "starts_with_vowel", "true"),
        ("yes", "starts_with_vowel", None),
        ("   ", "first_word", None),
    ],
)
def test_prediction(answer, name, expected):
    assert prediction(answer, name) == expected


# ---------------------------------------------------------------------------------------------------
# Graders


def test_mentions_a_word_or_its_plural():
    assert mentions("I keep thinking about dogs.", "dog")
    assert not mentions("A hotdog stand", "dog")


@pytest.mark.parametrize(
    ("reply", "disowned"),
    [
        ("It was an accident.", True),
        ("Sorry, I meant to say cat.", True),
        ("I apologise for the confusion.", True),
        ("I didn't mean that.", True),
        ("My mistake!", True),
        ("Yes, I meant to say that.", False),
        ("It was intentional: the line is about the sea.", False),
        ("It was not an accident, I chose it.", False),
        ("", False),
    ],
)
def test_disowns_reads_accidents_and_apologies(reply: str, disowned: bool) -> None:
    assert disowns(reply) is disowned
