"""Concept injection's detection trials written in .intro on the primitives (stdlib
`intro.injected_thought_trials`: conversation, steer, generate, rules, rates over trials) give the built-in
`injected_thought`'s rates from the same model calls, on a tiny random model through the real CLI."""

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
sampling short {{ temperature: 1 max_tokens: 8 }}
"""
BOTH = """
study both {{
  for strength in [4, 8], word in ["dog"] {{
    let vector = concept(a, word, 1, take(intro.baseline, 6))
    measure old = injected_thought(a, vector, word, 1, strength, intro.trial, trials: 6, sampling: short)
    measure new = intro.injected_thought_trials(a, vector, word, 1, strength, trials: 6, sampling: short)
  }}
}}
"""
# The built-in alone, without its logit readout (calls the primitives version does not make).
OLD_ONLY = """
study old_only {{
  for strength in [4, 8], word in ["dog"] {{
    let vector = concept(a, word, 1, take(intro.baseline, 6))
    measure old = injected_thought(a, vector, word, 1, strength, intro.trial, trials: 6, sampling: short,
                                   grader: judged_by(a))
  }}
}}
"""


def run(*argv: str, cache: Path) -> str:
    env = {"INTRO_CACHE_DIR": str(cache), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([*INTRO, *argv], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def cubes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, xr.Dataset]:
    root = tmp_path_factory.mktemp("introspection-primitives")
    head = HEAD.format(model=cached_tiny_model("qwen2"))
    (root / "both.intro").write_text(head + BOTH.format())
    run("run", str(root / "both.intro"), "--runs", str(root / "runs"), "--quiet", cache=root / "cache")
    store = root / "runs" / "both" / "cube.zarr"
    names = ("old", "new.detection", "new.identification", "new.false_positive", "new.net")
    return {name: xr.open_zarr(store, group=name).load() for name in names}


@pytest.mark.parametrize("rate", ["detection", "identification", "false_positive", "net"])
def test_each_rate_is_the_builtins(cubes: dict[str, xr.Dataset], rate: str) -> None:
    old, new = cubes["old"], cubes[f"new.{rate}"]
    for strength in old.strength.values:
        for word in old.word.values:
            expected = float(old[rate].sel(strength=strength, word=word))
            got = float(new.estimate.sel(strength=strength, word=word))
            assert got == pytest.approx(expected, abs=1e-12) or (np.isnan(got) and np.isnan(expected))


def test_the_trials_are_the_builtins_replies(cubes: dict[str, xr.Dataset]) -> None:
    old, detection = cubes["old"], cubes["new.detection"]
    # every trial is one unit of the new rate: 6 injected trials per point
    assert (detection.n.values == 6).all()
    assert (old.n_injected.values == 6).all()


def test_the_primitives_make_no_calls_of_their_own(tmp_path: Path) -> None:
    head = HEAD.format(model=cached_tiny_model("qwen2"))
    (tmp_path / "old_only.intro").write_text(head + OLD_ONLY.format())
    (tmp_path / "both.intro").write_text(head + BOTH.format())
    cache = tmp_path / "cache"
    run("run", str(tmp_path / "old_only.intro"), "--runs", str(tmp_path / "runs"), "--quiet", cache=cache)
    planned = run("plan", str(tmp_path / "both.intro"), cache=cache)
    # only the built-in's logit readout (one steered score per point, one plain) is left to make
    assert "model calls: 3 to make" in planned, planned
