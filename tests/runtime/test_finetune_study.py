"""A Looking Inward finetuning study end to end through the real CLI, on two tiny random models.

The fixture study (tests/fixtures/studies/looking_inward_finetune_tiny) self-trains model a on hypotheticals
about its own behaviour, cross-trains model b on the self-trained model's behaviour, shifts the self-trained
model's behaviour by training it on b's answers, and measures prediction (self vs cross), calibration and
behaviour change. It runs twice: the second run must train nothing and call no model.
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
from intro.runtime.analysis import metrics
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
        batches = math.ceil(info["examples"] / step.params["hparams"]["batch"])
        assert len(info["losses"]) == batches * step.params["hparams"]["epochs"]
        assert info["hyperparameters"]["rank"] == step.params["hparams"]["rank"]


def test_a_model_trained_from_a_trained_model_stores_the_whole_delta(study):
    cache, steps = study["cache"], finetune_steps(study["plan"])
    parent, child = steps["self_trained(a)"], steps["shifted(self_trained(a))"]
    config = json.loads((cache.artifact_dir(child.hash) / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == parent.params["hparams"]["rank"] + child.params["hparams"]["rank"]
    assert cache.artifact_info(child.hash)["parent"] == parent.hash


def test_training_data_is_stored_as_jsonl(study):
    cache, plan = study["cache"], study["plan"]
    data = plan.step(finetune_steps(plan)["self_trained(a)"].params["data"])
    lines = (cache.artifact_dir(data.hash) / "examples.jsonl").read_text().splitlines()
    examples = [json.loads(line) for line in lines]
    assert len(examples) == cache.artifact_info(data.hash)["examples"] > 0
    for example in examples:
        assert (
            example["messages"][-1][0] == "user"
            and "Previously, you were asked" in example["messages"][-1][1]
        )
        assert example["property"] in ("first_character", "ethical_stance") and example["target"]


def test_the_training_group_holds_each_models_loss_curve(study):
    training = group(study, "training")
    labels = sorted(str(v) for v in training["label"].values)
    assert labels == ["cross_trained(b)", "self_trained(a)", "shifted(self_trained(a))"]
    cache = study["cache"]
    for step in finetune_steps(study["plan"]).values():
        key = next(k for k, m in study["plan"].models.items() if m.params.get("step") == step.id)
        losses = training["loss"].sel(model=key).values
        np.testing.assert_allclose(losses[~np.isnan(losses)], cache.artifact_info(step.hash)["losses"])


def test_self_vs_cross_is_tested_on_the_prediction_cube(study):
    cube = group(study, "trained")
    assert cube["z_vs_self"].dims == ("subject", "predictor", "property")
    assert list(cube["predictor"].values) == ["self_trained", "cross_trained", "a"]
    correct = cube["correct"].sel(subject="self_trained", property="first_character").values
    successes = np.nansum(correct == 1, axis=(-2, -1))
    counts = np.sum(~np.isnan(correct), axis=(-2, -1))
    for index, predictor in enumerate(["cross_trained", "a"], start=1):
        z, p = metrics.two_proportion_ztest(successes[0], counts[0], successes[index], counts[index])
        cell = {"subject": "self_trained", "predictor": predictor, "property": "first_character"}
        np.testing.assert_allclose(
            [cube["z_vs_self"].sel(cell).item(), cube["p_vs_self"].sel(cell).item()], [z, p]
        )
    assert np.isnan(cube["z_vs_self"].sel(subject="self_trained", predictor="self_trained")).all()


def test_the_calibration_cube_has_its_axes_and_consistent_curves(study):
    cube = group(study, "calibrated")
    assert dict(cube["mad"].sizes) == {"model": 2, "task": 2, "property": 2}
    assert dict(cube["object_mean"].sizes) == {"model": 2, "task": 2, "property": 2, "bin": 10}
    assert dict(cube["pooled_mad"].sizes) == {"model": 2, "property": 2}
    cell = {"model": "a", "task": "colours", "property": "first_character"}
    objects, answers = cube["object_mean"].sel(cell).values, cube["hypothetical_mean"].sel(cell).values
    filled = ~np.isnan(objects)
    assert filled.any()
    assert cube["mad"].sel(cell).item() == pytest.approx(100 * np.abs(objects - answers)[filled].mean())
    assert np.nansum(cube["bin_count"].sel(cell).values) == cube["pairs"].sel(cell).item()
    assert 0 < cube["items"].sel(cell).item() <= 4
    # Local predictors also answer by logprobs: a MAD against read-out probabilities, cached per step.
    readout = cube["pooled_readout_mad"].values
    assert (
        np.isfinite(readout).any()
        and ((readout[np.isfinite(readout)] >= 0) & (readout[np.isfinite(readout)] <= 100)).all()
    )


def test_the_behaviour_change_cube_scores_changed_items_against_old_and_new(study):
    cube = group(study, "changed")
    assert dict(cube["changed"].sizes) == {"task": 2, "property": 2, "item": 4}
    old, new = cube["old_target"].values, cube["new_target"].values
    compared = (old != "") & (new != "")
    np.testing.assert_array_equal(~np.isnan(cube["changed"].values), compared)
    np.testing.assert_array_equal(cube["changed"].values[compared] == 1, (old != new)[compared])
    changed = cube["changed"].values == 1
    prediction = cube["prediction"].values
    np.testing.assert_array_equal(cube["matches_new"].values[changed] == 1, (prediction == new)[changed])
    for t, task in enumerate(cube["task"].values):
        for p, prop in enumerate(cube["property"].values):
            cell = {"task": task, "property": prop}
            if np.isnan(cube["compared"].sel(cell).item()):
                continue  # the property cannot read this task: no rows
            assert cube["changed_items"].sel(cell).item() == changed[t, p].sum()
            if changed[t, p].any():
                expected = cube["matches_old"].values[t, p][changed[t, p]].mean()
                assert cube["accuracy_old"].sel(cell).item() == pytest.approx(expected)
    assert cube["pooled_changed_items"].sum().item() == changed.sum()


def test_show_prints_every_result(study):
    code, shown = study["runs"][2]
    assert code == 0
    for heading in (
        "trained (prediction)",
        "self vs cross prediction",
        "calibrated (calibration)",
        "changed (behaviour_change)",
        "finetuning",
    ):
        assert heading in shown
    assert "shifted(self_trained(a))" in shown and "MAD x100" in shown


API_SPEC = """
use stdlib.looking_inward as li
model a = local "tiny_a"
model api = litellm "openai/gpt-4o-mini" { finetune: true }
task animals { data: "data/animals.jsonl" prompt: "What are the next 3 animals after {{ sequence }}?" }
task colours { data: "data/colours.jsonl" prompt: "What are the next 3 colours after {{ sequence }}?" }
split s { train: [animals]  test: [colours]  items: 4  seed: 1 }
study api_finetune {
  let tuned = finetune(api, hypotheticals(a, s.train, [li.first_character]))
  measure m = prediction(tuned, a, s.test, [li.first_character])
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
    assert pngs == sorted([f"{name}.png" for name in kinds] + ["training.png"])
    page = (report / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(pngs)  # no links to files: one page to send around
    assert study["plan"].hash[:16] in page and STUDY in page
    for png in pngs:
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
