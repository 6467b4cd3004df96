"""Prompt templates see the plain values bound where they are written: loop variables, lets, a function's
parameters (a row's own field of the same name wins), and `+` joins strings."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from intro.cli import main
from intro.compiler.template_sandbox import TemplateProblem, render
from tests.servers import EchoServer

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


# A rubric that says "a single word" in prose: `word` is a loop variable, but the rubric does not read it
# (`{{ word }}` would), so both arms grade the same answers with the same prompts: one judge step.
PROSE = """
model m = litellm "openai/echo" {{ api_base: "{url}", api_key_env: "INTRO_PROSE_KEY" }}
sampling s {{ max_tokens: 4 }}
study prose {{
  let answers = generate(m, prompts(["a", "b"], "Say {{{{ text }}}}"), s)
  for word in ["dog", "cat"] {{
    measure graded = judge(m, answers, "Is the answer a single word? {{{{ text }}}}", ["yes", "no"])
  }}
}}
"""


def test_a_name_mentioned_in_prose_is_not_read(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, PROSE.format(url="http://127.0.0.1:9"))
    renders = [s for s in plan["steps"] if s["kind"] == "render"]
    assert len({s["hash"] for s in renders}) == 1
    assert all("word" not in s["params"].get("bound", {}) for s in renders)


def test_planned_calls_are_the_calls_the_run_makes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTRO_PROSE_KEY", "sk-prose")
    with EchoServer() as server:
        spec = tmp_path / "prose.intro"
        spec.write_text(PROSE.format(url=server.url))
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            assert (
                main(
                    [
                        "plan",
                        str(spec),
                        "--json",
                        "--runs",
                        str(tmp_path / "runs"),
                        "--cache",
                        str(tmp_path / "cache"),
                    ]
                )
                == 0
            )
        planned = json.loads(printed.getvalue())["totals"]["calls_to_make"]
        argv = ["run", str(spec), "--runs", str(tmp_path / "runs"), "--cache", str(tmp_path / "cache")]
        with contextlib.redirect_stdout(io.StringIO()):
            assert main([*argv, "--quiet"]) == 0
        assert planned == server.requests_received == 4  # two answers, each graded once


# ---------------------------------------------------------------------------------------------------------
# Lists are plain values too, and `drawn` makes a random choice per row


def test_drawn_is_a_seeded_choice_per_key_and_refuses_more_than_there_are() -> None:
    words = ["ant", "bee", "cat", "dog", "eel", "fox"]
    template = "{{ words | drawn(3, [seed, prompt]) | join(',') }}"
    shown = {p: render(template, {"words": words, "seed": 0, "prompt": p}) for p in ("a", "b", "c", "d")}
    assert shown == {p: render(template, {"words": words, "seed": 0, "prompt": p}) for p in shown}  # stable
    assert len(set(shown.values())) > 1  # another key, another draw
    assert all(len(set(s.split(","))) == 3 and set(s.split(",")) <= set(words) for s in shown.values())
    with pytest.raises(TemplateProblem, match=r"drawn\(\) takes from 0 to 6 of these 6 items, not 7"):
        render("{{ words | drawn(7, 1) }}", {"words": words})


def test_a_template_reads_a_list_bound_where_it_is_written(tmp_path: Path) -> None:
    spec = tmp_path / "lists.intro"
    spec.write_text(
        'model m = litellm "openai/some-model"\n'
        "study lists {\n"
        '  let pool = ["ant", "bee", "cat"]\n'
        '  measure asked = generate(m, prompts(["x"], "Pick from {{ pool | join(\', \') }}."))\n'
        "}\n"
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(["compile", str(spec), "-o", str(tmp_path / "plan.json")])
    assert code == 0, out.getvalue()
    compiled = json.loads((tmp_path / "plan.json").read_text())
    assert [m[-1] for m in (p["messages"] for p in compiled["prompts"].values())] == [
        ["user", "Pick from ant, bee, cat."]
    ]
