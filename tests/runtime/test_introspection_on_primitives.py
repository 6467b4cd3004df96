"""Concept injection's detection trials written in .intro on the primitives (stdlib
`intro.injected_thought_trials`: conversation, steer, generate, rules, rates over trials) give the built-in
`injected_thought`'s rates from as many model calls, on a tiny random model through the real CLI. The
built-in's values on this same study are recorded in tests/runtime/golden/injected_thought.json
(tests/runtime/goldens.py says how)."""

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
sampling short {{ temperature: 1 max_tokens: 8 }}
"""
NEW = """
study new {
  for strength in [4, 8], word in ["dog"] {
    let vector = concept(a, word, 1, take(intro.baseline, 6))
    measure new = intro.injected_thought_trials(a, vector, word, 1, strength, trials: 6, sampling: short,
                                                prompt: intro.trial_own_words)
  }
}
"""
RATES = ("detection", "identification", "false_positive", "net")
# On purpose (issue 11): the parity run asks the former wording of the trial, named (the stdlib's default is
# the paper's now, item 7), and each cell draws its own control trials (item 8): the built-in's one shared
# control draw no longer exists, so false positives and net are not compared with its values, and the
# study makes one more control draw (6 calls) than the built-in did.
SAME_AS_BUILTIN = ("detection", "identification")


def run(*argv: str, cache: Path) -> str:
    env = {"INTRO_CACHE_DIR": str(cache), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([*INTRO, *argv], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def spec(path: Path, study: str) -> Path:
    path.write_text(HEAD.format(model=cached_tiny_model("qwen2")) + study)
    return path


@pytest.fixture(scope="module")
def new(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("introspection-primitives")
    path = spec(root / "new.intro", NEW)
    planned = run("plan", str(path), cache=root / "cache")
    ran = run("run", str(path), "--runs", str(root / "runs"), cache=root / "cache")
    store = root / "runs" / "new" / "cube.zarr"
    cubes = {rate: xr.open_zarr(store, group=f"new.{rate}").load() for rate in RATES}
    return {"planned": planned, "ran": ran, "cubes": cubes}


@pytest.mark.parametrize("rate", SAME_AS_BUILTIN)
def test_each_rate_is_the_builtins(new: dict[str, object], rate: str) -> None:
    cube = new["cubes"][rate]
    for cell in goldens.load("injected_thought")["cells"]:
        got = float(cube.estimate.sel(strength=cell["strength"], word=cell["word"]))
        assert goldens.same(got, cell[rate], 1e-12), (cell, got)


def test_the_trials_are_the_builtins(new: dict[str, object]) -> None:
    detection = new["cubes"]["detection"]
    # every trial is one unit of the new rate: 6 injected trials per point, as the built-in's
    for cell in goldens.load("injected_thought")["cells"]:
        assert int(detection.n.sel(strength=cell["strength"], word=cell["word"])) == cell["n_injected"] == 6


def test_the_primitives_make_the_builtins_calls_and_no_other(new: dict[str, object]) -> None:
    # the built-in's trials (without its logit readout, which the primitives version does not make)
    calls = goldens.load("injected_thought")["calls"]
    assert calls == 18 and goldens.calls_to_make(new["planned"]) == calls + 6  # a control draw per cell
    assert f"new: {calls + 6} model calls, 0 from cache" in new["ran"]


def test_each_cell_has_its_own_false_positive_rate(new: dict[str, object]) -> None:
    fp = new["cubes"]["false_positive"]
    assert all(int(fp.n.sel(strength=s, word="dog")) == 6 for s in ("4", "8"))
