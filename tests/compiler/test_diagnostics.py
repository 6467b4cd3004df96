"""Golden diagnostics: each broken spec in tests/fixtures/errors gives exactly the stderr in its .expected file.

`INTRO_UPDATE_GOLDEN=1 pytest tests/compiler/test_diagnostics.py` rewrites the .expected files from the
current output; review the diff before committing it.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import os
import re
import shutil
from pathlib import Path

import pytest

from intro.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "errors"
CASES = sorted(FIXTURES.glob("[0-9][0-9]_*.intro"))
UPDATE = os.environ.get("INTRO_UPDATE_GOLDEN") == "1"
POSITIONED = re.compile(r"^\S+:\d+:\d+: error\[E\d{3}\]: ", re.MULTILINE)

# The problems the language promises to diagnose; each must appear in at least one golden file.
REQUIRED_CODES = {
    "E001": "bad character / unterminated string",
    "E002": "unexpected token / end of file",
    "E004": "number too long",
    "E005": "nesting too deep",
    "E100": "unknown name",
    "E101": "duplicate declaration",
    "E104": "missing import name",
    "E106": "unknown field of a value",
    "E111": "unknown module",
    "E120": "unknown field",
    "E121": "missing field",
    "E131": "unknown embedded model",
    "E132": "local model directory missing",
    "E141": "a data file's own problem, at its line and column",
    "E146": "template field the data lacks",
    "E147": "data file outside the spec's folder",
    "E162": "split part without rows",
    "E170": "bad temperature",
    "E181": "template fails on a row",
    "E182": "template breaks the sandbox or includes another",
    "E183": "template exceeds its render budget",
    "E201": "wrong argument type",
    "E202": "division by zero",
    "E205": "too many arguments",
    "E206": "unknown keyword argument",
    "E208": "missing argument",
    "E209": "measure of a non-measurement",
    "E210": "empty loop list",
    "E211": "tuple unpack mismatch",
    "E240": "function body without a final return",
    "E241": "loop in a function",
    "E242": "unknown parameter type",
    "E243": "recursive function",
    "E250": "a function's requirement its call does not meet",
    "E300": "model lacks a capability",
    "E303": "property cannot read any selected task",
    "E330": "rows to prompt with: none, or ids not unique",
    "E331": "a data file row that is not a training example",
    "E332": "choose() without two distinct options",
    "E333": "choose() or score() over prompts built from results",
    "E334": "a rule's bad regular expression",
    "E335": "judge() labels not distinct",
    "E336": "prompts() about a property of rows that are not a task selection",
    "E337": "a statistic over a unit that is not items or samples",
    "E338": "activations() of a finetuned or steered model",
    "E339": "steer() with both start and span",
    "E340": "a model steered on a span over prompts built from results",
    "E341": "probability() of an option the choice was not made over",
    "E401": "no study",
    "E402": "study measures nothing",
}


def run_check(spec: Path) -> tuple[int, str]:
    """`intro check` on a spec, run from its folder so that every path in the output is relative."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.chdir(spec.parent), contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(["check", spec.name])
    return code, err.getvalue()


def golden_mismatch(spec: Path, expected: str) -> str | None:
    """A diff between `intro check`'s stderr for `spec` and `expected`, or None when they agree."""
    code, actual = run_check(spec)
    if code == 2 and actual == expected:
        return None
    diff = difflib.unified_diff(
        expected.splitlines(keepends=True), actual.splitlines(keepends=True), "expected", "actual"
    )
    return f"exit code {code}\n" + "".join(diff)


@pytest.mark.parametrize("spec", CASES, ids=lambda p: p.stem)
def test_diagnostics_match_golden_file(spec: Path) -> None:
    expected_path = spec.with_suffix(".expected")
    if UPDATE:
        code, actual = run_check(spec)
        assert code == 2, f"{spec.name} is meant to be broken but checks clean"
        expected_path.write_text(actual, encoding="utf-8")
    mismatch = golden_mismatch(spec, expected_path.read_text(encoding="utf-8"))
    assert mismatch is None, f"{spec.name}: output differs from {expected_path.name}\n{mismatch}"


def test_every_golden_error_is_positioned() -> None:
    for spec in CASES:
        text = spec.with_suffix(".expected").read_text(encoding="utf-8")
        heads = [line for line in text.splitlines() if "error[" in line and not line.startswith(" ")]
        assert heads, f"{spec.name} reports no error"
        for head in heads:
            assert POSITIONED.match(head), f"{spec.name}: unpositioned diagnostic {head!r}"
            assert not head.startswith("/"), f"{spec.name}: absolute path in {head!r}"


def test_fixture_set_is_complete() -> None:
    assert len(CASES) >= 30
    expected = {p.stem for p in FIXTURES.glob("*.expected")}
    assert expected == {p.stem for p in CASES}, "every fixture needs exactly one .expected file"
    codes = set()
    for spec in CASES:
        codes |= set(re.findall(r"error\[(E\d{3})\]", spec.with_suffix(".expected").read_text()))
    missing = {code: what for code, what in REQUIRED_CODES.items() if code not in codes}
    assert not missing, f"no fixture covers {missing}"


def test_several_errors_are_reported_in_one_run() -> None:
    code, stderr = run_check(FIXTURES / "32_several_errors.intro")
    assert code == 2
    assert len(POSITIONED.findall(stderr)) >= 3
    assert stderr.rstrip().endswith("5 errors")


# ---------------------------------------------------------------- tests of the tests
def test_a_planted_change_in_an_expected_file_is_caught() -> None:
    spec = FIXTURES / "06_unknown_name_did_you_mean.intro"
    expected = spec.with_suffix(".expected").read_text(encoding="utf-8")
    assert golden_mismatch(spec, expected) is None
    planted = expected.replace("did you mean 'first_character'?", "did you mean 'first_word'?")
    assert planted != expected
    mismatch = golden_mismatch(spec, planted)
    assert mismatch is not None and "-     = note: did you mean 'first_word'?" in mismatch
    shifted = re.sub(r":(\d+):(\d+):", lambda m: f":{m[1]}:{int(m[2]) + 1}:", expected, count=1)
    assert golden_mismatch(spec, shifted) is not None


def test_a_planted_change_in_a_spec_is_caught(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "data", tmp_path / "data")
    original = FIXTURES / "16_wrong_argument_type.intro"
    spec = tmp_path / original.name
    expected = original.with_suffix(".expected").read_text(encoding="utf-8")
    spec.write_text(original.read_text(encoding="utf-8"))
    assert golden_mismatch(spec, expected) is None
    spec.write_text(original.read_text(encoding="utf-8").replace('"qwen"', '"qwen2"'))
    assert golden_mismatch(spec, expected) is not None
    spec.write_text(original.read_text(encoding="utf-8").replace('"qwen"', "qwen"))
    mismatch = golden_mismatch(spec, expected)
    assert mismatch is not None and mismatch.startswith("exit code 0")


# ---------------------------------------------------------------- one mistake, one error
def test_a_failed_let_is_not_reported_again(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "data", tmp_path / "data")
    source = (FIXTURES / "17_too_many_arguments.intro").read_text(encoding="utf-8")
    spec = tmp_path / "cascade.intro"
    spec.write_text(
        source.replace(
            "  measure m = extract(generate(qwen, asked, li.object_level, 16), first_character)",
            "  let answers = generate(qwen, asked, li.object_level, 16)\n"
            "  measure m = extract(answers, first_character)",
        )
    )
    assert "let answers" in spec.read_text(encoding="utf-8")
    code, stderr = run_check(spec)
    assert code == 2 and "E205" in stderr
    assert "unknown name 'answers'" not in stderr
