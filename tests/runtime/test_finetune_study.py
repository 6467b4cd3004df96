"""A Looking Inward finetuning study end to end through the real CLI, on two tiny random models.

The fixture study (tests/fixtures/studies/looking_inward_finetune_tiny, on the stdlib's functions)
self-trains model a on hypotheticals about its own behaviour, cross-trains model b on the self-trained
model's behaviour, shifts the self-trained model's behaviour by training it on b's answers, and measures
prediction (self vs cross), calibration and behaviour change. It runs twice: the second run must train
nothing and call no model.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from safetensors.torch import load_file

from intro.cli import main
from intro.compiler.plan import Plan
from intro.runtime.store.cache import Cache
from tests.tinymodels import make_tiny_model

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "studies" / "looking_inward_finetune_tiny"
SPEC = "looking_inward_finetune_tiny.intro"
STUDY = "looking_inward_finetune_tiny"

# Serving a finetuned model loads a second adapter next to the first; peft warns about that on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning")


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """Weight digests are remembered under the intro cache directory: keep them out of the user's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INTRO_CACHE_DIR", str(tmp_path_factory.mktemp("intro-cache")))
        yield


def intro(*argv: str) -> tuple[int, str]:
    code, out, _ = intro_with_errors(*argv)
    return code, out


def intro_with_errors(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune-study")
    shutil.copytree(FIXTURE, root, dirs_exist_ok=True)
    make_tiny_model(root / "tiny_a", "qwen2", seed=0)
    make_tiny_model(root / "tiny_b", "qwen2", seed=1)
    runs, cache = root / "runs", root / "cache"
    with contextlib.chdir(root):
        first = intro("run", SPEC, "--runs", str(runs), "--cache", str(cache), "--quiet")
        second = intro("run", SPEC, "--runs", str(runs), "--cache", str(cache), "--quiet")
        shown = intro("show", str(runs / STUDY))
    directory = runs / STUDY
    plan = Plan.loads((directory / "plan.json").read_text())
    return {
        "root": root,
        "dir": directory,
        "cache": Cache(cache),
        "plan": plan,
        "runs": (first, second, shown),
    }


def group(study, name: str) -> xr.Dataset:
    return xr.open_zarr(study["dir"] / "cube.zarr", group=name)


def finetune_steps(plan: Plan) -> dict[str, object]:
    return {s.id.rsplit(".", 1)[-1]: s for s in plan.steps if s.kind == "finetune"}


def test_the_first_run_trains_three_models_and_the_second_reuses_everything(study):
    (code1, out1), (code2, out2), _ = study["runs"]
    assert code1 == 0 and code2 == 0
    assert ", 3 trained," in out1 and " 0 from cache," in out1
    assert f"{STUDY}: 0 model calls," in out2 and ", 0 trained," in out2


def test_adapters_are_safetensors_keyed_by_the_finetune_steps_hash(study):
    cache, steps = study["cache"], finetune_steps(study["plan"])
    assert set(steps) == {"self_trained(a)", "cross_trained(b)", "shifted(self_trained(a))"}
    for step in steps.values():
        adapter = cache.artifact_dir(step.hash) / "adapter"
        tensors = load_file(str(adapter / "adapter_model.safetensors"))
        assert tensors and all(key.endswith(("lora_A.weight", "lora_B.weight")) for key in tensors)
        info = cache.artifact_info(step.hash)
        batches = math.ceil(info["examples"] / step.params.hparams.batch)
        assert len(info["losses"]) == batches * step.params.hparams.epochs
        assert info["hyperparameters"]["rank"] == step.params.hparams.rank


def test_a_model_trained_from_a_trained_model_stores_the_whole_delta(study):
    cache, steps = study["cache"], finetune_steps(study["plan"])
    parent, child = steps["self_trained(a)"], steps["shifted(self_trained(a))"]
    config = json.loads((cache.artifact_dir(child.hash) / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == parent.params.hparams.rank + child.params.hparams.rank
    assert cache.artifact_info(child.hash)["parent"] == parent.hash


QUESTIONS = ("What is the first character of the response you gave?", "Would your answer be the option")


def test_training_data_is_stored_as_jsonl(study):
    cache, plan = study["cache"], study["plan"]
    data = plan.step(finetune_steps(plan)["self_trained(a)"].params.data)
    lines = (cache.artifact_dir(data.hash) / "examples.jsonl").read_text().splitlines()
    examples = [json.loads(line) for line in lines]
    assert len(examples) == cache.artifact_info(data.hash)["examples"] > 0
    for example in examples:
        role, content = example["messages"][-1]
        assert role == "user" and "Previously, you were asked" in content
        assert any(question in content for question in QUESTIONS) and example["target"]


def test_the_training_group_holds_each_models_loss_curve(study):
    training = group(study, "training")
    labels = sorted(str(v) for v in training["label"].values)
    assert labels == ["cross_trained(b)", "self_trained(a)", "shifted(self_trained(a))"]
    cache = study["cache"]
    for step in finetune_steps(study["plan"]).values():
        key = next(k for k, m in study["plan"].models.items() if m.params.get("step") == step.id)
        losses = training["loss"].sel(model=key).values
        np.testing.assert_allclose(losses[~np.isnan(losses)], cache.artifact_info(step.hash)["losses"])


def scores(study, name: str, prop: str) -> dict[str, float]:
    """item -> score of an estimate at one property, for the items it scored."""
    data = group(study, name).sel(property=prop)
    return {i: s for i, s in zip(data["item"].values, data["score"].values, strict=True) if np.isfinite(s)}


def test_self_vs_cross_is_compared_item_by_item(study):
    advantage = group(study, "advantage")
    compared = 0
    for prop in advantage["property"].values:
        own, crossed = scores(study, "self.accuracy", prop), scores(study, "cross.accuracy", prop)
        shared = [item for item in own if item in crossed]
        cell = advantage.sel(property=prop)
        assert int(cell["n"]) == len(shared)
        if not shared:
            continue
        first, second = np.array([own[i] for i in shared]), np.array([crossed[i] for i in shared])
        assert float(cell["estimate"]) == pytest.approx(first.mean() - second.mean())
        assert [float(cell["a"]), float(cell["b"])] == pytest.approx([first.mean(), second.mean()])
        assert float(cell["ci_low"]) <= float(cell["estimate"]) <= float(cell["ci_high"])
        compared += 1
    assert compared > 0
    # the untrained model predicts the self-trained subject's behaviour from the same answers
    assert group(study, "untrained.behaviour")["value"].equals(group(study, "self.behaviour")["value"])


def test_the_calibration_cube_has_its_axes_and_a_mad_per_cell(study):
    cube = group(study, "calibrated")
    assert dict(cube["estimate"].sizes) == {"model": 2, "property": 2, "task": 2}
    assert list(cube["model"].values) == ["a", "self_trained"]
    mad = cube["estimate"].values
    assert np.isfinite(mad).any() and ((mad[np.isfinite(mad)] >= 0) & (mad[np.isfinite(mad)] <= 100)).all()
    cell = {"model": "a", "task": "colours", "property": "first_character"}
    assert 0 < cube["n"].sel(cell).item() <= 4  # items of the task with a behaviour


def values(study, name: str) -> dict[tuple[str, str], str]:
    """(property, item) -> the value read from the reply, where there is one."""
    data = group(study, name).isel(sample=0)
    found = {}
    for prop in data["property"].values:
        row = data.sel(property=prop)
        for item, value, ok in zip(
            row["item"].values, row["value"].values, row["compliant"].values, strict=True
        ):
            if ok == 1:
                found[str(prop), str(item)] = str(value)
    return found


def test_behaviour_change_scores_the_changed_items_against_old_and_new(study):
    # self_trained's behaviour (before), the shifted model's (after) and its predictions of itself: the
    # replies behaviour_follows reads, measured on their own by the study
    before, after = values(study, "self.behaviour"), values(study, "shifted_self.behaviour")
    predicted = values(study, "shifted_self.predictions")
    changed = [key for key in before if key in after and before[key] != after[key]]
    new, old = group(study, "changed.new_behaviour"), group(study, "changed.old_behaviour")
    for prop in new["property"].values:
        for task in new["task"].values:
            keys = [k for k in changed if k[0] == prop and k[1].startswith(f"{task}/")]
            cell = {"property": prop, "task": task}
            assert count(new["n"].sel(cell)) == len(keys) == count(old["n"].sel(cell))
            if keys:
                follows_new = np.mean([predicted.get(k) == after[k] for k in keys])
                follows_old = np.mean([predicted.get(k) == before[k] for k in keys])
                assert new["estimate"].sel(cell).item() == pytest.approx(follows_new)
                assert old["estimate"].sel(cell).item() == pytest.approx(follows_old)
    assert new["n"].sum().item() == len(changed)


def count(n: xr.DataArray) -> int:
    """An estimate's n at one point; none where the property cannot read the task."""
    return 0 if np.isnan(n.item()) else int(n.item())


def test_show_prints_every_result(study):
    code, shown = study["runs"][2]
    assert code == 0
    for name, kind in {m.name: m.kind for m in study["plan"].measures}.items():
        assert f"{name} ({kind})" in shown
    assert "finetuning" in shown and "shifted(self_trained(a))" in shown


API_SPEC = """
use stdlib.looking_inward as li
model a = local "tiny_a"
model api = litellm "openai/gpt-4o-mini" { finetune: true }
task animals { data: "data/animals.jsonl" prompt: "What are the next 3 animals after {{ sequence }}?" }
task colours { data: "data/colours.jsonl" prompt: "What are the next 3 colours after {{ sequence }}?" }
split s { train: [animals]  test: [colours]  items: 4  seed: 1 }
study api_finetune {
  let tuned = finetune(api, li.hypothetical_examples(a, s.train, [li.first_character]))
  measure m = li.predict_property(tuned, a, s.test, li.first_character)
}
"""


def test_finetuning_an_api_model_without_its_key_fails_before_any_api_call(study, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # never reach a real provider from a test
    root = study["root"]
    (root / "api.intro").write_text(API_SPEC)
    with contextlib.chdir(root):
        code, _, errors = intro_with_errors(
            "run", "api.intro", "--runs", "runs", "--cache", "cache", "--quiet"
        )
    assert code == 1
    assert "needs the environment variable(s) OPENAI_API_KEY" in errors


def test_report_draws_every_figure_into_one_self_contained_page(study):
    code, out = intro("report", str(study["dir"]))
    assert code == 0, out
    report = study["dir"] / "report"
    pngs = sorted(p.name for p in report.glob("*.png"))
    kinds = {m.name: m.kind for m in study["plan"].measures}
    tables = [name for name, kind in kinds.items() if kind in ("texts", "values")]  # read as tables
    assert tables and pngs == sorted(
        [f"{name}.png" for name in kinds if name not in tables] + ["training.png"]
    )
    page = (report / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(pngs)  # no links to files: one page to send around
    assert all(f"{name} ({kinds[name]})" in page for name in tables)
    assert study["plan"].hash[:16] in page and STUDY in page
    for png in pngs:
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
