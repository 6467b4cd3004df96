"""Comparisons and `require`: a function states what it asks of its arguments, and a call that breaks it
is told at the caller (compiler/requirements.py, compiler/call_sites.py), through the real `intro check`."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from intro.cli import main
from intro.compiler.format import format_source

MODEL = 'model m = litellm "openai/some-model"\n'


def check(tmp_path: Path, spec: str, lib: str = "") -> tuple[int, str]:
    (tmp_path / "lib.intro").write_text(lib)
    path = tmp_path / "spec.intro"
    path.write_text(MODEL + spec)
    err = io.StringIO()
    with (
        contextlib.chdir(tmp_path),
        contextlib.redirect_stderr(err),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        code = main(["check", "spec.intro"])
    return code, err.getvalue()


def study_requiring(condition: str) -> str:
    return f"""
study s {{
  let ok = require({condition}, "not so")
  measure n = generate(m, prompts(["a"], "{{{{ text }}}}"))
}}
"""


@pytest.mark.parametrize(
    "condition",
    [
        "2 > 1",
        "1 <= 1",
        "0.5 < 1",
        "1 + 1 == 2",
        '"dog" == "dog"',
        '"dog" != "cat"',
        "1 != true",  # a number and a boolean are never equal
        '["a", 1] == ["a", 1]',
        'length(["a", "b"]) >= 2',
        'mentions(prompts(["Trial 3"], "Say {{ text }}"), "Say Trial 3")',
        'mentions(conversation([{ user: "Trial 1 now" }]), "Trial 1")',
    ],
)
def test_a_true_condition_is_met(tmp_path: Path, condition: str) -> None:
    assert check(tmp_path, study_requiring(condition)) == (0, "")


@pytest.mark.parametrize(
    "condition", ["1 > 2", "1 == true", 'length(["a"]) >= 2', 'mentions(prompts(["x"], "{{ text }}"), "y")']
)
def test_a_false_condition_is_an_error_at_it(tmp_path: Path, condition: str) -> None:
    code, err = check(tmp_path, study_requiring(condition))
    assert code == 2
    assert err.startswith("spec.intro:4:20: error[E250]: not so")


def test_comparing_what_has_no_order_is_an_error(tmp_path: Path) -> None:
    code, err = check(tmp_path, study_requiring('"a" < "b"'))
    assert (code, err.splitlines()[0]) == (
        2,
        "spec.intro:4:20: error[E203]: cannot compare a string and a string with '<'",
    )


def test_comparisons_do_not_chain(tmp_path: Path) -> None:
    code, err = check(tmp_path, study_requiring("1 < 2 < 3"))
    assert code == 2 and "error[E002]" in err


def test_the_formatter_keeps_the_parentheses_a_comparison_needs() -> None:
    source = MODEL + study_requiring("(1 < 2) == (2 > 1)")
    formatted = format_source(source, "spec.intro")
    assert "(1 < 2) == (2 > 1)" in formatted
    assert format_source(formatted, "spec.intro") == formatted


LIB = """
fn pick(options: list, ways: int) {
  let enough = require(length(options) >= ways, "too few options")
  let positive = require(ways > 0, "ways must be above 0")
  return generate(m, prompts(take(options, ways), "{{ text }}"))
}
"""


def test_a_requirement_is_told_at_the_argument_it_reads_or_at_the_call(tmp_path: Path) -> None:
    spec = """use lib
study s {
  measure one = lib.pick(["a", "b"], 0)
  measure two = lib.pick(["a"], 2)
}
"""
    code, err = check(tmp_path, spec, MODEL + LIB)
    assert code == 2
    lines = err.splitlines()
    # Reading `ways` only: at the argument given for it.
    assert lines[0] == "spec.intro:4:38: error[E250]: ways must be above 0"
    assert lines[3] == "     = note: in pick() at lib.intro:5:26, on its parameter 'ways'"
    # Reading two arguments: at the call.
    assert lines[4] == "spec.intro:5:17: error[E250]: too few options"
    assert lines[7] == "     = note: in pick() at lib.intro:4:24"
