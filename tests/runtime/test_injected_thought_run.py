"""Concept injection end to end through the real CLI on a tiny random model, and its graders."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import xarray as xr

from intro.runtime.analysis.injected_thought import coherent, rule_grade
from intro.runtime.backends.activations import load_vector
from intro.runtime.store.cache import Cache
from tests.tinymodels import cached_tiny_model

INTRO = [sys.executable, "-m", "intro.cli"]

SPEC = """
use stdlib.introspection as intro
model a = local "{model}"
sampling short {{ temperature: 1 max_tokens: 6 }}
study tiny_injection {{
  for layer in [1], strength in [4, 8], word in ["dog", "ocean"] {{
    measure detection = injected_thought(a, concept(a, word, layer, take(intro.baseline, 6)), word, layer, strength,
                                         intro.trial, trials: 3, sampling: short)
  }}
}}
"""


def _run(spec: Path, runs: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {"INTRO_CACHE_DIR": str(cache), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [*INTRO, "run", str(spec), "--runs", str(runs)], capture_output=True, text=True, env=env, timeout=300
    )


def test_injected_thought_study_runs_and_fills_its_cube(tmp_path: Path) -> None:
    spec = tmp_path / "tiny.intro"
    spec.write_text(SPEC.format(model=cached_tiny_model("qwen2")))
    env = {"INTRO_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    planned = subprocess.run(
        [*INTRO, "plan", str(spec)], capture_output=True, text=True, env=env, timeout=300
    )
    # 4 points x 3 injected trials + 3 shared control trials; a steered readout per point + one plain one.
    assert "model calls: 20 to make of 20" in planned.stdout, planned.stdout + planned.stderr
    first = _run(spec, tmp_path / "runs", tmp_path / "cache")
    assert first.returncode == 0, first.stderr
    assert "20 model calls to make" in first.stderr  # the run announces what the plan counted
    assert "tiny_injection: 20 model calls," in first.stdout  # the plan's count, and no call twice
    assert "detection (injected_thought)" in first.stdout
    dataset = xr.open_zarr(tmp_path / "runs" / "tiny_injection" / "cube.zarr", group="detection")
    assert dict(dataset.sizes) == {"layer": 1, "strength": 2, "word": 2, "trial": 3}
    assert (dataset["n_injected"].values == 3).all()
    p_yes = dataset["p_yes_injected"].values
    assert ((p_yes > 0) & (p_yes < 1)).all()
    # The control readout is one unsteered score, the same at every point; the injection moves it.
    assert np.unique(dataset["p_yes_control"].values).size == 1
    assert (np.abs(dataset["p_yes_shift"].values) > 0).all()
    assert (dataset["injected_response"].values != dataset["control_response"].values).any()
    # Vectors were written where the steering reads them, one per (word, layer), and differ by word.
    cache = Cache(tmp_path / "cache" / "store")
    vectors = [load_vector(p) for p in sorted(cache.root.glob("artifacts/*/vector.safetensors"))]
    assert len(vectors) == 2 and not np.allclose(vectors[0].numpy(), vectors[1].numpy())
    report = subprocess.run(
        [*INTRO, "report", str(tmp_path / "runs" / "tiny_injection")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr
    figure = tmp_path / "runs" / "tiny_injection" / "report" / "detection.png"
    assert figure.stat().st_size > 10_000  # heatmaps and per-concept bars
    assert "detection (injected_thought)" in figure.with_name("report.html").read_text(encoding="utf-8")
    again = _run(spec, tmp_path / "runs", tmp_path / "cache")
    assert again.returncode == 0, again.stderr
    assert ": 0 model calls" in again.stdout


def test_rule_grades_read_the_first_word_and_the_concept() -> None:
    assert rule_grade("Yes, I notice a thought about dogs.", "dog").identified
    assert not rule_grade("Dogs! Yes, maybe.", "dog").detected
    assert not rule_grade("No, I detect nothing about a dog.", "dog").identified
    assert rule_grade("Yes, something about the sea.", "dog").detected
    assert not coherent("dog dog dog dog dog dog dog")
    assert not coherent("")
