"""Typed step parameters (compiler/step_params.py): every kind's params survive their JSON form exactly (the
form step hashes were computed over), and a plan.json with a missing or mistyped parameter fails with one
line naming the step and the field, not an error deep inside a step's handler."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from intro.cli import main
from intro.compiler import compile_spec
from intro.compiler.plan import Plan, PlanError
from intro.compiler.step_params import PARAMS, VECTOR_OPS, ParamError, VectorParams, decode

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "specs").glob("*.intro"))
MINI = [spec for spec in SPECS if spec.stem.endswith("_mini")]

# The kinds and vector operations the mini specs leave out, each used once.
EVERY_KIND = """
model q = embedded "qwen2.5-coder-0.5b-instruct"
let dog = concept(q, "dog", 12, ["cat", "tree"])
let asked = prompts(["Hi.", "Hello."])
study every_kind {
  let first = extract(generate(q, asked), nth_word(1))
  let mixed = 2 * dog + random_like(dog, seed: 1) - activations(q, asked, 12)
  let second = extract(generate(steer(q, mixed, 12, 4), asked), nth_word(1))
  measure scored = mean(score(q, asked, "Yes"))
  measure differ = rate(differs(first, second))
  measure balanced = rate(first, where: balance(first, first, second))
  measure read = mean(cosine(residuals(q, asked, 12, span: "Hi."), dog))
  measure from_file = generate(steer(q, vector_file("dog.safetensors"), 12, 1), asked)
  measure kept = filter(generate(q, prompts(["Count to 5."])), number_list())
}
"""


def every_kind_plan(directory: Path) -> Plan:
    (directory / "dog.safetensors").write_bytes(b"a vector file's bytes: hashed, not read, when compiling")
    spec = directory / "every_kind.intro"
    spec.write_text(EVERY_KIND, encoding="utf-8")
    return compile_spec(spec)[0]


def assert_round_trips(plan: Plan) -> None:
    """Each step's params decode from their JSON to an equal value that encodes to the same bytes, and the
    whole plan reads back to the same text and hashes."""
    for step in plan.steps:
        wire = json.dumps(step.params.to_json(), ensure_ascii=False)
        again = decode(step.kind, json.loads(wire))
        assert again == step.params, step.id
        assert json.dumps(again.to_json(), ensure_ascii=False) == wire, step.id
    text = plan.dumps()
    loaded = Plan.loads(text)
    assert loaded.dumps() == text
    assert [s.hash for s in loaded.steps] == [s.hash for s in plan.steps] and loaded.hash == plan.hash


@pytest.mark.parametrize("spec", MINI, ids=lambda spec: spec.stem)
def test_every_step_of_a_mini_spec_round_trips_through_json(spec: Path) -> None:
    for plan in compile_spec(spec):
        assert_round_trips(plan)


@pytest.mark.slow
@pytest.mark.parametrize("spec", [s for s in SPECS if s not in MINI], ids=lambda spec: spec.stem)
def test_every_step_of_a_paper_scale_spec_round_trips_through_json(spec: Path) -> None:
    for plan in compile_spec(spec):
        assert_round_trips(plan)


def test_every_kind_and_every_vector_operation_is_round_tripped(tmp_path: Path) -> None:
    plans = [plan for spec in MINI for plan in compile_spec(spec)] + [every_kind_plan(tmp_path)]
    assert_round_trips(plans[-1])
    seen = {type(step.params) for plan in plans for step in plan.steps}
    classes = {*PARAMS.values(), *VECTOR_OPS.values()} - {VectorParams}
    assert classes - seen == set(), "a step kind no spec here lowers to: add it to EVERY_KIND"


# ---------------------------------------------------------------- malformed plans
@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run directory holding only plan.json (what `intro show` and `intro export` read first)."""
    plan = every_kind_plan(tmp_path)
    run = tmp_path / "runs" / plan.study
    run.mkdir(parents=True)
    (run / "plan.json").write_text(plan.dumps(), encoding="utf-8")
    return run


def damage(run: Path, kind: str, change) -> str:  # type: ignore[no-untyped-def]
    """Change the params of the plan's first step of `kind`; return that step's id."""
    data = json.loads((run / "plan.json").read_text(encoding="utf-8"))
    step = next(s for s in data["steps"] if s["kind"] == kind)
    change(step["params"])
    (run / "plan.json").write_text(json.dumps(data), encoding="utf-8")
    return str(step["id"])


def intro(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(list(argv))
    return code, err.getvalue()


def test_an_intact_plan_shows(run_dir: Path) -> None:
    code, err = intro("show", str(run_dir))
    assert code == 0 and err == ""


def test_a_missing_param_is_one_line_naming_the_step_and_the_field(run_dir: Path) -> None:
    step = damage(run_dir, "generate", lambda p: p.pop("max_tokens"))
    code, err = intro("show", str(run_dir))
    assert code == 2
    assert err.splitlines() == [
        f"intro: cannot read {run_dir / 'plan.json'}: plan step '{step}' (generate): param max_tokens: is missing"
    ]


@pytest.mark.parametrize(
    ("verb", "exit_code"), [("export", 2), ("report", 2), ("diff", 1)]
)  # diff's exit codes: 2 says the runs differ, 1 is an error
def test_a_mistyped_param_names_its_path_and_what_was_expected(
    run_dir: Path, verb: str, exit_code: int
) -> None:
    step = damage(run_dir, "generate", lambda p: p["rows"][1].__setitem__(2, 7))
    code, err = intro(verb, str(run_dir), *([str(run_dir)] if verb == "diff" else []))
    assert code == exit_code and len(err.splitlines()) == 1, err
    assert f"plan step '{step}' (generate): param rows[1][2]: expected a string, got 7" in err


@pytest.mark.parametrize(
    ("kind", "change", "problem"),
    [
        ("estimate", lambda p: p.update(statistic=["rate"]), "param statistic: expected a string, got"),
        ("finetune", lambda p: p["hparams"].update(rank=8.5), "param hparams.rank: expected an integer"),
        ("vector", lambda p: p.update(op="blend"), "param op: expected one of concept, random, scale"),
        ("extract", lambda p: p["rule"].pop("args"), "param rule.args: is missing"),
        ("choose", lambda p: p.update(temperature=0), "param temperature: is not a parameter of this step"),
        ("generate", lambda p: p.pop("rows"), "a generate step has either rows or from"),
    ],
)
def test_each_damage_is_reported_where_it_is(tmp_path: Path, kind: str, change, problem: str) -> None:  # type: ignore[no-untyped-def]
    plan = (
        every_kind_plan(tmp_path) if kind == "vector" else compile_spec(ROOT / "specs" / SPEC_WITH[kind])[0]
    )
    data = json.loads(plan.dumps())
    step = next(s for s in data["steps"] if s["kind"] == kind)
    change(step["params"])
    with pytest.raises(PlanError) as raised:
        Plan.from_json(data)
    assert str(raised.value).startswith(f"plan step '{step['id']}' ({kind}): ")
    assert problem in str(raised.value)


SPEC_WITH = {"choose": "concept_injection_mini.intro"} | dict.fromkeys(
    ("estimate", "finetune", "extract", "generate"), "emergent_misalignment_mini.intro"
)


def test_an_unknown_step_kind_is_named() -> None:
    with pytest.raises(ParamError, match="unknown step kind 'sample'"):
        decode("sample", {})
