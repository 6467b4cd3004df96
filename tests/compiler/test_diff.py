"""Golden tests for `intro diff` over pairs of specs, one pair per kind of change.

Each `tests/fixtures/diff/<case>.intro` is `a.intro` with one kind of change; `<case>.expected` holds the
exact output of `intro diff a.intro <case>.intro` (with an empty cache) and the first line, the exit code.
Regenerate with INTRO_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest

from intro.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "diff"
CASES = sorted(p.stem for p in FIXTURES.glob("*.intro") if p.stem != "a")
SAME_MEANING = {"layout_only", "serving_only"}


def run_diff(case: str, cache: Path) -> tuple[int, str]:
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(FIXTURES)
    try:
        with contextlib.redirect_stdout(out):
            code = main(["diff", "a.intro", f"{case}.intro", "--cache", str(cache)])
    finally:
        os.chdir(cwd)
    return code, out.getvalue()


@pytest.mark.parametrize("case", CASES)
def test_diff_matches_golden(case, tmp_path):
    code, output = run_diff(case, tmp_path / "cache")
    text = f"exit {code}\n{output}"
    expected = FIXTURES / f"{case}.expected"
    if os.environ.get("INTRO_UPDATE_GOLDEN"):
        expected.write_text(text)
    assert text == expected.read_text()
    assert code == (0 if case in SAME_MEANING else 2)


def test_every_kind_of_change_is_covered():
    assert {
        "layout_only",
        "serving_only",
        "prompt_word",
        "model_added",
        "model_identity",
        "sampling_parameter",
        "property_changed",
        "split_items",
        "measure_added",
        "axis_values",
    } <= set(CASES)


def test_a_study_compared_with_itself_is_unchanged(tmp_path):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["diff", str(FIXTURES / "a.intro"), str(FIXTURES / "a.intro"), "--cache", str(tmp_path)])
    assert code == 0
    assert "meaning: unchanged" in out.getvalue()
