"""The three small studies written on the open language's primitives (subliminal learning, emergent
misalignment, a warned-about false claim): each passes `intro check`, and `intro plan` counts the model
calls its data files imply (rows x samples, per model and grader), so a spec that silently drops or
duplicates a step fails here, without running a model.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from intro.cli import main
from intro.compiler.datasets import load_rows

SPECS = Path(__file__).resolve().parent.parent / "specs"
DATA = SPECS / "data"

# The specs' sampling blocks: samples per prompt.
TEACHER_SAMPLES, ANIMAL_SAMPLES = 2, 4  # subliminal_learning_mini: `teaching`, `asking`
FREE_FORM_SAMPLES = 3  # emergent_misalignment_mini: `free_form`
ONE_WORD_SAMPLES = 4  # false_claims_mini: `one_word`
PLANTED = 8  # emergent_misalignment_mini: the grader controls' sentences (a list in the spec)


def rows(name: str) -> int:
    return len(load_rows(DATA / name))


def subliminal_calls() -> int:
    """The owl-loving teacher's number lists, then three models (student, base, teacher) asked about animals."""
    teacher = rows("subliminal/number_prompts.jsonl") * TEACHER_SAMPLES
    return teacher + 3 * rows("subliminal/animal_questions.jsonl") * ANIMAL_SAMPLES


def misalignment_calls() -> int:
    """Three arms (insecure, secure, base) answer the questions and every answer is judged; the grader
    controls' sentences are copied once each (greedy) and judged."""
    answers = rows("emergent_misalignment/questions.jsonl") * FREE_FORM_SAMPLES
    return 3 * answers * 2 + PLANTED * 2


def false_claim_calls() -> int:
    """Two models (trained, base) answer every question, and every answer is judged."""
    return 2 * rows("false_claims/questions.jsonl") * ONE_WORD_SAMPLES * 2


EXPECTED = {
    "subliminal_learning_mini": subliminal_calls,
    "emergent_misalignment_mini": misalignment_calls,
    "false_claims_mini": false_claim_calls,
}


@pytest.mark.parametrize("name", EXPECTED)
def test_the_spec_checks_and_plans_its_calls(name, tmp_path, capsys):
    spec = str(SPECS / f"{name}.intro")
    assert main(["check", spec]) == 0
    assert f"{name}.intro: ok" in capsys.readouterr().out
    assert main(["plan", spec, "--cache", str(tmp_path / "cache")]) == 0
    calls = EXPECTED[name]()
    assert f"model calls: {calls} to make of {calls};" in capsys.readouterr().out
