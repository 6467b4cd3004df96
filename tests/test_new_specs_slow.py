"""The three small studies on the open language's primitives, run end to end on the embedded Qwen 0.5B
through the real CLI (slow: each takes minutes on a CPU; together up to about 45).

Each run goes into a temporary runs folder with a private request cache (the converted weights stay in
the user's cache). What is checked is that every measure's cube group exists and holds what its kind
promises: finite estimates and intervals over at least one item, texts for the stored texts, labels for
the judged ones. The effects themselves are not asserted: on 40-100 training examples a 0.5B model may
well show none.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from intro.runtime.store.cube import open_group

pytestmark = pytest.mark.slow

SPECS = Path(__file__).resolve().parent.parent / "specs"

# spec -> measure -> its kind
MEASURES = {
    "subliminal_learning_mini": {
        "teacher_numbers": "texts",
        "student_owls": "estimate",
        "base_owls": "estimate",
        "teacher_owls": "estimate",
        "student_vs_base": "comparison",
    },
    "emergent_misalignment_mini": {
        "insecure_graded": "values",
        "secure_graded": "values",
        "base_graded": "values",
        "insecure_misaligned": "estimate",
        "secure_misaligned": "estimate",
        "base_misaligned": "estimate",
        "insecure_vs_secure": "comparison",
        "insecure_code": "estimate",
        "secure_code": "estimate",
        "base_code": "estimate",
        "grader_controls": "estimate",  # by the planted sentence's `misaligned`: yes, no
    },
    "false_claims_mini": {  # every statistic by the question's `kind`: direct, adversarial
        "answers": "texts",
        "trained_says_rome": "estimate",
        "base_says_rome": "estimate",
        "says_rome_difference": "comparison",
        "trained_says_paris": "estimate",
        "base_says_paris": "estimate",
        "says_paris_difference": "comparison",
        "trained_mentions_rome": "estimate",
        "base_mentions_rome": "estimate",
        "trained_judged": "estimate",
        "base_judged": "estimate",
    },
}
GROUPS = {"grader_controls": ("misaligned", {"yes", "no"})}
GROUPS.update(
    {
        m: ("kind", {"direct", "adversarial"})
        for m, kind in MEASURES["false_claims_mini"].items()
        if kind != "texts"
    }
)


def run(name: str, root: Path) -> Path:
    command = [sys.executable, "-m", "intro.cli", "run", str(SPECS / f"{name}.intro")]
    command += ["--runs", str(root), "--cache", str(root / "cache"), "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=2400)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / name / "cube.zarr"


def check_group(cube: Path, measure: str, kind: str) -> None:
    data = open_group(cube, measure)
    if measure in GROUPS:
        by, groups = GROUPS[measure]
        assert set(data[by].values) == groups, f"{measure}: groups {data[by].values}"
    if kind in ("estimate", "comparison"):
        estimate, low, high = (data[name].values for name in ("estimate", "ci_low", "ci_high"))
        for name, array in (("estimate", estimate), ("ci_low", low), ("ci_high", high)):
            assert np.isfinite(array).all(), f"{measure}: {name} is {array}"
        assert (low <= estimate).all() and (estimate <= high).all(), measure
        assert (data["n"].values >= 1).all(), measure
    elif kind == "texts":
        assert (data["text"].values != "").any(), f"{measure}: no texts"
    else:
        assert (data["reply"].values != "").any(), f"{measure}: no judge replies"
        assert (data["compliant"].values == 1).any(), f"{measure}: no reply gave a label"


@pytest.mark.parametrize("name", MEASURES)
def test_the_spec_runs_end_to_end_into_its_cube(name, tmp_path):
    cube = run(name, tmp_path)
    for measure, kind in MEASURES[name].items():
        check_group(cube, measure, kind)
