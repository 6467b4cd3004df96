"""Lowering the injected-thought measurement: vector, injected and control sample steps, a grading step."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from intro.compiler import compile_spec
from intro.compiler.diagnostics import CompileError

SPECS = Path(__file__).resolve().parents[2] / "specs"

STUDY = """
use stdlib.introspection as intro
model q = embedded "qwen2.5-coder-0.5b-instruct"
study s {{
  for layer in [14, 16], strength in [2, 4], word in ["dog", "ocean"] {{
    measure d = injected_thought(q, concept(q, word, layer, intro.baseline), word, layer, strength, {prompt}
                                 {extra})
  }}
}}
"""


def _plan(tmp_path: Path, prompt: str = "intro.trial,", extra: str = "trials: 5") -> Any:
    spec = tmp_path / "s.intro"
    spec.write_text(STUDY.format(prompt=prompt, extra=extra))
    (plan,) = compile_spec(spec)
    return plan


def test_each_point_lowers_to_a_vector_an_injected_sample_and_a_shared_control(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    kinds = Counter(s.kind for s in plan.steps)
    # 2 layers x 2 words vectors, 8 injected sample steps, one control shared by all 8 points.
    assert kinds == {"vector": 4, "sample": 9, "injected_thought": 8}
    (measure,) = plan.measures
    assert [name for name, _ in measure.axes] == ["layer", "strength", "word"]
    step = plan.step(dict(measure.points)[(16, 4, "dog")])
    injected, control = plan.step(step.params["injected_step"]), plan.step(step.params["control_step"])
    assert injected.params["samples"] == control.params["samples"] == 5
    assert injected.params["temperature"] == 1.0 and injected.params["max_tokens"] == 100
    steered = plan.models[injected.params["model"]]
    assert steered.kind == "steered" and steered.params["layer"] == 16 and steered.params["strength"] == 4.0
    assert steered.params["start"] == "Trial 1"
    vector = plan.step(steered.params["vector"])
    assert (
        vector.params["op"] == "concept" and vector.params["word"] == "dog" and vector.params["layer"] == 16
    )
    assert plan.models[control.params["model"]].kind == "embedded"
    messages = plan.prompts[step.params["prompt"]].messages
    assert [role for role, _ in messages] == ["user", "assistant", "user"]
    assert "Trial 1: Do you detect an injected thought?" in messages[-1][1]


def test_the_injection_changes_the_hashes_that_depend_on_it(tmp_path: Path) -> None:
    base = {s.id: s.hash for s in _plan(tmp_path).steps}
    other = {s.id: s.hash for s in _plan(tmp_path, extra='trials: 5, start: "Do you detect"').steps}
    assert base["sample.s.control[q]"] == other["sample.s.control[q]"]
    changed = [i for i in base if i.startswith("sample.s.injected") and base[i] != other.get(i)]
    assert len(changed) == 8


@pytest.mark.parametrize(
    ("prompt", "extra", "code"),
    [
        ("intro.trial,", 'start: "Trial 9"', "E322"),
        ('[{ user: "hi" }, { assistant: "Trial 1" }],', "trials: 5", "E321"),
        ('[{ robot: "Trial 1" }],', "trials: 5", "E320"),
        ("intro.trial,", "trials: 0", "E323"),
    ],
)
def test_bad_trials_are_diagnosed(tmp_path: Path, prompt: str, extra: str, code: str) -> None:
    with pytest.raises(CompileError) as error:
        _plan(tmp_path, prompt, extra)
    assert code in {d.code for d in error.value.diagnostics}


def test_the_concept_injection_specs_compile() -> None:
    (plan,) = compile_spec(SPECS / "concept_injection.intro")
    assert any(s.kind == "injected_thought" for s in plan.steps)


def test_the_mini_spec_runs_the_trials_and_the_readout_on_the_primitives() -> None:
    (plan,) = compile_spec(SPECS / "concept_injection_mini.intro")
    kinds = {s.kind for s in plan.steps}
    assert "injected_thought" not in kinds and {"generate", "choose", "probability", "vector"} <= kinds
    measures = {m.name for m in plan.measures}
    assert {"trials.detection", "trials.net", "p_yes.injected", "p_yes.shift"} <= measures
