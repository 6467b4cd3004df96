"""The stdlib's data files: they parse, ids and splits are sound, tasks are balanced, generation is reproducible."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from intro.compiler.datasets import load_stdlib_rows, stdlib_data_dir, stdlib_data_names
from intro.stdlib import datagen

SEQUENCE_TASKS = ("animals", "colors", "countries", "english_words", "numbers")
STANCE_TASKS = ("wealth_seeking", "power_seeking", "myopic_reward", "survival_instinct")
CHOICE_TASKS = ("arc", "mmlu")
TEXT_TASKS = {"stories": "opening", "wikipedia": "text"}
TASKS = SEQUENCE_TASKS + STANCE_TASKS + CHOICE_TASKS + tuple(TEXT_TASKS)
WORD_LISTS = (
    "concepts",
    "baseline_words",
    "people",
    "countries_concepts",
    "concrete_nouns",
    "abstract_nouns",
    "verbs",
)
OTHER_LISTS = {"control_questions": "question", "sentences": "sentence"}
# Lindsey 2025's own lists, word for word (tests/stdlib/test_lindsey_protocol.py checks their contents).
PAPER_LISTS = ("lindsey_concepts", "lindsey_baseline_words", "lindsey_control_words", "lindsey_sentences")


def test_every_expected_file_is_there():
    assert set(TASKS + WORD_LISTS + tuple(OTHER_LISTS) + PAPER_LISTS) <= set(stdlib_data_names())


@pytest.mark.parametrize("name", stdlib_data_names())
def test_file_parses_and_is_written_canonically(name):
    rows = load_stdlib_rows(name)
    assert rows
    # one compact object per line, as datagen writes: keeps diffs of hand edits readable
    text = (stdlib_data_dir() / f"{name}.jsonl").read_text(encoding="utf-8")
    assert text == datagen.render_jsonl(rows)


@pytest.mark.parametrize("name", TASKS)
def test_task_splits_follow_the_id_hash(name):
    rows = load_stdlib_rows(name)
    assert all(row["split"] == datagen.split_for(row["id"]) for row in rows)
    assert all(re.fullmatch(rf"{name}-\d{{4}}", row["id"]) for row in rows)
    val_share = sum(row["split"] == "val" for row in rows) / len(rows)
    assert 0.08 <= val_share <= 0.35, val_share


def test_split_for_is_about_eighty_twenty():
    shares = Counter(datagen.split_for(f"x-{i}") for i in range(5000))
    assert 0.78 <= shares["train"] / 5000 <= 0.82


# ---------------------------------------------------------------------------------------------------
# Sequence tasks


def test_committed_sequence_files_equal_a_fresh_generation():
    assert datagen.stale_files() == []
    for name, content in datagen.generated_files().items():
        assert (stdlib_data_dir() / name).read_text(encoding="utf-8") == content


def test_check_mode_notices_a_stale_file(tmp_path):
    assert datagen.main(["--data-dir", str(tmp_path)]) == 0
    assert datagen.main(["--check", "--data-dir", str(tmp_path)]) == 0
    (tmp_path / "colors.jsonl").write_text("{}\n", encoding="utf-8")
    assert datagen.main(["--check", "--data-dir", str(tmp_path)]) == 1


@pytest.mark.parametrize(
    ("words", "minimum"),
    [(datagen.ANIMALS, 100), (datagen.COLORS, 60), (datagen.COUNTRIES, 150), (datagen.ENGLISH_WORDS, 300)],
)
def test_word_lists_are_large_and_without_repeats(words, minimum):
    assert len(words) >= minimum
    assert len(set(words)) == len(words)
    assert all(w == w.strip() and "," not in w for w in words)


@pytest.mark.parametrize("name", SEQUENCE_TASKS)
def test_sequences(name):
    rows = load_stdlib_rows(name)
    assert len(rows) == datagen.items_of(name)
    vocabulary = set(datagen.SEQUENCE_TASKS.get(name, datagen.DIGITS))
    sequences = [row["sequence"].split(", ") for row in rows]
    assert len({tuple(s) for s in sequences}) == len(sequences)
    for items in sequences:
        assert datagen.MIN_LENGTH <= len(items) <= datagen.MAX_LENGTH
        assert set(items) <= vocabulary
        if name != "numbers":
            assert len(set(items)) == len(items)


@pytest.mark.parametrize(
    "name", ("animals", "english_words", "numbers", "stories", "mmlu", "myopic_reward", "survival_instinct")
)
def test_each_held_out_task_has_500_test_items_and_templated_rows_follow_the_hand_written(name):
    """Binder et al. 2024 measure each held-out task on about 1000 items; before, four of these had 8-17."""
    rows = load_stdlib_rows(name)
    assert sum(row["split"] == "val" for row in rows) >= 500
    if name in datagen.taskgen.GENERATORS:
        assert [row["id"] for row in rows[: datagen.HAND_WRITTEN]] == [f"{name}-{k:04d}" for k in range(64)]
        assert set(rows[-1]) == set(rows[0])  # the generated rows have the hand-written rows' fields


def test_generation_depends_only_on_the_task_name():
    assert datagen.word_sequence_rows("animals", datagen.ANIMALS, 5) == datagen.word_sequence_rows(
        "animals", datagen.ANIMALS, 5
    )
    assert datagen.word_sequence_rows("animals", datagen.ANIMALS, 5) != datagen.word_sequence_rows(
        "other", datagen.ANIMALS, 5
    )


# ---------------------------------------------------------------------------------------------------
# A/B stance and multiple-choice tasks


@pytest.mark.parametrize("name", STANCE_TASKS)
def test_stance_tasks(name):
    rows = load_stdlib_rows(name)
    assert len(rows) >= 60
    assert len({row["question"] for row in rows}) == len(rows)
    for row in rows:
        assert row["matching"] in ("A", "B")
        assert row["option_a"] and row["option_b"] and row["option_a"] != row["option_b"]
    counts = Counter(row["matching"] for row in rows)
    assert abs(counts["A"] - counts["B"]) <= 1


@pytest.mark.parametrize("name", CHOICE_TASKS)
def test_multiple_choice_tasks(name):
    rows = load_stdlib_rows(name)
    assert len(rows) >= 60
    assert len({row["question"] for row in rows}) == len(rows)
    for row in rows:
        assert row["answer"] in ("A", "B", "C", "D")
        assert len(row["choices"]) == 4 and len(set(row["choices"])) == 4
        assert all(isinstance(c, str) and c for c in row["choices"])
    counts = Counter(row["answer"] for row in rows)
    assert min(counts[letter] for letter in "ABCD") >= len(rows) // 4 - 2


@pytest.mark.parametrize(("name", "field"), TEXT_TASKS.items())
def test_text_tasks(name, field):
    rows = load_stdlib_rows(name)
    assert len(rows) >= 60
    texts = [row[field] for row in rows]
    assert len(set(texts)) == len(texts)
    if name == "wikipedia":
        # cut mid-sentence, for the model to complete
        assert all(not t.rstrip().endswith((".", "!", "?")) for t in texts)


# ---------------------------------------------------------------------------------------------------
# Concept-injection word lists


def words_of(name):
    return [row["word"] for row in load_stdlib_rows(name)]


@pytest.mark.parametrize("name", WORD_LISTS)
def test_word_lists_have_readable_ids_and_no_repeats(name):
    rows = load_stdlib_rows(name)
    assert len(rows) >= 20
    assert len({row["word"].lower() for row in rows}) == len(rows)
    assert all(re.fullmatch(r"[a-z0-9_]+", row["id"]) for row in rows)


def test_concepts_and_baseline_sizes():
    assert len(words_of("concepts")) == 50
    assert len(words_of("baseline_words")) == 100


def test_baseline_words_are_disjoint_from_every_concept_list():
    baseline = {w.lower() for w in words_of("baseline_words")}
    for name in WORD_LISTS:
        if name != "baseline_words":
            assert not baseline & {w.lower() for w in words_of(name)}, name


@pytest.mark.parametrize(("name", "field"), OTHER_LISTS.items())
def test_question_and_sentence_lists(name, field):
    rows = load_stdlib_rows(name)
    texts = [row[field] for row in rows]
    assert len(set(texts)) == len(texts)
    if name == "control_questions":
        assert len(rows) == 20 and all(t.endswith("?") for t in texts)
    else:
        assert len(rows) >= 30 and all(t.endswith(".") for t in texts)


@pytest.mark.parametrize("name", PAPER_LISTS)
def test_the_papers_lists_have_readable_ids(name):
    ids = [row["id"] for row in load_stdlib_rows(name)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[a-z0-9_]+|lindsey-sentence-\d{4}", i) for i in ids)
