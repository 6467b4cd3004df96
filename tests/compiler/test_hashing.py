"""Step hashes cover what determines a step's output, and nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from intro.compiler import Plan, compile_spec

SPEC = """\
use stdlib.looking_inward as li

model qwen = embedded "qwen2.5-coder-0.5b-instruct"
model gpt = litellm "openai/gpt-4o-2024-08-06" { logprobs: true, api_base: "http://localhost:8001/v1" }

task animals {
  data: "animals.jsonl"
  prompt: "What are the next 2 animals after {{ sequence }}? Answer only with the animals."
}

task colors {
  data: "colors.jsonl"
  prompt: "What are the next 2 colors after {{ sequence }}? Answer only with the colors."
}

property first_character {
  extract: "first_character"
  question: "What is the first character of the response you gave?"
}

property first_word {
  extract: "first_word"
  question: "What is the first word of the response you gave?"
}

split paper {
  train: [colors]
  test: [animals]
  items: 3
  seed: 1
}

study hashing {
  let trained = finetune(qwen, li.hypothetical_examples(qwen, paper.train, [first_character, first_word]))
  for predictor in [qwen, trained, gpt], property in [first_character, first_word] {
    measure accuracy = li.predict_property(predictor, qwen, paper.test, property).accuracy
  }
}
"""

ANIMALS = ["cat, dog, cow", "owl, bat, eel", "ant, bee, fly", "elk, yak, emu"]
COLORS = ["red, blue, green", "black, white, grey", "pink, teal, gold", "navy, lime, plum"]


def write_data(folder: Path) -> None:
    rows = {
        "animals.jsonl": [{"id": f"a{i}", "sequence": s, "split": "val"} for i, s in enumerate(ANIMALS)],
        "colors.jsonl": [{"id": f"c{i}", "sequence": s, "split": "train"} for i, s in enumerate(COLORS)],
    }
    for name, items in rows.items():
        (folder / name).write_text("".join(json.dumps(row) + "\n" for row in items))


@pytest.fixture
def compile_source(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Compile spec text (written next to the tiny data files) to its one plan."""
    write_data(tmp_path)
    count = 0

    def compile_text(source: str) -> Plan:
        nonlocal count
        count += 1
        spec = tmp_path / f"spec{count}.intro"
        spec.write_text(source)
        (plan,) = compile_spec(spec)
        return plan

    return compile_text


def step_hashes(plan: Plan) -> dict[str, str]:
    return {s.id: s.hash for s in plan.steps}


def downstream(plan: Plan, roots: set[str]) -> set[str]:
    """`roots` and every step that depends on one of them, directly or not (steps are in topological order)."""
    reached = set(roots)
    for step in plan.steps:
        if reached.intersection(step.deps):
            reached.add(step.id)
    return reached


def test_comments_and_layout_change_no_hash(compile_source) -> None:  # type: ignore[no-untyped-def]
    plan = compile_source(SPEC)
    relaid = "# A comment at the top.\n\n" + SPEC.replace("\n  ", "\n      ").replace(
        "study hashing {", "# Why this study exists.\nstudy hashing {   # trailing"
    ).replace(", [first_character, first_word]))", ",\n   [first_character,   # one\n first_word]\n))")
    other = compile_source(relaid)
    assert step_hashes(other) == step_hashes(plan)
    assert other.hash == plan.hash
    assert other.to_json()["steps"] == plan.to_json()["steps"]


def test_one_prompt_word_changes_exactly_the_steps_downstream_of_that_tasks_prompts(compile_source) -> None:  # type: ignore[no-untyped-def]
    before = compile_source(SPEC)
    after = compile_source(SPEC.replace("the next 2 colors after", "the next 2 colours after"))
    changed_prompts = set(before.prompts) - set(after.prompts)
    assert len(changed_prompts) == 3 * (1 + 2)  # 3 items, each an object prompt and 2 property questions
    reading = {
        s.id for s in before.steps if any(key in json.dumps(s.params.to_json()) for key in changed_prompts)
    }
    expected = downstream(before, reading)

    old, new = step_hashes(before), step_hashes(after)
    assert set(old) == set(new), "a prompt change must not add or remove steps"
    changed = {step_id for step_id in old if old[step_id] != new[step_id]}
    assert changed == expected
    assert after.hash != before.hash
    # The finetuned model learnt from the changed prompts, so its answers on the other task change too...
    assert any(s.startswith("finetune.") for s in changed)
    assert any(s.startswith("generate.hashing[trained(qwen)]") for s in changed)
    # ...while what the untrained models do on that task stays cached (qwen's first call: its behaviour).
    assert "generate.hashing[qwen]" in set(old) - changed
    assert any("[gpt]" in s for s in set(old) - changed)


def test_where_a_model_is_served_changes_no_hash(compile_source) -> None:  # type: ignore[no-untyped-def]
    plan = compile_source(SPEC)
    moved = compile_source(
        SPEC.replace("http://localhost:8001/v1", "https://inference.example.org/v1").replace(
            "logprobs: true,", 'logprobs: true, concurrency: 2, timeout: 5, api_key_env: "KEY",'
        )
    )
    assert moved.serving["gpt"] != plan.serving["gpt"], "the change must reach the plan"
    assert step_hashes(moved) == step_hashes(plan)
    assert moved.hash == plan.hash


def test_what_a_model_is_changes_its_hashes(compile_source) -> None:  # type: ignore[no-untyped-def]
    plan = compile_source(SPEC)
    other = compile_source(SPEC.replace("openai/gpt-4o-2024-08-06", "openai/gpt-4o-2024-11-20"))
    changed = {s for s, h in step_hashes(plan).items() if step_hashes(other)[s] != h}
    asking_gpt = {s.id for s in plan.steps if s.params.reads == "gpt"}
    assert asking_gpt and changed == downstream(plan, asking_gpt)


def test_plan_json_round_trips(compile_source) -> None:  # type: ignore[no-untyped-def]
    plan = compile_source(SPEC)
    text = plan.dumps()
    loaded = Plan.loads(text)
    assert loaded == plan
    assert loaded.hash == plan.hash
    assert loaded.dumps() == text
    assert json.loads(text)["plan_hash"] == plan.hash
