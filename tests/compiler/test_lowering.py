"""Lowering: the DAG's edges and the parameters the runtime relies on."""

from __future__ import annotations

import json
from pathlib import Path

from intro.compiler import compile_spec

SPEC = """
use stdlib.looking_inward as li
model m = litellm "openai/gpt-4o-mini" { finetune: true }
model other = litellm "openai/gpt-4o" { finetune: true }
task seq { data: "seq.jsonl" prompt: "After {{ sequence }}?" }
task ab { data: "ab.jsonl" prompt: "{{ q }}" answer: "choice" choices: ["A", "B", "C", "D"] }
split s { train: [seq, ab] test: [] items: 4 }
split t { test: [seq] items: 4 }
study lower {
  let first = finetune(m, li.hypothetical_examples(m, s.train, [li.first_character, li.among_a_or_c]))
  let asked = prompts(s.train)
  let second = finetune(first, examples(asked, generate(other, asked)))
  measure p = li.predict_property(second, second, t.test, li.first_character).accuracy
}
"""


def compile_here(tmp_path: Path):
    with (tmp_path / "seq.jsonl").open("w") as f:
        for i in range(8):
            f.write(
                json.dumps({"id": f"s{i}", "split": "train" if i % 2 else "val", "sequence": f"a{i}, b"})
                + "\n"
            )
    with (tmp_path / "ab.jsonl").open("w") as f:
        for i in range(8):
            f.write(json.dumps({"id": f"q{i}", "split": "train", "q": f"Q{i}?"}) + "\n")
    spec = tmp_path / "lower.intro"
    spec.write_text(SPEC)
    return compile_spec(spec)[0]


def test_finetuning_a_finetuned_model_waits_for_its_base(tmp_path):
    plan = compile_here(tmp_path)
    finetunes = [s for s in plan.steps if s.kind == "finetune"]
    first, second = finetunes
    assert first.id in second.deps
    assert [s.id for s in plan.steps].index(first.id) < [s.id for s in plan.steps].index(second.id)


def test_reading_properties_off_answers_knows_the_tasks_answer_kinds(tmp_path):
    plan = compile_here(tmp_path)
    (reading,) = [s for s in plan.steps if s.kind == "extract" and "ab" in (s.params.tasks or {})]
    assert reading.params.tasks == {"seq": ("text", ()), "ab": ("choice", ("A", "B", "C", "D"))}
    assert [each.name for each in reading.params.each] == ["first_character", "among_a_or_c"]
