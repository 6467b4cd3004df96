"""User functions (`fn`), tuple literals and readable declaration fields, through the real `intro` CLI.

Each spec sits in a temporary folder next to the module it imports and a small data file; `intro compile`
writes the plan the runtime would run, so a function is checked by what it plans, step for step.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

from intro.cli import main
from tests.studydata import write_sequence_rows

HEADER = """\
model m = litellm "openai/gpt-4o-mini"
model other = litellm "openai/gpt-4o"
task seq { data: "seq.jsonl" prompt: "After {{ sequence }}?" }
split t { test: [seq] items: 4 }
"""

LIB = """\
# A lab's library: its own property, a constant, and functions over them.
property first_character {
  extract: "first_character"
  question: "What is the first character of the response you gave?"
}

let target = first_character
let hypothetical = "Earlier you were asked: {{ object_prompt }} {{ question }}"

fn cross(predictor: model, subject: model, tasks: selection, about: property = target) {
  let behaviour = extract(generate(subject, prompts(tasks)), about)
  let predictions = extract(generate(predictor, prompts(tasks, hypothetical, about: about)), predicted(about))
  return accuracy(predictions, behaviour)
}

fn rates(predictor: model, subject: model, tasks: selection) {
  let own = cross(subject, subject, tasks)
  return { own: own, cross: cross(predictor, subject, tasks) }
}
"""

# The same property as the library's, declared in the spec (a spec that writes the call out).
INLINE_PROPERTY = """\
property first_character {
  extract: "first_character"
  question: "What is the first character of the response you gave?"
}
"""

# The calls mylib.cross(other, m, t.test) makes, written out in a study.
INLINE_CROSS = """\
study s {
  let behaviour = extract(generate(m, prompts(t.test)), first_character)
  let asked = prompts(t.test, "Earlier you were asked: {{ object_prompt }} {{ question }}", about: first_character)
  measure p = accuracy(extract(generate(other, asked), predicted(first_character)), behaviour)
}
"""


def intro(folder: Path, *args: str) -> tuple[int, str, str]:
    """`intro ARGS` run from `folder`, so paths in messages are relative to it."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(folder), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def write_spec(folder: Path, name: str, body: str, lib: str = LIB) -> Path:
    write_sequence_rows(folder / "seq.jsonl", 8)
    (folder / "mylib.intro").write_text(lib)
    spec = folder / f"{name}.intro"
    spec.write_text(body)
    return spec


def compiled(folder: Path, name: str, body: str, lib: str = LIB) -> dict[str, Any]:
    """The plan `intro compile` writes for the spec `body`."""
    spec = write_spec(folder, name, body, lib)
    code, _, err = intro(folder, "compile", spec.name, "-o", f"{name}.json")
    assert code == 0, err
    return json.loads((folder / f"{name}.json").read_text())  # type: ignore[no-any-return]


def steps(plan: dict[str, Any]) -> set[tuple[str, str]]:
    return {(step["id"], step["hash"]) for step in plan["steps"]}


def measures(plan: dict[str, Any]) -> dict[str, list[Any]]:
    """Each measure's points: (coordinates, step id)."""
    return {m["name"]: [tuple(map(tuple, point)) for point in m["points"]] for m in plan["measures"]}


def axes(plan: dict[str, Any], measure: str) -> list[tuple[str, list[Any]]]:
    found = next(m for m in plan["measures"] if m["name"] == measure)
    return [(name, values) for name, values in found["axes"]]


# ---------------------------------------------------------------- functions plan what they compute
def test_a_module_function_plans_exactly_the_calls_it_stands_for(tmp_path: Path) -> None:
    inline = compiled(tmp_path, "inline", HEADER + INLINE_PROPERTY + INLINE_CROSS)
    through_module = compiled(
        tmp_path,
        "module",
        "use mylib\n" + HEADER + "study s {\n  measure p = mylib.cross(other, m, t.test)\n}\n",
    )
    imported_name = compiled(
        tmp_path,
        "named",
        "use mylib: cross\n"
        + HEADER
        + "study s {\n  measure p = cross(subject: m, tasks: t.test, predictor: other)\n}\n",
    )
    assert steps(through_module) == steps(inline) == steps(imported_name)
    assert {step["kind"] for step in inline["steps"]} == {"generate", "extract", "estimate"}


def test_defaults_and_body_names_come_from_the_defining_module_not_the_caller(tmp_path: Path) -> None:
    # The spec has its own `target` and `first_character`, with another question: the function must not
    # see them. Passing the spec's property explicitly does change the plan.
    spec_property = INLINE_PROPERTY.replace("first character", "first letter")
    body = "use mylib\n" + HEADER + spec_property + "let target = first_character\n"
    by_default = compiled(
        tmp_path, "default", body + "study s {\n  measure p = mylib.cross(other, m, t.test)\n}\n"
    )
    inline = compiled(tmp_path, "inline", HEADER + INLINE_PROPERTY + INLINE_CROSS)
    explicit = compiled(
        tmp_path,
        "explicit",
        body + "study s {\n  measure p = mylib.cross(other, m, t.test, about: target)\n}\n",
    )
    assert steps(by_default) == steps(inline)
    assert steps(explicit) != steps(inline)
    assert "first letter" in json.dumps(explicit["prompts"]) and "first letter" not in json.dumps(inline)


def test_a_record_of_measurements_becomes_one_measure_per_field(tmp_path: Path) -> None:
    plan = compiled(
        tmp_path,
        "record",
        "use mylib\n"
        + HEADER
        + "study s {\n  for subject in [m, other] {\n    measure g = mylib.rates(other, subject, t.test)\n  }\n}\n",
    )
    found = measures(plan)
    assert set(found) == {"g.own", "g.cross"}
    assert axes(plan, "g.own") == axes(plan, "g.cross") == [("subject", ["m", "other"])]
    assert [coords for coords, _ in found["g.own"]] == [("m",), ("other",)]
    assert found["g.own"][0][1] != found["g.cross"][0][1]  # m predicting itself vs other predicting m
    code, out, _ = intro(tmp_path, "plan", "record.intro")
    first_steps = {m["name"]: m["points"][0][1] for m in plan["measures"]}
    assert code == 0 and f" {first_steps['g.own']}\n" in out and f" {first_steps['g.cross']}\n" in out


def test_functions_are_values_passed_to_functions(tmp_path: Path) -> None:
    lib = (
        LIB + "\nfn apply(f: function, a: model, b: model, tasks: selection) {\n  return f(a, b, tasks)\n}\n"
    )
    applied = compiled(
        tmp_path,
        "applied",
        "use mylib\n" + HEADER + "study s {\n  measure p = mylib.apply(mylib.cross, other, m, t.test)\n}\n",
        lib,
    )
    direct = compiled(
        tmp_path,
        "direct",
        "use mylib\n" + HEADER + "study s {\n  measure p = mylib.cross(other, m, t.test)\n}\n",
        lib,
    )
    assert steps(applied) == steps(direct)


# ---------------------------------------------------------------- errors, as `intro plan` reports them
@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (
            'mylib.cross("other", m, t.test)',
            "spec.intro:7:27: error[E201]: cross() argument 'predictor' must be a model, not a string",
        ),
        (
            "mylib.cross(other, m, t.test, prop: [])",
            "spec.intro:7:45: error[E206]: cross() has no parameter 'prop'",
        ),
        ("mylib.cross(other, m)", "spec.intro:7:15: error[E208]: cross() is missing argument 'tasks'"),
    ],
    ids=["type", "unknown-name", "missing"],
)
def test_a_bad_call_is_reported_at_the_call_site(tmp_path: Path, call: str, expected: str) -> None:
    spec = write_spec(tmp_path, "spec", "use mylib\n" + HEADER + f"study s {{\n  measure p = {call}\n}}\n")
    code, out, err = intro(tmp_path, "plan", spec.name)
    assert code == 2 and out == ""
    assert err.splitlines()[0] == expected


def test_an_error_in_a_module_function_points_into_the_module_and_names_the_call_site(tmp_path: Path) -> None:
    lib = LIB + "\nfn broken(a: model) {\n  return cross(a, a, 3)\n}\n"
    spec = write_spec(
        tmp_path, "spec", "use mylib\n" + HEADER + "study s {\n  measure p = mylib.broken(m)\n}\n", lib
    )
    code, _, err = intro(tmp_path, "check", spec.name)
    assert code == 2
    assert (
        err.splitlines()[0] == "mylib.intro:22:22: error[E201]: cross() argument 'tasks' must be a "
        "task selection (e.g. mysplit.test), not a number"
    )
    assert "     = note: in broken(), called from spec.intro:7:15" in err.splitlines()


@pytest.mark.parametrize(
    ("lib", "expected"),
    [
        (
            "fn loop(a: model) {\n  let b = again(a)\n  return b\n}\nfn again(a: model) {\n  return loop(a)\n}\n",
            "mylib.intro:6:10: error[E243]: 'loop' calls itself through loop -> again -> loop",
        ),
        (
            "fn loop(a: model) {\n  let b = a\n}\n",
            "mylib.intro:3:1: error[E240]: function 'loop' must end with `return EXPR`",
        ),
        ("fn loop(a: modle) {\n  return a\n}\n", "mylib.intro:1:12: error[E242]: unknown type 'modle'"),
    ],
    ids=["recursion", "missing-return", "unknown-type"],
)
def test_a_broken_function_is_reported_in_its_module(tmp_path: Path, lib: str, expected: str) -> None:
    spec = write_spec(
        tmp_path, "spec", "use mylib: loop\n" + HEADER + "study s {\n  measure p = loop(m)\n}\n", lib
    )
    code, _, err = intro(tmp_path, "plan", spec.name)
    assert code == 2
    assert err.splitlines()[0] == expected


# ---------------------------------------------------------------- tuples and declaration fields
def test_tuples_are_lists_and_parentheses_alone_only_group(tmp_path: Path) -> None:
    plan = compiled(
        tmp_path,
        "tuples",
        "use mylib\n"
        + HEADER
        + "let pair = (m, other)\n"
        + "study s {\n"
        + "  for (a, b) in [pair, (other, m,)], c in (m,) {\n"
        + "    measure p = mylib.cross((a), b, t.test)\n"
        + "  }\n"
        + "}\n",
    )
    # a tuple loop is one dimension, named after its first name and labelled by the arms' first values
    assert axes(plan, "p") == [("a", ["m", "other"]), ("c", ["m"])]


def test_a_tuple_loop_is_one_labelled_dimension_not_a_sparse_cube(tmp_path: Path) -> None:
    plan = compiled(
        tmp_path,
        "arms",
        "use mylib\n"
        + HEADER
        + "study s {\n"
        + '  for (arm, predictor) in [("own", m), ("cross", other)] {\n'
        + "    measure p = mylib.cross(predictor, m, t.test)\n"
        + "  }\n"
        + "  for (x, y) in [(m, m), (m, other)] {\n"
        + "    measure q = mylib.cross(x, y, t.test)\n"
        + "  }\n"
        + "}\n",
    )
    assert axes(plan, "p") == [("arm", ["own", "cross"])]
    assert [coords for coords, _ in measures(plan)["p"]] == [("own",), ("cross",)]
    # where the first values repeat, the arms are labelled by all their values
    assert axes(plan, "q") == [("x", ["m/m", "m/other"])]


def test_declared_values_fields_can_be_read(tmp_path: Path) -> None:
    plan = compiled(
        tmp_path,
        "fields",
        "use mylib\n"
        + HEADER
        + "sampling hot { temperature: 1 samples: 2 }\n"
        + "study s {\n"
        + "  for heat in [hot.temperature, hot.samples], name in [m.name, m.locator], prompt in [seq.prompt],\n"
        + "      question in [mylib.first_character.question], items in [t.test.items] {\n"
        + "    measure p = mylib.cross(other, m, t.test)\n"
        + "  }\n"
        + "}\n",
    )
    assert axes(plan, "p") == [
        ("heat", [1, 2]),
        ("name", ["m", "openai/gpt-4o-mini"]),
        ("prompt", ["After {{ sequence }}?"]),
        ("question", ["What is the first character of the response you gave?"]),
        ("items", [4]),
    ]


def test_formatting_a_library_of_functions_is_canonical(tmp_path: Path) -> None:
    (tmp_path / "lib.intro").write_text("fn  f( a,b : int=2 ) { let c=(a,b)\n return c }\n")
    assert intro(tmp_path, "fmt", "--check", "lib.intro")[0] == 3
    assert intro(tmp_path, "fmt", "lib.intro")[0] == 0
    assert (tmp_path / "lib.intro").read_text() == "fn f(a, b: int = 2) {\n  let c = (a, b)\n  return c\n}\n"
    assert intro(tmp_path, "fmt", "--check", "lib.intro")[0] == 0
