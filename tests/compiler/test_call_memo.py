"""A call met again with the same inputs takes the value computed the first time (compiler/call_memo.py).

Reuse is seen in the checked study: the measure points of a function called from a sweep share the
values that do not depend on the sweep's changing argument (the same objects, not equal copies). What
a call reads besides its arguments (the template values of its block) and how inputs compare (1, 1.0
and true print apart) keep apart values that must differ.
"""

from __future__ import annotations

import json
from pathlib import Path

from intro.cli import main
from intro.compiler import check

SWEEP = """
model m = embedded "qwen2.5-coder-0.5b-instruct"
let lines = ["The sky is blue.", "Grass is green."]

fn trial(model: model, word: string, strength: number) {
  let asked = prompts(lines, "Repeat the line: {{ text }}")
  let about = prompts(lines, "Think of {{ word }}. {{ text }}")
  let strong = steer(model, concept(model, word, 12, ["cat", "tree"]), 12, strength)
  return {
    plain: rate(extract(generate(model, asked), contains("blue")))
    thinking: rate(extract(generate(model, about), contains(word)))
    steered: rate(extract(generate(strong, asked), contains("blue")))
  }
}

study sweep {
  for word in ["dog", "ocean"], strength in [1, 2, 4] {
    measure t = trial(m, word, strength)
  }
}
"""


def points(tmp_path: Path, spec: str, name: str) -> list[tuple[dict[str, object], object]]:
    path = tmp_path / "sweep.intro"
    path.write_text(spec)
    (study,) = check(path).studies
    return [(dict(p.coords), p.value) for p in study.points if p.name == name]


def compiled_user_turns(tmp_path: Path, spec: str) -> set[str]:
    path = tmp_path / "compiled.intro"
    path.write_text(spec)
    out = tmp_path / "plan.json"
    assert main(["compile", str(path), "-o", str(out)]) == 0
    return {p["messages"][-1][1] for p in json.loads(out.read_text())["prompts"].values()}


def test_what_the_changing_argument_does_not_reach_is_computed_once(tmp_path: Path) -> None:
    plain = [value for _, value in points(tmp_path, SWEEP, "t.plain")]
    steered = [value for _, value in points(tmp_path, SWEEP, "t.steered")]
    assert len(plain) == len(steered) == 6
    assert all(value is plain[0] for value in plain)  # one value, reused by all six calls
    assert len({id(value) for value in steered}) == 6  # a steered model per word and strength
    assert len(set(steered)) == 6


def test_template_values_of_the_block_keep_values_apart(tmp_path: Path) -> None:
    thinking = points(tmp_path, SWEEP, "t.thinking")
    by_word: dict[object, list[object]] = {}
    for coords, value in thinking:
        by_word.setdefault(coords["word"], []).append(value)
    dog, ocean = by_word["dog"], by_word["ocean"]
    assert all(value is dog[0] for value in dog) and all(value is ocean[0] for value in ocean)
    assert dog[0] != ocean[0]
    turns = compiled_user_turns(tmp_path, SWEEP)
    assert {"Think of dog. The sky is blue.", "Think of ocean. Grass is green."} <= turns


NUMBERS = """
model m = litellm "openai/some-model"

fn ask(n: any) {
  return generate(m, prompts(["x"], "Count to {{ n }}."))
}

study numbers {
  for n in [1, 1.0, true, 1] {
    measure said = ask(n)
  }
}
"""


def test_inputs_equal_in_python_but_printed_apart_are_not_one_input(tmp_path: Path) -> None:
    said = [value for _, value in points(tmp_path, NUMBERS, "said")]
    assert said[0] is said[3]  # the same 1 again
    named = [dict(value.prompts.values)["n"] for value in said]
    assert [type(n) for n in named] == [int, float, bool, int]


def test_calls_that_never_find_an_earlier_value_are_still_right(tmp_path: Path) -> None:
    # After 256 evaluations without a reuse, a call is evaluated without the memo; its values stay right
    # and the calls around it are still reused.
    words = ", ".join(f'"w{i}"' for i in range(300))
    spec = f"""
model m = litellm "openai/some-model"
let lines = ["a b", "c d"]
fn found(model: model, word: string) {{
  let asked = prompts(lines, "{{{{ text }}}}")
  return rate(extract(generate(model, asked), contains(word)))
}}
study many {{
  for word in [{words}] {{
    measure found = found(m, word)
  }}
}}
"""
    found = points(tmp_path, spec, "found")
    assert [dict(value.values.rule.args) for _, value in found] == [{"word": f"w{i}"} for i in range(300)]
    assert all(value.values.texts is found[0][1].values.texts for _, value in found)


def test_the_paper_scale_concept_experiments_share_what_layer_and_strength_do_not_reach() -> None:
    # 4400 calls of the stdlib functions: the unsteered model's answers depend on the word alone, so the
    # 2000 calls of thoughts_vs_text_judged (the paper's five strengths) share 50 values for them (one per
    # word), not 2000.
    spec = Path(__file__).resolve().parents[2] / "specs" / "concept_experiments.intro"
    (study,) = check(spec).studies
    control = [p for p in study.points if p.name == "thoughts_vs_text.identification_control"]
    by_word: dict[object, set[int]] = {}
    for point in control:
        by_word.setdefault(dict(point.coords)["word"], set()).add(id(point.value))
    assert len(control) == 2000 and len(by_word) == 50
    assert all(len(values) == 1 for values in by_word.values())
