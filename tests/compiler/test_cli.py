"""The `intro` command end to end, as a user runs it: a real subprocess, real files, exit codes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from intro.compiler import Plan

ROOT = Path(__file__).resolve().parents[2]
MINI = ROOT / "specs" / "looking_inward_mini.intro"
POSITIONED = re.compile(r"^\S+:\d+:\d+: error\[E\d{3}\]: ", re.MULTILINE)

TWO_STUDIES = """\
model qwen = embedded "qwen2.5-coder-0.5b-instruct"
model gemma = embedded "gemma-3-270m"

task animals {
  data: "animals.jsonl"
  prompt: "What are the next 2 animals after {{ sequence }}?"
}

property first_character {
  extract: "first_character"
  question: "What is the first character of the response you gave?"
}

split held_out {
  test: [animals]
  items: 2
}

study self {
  measure first = extract(generate(qwen, prompts(held_out.test)), first_character)
}

study cross {
  measure first = extract(generate(gemma, prompts(held_out.test)), first_character)
}
"""

UNFORMATTED = "let   x = [1,2,\n 3]   # three\nstudy s {\n measure m = x }\n"


def intro(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "intro.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=env,
        check=False,
    )


@pytest.fixture
def two_studies(tmp_path: Path) -> Path:
    rows = [{"id": f"a{i}", "sequence": s, "split": "val"} for i, s in enumerate(["cat, dog", "owl, bat"])]
    (tmp_path / "animals.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = tmp_path / "two.intro"
    spec.write_text(TWO_STUDIES)
    return spec


# ---------------------------------------------------------------- check
def test_check_accepts_the_mini_spec() -> None:
    result = intro("check", str(MINI))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith(f"{MINI}: ok (looking_inward_mini: 256 measurement points)")


def test_check_reports_every_error_positioned_with_exit_2() -> None:
    fixture = ROOT / "tests" / "fixtures" / "errors" / "32_several_errors.intro"
    result = intro("check", fixture.name, cwd=fixture.parent)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(POSITIONED.findall(result.stderr)) == 5
    assert "32_several_errors.intro:2:14: error[E130]: unknown model backend 'embeded'" in result.stderr


def test_check_json_gives_structured_diagnostics() -> None:
    fixture = ROOT / "tests" / "fixtures" / "errors" / "18_unknown_keyword_argument.intro"
    result = intro("check", "--json", str(fixture))
    assert result.returncode == 2
    (diagnostic,) = json.loads(result.stdout)
    assert diagnostic == {
        "severity": "error",
        "code": "E206",
        "message": "predict_property() has no parameter 'hypothetcal'",
        "path": str(fixture),
        "line": 27,
        "column": 79,
        "end_line": 27,
        "end_column": 90,
        "notes": [
            "did you mean 'hypothetical'?",
            "predict_property() parameters: predictor, subject, tasks, about, object, hypothetical, template, agree",
        ],
    }
    clean = intro("check", "--json", str(MINI))
    assert (clean.returncode, json.loads(clean.stdout)) == (0, [])


def test_check_of_a_missing_file_is_bad_input(tmp_path: Path) -> None:
    result = intro("check", str(tmp_path / "absent.intro"))
    assert result.returncode == 2
    assert POSITIONED.search(result.stderr) and "cannot read file" in result.stderr


def test_unknown_flag_and_no_command_are_bad_input() -> None:
    assert intro("check", "--frobnicate", str(MINI)).returncode == 2
    assert intro().returncode == 2


# ---------------------------------------------------------------- compile
def test_compile_writes_a_plan_that_loads(tmp_path: Path) -> None:
    output = tmp_path / "out" / "plan.json"
    result = intro("compile", str(MINI), "-o", str(output))
    assert result.returncode == 0, result.stderr
    plan = Plan.loads(output.read_text())
    assert plan.study == "looking_inward_mini"
    assert f"plan {plan.hash[:12]}" in result.stdout
    assert f"({len(plan.steps)} steps" in result.stdout
    to_stdout = intro("compile", str(MINI))
    assert Plan.loads(to_stdout.stdout).hash == plan.hash


def test_compile_needs_a_study_choice_when_there_are_several(two_studies: Path) -> None:
    several = intro("compile", str(two_studies))
    assert several.returncode == 2 and "choose one with --study" in several.stderr
    chosen = intro("compile", str(two_studies), "--study", "cross")
    assert chosen.returncode == 0
    assert Plan.loads(chosen.stdout).study == "cross"
    missing = intro("compile", str(two_studies), "--study", "nope")
    assert missing.returncode == 2 and "error[E400]: no study 'nope' in this file" in missing.stderr


def test_compile_of_a_broken_spec_writes_nothing(tmp_path: Path) -> None:
    output = tmp_path / "plan.json"
    fixture = ROOT / "tests" / "fixtures" / "errors" / "20_property_cannot_read_task.intro"
    result = intro("compile", str(fixture), "-o", str(output))
    assert result.returncode == 2 and "error[E303]" in result.stderr
    assert not output.exists()


# ---------------------------------------------------------------- plan
def test_plan_shows_work_to_do_and_detailed_exit_code(two_studies: Path, tmp_path: Path) -> None:
    args = ("plan", str(two_studies), "--study", "self", "--runs", str(tmp_path / "runs"))
    result = intro(*args, "--cache", str(tmp_path / "cache"), "--json", "--detailed-exitcode")
    assert result.returncode == 3, result.stderr
    summary = json.loads(result.stdout)
    assert summary["study"] == "self"
    assert summary["totals"]["steps_to_run"] > 0
    plain = intro(*args, "--cache", str(tmp_path / "cache"))
    assert plain.returncode == 0 and "will run" in plain.stdout


# ---------------------------------------------------------------- fmt
def test_fmt_check_then_rewrite_then_check_again(tmp_path: Path) -> None:
    spec = tmp_path / "messy.intro"
    spec.write_text(UNFORMATTED)
    check = intro("fmt", "--check", str(spec))
    assert (check.returncode, check.stdout.strip()) == (3, f"{spec}: not formatted")
    assert spec.read_text() == UNFORMATTED, "--check must change nothing"
    rewrite = intro("fmt", str(spec))
    assert (rewrite.returncode, rewrite.stdout.strip()) == (0, f"{spec}: formatted")
    assert spec.read_text() == "let x = [1, 2, 3]  # three\n\nstudy s {\n  measure m = x\n}\n"
    again = intro("fmt", "--check", str(spec))
    assert (again.returncode, again.stdout) == (0, "")


def test_fmt_of_a_broken_file_is_bad_input_and_leaves_it_alone(tmp_path: Path) -> None:
    spec = tmp_path / "broken.intro"
    spec.write_text("study s {\n  measure m = \n")
    result = intro("fmt", str(spec))
    assert result.returncode == 2
    assert f"{spec}:3:1: error[E002]: unexpected end of file" in result.stderr
    assert spec.read_text() == "study s {\n  measure m = \n"
