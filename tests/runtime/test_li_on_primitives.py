"""Looking Inward's prediction written in .intro on the primitives (stdlib `li.predict_property`) gives the
built-in `prediction`'s values cell by cell, from the same model calls.

Two tiny random local models predict themselves and each other on two tasks (one free text, one A/B
with an ethical-stance property), through the real CLI; the built-in measure and the stdlib function
run in one study, so each request runs once and both read it.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from intro.cli import main
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

BOTH = """
study both {
  for subject in [a, b], predictor in [a, b] {
    measure old = prediction(predictor, subject, s.test, props, object: short, hypothetical: short)
    for p in props {
      measure new = li.predict_property(predictor, subject, s.test, p, object: short, hypothetical: short)
    }
  }
}
"""

OLD_ONLY = """
study old_only {
  for subject in [a, b], predictor in [a, b] {
    measure old = prediction(predictor, subject, s.test, props, object: short, hypothetical: short)
  }
}
"""


def run_study(root: Path, name: str, spec: str) -> Path:
    """Run `spec` as `<root>/<name>.intro` on the two tiny models; the store of its cube."""
    shutil.copytree(FIXTURE / "data", root / "data")
    make_tiny_model(root / "tiny_a", "qwen2", seed=0)
    make_tiny_model(root / "tiny_b", "qwen2", seed=1)
    (root / f"{name}.intro").write_text(spec)
    with pytest.MonkeyPatch.context() as patch, contextlib.chdir(root):
        patch.setenv("INTRO_CACHE_DIR", str(root / "intro-cache"))
        code, out = intro("run", f"{name}.intro", "--runs", "runs", "--cache", "cache", "--quiet")
    assert code == 0, out
    return root / "runs" / name / "cube.zarr"


def intro(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(list(argv))
    return code, out.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("li-primitives")
    shutil.copytree(FIXTURE / "data", root / "data")
    make_tiny_model(root / "tiny_a", "qwen2", seed=0)
    make_tiny_model(root / "tiny_b", "qwen2", seed=1)
    (root / "both.intro").write_text(HEAD + BOTH)
    (root / "old_only.intro").write_text(HEAD + OLD_ONLY)
    cache = str(root / "cache")
    with pytest.MonkeyPatch.context() as patch, contextlib.chdir(root):
        patch.setenv("INTRO_CACHE_DIR", str(root / "intro-cache"))
        old_plan = intro("plan", "old_only.intro", "--cache", cache)
        first = intro("run", "both.intro", "--runs", "runs", "--cache", cache, "--quiet")
    return {"root": root, "old_plan": old_plan, "first": first}


def cube(runs: dict[str, object], group: str) -> xr.Dataset:
    return xr.open_zarr(Path(str(runs["root"])) / "runs" / "both" / "cube.zarr", group=group).load()


def test_the_stdlib_function_makes_no_calls_beyond_the_builtins(runs: dict[str, object]) -> None:
    (plan_code, plan_out), (code, out) = runs["old_plan"], runs["first"]  # type: ignore[misc]
    assert plan_code == 0 and code == 0
    planned = int(plan_out.split("model calls: ")[1].split(" to make")[0])
    assert planned > 0
    assert f"both: {planned} model calls," in out


def test_every_cell_of_prediction_has_the_same_values_on_the_primitives(runs: dict[str, object]) -> None:
    old, accuracy, baseline = cube(runs, "old"), cube(runs, "new.by_task"), cube(runs, "new.baseline_by_task")
    compared = 0
    frame = old[["accuracy", "ci_low", "ci_high", "n", "mode_baseline"]].to_dataframe().reset_index()
    for cell in frame.itertuples():
        where = {"subject": cell.subject, "predictor": cell.predictor, "p": cell.property, "task": cell.task}
        if cell.property not in accuracy.p or np.isnan(cell.accuracy):
            # no item kept (no compliant answer, or a property the task cannot be read by): none here either
            assert cell.property not in accuracy.p or not accuracy.sel(where).n.values > 0
            continue
        new = accuracy.sel(where)
        assert float(new.estimate) == pytest.approx(cell.accuracy, abs=1e-12)
        assert float(new.ci_low) == pytest.approx(cell.ci_low, abs=1e-12)
        assert float(new.ci_high) == pytest.approx(cell.ci_high, abs=1e-12)
        assert int(new.n) == int(cell.n)
        assert float(baseline.sel(where).estimate) == pytest.approx(cell.mode_baseline, abs=1e-12)
        compared += 1
    assert compared >= 8  # cells with kept items on these tiny models (their answers are often non-compliant)


def test_the_accuracy_over_all_tasks_is_the_builtins_pooled_accuracy(runs: dict[str, object]) -> None:
    old, pooled = cube(runs, "old"), cube(runs, "new.accuracy")
    frame = old[["pooled_accuracy", "pooled_n"]].to_dataframe().reset_index()
    compared = 0
    for cell in frame.itertuples():
        if cell.property not in pooled.p or np.isnan(cell.pooled_accuracy):
            continue
        new = pooled.sel(subject=cell.subject, predictor=cell.predictor, p=cell.property)
        assert float(new.estimate) == pytest.approx(cell.pooled_accuracy, abs=1e-12)
        assert int(new.n) == int(cell.pooled_n)
        compared += 1
    assert compared >= 8


TRAINING = """
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
study training {
  let old = finetune(a, hypotheticals(a, s.train, props, sampling: short), rank: 4, lr: 0.02, batch: 4, seed: 1)
  let new = finetune(a, li.hypothetical_examples(a, s.train, props, short), rank: 4, lr: 0.02, batch: 4, seed: 1)
  measure old_answers = generate(old, prompts(s.train), short)
  measure new_answers = generate(new, prompts(s.train), short)
}
"""


def test_hypothetical_examples_on_the_primitives_train_the_builtins_adapter(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from intro.compiler.plan import Plan
    from intro.runtime.store.cache import Cache

    shutil.copytree(FIXTURE / "data", tmp_path / "data")
    make_tiny_model(tmp_path / "tiny_a", "qwen2", seed=0)
    (tmp_path / "training.intro").write_text(TRAINING)
    with pytest.MonkeyPatch.context() as patch, contextlib.chdir(tmp_path):
        patch.setenv("INTRO_CACHE_DIR", str(tmp_path / "intro-cache"))
        code, out = intro("run", "training.intro", "--runs", "runs", "--cache", "cache", "--quiet")
    assert code == 0, out
    plan = Plan.loads((tmp_path / "runs" / "training" / "plan.json").read_text())
    cache = Cache(tmp_path / "cache")
    old, new = (s for s in plan.steps if s.kind == "finetune")
    examples = [
        (cache.artifact_dir(plan.step(s.params["data"]).hash) / "examples.jsonl").read_text().splitlines()
        for s in (old, new)
    ]
    pairs = [[(row["messages"], row["target"]) for row in map(json.loads, lines)] for lines in examples]
    assert pairs[0] == pairs[1] and len(pairs[0]) > 8  # several properties per item, in the same order
    tensors = [
        load_file(str(cache.artifact_dir(s.hash) / "adapter" / "adapter_model.safetensors"))
        for s in (old, new)
    ]
    assert tensors[0].keys() == tensors[1].keys()
    assert all(bool((tensors[0][k] == tensors[1][k]).all()) for k in tensors[0])
    answers = [
        xr.open_zarr(tmp_path / "runs" / "training" / "cube.zarr", group=g).text.values
        for g in ("old_answers", "new_answers")
    ]
    assert (answers[0] == answers[1]).all()


CHANGE = """
study change {
  for p in props {
    measure new = li.behaviour_follows(a, b, s.test, p, short)
  }
  measure old = behaviour_change(a, b, s.test, props, sampling: short)
}
"""


def test_behaviour_change_on_the_primitives_gives_the_builtins_accuracies(tmp_path: Path) -> None:
    store = run_study(tmp_path, "change", HEAD + CHANGE)
    old = xr.open_zarr(store, group="old").load()
    follows = {
        name: xr.open_zarr(store, group=f"new.{name}").load() for name in ("new_behaviour", "old_behaviour")
    }
    compared = 0
    names = ["accuracy_new", "new_ci_low", "new_ci_high", "accuracy_old", "changed_items"]
    for cell in old[names].to_dataframe().reset_index().itertuples():
        if not cell.changed_items > 0:
            continue
        where = {"p": cell.property, "task": cell.task}
        assert float(follows["new_behaviour"].estimate.sel(where)) == pytest.approx(
            cell.accuracy_new, abs=1e-12
        )
        assert float(follows["old_behaviour"].estimate.sel(where)) == pytest.approx(
            cell.accuracy_old, abs=1e-12
        )
        assert int(follows["new_behaviour"].n.sel(where)) == int(cell.changed_items)
        assert float(follows["new_behaviour"].ci_low.sel(where)) == pytest.approx(cell.new_ci_low, abs=1e-12)
        assert float(follows["new_behaviour"].ci_high.sel(where)) == pytest.approx(
            cell.new_ci_high, abs=1e-12
        )
        compared += 1
    assert compared >= 2


CALIBRATION = """
sampling warm { temperature: 1 samples: 4 max_tokens: 6 seed: 2 }
study calib {
  for p in props {
    measure new = li.calibration_of(a, a, s.test, p, warm)
  }
  measure old = calibration(a, a, s.test, props, sampling: warm)
}
"""


def test_calibration_on_the_primitives_gives_the_builtins_mad(tmp_path: Path) -> None:
    store = run_study(tmp_path, "calib", HEAD + CALIBRATION)
    old = xr.open_zarr(store, group="old").load()
    new = xr.open_zarr(store, group="new").load()
    compared = 0
    for cell in old[["mad", "items"]].to_dataframe().reset_index().itertuples():
        if not cell.items > 0:
            continue
        where = {"p": cell.property, "task": cell.task}
        assert float(new.estimate.sel(where)) == pytest.approx(cell.mad, abs=1e-9)
        assert int(new.n.sel(where)) == int(cell.items)
        compared += 1
    assert compared >= 2
