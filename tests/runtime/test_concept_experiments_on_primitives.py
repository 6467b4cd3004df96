"""Thoughts vs text and prefill intention written in .intro on the primitives (stdlib
`intro.thoughts_vs_text_trials`, `intro.prefill_intention_trials`: a model steered on each sentence's span,
conversations with a forced reply, choose, generate, rules, rates, means and paired differences) give the
built-ins' values from the same requests, on a tiny random model through the real CLI."""

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


def spec(path: Path, name: str, measures: str) -> Path:
    head = HEAD.format(model=cached_tiny_model("qwen2"))
    path.write_text(head + LOOP.format(name=name, measures=measures))
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("concept-experiments-primitives")
    both = spec(root / "both.intro", "both", OLD + NEW)
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


def test_the_same_requests_and_the_replies_shared_with_the_builtins(tmp_path: Path) -> None:
    old = spec(tmp_path / "old.intro", "old", OLD)
    new = spec(tmp_path / "new.intro", "new", NEW)
    # As many calls, on an empty cache: injected, 2 words x 2 strengths x 3 lines x (choice + reply) x 2
    # experiments = 48; controls shared by the strengths: 3 repeats (shared by the words too) and 2 x 3
    # choices for thoughts vs text, 2 x 3 replies and 2 x 3 choices for prefill intention (the forced
    # reply is the word) = 21.
    empty = tmp_path / "empty"
    planned = [_to_make(run("plan", str(spec), cache=empty)) for spec in (old, new)]
    assert planned == [48 + 21, 48 + 21]
    # After the built-ins ran, every reply is in the cache under the key the functions give it: only the
    # one-pass choices are left (stored by the built-ins in another record format, under another key):
    # 2 x 2 x 3 x 2 injected and 2 x 3 x 2 controls.
    cache = tmp_path / "cache"
    run("run", str(old), "--runs", str(tmp_path / "runs"), "--quiet", cache=cache)
    assert _to_make(run("plan", str(new), cache=cache)) == 36


def _to_make(planned: str) -> int:
    line = next(line for line in planned.splitlines() if line.startswith("model calls:"))
    return int(line.split()[2])
