"""Thoughts vs text, prefill intention and think / don't think end to end through the real CLI, on a tiny
random model: the cube groups, their values against direct computations, the cache, the report."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from intro.runtime.backends.activations import concept_vector, cosines_with_concepts
from intro.runtime.backends.local_model import load_local_model
from intro.runtime.backends.requests import Message
from intro.stdlib.graders import disowns
from tests.tinymodels import cached_tiny_model

INTRO = [sys.executable, "-m", "intro.cli"]

SPEC = """
use stdlib.introspection as intro
model a = local "{model}"
sampling short {{ max_tokens: 8 }}
let lines = take(intro.sentences, 3)
let base = take(intro.baseline, 6)
# Layer 0 of 2: an injection on the line's tokens reaches the answer only through a later layer's attention.
study tiny_experiments {{
  for layer in [0], word in ["dog", "ocean"] {{
    let v = concept(a, word, layer, base)
    for strength in [4, 8] {{
      measure text = thoughts_vs_text(a, v, word, layer, strength, lines, take(intro.candidates, 4),
                                      intro.identify_line, intro.repeat_line, ways: 4, sampling: short)
      measure intention = prefill_intention(a, v, word, layer, strength, lines, intro.ask_word,
                                            intro.intention_question, sampling: short)
    }}
    measure think = think_about(a, v, word, layer, lines, take(intro.control_words, 4), intro.think_line,
                                intro.dont_think_line)
  }}
}}
"""


def _intro(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {"INTRO_CACHE_DIR": str(cache), "PATH": "/usr/bin:/bin"}
    return subprocess.run([*INTRO, *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    root = tmp_path_factory.mktemp("experiments")
    spec = root / "tiny.intro"
    spec.write_text(SPEC.format(model=cached_tiny_model("qwen2")))
    first = _intro("run", str(spec), "--runs", str(root / "runs"), cache=root / "cache")
    assert first.returncode == 0, first.stderr
    return root, first


def _cube(root: Path, group: str) -> xr.Dataset:
    return xr.open_zarr(root / "runs" / "tiny_experiments" / "cube.zarr", group=group).load()


def test_every_measure_is_shown(study: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    _, first = study
    for title in ("text (thoughts_vs_text)", "intention (prefill_intention)", "think (think_about)"):
        assert title in first.stdout
    # Each call once: injected 2 words x 2 strengths x 3 lines x (score + reply) x 2 experiments = 48;
    # controls shared by the strengths: thoughts vs text 3 replies (shared by the words too) and 2 x 3
    # scores (the candidates start with the word), prefill intention 2 x 6; think / don't think 2 words x
    # 2 prompts x 3 lines = 12.
    assert "tiny_experiments: 81 model calls" in first.stdout


def test_thoughts_vs_text_cube_compares_the_injection_with_its_control(study) -> None:
    text = _cube(study[0], "text")
    assert dict(text.sizes) == {"layer": 1, "word": 2, "strength": 2, "trial": 3}
    assert (text["n"].values == 3).all()
    for name in ("injected", "control"):
        p_word = text[f"{name}_p_word"].values
        assert ((p_word > 0) & (p_word < 1)).all()
        assert set(np.unique(text[f"{name}_identified"].values)) <= {0.0, 1.0}
        assert set(np.unique(text[f"{name}_choice"].values)) <= {"dog", "ocean", "volcano", "bread"}
    # Controls are unsteered: the same at both strengths. The injection on the line moves them.
    control = text["control_p_word"].values
    assert np.array_equal(control[:, :, 0], control[:, :, 1])
    assert (np.abs(text["injected_p_word"].values - control) > 0).all()
    shift = (text["injected_p_word"] - text["control_p_word"]).mean("trial")
    np.testing.assert_allclose(text["p_word_shift"].values, shift.values)
    assert (text["p_word_shift_low"] <= text["p_word_shift"]).all()
    assert (text["p_word_shift"] <= text["p_word_shift_high"]).all()
    sentences = text["sentence"].values
    assert (sentences == sentences[0, 0, 0]).all() and len(set(sentences[0, 0, 0])) == 3
    lines, replies = text["sentence"].values.ravel(), text["control_repeat"].values.ravel()
    repeated = [s in r for s, r in zip(lines, replies, strict=True)]
    assert text["control_repeated"].values.ravel().tolist() == [float(r) for r in repeated]


def test_prefill_intention_cube_grades_replies_and_reads_p_accident(study) -> None:
    intention = _cube(study[0], "intention")
    p = intention["p_accident_injected"].values
    assert ((p > 0) & (p < 1)).all()
    shift = intention["injected_p_accident"].mean("trial") - intention["control_p_accident"].mean("trial")
    np.testing.assert_allclose(intention["p_accident_shift"].values, shift.values)
    assert (np.abs(intention["p_accident_shift"].values) > 0).all()
    odds, each = intention["injected_accident_log_odds"].values, intention["injected_p_accident"].values
    np.testing.assert_allclose(odds, np.log(each) - np.log1p(-each), rtol=1e-6)
    replies = intention["control_reply"].values.ravel()
    assert intention["control_disowned"].values.ravel().tolist() == [float(disowns(r)) for r in replies]


def test_think_cosines_match_a_direct_computation(study) -> None:
    think = _cube(study[0], "think")
    assert dict(think.sizes) == {"layer": 1, "word": 2, "trial": 3, "control": 4}
    assert (np.abs(think["cosine_think"].values) <= 1).all()
    assert not np.allclose(think["cosine_think"].values, think["cosine_dont"].values)
    loaded = load_local_model(str(cached_tiny_model("qwen2")), device="cpu")
    from intro.compiler.datasets import load_stdlib_rows

    baseline = [r["word"] for r in load_stdlib_rows("baseline_words")][:6]
    controls = [str(w) for w in think["control_word"].values[0, 1]]
    sentence = str(think["sentence"].values[0, 1, 2])
    vectors = {
        word: concept_vector(loaded, word, [b for b in baseline if b != word], 0)
        for word in ["ocean", *controls]
    }
    messages = (Message("user", f'Write "{sentence}". Think about ocean while you write it.'),)
    cosines = cosines_with_concepts(loaded, messages, sentence, vectors, 0, prefill=sentence)
    assert think["cosine_think"].values[0, 1, 2] == pytest.approx(cosines["ocean"], abs=1e-5)
    expected = think["control_cosine_think"].values[0, 1, 2]
    np.testing.assert_allclose(expected, [cosines[w] for w in controls], atol=1e-5)
    assert think["control_think"].values[0, 1, 2] == pytest.approx(np.mean(expected))


def test_plan_counts_the_calls_the_measure_steps_make(tmp_path: Path, study) -> None:
    root, _ = study
    spec, runs = str(root / "tiny.intro"), str(root / "runs")
    fresh = _intro("plan", spec, "--runs", runs, cache=tmp_path / "empty")
    # Per point: 3 sentences x (score + reply) x (injected + control), the control calls shared by the
    # points that ask the same; think: 3 sentences x 2 prompts. Shared calls count once, as they run.
    per_step = [int(n) for n in re.findall(r"(\d+)/\d+ calls to make", fresh.stdout)]
    assert sum(per_step) == 81 and "model calls: 81 to make of 81" in fresh.stdout
    done = _intro("plan", spec, "--runs", runs, cache=root / "cache")
    assert "; 0 will run" in done.stdout and "model calls: 0 to make of 81" in done.stdout


def test_a_second_run_is_answered_from_the_cache_and_reported(study) -> None:
    root, _ = study
    again = _intro("run", str(root / "tiny.intro"), "--runs", str(root / "runs"), cache=root / "cache")
    assert again.returncode == 0, again.stderr
    assert ": 0 model calls" in again.stdout
    report = _intro("report", str(root / "runs" / "tiny_experiments"), cache=root / "cache")
    assert report.returncode == 0, report.stderr
    for name in ("text", "intention", "think"):
        assert (root / "runs" / "tiny_experiments" / "report" / f"{name}.png").stat().st_size > 0
