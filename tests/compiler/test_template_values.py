"""Prompt templates see the plain values bound where they are written: loop variables, lets, a function's
parameters (a row's own field of the same name wins), and `+` joins strings."""

from __future__ import annotations

import json
from pathlib import Path

from intro.cli import main

SPEC = """
model m = litellm "openai/some-model"
sampling s { temperature: 0, max_tokens: 4 }
fn ask(animal: string) {
  return generate(m, prompts(["a"], "Do you like {{ animal }}s? {{ text }}"), s)
}
study values {
  for animal in ["owl", "cat"] {
    let greeting = "Hello, " + animal + "."
    measure direct = generate(m, prompts([{id: "1", animal: "row-wins", q: "x"}, {id: "2", q: "y"}],
                                         "{{ greeting }} {{ animal }} {{ q }}"), s)
    measure via_fn = ask(animal)
    measure graded = judge(m, generate(m, prompts(["z"], "{{ text }}"), s), "About {{ animal }}? {{ text }}")
  }
}
"""


def plan_of(tmp_path: Path, spec: str) -> dict:
    path = tmp_path / "values.intro"
    path.write_text(spec)
    out = tmp_path / "plan.json"
    assert main(["compile", str(path), "-o", str(out)]) == 0
    return json.loads(out.read_text())


def user_turns(plan: dict) -> set[str]:
    return {p["messages"][-1][1] for p in plan["prompts"].values()}


def test_loop_variables_lets_and_parameters_reach_templates(tmp_path: Path) -> None:
    turns = user_turns(plan_of(tmp_path, SPEC))
    for animal in ("owl", "cat"):
        assert f"Hello, {animal}. {animal} y" in turns  # a let built with +, and the loop variable
        assert f"Do you like {animal}s? a" in turns  # a function's parameter
    assert "Hello, owl. row-wins x" in turns  # the row's own field wins over the loop variable


def test_a_rubric_sees_the_loop_variable_so_each_arm_is_its_own_step(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, SPEC)
    renders = [s for s in plan["steps"] if s["kind"] == "render"]
    assert sorted(s["params"]["bound"]["animal"] for s in renders) == ["cat", "owl"]
    assert len({s["hash"] for s in renders}) == 2
