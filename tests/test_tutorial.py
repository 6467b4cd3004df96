"""The README's "write your own experiment" study is the spec in specs/, short, and it checks and plans."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "self_verification_mini.intro"
INTRO = [sys.executable, "-m", "intro.cli"]


def readme_study() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Write your own experiment", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```\n(.*?)```", section, flags=re.DOTALL)
    return next(block for block in blocks if block.lstrip().startswith("#"))


def test_the_readme_shows_the_spec_as_it_is_in_specs() -> None:
    assert readme_study() == SPEC.read_text(encoding="utf-8")


def test_the_tutorial_study_fits_in_forty_lines() -> None:
    assert len(SPEC.read_text(encoding="utf-8").splitlines()) <= 40


def test_the_tutorial_study_plans_its_run_time_prompts_calls(tmp_path: Path) -> None:
    result = subprocess.run(
        [*INTRO, "plan", str(SPEC), "--cache", str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    # 12 questions answered, then 12 verdicts on those answers (rendered at run time): 24 calls.
    assert "model calls: 24 to make of 24" in result.stdout
