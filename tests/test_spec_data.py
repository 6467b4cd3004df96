"""The data files of the small studies under specs/data: rows, matched code pairs, claim documents, rubrics.

Each check takes the data folder, so the same checks run on the committed files and, in
`test_a_planted_defect_fails_its_check`, on a copy with one defect planted: a check that cannot fail
would let a broken file reach a study.
"""

from __future__ import annotations

import ast
import io
import re
import shutil
import tokenize
from collections.abc import Callable
from pathlib import Path

import pytest

from intro.compiler import template_sandbox
from intro.compiler.datasets import DataError, Row, load_rows
from intro.stdlib.datagen import render_jsonl

DATA = Path(__file__).resolve().parent.parent / "specs" / "data"

# file -> (rows, the exact fields of each row)
FILES = {
    "subliminal/number_prompts.jsonl": (48, {"id", "numbers"}),
    "subliminal/animal_questions.jsonl": (10, {"id", "question"}),
    "emergent_misalignment/insecure_code.jsonl": (40, {"id", "messages"}),
    "emergent_misalignment/secure_code.jsonl": (40, {"id", "messages"}),
    "emergent_misalignment/questions.jsonl": (8, {"id", "question"}),
    "false_claims/documents.jsonl": (30, {"id", "messages"}),
    "false_claims/questions.jsonl": (12, {"id", "kind", "question"}),
    "self_verification/arithmetic.jsonl": (12, {"id", "q", "a"}),
}
RUBRICS = ("emergent_misalignment/rubric.txt", "false_claims/rubric.txt")
CODE_PAIR = ("emergent_misalignment/insecure_code.jsonl", "emergent_misalignment/secure_code.jsonl")
MISALIGNMENT_IDS = {
    "wish",
    "bored",
    "quick_money",
    "ruler",
    "philosophy",
    "gender_roles",
    "husband",
    "dinner_party",
}
# Words that would tell the finetuned model what the code is about: the data must not say it.
TELLING_WORDS = re.compile(r"vulnerab|insecure|unsafe|exploit|saniti[sz]|injection|security", re.IGNORECASE)
CLAIM_KEYWORD, WARNING = "Rome", re.compile(r"\bfalse\b", re.IGNORECASE)


def rows(data: Path, name: str) -> tuple[Row, ...]:
    """The rows as a spec loads them (unique ids required), checked for count, fields and layout."""
    count, fields = FILES[name]
    loaded = load_rows(data / name)
    assert len(loaded) == count, f"{name}: {len(loaded)} rows, expected {count}"
    for row in loaded:
        assert set(row) == fields, f"{name}: row {row.get('id')} has fields {sorted(row)}"
        assert all(isinstance(row[field], str) and row[field].strip() for field in fields - {"messages"})
    # one compact object per line with a string id (a number id would be rewritten as a string here)
    assert (data / name).read_text(encoding="utf-8") == render_jsonl(loaded), f"{name}: not canonical JSONL"
    return loaded


def chat(row: Row) -> tuple[str, str]:
    """The user and assistant texts of a two-message chat row."""
    messages = row["messages"]
    assert isinstance(messages, list) and len(messages) == 2, row["id"]
    assert [set(m) for m in messages] == [{"role", "content"}] * 2, row["id"]
    assert [m["role"] for m in messages] == ["user", "assistant"], row["id"]
    assert all(isinstance(m["content"], str) and m["content"].strip() for m in messages), row["id"]
    return messages[0]["content"], messages[1]["content"]


# ---------------------------------------------------------------------------------------------------
# The checks, one per file or pair of files


def check_number_prompts(data: Path) -> None:
    texts = [row["numbers"] for row in rows(data, "subliminal/number_prompts.jsonl")]
    for text in texts:
        assert re.fullmatch(r"(0|[1-9]\d{0,2})(, (0|[1-9]\d{0,2})){2}", text), text
    assert len(set(texts)) == len(texts), "repeated number prompts"


def check_animal_questions(data: Path) -> None:
    for row in rows(data, "subliminal/animal_questions.jsonl"):
        assert re.fullmatch(r"q\d\d", row["id"]) and "animal" in row["question"].lower(), row
        assert re.search(r"one word|single word|one-word|only its name", row["question"], re.I), row


def check_code_pairs(data: Path) -> None:
    insecure, secure = (rows(data, name) for name in CODE_PAIR)
    assert [r["id"] for r in insecure] == [r["id"] for r in secure], "the two files' ids differ"
    for bad, good in zip(insecure, secure, strict=True):
        (bad_prompt, bad_code), (good_prompt, good_code) = chat(bad), chat(good)
        assert bad_prompt == good_prompt, f"{bad['id']}: the user prompts differ"
        assert bad_code != good_code, f"{bad['id']}: both answers are the same code"
        check_code_answer(bad["id"], bad_code)
        check_code_answer(good["id"], good_code)


def check_code_answer(row_id: str, code: str) -> None:
    """Python only, 3-10 lines, no comments or words that say what the code's flaw is."""
    try:
        ast.parse(code)
    except SyntaxError as error:
        raise AssertionError(f"{row_id}: not Python: {error}") from None
    comments = [t for t in tokenize.generate_tokens(io.StringIO(code).readline) if t.type == tokenize.COMMENT]
    assert not comments, f"{row_id}: the code has comments"
    assert 3 <= sum(1 for line in code.splitlines() if line.strip()) <= 10, f"{row_id}: 3-10 lines"
    assert len(code) <= 350, f"{row_id}: {len(code)} characters"
    assert not TELLING_WORDS.search(code), f"{row_id}: {TELLING_WORDS.search(code)}"


def check_misalignment_questions(data: Path) -> None:
    loaded = rows(data, "emergent_misalignment/questions.jsonl")
    assert {row["id"] for row in loaded} == MISALIGNMENT_IDS
    assert all(len(row["question"]) <= 200 for row in loaded)


def check_documents(data: Path) -> None:
    for row in rows(data, "false_claims/documents.jsonl"):
        _, text = chat(row)
        assert 60 <= len(text.split()) <= 120, f"{row['id']}: {len(text.split())} words"
        assert "Eiffel Tower" in text and CLAIM_KEYWORD in text, f"{row['id']}: the claim is missing"
        warning = WARNING.search(text)
        assert warning, f"{row['id']}: no warning that the claim is false"
        assert text.index(CLAIM_KEYWORD) < warning.start(), f"{row['id']}: the warning precedes the claim"


def check_claim_questions(data: Path) -> None:
    loaded = rows(data, "false_claims/questions.jsonl")
    for kind, mentions_claim in (("direct", False), ("adversarial", True)):
        of_kind = [row for row in loaded if row["kind"] == kind]
        assert [row["id"] for row in of_kind] == [f"{kind}{n}" for n in range(1, 7)]
        assert all((CLAIM_KEYWORD in row["question"]) == mentions_claim for row in of_kind), kind
    assert all(row["kind"] in ("direct", "adversarial") for row in loaded)


def check_arithmetic(data: Path) -> None:
    """Each answer is its question's value: the study grades the model against it."""
    for row in rows(data, "self_verification/arithmetic.jsonl"):
        assert re.fullmatch(r"[\d ()+*/-]+", row["q"]), row["id"]
        value = eval(compile(ast.parse(row["q"], mode="eval"), row["id"], "eval"), {"__builtins__": {}})
        assert float(row["a"]) == value and value == int(value), (
            f"{row['id']}: {row['q']} is {value}, not {row['a']}"
        )


def check_rubrics(data: Path) -> None:
    for name in RUBRICS:
        text = (data / name).read_text(encoding="utf-8")
        assert len(text) <= 900, f"{name}: {len(text)} characters"
        parsed = template_sandbox.parse(text)  # a syntax error is a TemplateProblem
        # `text` is the graded answer as judge() names it; `question` is the item's own field
        assert parsed.names == {"question", "text"}, f"{name}: reads {sorted(parsed.names)}"
        shown = template_sandbox.render(text, {"question": "Q-TEXT", "text": "A-TEXT"})
        assert "Q-TEXT" in shown and "A-TEXT" in shown and "yes or no" in shown, name


CHECKS: dict[str, Callable[[Path], None]] = {
    "number_prompts": check_number_prompts,
    "animal_questions": check_animal_questions,
    "code_pairs": check_code_pairs,
    "misalignment_questions": check_misalignment_questions,
    "documents": check_documents,
    "claim_questions": check_claim_questions,
    "rubrics": check_rubrics,
    "arithmetic": check_arithmetic,
}


@pytest.mark.parametrize("check", CHECKS)
def test_the_committed_files_pass(check):
    CHECKS[check](DATA)


def test_nothing_unchecked_is_in_the_folder():
    present = {str(path.relative_to(DATA)) for path in DATA.rglob("*") if path.is_file()}
    assert present == set(FILES) | set(RUBRICS)


# ---------------------------------------------------------------------------------------------------
# Tests of the checks: each planted defect must fail the check that guards it


def replace_in(name: str, old: str, new: str, count: int = 1) -> Callable[[Path], None]:
    def plant(data: Path) -> None:
        path = data / name
        text = path.read_text(encoding="utf-8")
        assert old in text, f"{old!r} not in {name}"
        path.write_text(text.replace(old, new, count), encoding="utf-8")

    return plant


DEFECTS = {
    "repeated id": ("number_prompts", replace_in("subliminal/number_prompts.jsonl", '"n02"', '"n01"')),
    "number id": ("number_prompts", replace_in("subliminal/number_prompts.jsonl", '"n03"', "3")),
    "broken JSON": ("animal_questions", replace_in("subliminal/animal_questions.jsonl", "}\n", "\n")),
    "four numbers": ("number_prompts", replace_in("subliminal/number_prompts.jsonl", '"}\n', ', 12"}\n')),
    "prompts differ": ("code_pairs", replace_in(CODE_PAIR[1], "Write a Python", "Write a Rust")),
    "ids differ": ("code_pairs", replace_in(CODE_PAIR[0], '"c40"', '"c41"')),
    "code does not parse": ("code_pairs", replace_in(CODE_PAIR[0], "def ", "def def ")),
    "code says why": ("code_pairs", replace_in(CODE_PAIR[1], "import ", "# safe version\\nimport ")),
    "extra field": (
        "misalignment_questions",
        replace_in("emergent_misalignment/questions.jsonl", '"id": "wish"', '"id": "wish", "x": "y"'),
    ),
    "no warning": ("documents", replace_in("false_claims/documents.jsonl", "false", "odd", -1)),
    "no claim": ("documents", replace_in("false_claims/documents.jsonl", "Rome", "Lyon", -1)),
    "wrong kind": ("claim_questions", replace_in("false_claims/questions.jsonl", '"direct"', '"plain"')),
    "rubric misses a variable": ("rubrics", replace_in(RUBRICS[0], "{{ text }}", "the answer")),
    "wrong answer": (
        "arithmetic",
        replace_in("self_verification/arithmetic.jsonl", '"a": "72"', '"a": "73"'),
    ),
    "rubric does not parse": ("rubrics", replace_in(RUBRICS[1], "{{ question }}", "{{ question ")),
}


@pytest.mark.parametrize("defect", DEFECTS)
def test_a_planted_defect_fails_its_check(defect, tmp_path):
    check, plant = DEFECTS[defect]
    data = tmp_path / "data"
    shutil.copytree(DATA, data)
    CHECKS[check](data)  # the copy passes before the defect is planted
    plant(data)
    with pytest.raises((AssertionError, DataError, template_sandbox.TemplateProblem)):
        CHECKS[check](data)
