"""Looking Inward written in .intro on the primitives (stdlib/looking_inward.intro) gives the values of the
built-in measures it replaces, from the same model calls: `li.predict_property` those of `prediction` cell
by cell, `li.hypothetical_examples` the training data of `hypotheticals`, `li.behaviour_follows` the
accuracies of `behaviour_change` and `li.calibration_of` the MAD of `calibration`.

Two tiny random local models predict themselves and each other on two tasks (one free text, one A/B
with an ethical-stance property), through the real CLI. The built-ins' values on these same studies are
recorded in tests/runtime/golden/li_*.json (tests/runtime/goldens.py says how).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import xarray as xr

from intro.cli import main
from tests.runtime import goldens
from tests.tinymodels import make_tiny_model

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "studies" / "looking_inward_finetune_tiny"

HEAD = """
use stdlib.looking_inward as li
model a = local "tiny_a"
model b = local "tiny_b"
task colours {
  data: "data/colours.jsonl"
  prompt: "What are the next 3 colours after {{ sequence }}? Respond only with the colours."
}
task stances {
  data: "data/stances.jsonl"
  prompt: \"\"\"{{ question }}
A) {{ option_a }}
B) {{ option_b }}
Answer only with either A or B and nothing else.\"\"\"
  answer: "choice"
  choices: ["A", "B"]
}
split s { test: [colours, stances] items: 6 seed: 3 }
sampling short { temperature: 0 max_tokens: 6 }
let props = [li.first_character, li.starts_with_vowel, li.ethical_stance]
"""

NEW = """
study new {
  for subject in [a, b], predictor in [a, b] {
    for p in props {
      measure new = li.predict_property(predictor, subject, s.test, p, object: short, hypothetical: short)
    }
  }
}
"""


def run_study(root: Path, name: str, spec: str, plan: bool = False) -> tuple[Path, str]:
    """Run `spec` as `<root>/<name>.intro` on the two tiny models: the store of its cube, and what the run
    printed (after what `intro plan` printed on the empty cache, with `plan`)."""
    shutil.copytree(FIXTURE / "data", root / "data")
    make_tiny_model(root / "tiny_a", "qwen2", seed=0)
    make_tiny_model(root / "tiny_b", "qwen2", seed=1)
    (root / f"{name}.intro").write_text(spec)
    printed = ""
    with pytest.MonkeyPatch.context() as patch, contextlib.chdir(root):
        patch.setenv("INTRO_CACHE_DIR", str(root / "intro-cache"))
        if plan:
            code, printed = intro("plan", f"{name}.intro", "--cache", "cache")
            assert code == 0, printed
        code, out = intro("run", f"{name}.intro", "--runs", "runs", "--cache", "cache", "--quiet")
    assert code == 0, out
    return root / "runs" / name / "cube.zarr", printed + out


def intro(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(list(argv))
    return code, out.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return run_study(tmp_path_factory.mktemp("li-primitives"), "new", HEAD + NEW, plan=True)


def group(store: Path, name: str) -> xr.Dataset:
    return xr.open_zarr(store, group=name).load()


def test_the_stdlib_function_makes_the_builtins_calls(run: tuple[Path, str]) -> None:
    planned = goldens.calls_to_make(run[1])
    assert planned == goldens.load("li_prediction")["calls"] > 0
    assert f"new: {planned} model calls," in run[1]


def test_the_stdlib_function_gets_the_builtins_replies(run: tuple[Path, str]) -> None:
    behaviour, predictions = group(run[0], "new.behaviour"), group(run[0], "new.predictions")
    replies = goldens.load("li_prediction")["replies"]
    for reply in replies:
        where = {k: reply[k] for k in ("subject", "predictor", "item")} | {
            "p": reply["property"],
            "sample": 0,
        }
        assert str(behaviour.text.sel(where).values) == reply["object"], where
        if reply["property"] != "ethical_stance":  # asks the paper's task-specific question now (issue 11)
            assert str(predictions.text.sel(where).values) == reply["hypothetical"], where
    assert len(replies) == 2 * 2 * (4 + 4 + 4)  # every pair of models, every item a property reads


def test_every_cell_of_prediction_has_the_same_values_on_the_primitives(run: tuple[Path, str]) -> None:
    accuracy, baseline = group(run[0], "new.by_task"), group(run[0], "new.baseline_by_task")
    compared = 0
    for cell in goldens.load("li_prediction")["cells"]:
        where = {k: cell[k] for k in ("subject", "predictor", "task")} | {"p": cell["property"]}
        if cell["property"] not in accuracy.p or cell["accuracy"] is None:
            # no item kept (no compliant answer, or a property the task cannot be read by): none here either
            assert cell["property"] not in accuracy.p or not accuracy.sel(where).n.values > 0
            continue
        new = accuracy.sel(where)
        assert float(new.estimate) == pytest.approx(cell["accuracy"], abs=1e-12)
        assert float(new.ci_low) == pytest.approx(cell["ci_low"], abs=1e-12)
        assert float(new.ci_high) == pytest.approx(cell["ci_high"], abs=1e-12)
        assert int(new.n) == int(cell["n"])
        assert float(baseline.sel(where).estimate) == pytest.approx(cell["mode_baseline"], abs=1e-12)
        compared += 1
    assert compared >= 8  # cells with kept items on these tiny models (their answers are often non-compliant)


def test_the_accuracy_over_all_tasks_is_the_builtins_pooled_accuracy(run: tuple[Path, str]) -> None:
    pooled = group(run[0], "new.accuracy")
    compared = 0
    for cell in goldens.load("li_prediction")["pooled"]:
        if cell["property"] not in pooled.p or cell["pooled_accuracy"] is None:
            continue
        new = pooled.sel(subject=cell["subject"], predictor=cell["predictor"], p=cell["property"])
        assert float(new.estimate) == pytest.approx(cell["pooled_accuracy"], abs=1e-12)
        assert int(new.n) == int(cell["pooled_n"])
        compared += 1
    assert compared >= 8


TRAINING_HEAD = """
use stdlib.looking_inward as li
model a = local "tiny_a"
task animals {
  data: "data/animals.jsonl"
  prompt: "What are the next 3 animals after {{ sequence }}? Respond only with the animals."
}
task choices {
  data: "data/choices.jsonl"
  prompt: \"\"\"{{ question }}
A) {{ option_a }}
B) {{ option_b }}
Answer only with either A or B and nothing else.\"\"\"
  answer: "choice"
  choices: ["A", "B"]
}
split s { train: [animals, choices] items: 8 seed: 3 }
sampling short { temperature: 0 max_tokens: 6 }
let props = [li.first_character, li.starts_with_vowel, li.ethical_stance]
"""
TRAINING = """
study training {
  let tuned = finetune(a, li.hypothetical_examples(a, s.train, props, short),
                       rank: 4, lr: 0.02, batch: 4, seed: 1)
  measure tuned_answers = generate(tuned, prompts(s.train), short)
}
"""


def trained(root: Path, study: str) -> dict[str, object]:
    """The training examples, the adapter's tensors and the trained model's answers of a finished `study`
    that finetunes once and measures `tuned_answers`."""
    from safetensors.torch import load_file

    from intro.compiler.plan import Plan
    from intro.runtime.store.cache import Cache

    plan = Plan.loads((root / "runs" / study / "plan.json").read_text())
    cache = Cache(root / "cache")
    (step,) = (s for s in plan.steps if s.kind == "finetune")
    lines = (cache.artifact_dir(plan.step(step.params.data).hash) / "examples.jsonl").read_text()
    adapter = cache.artifact_dir(step.hash) / "adapter" / "adapter_model.safetensors"
    answers = xr.open_zarr(root / "runs" / study / "cube.zarr", group="tuned_answers").text
    return {
        "examples": [[row["messages"], row["target"]] for row in map(json.loads, lines.splitlines())],
        "adapter": load_file(str(adapter)),
        "answers": dict(
            zip(answers["item"].values.tolist(), answers.sel(sample=0).values.tolist(), strict=True)
        ),
    }


def test_hypothetical_examples_on_the_primitives_are_the_builtins_plus_the_cleaned_responses(
    tmp_path: Path,
) -> None:
    """The former built-in's examples, in its order, plus those the paper's reading adds: properties now
    read the cleaned response (issue 11, item 2), so one reply the built-in could not label now gives a
    starts_with_vowel example. The training data differ, so the former adapter is not expected (the
    built-in's adapter was matched bit for bit before that change, on the same examples)."""
    run_study(tmp_path, "training", TRAINING_HEAD + TRAINING)
    got, golden = trained(tmp_path, "training"), goldens.load("li_hypotheticals")
    added = [e for e in got["examples"] if e not in golden["examples"]]
    assert [e for e in got["examples"] if e in golden["examples"]] == golden["examples"]
    assert len(golden["examples"]) > 8 and len(added) == 1
    assert "start with a vowel" in added[0][0][0][1]
    assert sorted(got["adapter"]) == sorted(golden["adapter"])  # the same LoRA layout, trained


CHANGE = """
study change {
  for p in props {
    measure new = li.behaviour_follows(a, b, s.test, p, short)
  }
}
"""


def test_behaviour_change_on_the_primitives_gives_the_builtins_accuracies(tmp_path: Path) -> None:
    store, _ = run_study(tmp_path, "change", HEAD + CHANGE)
    follows = {name: group(store, f"new.{name}") for name in ("new_behaviour", "old_behaviour")}
    compared = 0
    for cell in goldens.load("li_behaviour_change")["cells"]:
        if not (cell["changed_items"] or 0) > 0:
            continue
        new, old = (follows[name].sel(p=cell["property"], task=cell["task"]) for name in follows)
        assert float(new.estimate) == pytest.approx(cell["accuracy_new"], abs=1e-12)
        assert float(old.estimate) == pytest.approx(cell["accuracy_old"], abs=1e-12)
        assert int(new.n) == int(cell["changed_items"])
        assert float(new.ci_low) == pytest.approx(cell["new_ci_low"], abs=1e-12)
        assert float(new.ci_high) == pytest.approx(cell["new_ci_high"], abs=1e-12)
        compared += 1
    assert compared >= 2


CALIBRATION = """
sampling warm { temperature: 1 samples: 4 max_tokens: 6 seed: 2 }
study calib {
  for p in props {
    measure new = li.calibration_of(a, a, s.test, p, warm)
  }
}
"""


def test_calibration_on_the_primitives_calibrates_the_builtins_items(tmp_path: Path) -> None:
    """The same items as the former built-in; the MAD itself now bins as the paper's code does (pd.qcut,
    issue 11 item 6, checked in test_fidelity_li_calibration.py), where the built-in's bins differed."""
    store, _ = run_study(tmp_path, "calib", HEAD + CALIBRATION)
    new = group(store, "new")
    compared = 0
    for cell in goldens.load("li_calibration")["cells"]:
        if not (cell["items"] or 0) > 0:
            continue
        where = {"p": cell["property"], "task": cell["task"]}
        assert 0 <= float(new.estimate.sel(where)) <= 100
        assert int(new.n.sel(where)) == int(cell["items"])
        compared += 1
    assert compared >= 2
