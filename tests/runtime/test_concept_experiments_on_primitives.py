"""Thoughts vs text, prefill intention and think / don't think written in .intro on the primitives (stdlib
`intro.thoughts_vs_text_trials`, `intro.prefill_intention_trials`, `intro.think_about_trials`: a model
steered on each sentence's span, conversations with a forced reply, choose, generate, residuals read on the
model's own reply, cosines, rules, rates, means and paired differences) give the built-ins' values from
as many requests, on a tiny random model through the real CLI. The built-ins' values on this same study are
recorded in tests/runtime/golden/concept_experiments.json (tests/runtime/goldens.py says how)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import xarray as xr

from tests.runtime import goldens
from tests.tinymodels import cached_tiny_model

INTRO = [sys.executable, "-m", "intro.cli"]
HEAD = """
use stdlib.introspection as intro
model a = local "{model}"
sampling short {{ max_tokens: 8 }}
let lines = take(intro.sentences, 3)
let pool = take(intro.candidates, 4)
"""
# Layer 0 of 2: an injection on the line's tokens reaches the answer only through a later layer's attention.
LOOP = """
study {name} {{
  for layer in [0], word in ["dog", "ocean"] {{
    let v = concept(a, word, layer, take(intro.baseline, 6))
    for strength in [4, 8] {{
{measures}
    }}
{outer}
  }}
}}
"""
# The former built-ins asked our own repeat line and think / don't-think pair; the stdlib's defaults are the
# paper's wording now (issue 11, item 7), so the parity runs pass the former wording, named, on purpose.
NEW = """
      measure text = intro.thoughts_vs_text_trials(a, v, word, layer, strength, lines, pool, ways: 4,
                                                   sampling: short, repeat: intro.repeat_own_words)
      measure intention = intro.prefill_intention_trials(a, v, word, layer, strength, lines,
                                                         sampling: short)
"""
NEW_THINK = """
    measure think = intro.think_about_trials(a, v, word, layer, lines,
                                             concept_vectors(a, take(intro.control_words, 4), layer,
                                                             take(intro.baseline, 6)),
                                             think: intro.think_own_words, dont: intro.dont_think_own_words)
"""
# The built-in's cell -> the stdlib function's measure (an estimate or a comparison of two).
TEXT = (
    "identification_injected",
    "identification_control",
    "repeat_injected",
    "repeat_control",
    "both_injected",
    "both_control",
    "p_word_injected",
    "p_word_control",
)
INTENTION = (
    "disown_injected",
    "disown_control",
    "p_accident_injected",
    "p_accident_control",
    "accident_log_odds_injected",
    "accident_log_odds_control",
)
SHIFTS = [
    ("old_text", "text", "identification_shift"),
    ("old_text", "text", "p_word_shift"),
    ("old_intention", "intention", "p_accident_shift"),
    ("old_intention", "intention", "accident_log_odds_shift"),
]


# Cells read from the model's float32 scores (probabilities, log-odds and their shifts) agree with the
# built-ins' to float32 rounding, which depends on the CPU's kernels: one machine matched the goldens to
# 1e-15, another (with AVX-512) differed by up to 1e-6 on log-odds of about -16. Rates of rule-graded
# replies are counts and must match exactly.
SCORE_TOLERANCE = 1e-5


def tolerance(cell: str) -> float:
    return SCORE_TOLERANCE if cell.startswith("p_") or "log_odds" in cell else 1e-9


def run(*argv: str, cache: Path) -> str:
    # The goldens were computed on whole prompts: sharing a batch's prefix moves values by ~1e-8.
    env = {"INTRO_CACHE_DIR": str(cache), "PATH": "/usr/bin:/bin", "INTRO_SHARE_PREFIX": "0"}
    done = subprocess.run([*INTRO, *argv], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def spec(path: Path, name: str, measures: str, outer: str) -> Path:
    head = HEAD.format(model=cached_tiny_model("qwen2"))
    path.write_text(head + LOOP.format(name=name, measures=measures, outer=outer))
    return path


@pytest.fixture(scope="module")
def new(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("concept-experiments-primitives")
    path = spec(root / "new.intro", "new", NEW, NEW_THINK)
    planned = run("plan", str(path), cache=root / "cache")
    ran = run("run", str(path), "--runs", str(root / "runs"), cache=root / "cache")
    return {"planned": planned, "ran": ran, "store": root / "runs" / "new" / "cube.zarr"}


def cube(new: dict[str, object], group: str) -> xr.Dataset:
    return xr.open_zarr(new["store"], group=group).load()


def golden(measure: str) -> list[dict[str, object]]:
    """The built-in `measure`'s cells (old_text, old_intention, old_think), one per point of the study."""
    return goldens.load("concept_experiments")[measure]


def point(
    cell: dict[str, object], dims: tuple[str, ...] = ("layer", "word", "strength")
) -> dict[str, object]:
    return {d: cell[d] for d in dims}


@pytest.mark.parametrize(
    ("old_name", "new_name", "cell"),
    [("old_text", "text", c) for c in TEXT] + [("old_intention", "intention", c) for c in INTENTION],
)
def test_each_rate_and_mean_is_the_builtins(
    new: dict[str, object], old_name: str, new_name: str, cell: str
) -> None:
    got = cube(new, f"{new_name}.{cell}")
    for old in golden(old_name):
        value = float(got.estimate.sel(point(old)))
        assert goldens.same(value, old[cell], tolerance(cell)), (cell, point(old), value, old[cell])
        assert int(got.n.sel(point(old))) == 3  # one trial per sentence


@pytest.mark.parametrize(("old_name", "new_name", "cell"), SHIFTS)
def test_each_shift_and_its_paired_interval_is_the_builtins(
    new: dict[str, object], old_name: str, new_name: str, cell: str
) -> None:
    got = cube(new, f"{new_name}.{cell}")
    for old in golden(old_name):
        for suffix, variable in (("", "estimate"), ("_low", "ci_low"), ("_high", "ci_high")):
            value = float(got[variable].sel(point(old)))
            assert goldens.same(value, old[cell + suffix], tolerance(cell)), (
                cell + suffix,
                point(old),
                value,
            )


def test_think_about_gives_the_builtins_cosines(new: dict[str, object]) -> None:
    got = {name: cube(new, f"think.{name}") for name in ("think", "dont", "control_think", "control_dont")}
    shift = cube(new, "think.think_minus_dont")
    for old in golden("old_think"):
        where = point(old, ("layer", "word"))
        for name in ("think", "dont"):
            assert float(got[name].estimate.sel(where)) == pytest.approx(old[name], abs=1e-5)
        controls = (
            float(got["control_think"].estimate.sel(where)) + float(got["control_dont"].estimate.sel(where))
        ) / 2
        # The control words' vectors are read one by one here and in one batch by the built-in.
        assert controls == pytest.approx(old["controls"], abs=1e-5)
        for suffix, variable in (("", "estimate"), ("_low", "ci_low"), ("_high", "ci_high")):
            assert float(shift[variable].sel(where)) == pytest.approx(
                old["think_minus_dont" + suffix], abs=1e-5
            )
        assert int(got["think"].n.sel(where)) == 3 and int(got["control_think"].n.sel(where)) == 3 * 4


def test_as_many_requests_as_the_builtins(new: dict[str, object]) -> None:
    # On an empty cache: injected, 2 words x 2 strengths x 3 lines x (choice + reply) x 2 experiments = 48;
    # controls shared by the strengths: 3 repeats (shared by the words too) and 2 x 3 choices for thoughts
    # vs text, 2 x 3 replies and 2 x 3 choices for prefill intention (the forced reply is the word) = 21;
    # think / don't think, one pass per word, condition and line = 12.
    calls = goldens.load("concept_experiments")["calls"]
    assert goldens.calls_to_make(new["planned"]) == calls == 48 + 21 + 12
    # And a run makes exactly the calls planned.
    assert f"new: {calls} model calls, 0 from cache" in new["ran"], new["ran"]
