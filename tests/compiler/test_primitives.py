"""Lowering the open language's primitives (compiler/primitives.py, compiler/lower_dataflow.py) to plan
steps: shared expressions, run-time prompt sets and their hashes, `intro plan`'s call counts, and training
examples. API models (litellm) keep compilation free of weights; nothing here calls a model."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from intro.cli import main
from intro.compiler import compile_spec
from intro.compiler.plan import Plan, Step

MODELS = """
model m = litellm "openai/gpt-4o-mini" { logprobs: true, finetune: true }
model g = litellm "openai/gpt-4o" { logprobs: true }
sampling three { temperature: 1 samples: 3 max_tokens: 5 }
sampling two { temperature: 1 samples: 2 max_tokens: 7 }
"""

QUESTIONS = [
    {"id": "q1", "question": "Name a colour."},
    {"id": "q2", "question": "Count to three."},
    {"id": "q3", "question": "Name a bird."},
    {"id": "q4", "question": "Is fire cold?"},
    {"id": "q5", "question": "Say yes."},
]


def write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def plan_of(directory: Path, body: str, name: str = "spec") -> Plan:
    """The plan of a spec made of the shared models and `body`, next to the question rows."""
    if not (directory / "qs.jsonl").exists():
        write_rows(directory / "qs.jsonl", QUESTIONS)
    spec = directory / f"{name}.intro"
    spec.write_text(MODELS + body, encoding="utf-8")
    return compile_spec(spec)[0]


def steps_of(plan: Plan, kind: str) -> list[Step]:
    return [s for s in plan.steps if s.kind == kind]


def point(plan: Plan, measure: str) -> Step:
    (m,) = [m for m in plan.measures if m.name == measure]
    ((_, step_id),) = m.points
    return next(s for s in plan.steps if s.id == step_id)


def user_turn(plan: Plan, prompt_key: str) -> str:
    return plan.prompts[prompt_key].messages[-1][1]


# ---------------------------------------------------------------- one step per computation
def test_the_same_expression_reached_twice_is_one_step(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        """
study s {
  let asked = prompts(["Name a colour.", "Name a bird."])
  measure a = generate(m, asked)
  measure b = generate(m, prompts(["Name a colour.", "Name a bird."]))
  measure r1 = rate(extract(generate(m, asked), contains("blue")))
  measure r2 = rate(extract(generate(m, prompts(["Name a colour.", "Name a bird."])), contains("blue")))
  measure warm = generate(m, asked, two)
  measure other_word = rate(extract(generate(m, asked), contains("owl")))
}
""",
    )
    assert point(plan, "a").id == point(plan, "b").id
    assert point(plan, "r1").id == point(plan, "r2").id
    # different sampling or a different rule is a different computation
    assert len(steps_of(plan, "generate")) == 2
    assert len(steps_of(plan, "extract")) == 2
    assert len(steps_of(plan, "estimate")) == 2
    # and a step's hash alone decides: the two estimates hang off the one generate step
    greedy = point(plan, "a")
    assert {s.deps[0] for s in steps_of(plan, "extract")} == {greedy.id}


def test_prompts_from_rows_are_rendered_while_lowering(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        """
study s {
  measure a = generate(m, prompts(rows("qs.jsonl"), "Q: {{ question }}", system: "Be brief.", prefill: "A:"), three)
}
""",
    )
    step = point(plan, "a")
    assert [row.item for row in step.params.rows] == [f"qs/q{i}" for i in range(1, 6)]
    prompt = plan.prompts[step.params.rows[0].prompt]
    assert prompt.messages == (("system", "Be brief."), ("user", "Q: Name a colour."))
    assert prompt.prefill == "A:"
    assert plan.items["qs/q1"]["question"] == "Name a colour."
    assert not steps_of(plan, "render")


# ---------------------------------------------------------------- prompts built from results
RUN_TIME = """
# {comment}
study {study} {{
  {extra}
  let {name} = generate(m, prompts(rows("qs.jsonl"), "{upstream}"))
  measure {measure} = generate(g, prompts({name}, "{template}", system: "Reply in one line."))
}}
"""


def run_time_plan(directory: Path, **changes: str) -> Plan:
    fields = {
        "comment": "a study",
        "study": "s",
        "extra": "",
        "name": "first",
        "measure": "again",
        "upstream": "{{ question }}",
        "template": "You said: {{ text }}. Why?",
        **changes,
    }
    return plan_of(directory, RUN_TIME.format(**fields))


def render_of(plan: Plan, template: str = "You said: {{ text }}. Why?") -> Step:
    (step,) = [s for s in steps_of(plan, "render") if s.params.template == template]
    return step


def test_a_run_time_prompt_set_is_a_render_step_between_its_source_and_its_calls(tmp_path: Path) -> None:
    plan = run_time_plan(tmp_path)
    render = render_of(plan)
    (source,) = [s for s in steps_of(plan, "generate") if s.params.model == "m"]
    again = point(plan, "again")
    assert render.deps == (source.id,)
    assert render.params.source == source.id
    assert render.params.system == "Reply in one line."
    assert again.params.from_ == render.id and render.id in again.deps
    assert again.params.rows is None and "rows" not in again.params.to_json()
    assert (again.params.count, again.params.exact) == (5, True)


def test_the_render_hash_follows_its_template_and_its_upstream(tmp_path: Path) -> None:
    base = render_of(run_time_plan(tmp_path)).hash
    assert render_of(run_time_plan(tmp_path, template="Why {{ text }}?"), "Why {{ text }}?").hash != base
    assert render_of(run_time_plan(tmp_path, upstream="{{ question }}!")).hash != base
    write_rows(tmp_path / "qs.jsonl", [*QUESTIONS[:4], {"id": "q5", "question": "Say no."}])
    assert render_of(run_time_plan(tmp_path)).hash != base


def test_the_render_hash_ignores_comments_names_and_step_ids(tmp_path: Path) -> None:
    base_plan = run_time_plan(tmp_path)
    base = render_of(base_plan)
    # An earlier run-time prompt set takes the id `render.s`: ours becomes `render.s#2`, same hash.
    earlier = 'measure before = generate(g, prompts(generate(g, prompts(["Hi"])), "Hm: {{ text }}"))'
    shifted = run_time_plan(tmp_path, extra=earlier)
    assert render_of(shifted).id != base.id
    renamed = run_time_plan(tmp_path, comment="another comment", study="t", name="answers", measure="why")
    for plan in (shifted, renamed):
        assert render_of(plan).hash == base.hash
    assert {s.hash for s in renamed.steps} == {s.hash for s in base_plan.steps}


# ---------------------------------------------------------------- call counts
def plan_json(spec: Path, cache: Path) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["plan", str(spec), "--json", "--cache", str(cache)]) == 0
    return json.loads(out.getvalue())


def plan_text(spec: Path, cache: Path) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["plan", str(spec), "--cache", str(cache)]) == 0
    return out.getvalue()


COUNTED = """
study s {
  let first = generate(m, prompts(rows("qs.jsonl"), "{{ question }}"), three)
  let kept = filter(first, number_list())
  measure again = generate(m, prompts(kept, "Go on: {{ text }}"), two)
  measure graded = judge(g, first, "Is this right? {{ text }}")
  measure graded_kept = judge(g, kept, "Is this right? {{ text }}")
  measure picks = choose(g, prompts(rows("qs.jsonl"), "{{ question }}"), ["yes", "no", "maybe"])
}
"""


def test_plan_counts_calls_exactly_over_rows_and_at_most_after_a_filter(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, COUNTED)
    summary = plan_json(tmp_path / "spec.intro", tmp_path / "cache")
    by_id = {s["id"]: s for s in summary["steps"]}
    first = by_id[next(s.id for s in steps_of(plan, "generate") if s.params.rows is not None)]
    assert (first["calls"], first["to_run"], first.get("exact", True)) == (15, 15, True)
    assert first["completion_tokens"] == 15 * 5
    again = by_id[point(plan, "again").id]
    assert (again["calls"], again["exact"]) == (15 * 2, False)
    assert again["completion_tokens"] == 30 * 7
    graded, graded_kept = (by_id[point(plan, name).deps[-1]] for name in ("graded", "graded_kept"))
    assert (graded["calls"], graded["exact"]) == (15, True)
    assert (graded_kept["calls"], graded_kept["exact"]) == (15, False)
    assert by_id[point(plan, "picks").id]["calls"] == 5  # one pass per prompt, all options at once
    assert summary["totals"]["calls_to_make"] == 15 + 30 + 15 + 15 + 5
    text = plan_text(tmp_path / "spec.intro", tmp_path / "cache")
    assert f"{again['id']}  at most 30 calls to make (after a filter)" in text
    assert f"{graded['id']}  15/15 calls to make" in text


def test_judge_lowers_to_the_grader_calls_and_a_labels_step_over_the_judged_texts(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, COUNTED)
    labels = point(plan, "graded")
    assert labels.kind == "labels" and labels.params.labels == ("yes", "no")
    judged, replies = (next(s for s in plan.steps if s.id == d) for d in labels.deps)
    assert labels.params.texts == judged.id and judged.params.model == "m"
    assert labels.params.replies == replies.id and replies.params.model == "g"
    assert (replies.params.temperature, replies.params.samples) == (0.0, 1)


# ---------------------------------------------------------------- training examples
EXAMPLES = """
study s {
  let asked = prompts(rows("qs.jsonl"), "{{ question }}")
  let answers = generate(m, asked)
  let follow_up = prompts(answers, "You said {{ text }}")
  measure from_file = generate(finetune(m, examples("train.jsonl")), asked)
  measure from_texts = generate(finetune(m, examples(asked, answers)), asked)
  measure from_template = generate(finetune(m, examples(asked, "The answer to {{ question }}")), asked)
  measure run_time_texts = generate(finetune(m, examples(follow_up, answers)), asked)
  measure run_time_template = generate(finetune(m, examples(follow_up, "I said {{ text }}")), asked)
}
"""

TRAIN_ROWS = [
    {
        "id": "c1",
        "messages": [
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
        ],
    },
    {"id": "c2", "prompt": "Name a colour.", "completion": "Blue."},
]


def examples_of(plan: Plan, measure: str) -> Step:
    """The examples step that the model a measure generates with was finetuned on."""
    by_id = {s.id: s for s in plan.steps}
    (finetune,) = [by_id[d] for d in point(plan, measure).deps if by_id[d].kind == "finetune"]
    (examples,) = [by_id[d] for d in finetune.deps if by_id[d].kind == "examples"]
    return examples


def test_examples_lower_to_one_step_per_source_of_training_data(tmp_path: Path) -> None:
    write_rows(tmp_path / "train.jsonl", TRAIN_ROWS)
    plan = plan_of(tmp_path, EXAMPLES)
    answers = next(
        s for s in steps_of(plan, "generate") if s.params.model == "m" and s.params.rows is not None
    )

    from_file = examples_of(plan, "from_file")
    assert from_file.params.fixed == (
        ((("system", "Be kind."), ("user", "Hi")), "Hello."),
        ((("user", "Name a colour."),), "Blue."),
    )
    assert from_file.deps == ()

    from_texts = examples_of(plan, "from_texts")
    assert from_texts.params.completions == answers.id and from_texts.deps == (answers.id,)
    assert [user_turn(plan, row.prompt) for row in from_texts.params.rows][:2] == [
        "Name a colour.",
        "Count to three.",
    ]

    from_template = examples_of(plan, "from_template")
    assert [row.target for row in from_template.params.rows][:2] == [
        "The answer to Name a colour.",
        "The answer to Count to three.",
    ]
    assert from_template.deps == ()

    run_time_texts = examples_of(plan, "run_time_texts")
    render = render_of(plan, "You said {{ text }}")
    assert run_time_texts.params.from_ == render.id and run_time_texts.params.completions == answers.id

    run_time_template = examples_of(plan, "run_time_template")
    assert run_time_template.params.from_ == render.id
    assert run_time_template.params.results == answers.id
    assert run_time_template.params.template == "I said {{ text }}"
    assert set(run_time_template.deps) == {render.id, answers.id}
    assert len({s.hash for s in steps_of(plan, "examples")}) == 5


def test_the_examples_step_follows_its_data_file(tmp_path: Path) -> None:
    write_rows(tmp_path / "train.jsonl", TRAIN_ROWS)
    before = examples_of(plan_of(tmp_path, EXAMPLES), "from_file").hash
    write_rows(
        tmp_path / "train.jsonl",
        [TRAIN_ROWS[0], {"id": "c2", "prompt": "Name a colour.", "completion": "Red."}],
    )
    assert examples_of(plan_of(tmp_path, EXAMPLES), "from_file").hash != before
