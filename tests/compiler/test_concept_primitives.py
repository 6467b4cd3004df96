"""The primitives' features the concept experiments need, lowered: a model steered on a span of each
prompt (a template over the row), a conversation asked once per row, a choice's probability or log-odds,
the conjunction of two grades, rules over values, and the list functions that build a choice set."""

from __future__ import annotations

from pathlib import Path

import pytest

from intro.compiler import compile_spec
from intro.compiler.diagnostics import CompileError
from intro.compiler.plan import Plan, Step, digest, request_key
from intro.runtime.dataflow.tables import Tables
from intro.runtime.store.cache import Cache

HEAD = """
model q = embedded "qwen2.5-coder-0.5b-instruct"
let dog = concept(q, "dog", 12, ["cat", "tree"])
let lines = ["The dog ran home.", "A {brace} stays."]
"""


def plan_of(directory: Path, body: str) -> Plan:
    spec = directory / "spec.intro"
    spec.write_text(HEAD + body, encoding="utf-8")
    return compile_spec(spec)[0]


def steps(plan: Plan, kind: str) -> list[Step]:
    return [s for s in plan.steps if s.kind == kind]


def test_a_span_is_rendered_per_row_and_keys_each_call_by_its_text(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        """
study s {
  for word in ["dog"] {
    let on_line = steer(q, dog, 12, 4, span: "{{ text }}")
    measure replies = generate(on_line, prompts(lines, "Think of {{ word }}: {{ text }}"))
    measure picked = choose(on_line, prompts(lines, "Which? {{ text }}"), ["Dog", "Cat"])
  }
}
""",
    )
    (generate,), (choose,) = steps(plan, "generate"), steps(plan, "choose")
    assert generate.params.spans == choose.params.spans == ("The dog ran home.", "A {brace} stays.")
    calls = Tables(plan, Cache(tmp_path / "cache")).calls(generate)
    assert tuple(c.span for c in calls) == generate.params.spans
    # The key names the base model with the injection on that text, as the built-in experiments do.
    model = plan.models[generate.params.model]
    vector = plan.step(model.params["vector"]).hash
    base = plan.models[model.params["base"]].identity
    expected = [
        request_key(
            digest(["span", base, [vector, 12, 4.0, span]]), row.prompt, generate.params.sampling(), 0
        )
        for row, span in zip(generate.params.rows, generate.params.spans, strict=True)
    ]
    assert [c.key for c in calls] == expected and len(set(expected)) == 2


def test_a_model_steered_without_a_span_keeps_its_identity(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, 'study s { measure r = generate(steer(q, dog, 12, 4), prompts(["Hi."])) }')
    (generate,) = steps(plan, "generate")
    model = plan.models[generate.params.model]
    settings = {"layer": 12, "strength": 4.0, "start": None}
    vector = plan.step(model.params["vector"]).hash
    assert model.identity == "steered:" + digest(["steered", plan.models["q"].identity, vector, settings])
    assert generate.params.spans is None and "spans" not in generate.params.to_json()


def test_a_span_the_rows_cannot_fill_is_diagnosed(tmp_path: Path) -> None:
    body = 'study s { measure r = generate(steer(q, dog, 12, 4, span: "{{ sentence }}"), prompts(lines, "{{ text }}")) }'
    with pytest.raises(CompileError) as error:
        plan_of(tmp_path, body)
    assert "sentence" in str(error.value.diagnostics[0].message)


def test_a_conversation_per_row_renders_every_turn_and_keeps_the_prefill(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        """
study s {
  for word in ["dog"] {
    let turns = [{ user: "Say a word about: {{ text }}" }, { assistant: word }, { user: "Did you mean it?" }]
    measure r = generate(q, conversation(turns, lines, prefill: "It was"))
  }
}
""",
    )
    (generate,) = steps(plan, "generate")
    prompts = [plan.prompts[row.prompt] for row in generate.params.rows]
    assert [p.messages for p in prompts] == [
        (("user", f"Say a word about: {line}"), ("assistant", "dog"), ("user", "Did you mean it?"))
        for line in ("The dog ran home.", "A {brace} stays.")
    ]
    assert {p.prefill for p in prompts} == {"It was"}


def test_a_choice_set_is_built_from_lists(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        """
let pool = ["ocean", "dog", "tree", "ocean", "bread"]
study s {
  for word in ["dog"] {
    let options = capitalized([word] + take(without(pool, word), 2))
    let picked = choose(q, prompts(lines, "{{ text }}"), options)
    measure p = mean(probability(picked, capitalized(word)))
    measure odds = mean(probability(picked, "Dog", against: "Tree"))
    measure named = rate(all_of(extract(picked, same_as(word)), extract(picked, quotes("text"))))
  }
}
""",
    )
    (choose,) = steps(plan, "choose")
    assert choose.params.options == ("Dog", "Ocean", "Tree")
    probabilities = steps(plan, "probability")
    assert [(s.params.option, s.params.against) for s in probabilities] == [
        ("Dog", None),
        ("Dog", "Tree"),
    ]
    (conjunction,) = steps(plan, "all_of")
    assert [
        r.rule.name for r in (plan.step(conjunction.params.a).params, plan.step(conjunction.params.b).params)
    ] == ["same_as", "quotes"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ('measure p = mean(probability(score(q, prompts(["Hi."]), "Hello"), "Hello"))', "E341"),
        ('measure p = mean(probability(choose(q, prompts(["Hi."]), ["A", "B"]), "A", against: "C"))', "E341"),
        ('measure r = generate(steer(q, dog, 12, 4, span: "  "), prompts(["Hi."]))', "E339"),
        (
            'measure r = generate(q, conversation([{ user: "Hi {{ text }}" }], generate(q, prompts(["Hi."]))))',
            "E201",
        ),
        ('measure r = extract(q, contains("a"))', "E201"),
    ],
)
def test_bad_arguments_are_diagnosed(tmp_path: Path, body: str, code: str) -> None:
    with pytest.raises(CompileError) as error:
        plan_of(tmp_path, f"study s {{ {body} }}")
    assert code in {d.code for d in error.value.diagnostics}


def test_residuals_are_read_on_the_replys_span_of_each_row(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        """
study s {
  for word in ["dog"] {
    let written = prompts(lines, "Write \\"{{ text }}\\". Think about {{ word }}.", prefill: "{{ text }}")
    let read = residuals(q, written, 12, span: "{{ text }}")
    measure towards = mean(cosine(read, dog))
    measure controls = mean(cosine(read, concept_vectors(q, ["cat", "tree"], 12, ["bread", "lamp"])))
  }
}
""",
    )
    (read,) = steps(plan, "residuals")
    prompts = [plan.prompts[row.prompt] for row in read.params.rows]
    assert [p.prefill for p in prompts] == ["The dog ran home.", "A {brace} stays."]
    assert prompts[0].messages == (("user", 'Write "The dog ran home.". Think about dog.'),)
    assert read.params.spans == ("The dog ran home.", "A {brace} stays.")
    # One pass per prompt, whatever it is compared with; the control words are one vector step each.
    assert len(Tables(plan, Cache(tmp_path / "cache")).calls(read)) == 2
    cosines = steps(plan, "cosine")
    assert [len(c.params.vectors) for c in cosines] == [1, 2]
    assert [c.params.several for c in cosines] == [False, True]
    assert sorted(s.params.word for s in steps(plan, "vector")) == ["cat", "dog", "tree"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ('measure c = mean(cosine(residuals(steer(q, dog, 12, 2), prompts(["Hi."]), 12), dog))', "E338"),
        ('measure c = mean(cosine(residuals(q, prompts(["Hi."]), 12), "dog"))', "E201"),
        ('measure c = mean(cosine(residuals(q, prompts(["Hi."]), 12, span: "{{ line }}"), dog))', "E146"),
        (
            'measure c = mean(cosine(residuals(q, prompts(["Hi."]), 12), concept_vectors(q, [], 12, ["a"])))',
            "E310",
        ),
        ('measure r = generate(q, prompts(["Hi."], "{{ text }}", prefill: "{{ missing }}"))', "E146"),
    ],
)
def test_bad_readings_are_diagnosed(tmp_path: Path, body: str, code: str) -> None:
    with pytest.raises(CompileError) as error:
        plan_of(tmp_path, f"study s {{ {body} }}")
    assert code in {d.code for d in error.value.diagnostics}
