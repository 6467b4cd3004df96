"""Lowering thoughts vs text, prefill intention and think / don't think, and their diagnostics."""

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
sampling three {{ temperature: 1 samples: 3 }}
let lines = take(intro.sentences, 3)
study s {{
  for layer in [16], strength in [2, 4], word in ["dog", "ocean"] {{
    let v = concept(q, word, layer, intro.baseline)
    measure text = thoughts_vs_text(q, v, word, layer, strength, lines, {candidates}, intro.identify_line,
                                    intro.repeat_line{text_extra})
    measure intention = prefill_intention(q, v, word, layer, strength, lines, intro.ask_word,
                                          intro.intention_question{intention_extra})
    measure think = think_about({think_model}, v, word, {think_layer}, lines, take(intro.control_words, 5),
                                {think}, intro.dont_think_line)
  }}
}}
"""
DEFAULTS = {
    "candidates": "intro.candidates",
    "text_extra": "",
    "intention_extra": "",
    "think_model": "q",
    "think_layer": "layer",
    "think": "intro.think_line",
}


def _plan(tmp_path: Path, **changes: str) -> Any:
    spec = tmp_path / "s.intro"
    spec.write_text(STUDY.format(**{**DEFAULTS, **changes}))
    (plan,) = compile_spec(spec)
    return plan


def _point(plan: Any, measure: str, coords: tuple[Any, ...]) -> Any:
    (found,) = [m for m in plan.measures if m.name == measure]
    return plan.step(dict(found.points)[coords])


def test_each_point_lowers_to_the_shared_vector_and_one_measure_step(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    kinds = Counter(s.kind for s in plan.steps)
    # One vector per word; think / don't think has no strength, so its two strengths are one step.
    assert kinds == {"vector": 2, "thoughts_vs_text": 4, "prefill_intention": 4, "think_about": 2}
    assert {m.name: m.kind for m in plan.measures} == {
        "text": "thoughts_vs_text",
        "intention": "prefill_intention",
        "think": "think_about",
    }
    step = _point(plan, "text", (16, 4, "dog"))
    assert step.deps == (step.params["vector"],)
    assert plan.step(step.params["vector"]).params["word"] == "dog"
    assert step.params["strength"] == 4.0 and step.params["candidates"][0] == "dog"
    assert step.params["choices"][:2] == ["Dog", "Ocean"] and len(step.params["choices"]) == 10
    ocean = _point(plan, "text", (16, 4, "ocean")).params["candidates"]
    assert ocean[:3] == ["ocean", "dog", "volcano"] and len(ocean) == 10
    sentence = step.params["sentences"][0]
    (identify,) = plan.prompts[step.params["identify_prompts"][0]].messages
    assert identify[1].startswith("Tell me what word you think about") and identify[1].endswith(sentence)
    (repeat,) = plan.prompts[step.params["repeat_prompts"][0]].messages
    assert repeat[1] == f"Repeat the line below.\n\n{sentence}"


def test_the_intention_reply_is_forced_to_the_concept_word(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    step = _point(plan, "intention", (16, 2, "ocean"))
    reply = plan.prompts[step.params["reply_prompts"][1]]
    assert [role for role, _ in reply.messages] == ["user", "assistant", "user"]
    assert reply.messages[1] == ("assistant", "ocean")
    assert reply.messages[2][1] == "Did you mean to say that, or was it an accident?"
    assert step.params["sentences"][1] in reply.messages[0][1] and not reply.prefill
    readout = plan.prompts[step.params["readout_prompts"][1]]
    assert readout.messages == reply.messages and readout.prefill == "It was"
    assert step.params["choices"] == [" an accident", " intentional"]


def test_think_prompts_prefill_the_written_sentence(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    step = _point(plan, "think", (16, 2, "dog"))
    assert step.id == _point(plan, "think", (16, 4, "dog")).id
    sentence = step.params["sentences"][2]
    think = plan.prompts[step.params["think_prompts"][2]]
    dont = plan.prompts[step.params["dont_prompts"][2]]
    assert think.prefill == dont.prefill == sentence
    assert think.messages[0][1] == f'Write "{sentence}". Think about dog while you write it.'
    assert dont.messages[0][1] == f'Write "{sentence}". Don\'t think about dog while you write it.'
    assert len(step.params["controls"]) == 5 and "dog" not in step.params["controls"]
    assert step.params["baseline"] == plan.step(step.params["vector"]).params["baseline"]


def test_a_measure_setting_changes_only_that_measure_s_steps(tmp_path: Path) -> None:
    base = {s.id: s.hash for s in _plan(tmp_path).steps}
    other = {s.id: s.hash for s in _plan(tmp_path, text_extra=", sampling: intro.trial_sampling").steps}
    changed = {i for i in base if base[i] != other[i]}
    assert changed == {i for i in base if i.startswith("thoughts_vs_text.")}


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"candidates": '["dog", "ocean", "tree"]'}, "E325"),
        ({"candidates": '["ocean"]', "text_extra": ", ways: 1"}, "E326"),
        ({"text_extra": ", sampling: three"}, "E328"),
        ({"intention_extra": ", sampling: three"}, "E328"),
        ({"think": '"Write {{sentence}}."'}, "E324"),
        ({"think_layer": "12"}, "E327"),
        ({"think_model": "inject(q, v, layer, 2)"}, "E329"),
    ],
)
def test_bad_experiments_are_diagnosed(tmp_path: Path, changes: dict[str, str], code: str) -> None:
    with pytest.raises(CompileError) as error:
        _plan(tmp_path, **changes)
    assert code in {d.code for d in error.value.diagnostics}


def test_the_paper_scale_spec_compiles() -> None:
    (plan,) = compile_spec(SPECS / "concept_experiments.intro")
    assert {m.kind for m in plan.measures} == {"thoughts_vs_text", "prefill_intention", "think_about"}


def test_the_mini_spec_compiles_to_the_stdlib_functions() -> None:
    (plan,) = compile_spec(SPECS / "concept_experiments_mini.intro")
    # The three experiments are stdlib functions on the primitives: groups of estimates and comparisons
    # (tests/runtime/test_concept_experiments_on_primitives.py).
    groups = {m.name.split(".")[0] for m in plan.measures}
    assert groups == {"thoughts_vs_text", "prefill_intention", "think_about"}
    assert {m.kind for m in plan.measures} == {"estimate", "comparison"}
