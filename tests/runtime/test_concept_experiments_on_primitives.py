"""Thoughts vs text, prefill intention and think / don't think written in .intro on the primitives (stdlib
`intro.thoughts_vs_text_trials`, `intro.prefill_intention_trials`, `intro.think_about_trials`: a model
steered on each sentence's span, conversations with a forced reply, choose, generate, residuals read on the
model's own reply, cosines, rules, rates, means and paired differences) give the built-ins' values from
as many requests, on a tiny random model through the real CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

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
OLD = """
      measure old_text = thoughts_vs_text(a, v, word, layer, strength, lines, pool, intro.identify_line,
                                          intro.repeat_line, ways: 4, sampling: short)
      measure old_intention = prefill_intention(a, v, word, layer, strength, lines, intro.ask_word,
                                                intro.intention_question, sampling: short)
"""
NEW = """
      measure text = intro.thoughts_vs_text_trials(a, v, word, layer, strength, lines, pool, ways: 4,
                                                   sampling: short)
      measure intention = intro.prefill_intention_trials(a, v, word, layer, strength, lines,
                                                         sampling: short)
"""
OLD_THINK = """
    measure old_think = think_about(a, v, word, layer, lines, take(intro.control_words, 4), intro.think_line,
                                    intro.dont_think_line)
"""
NEW_THINK = """
    measure think = intro.think_about_trials(a, v, word, layer, lines,
                                             concept_vectors(a, take(intro.control_words, 4), layer,
                                                             take(intro.baseline, 6)))
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


def run(*argv: str, cache: Path) -> str:
    env = {"INTRO_CACHE_DIR": str(cache), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([*INTRO, *argv], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def spec(path: Path, name: str, measures: str, outer: str) -> Path:
    head = HEAD.format(model=cached_tiny_model("qwen2"))
    path.write_text(head + LOOP.format(name=name, measures=measures, outer=outer))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("concept-experiments-primitives")
    both = spec(root / "both.intro", "both", OLD + NEW, OLD_THINK + NEW_THINK)
    run("run", str(both), "--runs", str(root / "runs"), "--quiet", cache=root / "cache")
    return root / "runs" / "both" / "cube.zarr"


def cube(store: Path, group: str) -> xr.Dataset:
    return xr.open_zarr(store, group=group).load()


def points(old: xr.Dataset) -> list[dict[str, str]]:
    return [
        {"layer": layer, "word": word, "strength": strength}
        for layer in old.layer.values
        for word in old.word.values
        for strength in old.strength.values
    ]


def same(got: float, expected: float) -> bool:
    return got == pytest.approx(expected, abs=1e-9) or (np.isnan(got) and np.isnan(expected))


@pytest.mark.parametrize(
    ("old_name", "new_name", "cell"),
    [("old_text", "text", c) for c in TEXT] + [("old_intention", "intention", c) for c in INTENTION],
)
def test_each_rate_and_mean_is_the_builtins(store: Path, old_name: str, new_name: str, cell: str) -> None:
    old, new = cube(store, old_name), cube(store, f"{new_name}.{cell}")
    for point in points(old):
        expected, got = float(old[cell].sel(point)), float(new.estimate.sel(point))
        assert same(got, expected), (cell, point, got, expected)
        assert int(new.n.sel(point)) == 3  # one trial per sentence


@pytest.mark.parametrize(("old_name", "new_name", "cell"), SHIFTS)
def test_each_shift_and_its_paired_interval_is_the_builtins(
    store: Path, old_name: str, new_name: str, cell: str
) -> None:
    old, new = cube(store, old_name), cube(store, f"{new_name}.{cell}")
    for point in points(old):
        for suffix, variable in (("", "estimate"), ("_low", "ci_low"), ("_high", "ci_high")):
            expected, got = float(old[cell + suffix].sel(point)), float(new[variable].sel(point))
            assert same(got, expected), (cell + suffix, point, got, expected)


def test_think_about_gives_the_builtins_cosines(store: Path) -> None:
    old = cube(store, "old_think")
    new = {name: cube(store, f"think.{name}") for name in ("think", "dont", "control_think", "control_dont")}
    shift = cube(store, "think.think_minus_dont")
    for point in [{"layer": layer, "word": word} for layer in old.layer.values for word in old.word.values]:
        for name in ("think", "dont"):
            assert float(new[name].estimate.sel(point)) == pytest.approx(
                float(old[name].sel(point)), abs=1e-5
            )
        controls = (
            float(new["control_think"].estimate.sel(point)) + float(new["control_dont"].estimate.sel(point))
        ) / 2
        # The control words' vectors are read one by one here and in one batch by the built-in.
        assert controls == pytest.approx(float(old["controls"].sel(point)), abs=1e-5)
        for suffix, variable in (("", "estimate"), ("_low", "ci_low"), ("_high", "ci_high")):
            expected = float(old["think_minus_dont" + suffix].sel(point))
            assert float(shift[variable].sel(point)) == pytest.approx(expected, abs=1e-5)
        assert int(new["think"].n.sel(point)) == 3 and int(new["control_think"].n.sel(point)) == 3 * 4


def test_the_same_requests_and_the_replies_shared_with_the_builtins(tmp_path: Path) -> None:
    old = spec(tmp_path / "old.intro", "old", OLD, OLD_THINK)
    new = spec(tmp_path / "new.intro", "new", NEW, NEW_THINK)
    # As many calls, on an empty cache: injected, 2 words x 2 strengths x 3 lines x (choice + reply) x 2
    # experiments = 48; controls shared by the strengths: 3 repeats (shared by the words too) and 2 x 3
    # choices for thoughts vs text, 2 x 3 replies and 2 x 3 choices for prefill intention (the forced
    # reply is the word) = 21; think / don't think, one pass per word, condition and line = 12.
    empty = tmp_path / "empty"
    planned = [_to_make(run("plan", str(spec), cache=empty)) for spec in (old, new)]
    assert planned == [48 + 21 + 12, 48 + 21 + 12]
    # After the built-ins ran, every reply is in the cache under the key the functions give it: only the
    # one-pass choices (2 x 2 x 3 x 2 injected and 2 x 3 x 2 controls) and the residual readings (12) are
    # left: the built-ins store them in other records, under other keys.
    cache = tmp_path / "cache"
    run("run", str(old), "--runs", str(tmp_path / "runs"), "--quiet", cache=cache)
    assert _to_make(run("plan", str(new), cache=cache)) == 36 + 12
    # And a run makes exactly the calls planned.
    made = run("run", str(new), "--runs", str(tmp_path / "runs"), cache=cache)
    assert f"new: {36 + 12} model calls, {48 + 21 + 12 - 36 - 12} from cache" in made, made


def _to_make(planned: str) -> int:
    line = next(line for line in planned.splitlines() if line.startswith("model calls:"))
    return int(line.split()[2])
