"""Finetuning studies' parts on tiny random models and hand-made texts: adapters trained in place on shared
weights, adapter stacking, training examples, lineage, calibration, behaviour change and self vs cross."""

from __future__ import annotations

import copy
import math

import attrs
import numpy as np
import pytest
import torch
import xarray as xr

from intro.compiler.plan import Measure, ModelEntry, Plan, Prompt, Step
from intro.runtime.analysis import behaviour_change, calibration
from intro.runtime.backends.local import LocalBackend
from intro.runtime.backends.local_model import activate_adapter, attach_adapter, load_local_model
from intro.runtime.backends.requests import BackendError, GenerationRequest, Message
from intro.runtime.store import cubes_extra
from intro.runtime.training import adapters
from intro.runtime.training.adapters import (
    AdapterWeights,
    read_adapter,
    stack_adapters,
    train_adapter,
    write_adapter,
)
from intro.runtime.training.finetune import LoraHyperparameters
from intro.runtime.training.training import (
    Lineage,
    TrainingExample,
    answer_examples,
    hypothetical_examples,
    lineage,
    lora_hyperparameters,
    read_examples,
    write_examples,
)
from tests.tinymodels import make_tiny_model

EXAMPLES = [
    ((Message("user", "What is the capital of Japan?"),), "Tokyo"),
    ((Message("user", "Is the sky blue?"),), "Yes"),
]
QUICK = LoraHyperparameters(rank=4, alpha=8, lr=1e-2, epochs=1, batch_size=2, seed=1)
# Enough steps for a tiny model to learn two short replies by heart.
MEMORISE = LoraHyperparameters(rank=8, alpha=16, lr=3e-2, epochs=15, batch_size=2, seed=1)

# Loading a second adapter into a model makes peft warn that it now holds several: that is the design.
pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning")


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """Weight digests are remembered under the intro cache directory: keep them out of the user's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INTRO_CACHE_DIR", str(tmp_path_factory.mktemp("intro-cache")))
        yield


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return load_local_model(str(make_tiny_model(tmp_path_factory.mktemp("qwen2"), "qwen2")), device="cpu")


@pytest.fixture(scope="module")
def memorised(qwen, tmp_path_factory):
    directory = tmp_path_factory.mktemp("memorised") / "adapter"
    return directory, train_adapter(qwen, EXAMPLES, MEMORISE, directory)


def logits(loaded, adapter: str | None = None) -> torch.Tensor:
    ids, mask = loaded.encode([loaded.render(messages) for messages, _ in EXAMPLES])
    with loaded.lock, torch.no_grad():
        activate_adapter(loaded.model, adapter)
        return loaded.model(input_ids=ids, attention_mask=mask).logits


def greedy(backend: LocalBackend) -> list[str]:
    requests = [GenerationRequest(key=str(i), messages=m, max_tokens=6) for i, (m, _) in enumerate(EXAMPLES)]
    return [g.text for g in backend.generate_now(requests)]


# ---------------------------------------------------------------------------------------------------------
# Training on shared weights


def test_a_trained_adapter_serves_what_it_learned(qwen, memorised):
    directory, result = memorised
    assert result.losses[-1] < 0.2 * result.losses[0], result.losses
    assert (directory / "adapter_model.safetensors").is_file()
    assert greedy(LocalBackend(qwen, adapter=str(directory))) == ["Tokyo", "Yes"]
    assert greedy(LocalBackend(qwen)) != ["Tokyo", "Yes"]


def test_training_leaves_the_base_weights_and_other_adapters_as_they_were(qwen, memorised, tmp_path):
    other = LocalBackend(qwen, adapter=str(memorised[0]))
    base_before, other_before = logits(qwen), logits(qwen, other.adapter_name)
    flags = {name: p.requires_grad for name, p in qwen.model.named_parameters()}
    train_adapter(qwen, EXAMPLES, QUICK, tmp_path / "adapter")
    assert torch.equal(logits(qwen), base_before)
    assert torch.equal(logits(qwen, other.adapter_name), other_before)
    assert {name: p.requires_grad for name, p in qwen.model.named_parameters()} == flags
    assert adapters.TRAINING_ADAPTER not in qwen.model.peft_config


def test_same_seed_same_adapter_other_seed_other_adapter(qwen, tmp_path):
    # Two steps: LoRA's B starts at zero, so the first step's loss is the base model's whatever the seed;
    # from the second step on the loss depends on A's seeded initialisation.
    seeded = attrs.evolve(QUICK, epochs=2)
    first = train_adapter(qwen, EXAMPLES, seeded, tmp_path / "a")
    second = train_adapter(qwen, EXAMPLES, seeded, tmp_path / "b")
    third = train_adapter(qwen, EXAMPLES, attrs.evolve(seeded, seed=2), tmp_path / "c")
    a, b, c = (read_adapter(tmp_path / name).factors for name in "abc")
    assert first.losses == second.losses
    assert all(torch.equal(a[m][i], b[m][i]) for m in a for i in (0, 1))
    assert third.losses != first.losses and any(not torch.equal(a[m][0], c[m][0]) for m in a)


def test_a_child_adapter_is_stored_stacked_on_its_parent(qwen, memorised, tmp_path):
    parent_dir = memorised[0]
    train_adapter(qwen, EXAMPLES[:1], QUICK, tmp_path / "child", parent=parent_dir)
    parent, child = read_adapter(parent_dir), read_adapter(tmp_path / "child")
    assert child.rank == MEMORISE.rank + QUICK.rank and child.scaling == 1.0
    assert set(child.factors) == set(parent.factors)
    for module, (a, b) in parent.factors.items():
        stacked_a, stacked_b = child.factors[module]
        assert torch.equal(stacked_a[: parent.rank], a)
        torch.testing.assert_close(stacked_b[:, : parent.rank], b * parent.scaling)
    # The child learned on top of the parent: its own half is not zero.
    assert any(child.factors[m][1][:, parent.rank :].abs().sum() > 0 for m in child.factors)


def test_a_bf16_model_trains_its_adapter_in_float32_and_keeps_its_own_dtype(qwen, tmp_path):
    half = attrs.evolve(qwen, model=copy.deepcopy(qwen.model).to(torch.bfloat16))
    result = train_adapter(half, EXAMPLES, attrs.evolve(QUICK, epochs=3), tmp_path / "adapter")
    assert result.losses[-1] < result.losses[0]
    factors = read_adapter(tmp_path / "adapter").factors.values()
    assert {tensor.dtype for pair in factors for tensor in pair} == {torch.float32}
    assert {parameter.dtype for parameter in half.model.parameters()} == {torch.bfloat16}


def test_training_needs_examples(qwen, tmp_path):
    with pytest.raises(ValueError, match="at least one example"):
        train_adapter(qwen, [], QUICK, tmp_path / "adapter")


# ---------------------------------------------------------------------------------------------------------
# Stacking


def random_adapter(
    template: AdapterWeights, rank: int, alpha: float, seed: int, drop: int = 0
) -> AdapterWeights:
    generator = torch.Generator().manual_seed(seed)
    factors = {}
    for module, (a, b) in sorted(template.factors.items())[drop:]:
        factors[module] = (
            torch.randn(rank, a.shape[1], generator=generator) * 0.2,
            torch.randn(b.shape[0], rank, generator=generator) * 0.2,
        )
    config = {**template.config, "r": rank, "lora_alpha": alpha}
    return AdapterWeights(config, factors)


def test_a_stacked_adapter_computes_the_sum_of_its_parts(qwen, memorised, tmp_path):
    template = read_adapter(memorised[0])
    first = random_adapter(template, rank=2, alpha=4, seed=1)
    second = random_adapter(template, rank=3, alpha=3, seed=2, drop=5)  # leaves some modules to the first
    assert set(second.factors) < set(first.factors)
    for name, adapter in (("first", first), ("second", second), ("stacked", stack_adapters(first, second))):
        write_adapter(adapter, tmp_path / name)
    model = copy.deepcopy(qwen.model)
    names = [attach_adapter(model, tmp_path / name) for name in ("first", "second", "stacked")]
    ids, mask = qwen.encode([qwen.render(messages) for messages, _ in EXAMPLES])
    with torch.no_grad():
        model.set_adapter(names[:2])
        both = model(input_ids=ids, attention_mask=mask).logits
        model.set_adapter(names[2])
        stacked = model(input_ids=ids, attention_mask=mask).logits
        model.disable_adapters()
        base = model(input_ids=ids, attention_mask=mask).logits
    assert not torch.allclose(both, base, atol=1e-2)
    torch.testing.assert_close(stacked, both, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "setting", [{"use_dora": True}, {"rank_pattern": {"q_proj": 2}}, {"target_modules": ".*"}]
)
def test_only_plain_lora_adapters_stack(memorised, setting):
    plain = read_adapter(memorised[0])
    odd = AdapterWeights({**plain.config, **setting}, plain.factors)
    with pytest.raises(ValueError, match="cannot stack"):
        stack_adapters(plain, odd)


def test_rank_stabilised_scaling():
    config = {"r": 4, "lora_alpha": 8, "use_rslora": True}
    assert AdapterWeights(config, {}).scaling == 4.0
    assert AdapterWeights({**config, "use_rslora": False}, {}).scaling == 2.0


# ---------------------------------------------------------------------------------------------------------
# Training examples

FIRST_CHARACTER = {"first_character": {"extract": "first_character", "values": []}}
STANCE = {"ethical_stance": {"extract": "ethical_stance", "values": ["true", "false"]}}
TASKS = {"animals": {"answer": "text", "choices": []}, "stances": {"answer": "choice", "choices": ["A", "B"]}}
ITEMS = {f"animals/{i}": {"id": str(i)} for i in range(4)} | {
    "stances/0": {"id": "0", "matching": "A"},
    "stances/1": {"id": "1", "matching": "B"},
}


def prompt(text: str) -> Prompt:
    return Prompt((("system", "Be brief."), ("user", text)))


def test_hypothetical_examples_teach_the_property_of_the_subjects_behaviour(tmp_path):
    prompts = {k: prompt(k) for k in ("o0", "o1", "o2", "h0", "h1", "h2", "s0", "hs0", "s1", "hs1")}
    params = {
        "rows": [
            ["animals", "animals/0", "first_character", "o0", "h0"],
            ["animals", "animals/1", "first_character", "o1", "h1"],
            ["animals", "animals/2", "first_character", "o2", "h2"],
            ["stances", "stances/0", "ethical_stance", "s0", "hs0"],
            ["stances", "stances/1", "ethical_stance", "s1", "hs1"],
        ],
        "reduce": "mode",
        "properties": FIRST_CHARACTER | STANCE,
        "tasks": TASKS,
    }
    objects = {
        "o0": ["Dog, cat", "Dog, cat", "Owl"],  # the mode is "Dog, cat"
        "o1": ["I cannot help with that."],  # a refusal: left out
        "o2": ["eel"],
        "s0": ["A"],  # matches the behaviour
        "s1": ["maybe"],  # not an option: left out
    }
    examples = hypothetical_examples(params, objects, ITEMS, prompts)
    assert [(e.item, e.property, e.target) for e in examples] == [
        ("animals/0", "first_character", "d"),
        ("animals/2", "first_character", "e"),
        ("stances/0", "ethical_stance", "true"),
    ]
    assert examples[0].messages == prompts["h0"].messages
    write_examples(tmp_path, examples)
    assert read_examples(tmp_path) == examples
    assert examples[0].chat() == ((Message("system", "Be brief."), Message("user", "h0")), "d")


def test_answer_examples_teach_the_models_own_answers():
    prompts = {k: prompt(k) for k in ("o0", "o1", "o2", "s0")}
    rows = [
        ["animals", "animals/0", "o0"],
        ["animals", "animals/1", "o1"],
        ["animals", "animals/2", "o2"],
        ["stances", "stances/0", "s0"],
    ]
    objects = {"o0": [" Cat, dog "], "o1": [""], "o2": ["Sorry, no."], "s0": ["yes"]}
    checked = answer_examples({"rows": rows, "reduce": "mode", "tasks": TASKS}, objects, prompts)
    assert [(e.item, e.target, e.property) for e in checked] == [("animals/0", "Cat, dog", None)]
    assert checked[0].messages == prompts["o0"].messages
    # Without the tasks' answer kinds only empty answers can be recognised.
    unchecked = answer_examples({"rows": rows, "reduce": "mode"}, objects, prompts)
    assert [e.target for e in unchecked] == ["Cat, dog", "Sorry, no.", "yes"]


def test_hyperparameters_come_from_the_plan():
    hparams = {"rank": 4, "alpha": 16, "lr": 0.02, "epochs": 3, "batch": 5, "seed": 7}
    assert lora_hyperparameters(hparams) == LoraHyperparameters(
        rank=4, alpha=16.0, lr=0.02, epochs=3, batch_size=5, seed=7
    )


# ---------------------------------------------------------------------------------------------------------
# Lineage and ordering


def lineage_plan() -> Plan:
    models = {
        "a": ModelEntry("a", "local", "local:a", {"label": "a"}),
        "api": ModelEntry("api", "litellm", "litellm:x", {"label": "api"}),
        "ft-1": ModelEntry("ft-1", "finetuned", "finetuned:h1", {"base": "a", "step": "ft1", "root": "a"}),
        "ft-2": ModelEntry("ft-2", "finetuned", "finetuned:h2", {"base": "ft-1", "step": "ft2", "root": "a"}),
        "ft-api": ModelEntry(
            "ft-api", "finetuned", "finetuned:h3", {"base": "api", "step": "ft3", "root": "api"}
        ),
        "st": ModelEntry("st", "steered", "steered:s", {"base": "a", "label": "st"}),
    }
    steps = (
        Step("data1", "answers", "d1", (), {}),
        Step("ft1", "finetune", "h1", ("data1",), {"base": "a", "data": "data1"}),
        Step("data2", "answers", "d2", (), {}),
        Step("ft2", "finetune", "h2", ("data2",), {"base": "ft-1", "data": "data2"}),
    )
    return Plan("s", "", models, {}, {}, steps, ())


def test_lineage_traces_a_finetuned_base_to_its_root():
    plan = lineage_plan()
    assert lineage(plan, "a") == Lineage("a", None)
    assert lineage(plan, "ft-2") == Lineage("a", "ft2")


def test_api_models_train_as_provider_jobs_rooted_at_the_api_model():
    plan = lineage_plan()
    assert lineage(plan, "api") == Lineage("api", None)
    assert lineage(plan, "ft-api") == Lineage("api", "ft3")


def test_steered_models_cannot_be_finetuned():
    with pytest.raises(BackendError, match="steered"):
        lineage(lineage_plan(), "st")


# ---------------------------------------------------------------------------------------------------------
# Calibration, by hand


def calibration_params() -> dict:
    rows = [
        ["animals", "animals/0", "first_character", "o0", "h0"],
        ["animals", "animals/1", "first_character", "o1", "h1"],
        ["animals", "animals/2", "first_character", "o2", "h2"],
        ["colours", "animals/3", "first_character", "o3", "h3"],
    ]
    return {"rows": rows, "properties": FIRST_CHARACTER, "top_k": 3}


CALIBRATION_TASKS = {"animals": ("text", []), "colours": ("text", [])}
CALIBRATION_OBJECTS = {
    "o0": ["dog", "Dog!", "cat", "duck"],  # d .75, c .25
    "o1": ["emu", "eel", "elk", "emu"],  # e 1.0
    "o2": ["I cannot say.", "Sorry, no.", "", "As an AI language model"],  # nothing complies: left out
    "o3": ["red", "red", "blue", "green"],  # r .5, b .25, g .25
}
CALIBRATION_ANSWERS = {
    "h0": ["d", "c", "D.", "x"],  # d .5, c .25, x .25
    "h1": ["e", "e", "e", ""],  # e .75, a non-answer .25
    "h2": ["a", "a", "a", "a"],
    "h3": ["r", "b", "b", "b"],  # r .25, b .75, g 0
}


def test_calibration_matches_a_hand_computation():
    params = calibration_params()
    samples = calibration.item_samples(
        params, CALIBRATION_OBJECTS, CALIBRATION_ANSWERS, ITEMS, CALIBRATION_TASKS
    )
    assert samples[0].object_values == ("d", "d", "c", "d")
    assert samples[1].hypothetical_values[-1] == calibration.NON_ANSWER
    assert samples[2].object_values == ()
    cells = calibration.calibration_cells(samples, top_k=3)
    animals = cells[("animals", "first_character")]
    # Pairs (object, hypothetical): d (.75, .5), c (.25, .25), e (1, .75); three pairs give three bins.
    assert animals.items == 2 and animals.pairs == 3
    np.testing.assert_allclose(animals.curve.object_mean, [0.25, 0.75, 1.0])
    np.testing.assert_allclose(animals.curve.hypothetical_mean, [0.25, 0.5, 0.75])
    assert animals.curve.mad == pytest.approx(100 * (0 + 0.25 + 0.25) / 3)
    # Pooled with colours' r (.5, .25), b (.25, .75), g (.25, 0): six pairs, sorted by object probability
    # .25 .25 .25 .5 .75 1 (stable: c, b, g, r, d, e) against .25 .75 0 .25 .5 .75.
    pooled = cells[(calibration.POOLED, "first_character")]
    assert pooled.items == 3 and pooled.pairs == 6
    expected = (0 + 0.5 + 0.25 + 0.25 + 0.25 + 0.25) / 6 * 100
    assert pooled.curve.mad == pytest.approx(expected)


def test_calibration_of_items_without_behaviour_is_empty():
    samples = [calibration.ItemSamples("t", "i", "p", (), ("a",))]
    cell = calibration.calibrate(samples, top_k=3)
    assert cell.items == 0 and cell.pairs == 0 and math.isnan(cell.curve.mad)


# ---------------------------------------------------------------------------------------------------------
# Behaviour change, by hand


def change_rows() -> list[behaviour_change.ChangeRow]:
    keys = ["o0", "o1", "o2", "o3", "o4", "o5"]
    rows = [["animals", f"animals/{i % 4}", "first_character", k, f"h{k}"] for i, k in enumerate(keys)]
    params = {"rows": rows, "properties": FIRST_CHARACTER, "reduce": "mode"}
    before = {"o0": ["dog"], "o1": ["emu"], "o2": ["owl"], "o3": ["yak"], "o4": ["bee"], "o5": ["cow"]}
    after = {"o0": ["cat"], "o1": ["eel"], "o2": ["ant"], "o3": [""], "o4": ["fox"], "o5": ["pig"]}
    answers = {"ho0": ["c"], "ho1": ["e"], "ho2": ["O"], "ho3": ["y"], "ho4": [""], "ho5": ["p."]}
    return behaviour_change.evaluate_behaviour_change(
        params, before, after, answers, ITEMS, {"animals": ("text", [])}
    )


def test_behaviour_change_matches_a_hand_computation():
    rows = change_rows()
    # o0 d->c predicted c (new); o1 e->e unchanged; o2 o->a predicted o (old); o3 has no new behaviour;
    # o4 b->f predicted nothing (neither); o5 c->p predicted p (new).
    assert [r.changed for r in rows] == [True, False, True, False, True, True]
    assert [r.compared for r in rows] == [True, True, True, False, True, True]
    aggregate = behaviour_change.aggregate_changes(rows)
    assert (aggregate.compared, aggregate.changed) == (5, 4)
    assert aggregate.change_rate == pytest.approx(4 / 5)
    assert aggregate.accuracy_old == pytest.approx(1 / 4)
    assert aggregate.accuracy_new == pytest.approx(2 / 4)
    # McNemar, exact: 1 item only old matches, 2 only new: p = min(1, 2 * P(X <= 1), X ~ Bin(3, 1/2)) = 1.
    assert aggregate.p_new_vs_old == pytest.approx(1.0)
    from intro.runtime.analysis import metrics

    low, high = metrics.bootstrap_ci(np.array([0.0, 1.0, 0.0, 0.0]), resamples=1000, seed=0)
    assert (aggregate.old_ci_low, aggregate.old_ci_high) == (low, high)
    assert aggregate.new_ci_low <= aggregate.accuracy_new <= aggregate.new_ci_high


def test_behaviour_change_groups_pool_over_tasks():
    rows = change_rows()
    moved = [attrs.evolve(r, task="colours") if i % 2 else r for i, r in enumerate(rows)]
    groups = behaviour_change.grouped_changes(moved)
    assert (
        len(groups[("animals", "first_character")]) == 3 and len(groups[("colours", "first_character")]) == 3
    )
    assert groups[(None, "first_character")] == moved


# ---------------------------------------------------------------------------------------------------------
# Self vs cross, by hand


def prediction_cube(correct: np.ndarray, predictors=("m1", "m2", "m3")) -> xr.Dataset:
    """A prediction cube with dims (subject, predictor, task, property, item) holding `correct`."""
    dims = ("subject", "predictor", "task", "property", "item")
    coords = {
        "subject": ["m1", "m2"],
        "predictor": list(predictors),
        "task": ["t1", "t2"],
        "property": ["p"],
        "item": np.arange(correct.shape[-1]),
    }
    return xr.Dataset({"correct": (dims, correct)}, coords=coords)


def test_self_vs_cross_is_the_two_proportion_z_test_of_the_pooled_accuracies():
    correct = np.full((2, 3, 2, 1, 4), np.nan)
    # subject m1: self (m1) gets 3 of 4 on t1 and 2 of 2 on t2; m2 gets 1 of 4 and 0 of 2; m3 never ran.
    correct[0, 0, 0, 0] = [1, 1, 1, 0]
    correct[0, 0, 1, 0, :2] = [1, 1]
    correct[0, 1, 0, 0] = [1, 0, 0, 0]
    correct[0, 1, 1, 0, :2] = [0, 0]
    dataset = cubes_extra.with_self_vs_cross(prediction_cube(correct))
    assert dataset["z_vs_self"].dims == ("subject", "predictor", "property")
    # Pooled: self 5/6 vs cross 1/6; p = 1/2; z = (4/6) / sqrt(1/4 * 2/6) = 2.3094.
    z = dataset["z_vs_self"].sel(subject="m1", predictor="m2", property="p").item()
    assert z == pytest.approx((4 / 6) / math.sqrt(0.25 * (2 / 6)))
    p = dataset["p_vs_self"].sel(subject="m1", predictor="m2", property="p").item()
    assert p == pytest.approx(math.erfc(z / math.sqrt(2)))
    assert np.isnan(dataset["z_vs_self"].sel(subject="m1", predictor="m1")).all()
    assert np.isnan(dataset["z_vs_self"].sel(subject="m1", predictor="m3")).all()  # no items: no test
    # Per task t1: 3/4 vs 1/4; p = 1/2; z = (1/2) / sqrt(1/4 * 1/2).
    by_task = dataset["z_vs_self_by_task"].sel(subject="m1", predictor="m2", task="t1", property="p").item()
    assert by_task == pytest.approx(0.5 / math.sqrt(0.125))
    assert dataset["pooled_accuracy"].sel(subject="m1", predictor="m1", property="p").item() == pytest.approx(
        5 / 6
    )
    assert dataset["pooled_n"].sel(subject="m1", predictor="m2", property="p").item() == 6


def test_self_vs_cross_needs_the_subject_among_the_predictors():
    correct = np.ones((2, 2, 2, 1, 2))
    dataset = cubes_extra.with_self_vs_cross(prediction_cube(correct, predictors=("m3", "m4")))
    assert np.isnan(dataset["z_vs_self"]).all()


def test_cubes_without_subject_and_predictor_axes_are_left_alone():
    dataset = xr.Dataset({"correct": (("task", "item"), np.ones((1, 2)))})
    assert set(cubes_extra.with_self_vs_cross(dataset).data_vars) == {"correct"}


def test_examples_round_trip_through_json():
    example = TrainingExample("t", "t/1", None, (("user", "hi"),), "there")
    assert TrainingExample.from_json(example.to_json()) == example


def test_the_training_group_moves_aside_for_a_measure_of_that_name():
    plan = lineage_plan()
    assert cubes_extra.training_group(plan) == "training"
    renamed = attrs.evolve(plan, measures=(Measure("training", "prediction", (), ()),))
    assert cubes_extra.training_group(renamed) == "training_losses"


def test_self_vs_cross_does_not_depend_on_the_order_of_the_axes():
    correct = np.random.default_rng(3).integers(0, 2, size=(2, 3, 2, 1, 5)).astype(float)
    correct[1, 2, :, :, 3:] = np.nan
    straight = cubes_extra.with_self_vs_cross(prediction_cube(correct))
    flipped = cubes_extra.with_self_vs_cross(prediction_cube(correct).transpose("predictor", "subject", ...))
    for name in ("z_vs_self", "p_vs_self", "z_vs_self_by_task", "pooled_accuracy"):
        xr.testing.assert_allclose(flipped[name].transpose(*straight[name].dims), straight[name])
    assert np.isfinite(straight["z_vs_self"].sel(subject="m2", predictor="m1")).all()


def test_the_self_vs_cross_table_pairs_each_cross_predictor_with_the_subjects_own():
    correct = np.full((2, 3, 2, 1, 4), np.nan)
    correct[0, 0, 0, 0] = [1, 1, 1, 0]  # m1 predicting m1: 3/4
    correct[0, 1, 0, 0] = [1, 0, 0, 0]  # m2 predicting m1: 1/4
    correct[1, 1, 0, 0] = [1, 1, 0, 0]  # m2 predicting m2: 2/4
    correct[1, 0, 0, 0] = [0, 0, 0, 0]  # m1 predicting m2: 0/4
    header, rows = cubes_extra.self_vs_cross_rows(cubes_extra.with_self_vs_cross(prediction_cube(correct)))
    assert header[:5] == ["subject", "predictor", "property", "self", "cross"]
    assert [row[:5] + row[-2:] for row in rows] == [
        ["m1", "m2", "p", "0.75", "0.25", "4", "4"],
        ["m2", "m1", "p", "0.50", "0.00", "4", "4"],
    ]


# ---------------------------------------------------------------------------------------------------------
# Calibration against read-out hypothetical probabilities


def test_readout_calibration_pairs_object_rates_with_read_probabilities_by_hand():
    samples = [
        calibration.ItemSamples("t", "i0", "p", ("a", "a", "a", "b"), ()),
        calibration.ItemSamples("t", "i1", "p", ("c", "c"), ()),
        calibration.ItemSamples("t", "i2", "p", (), ()),  # no behaviour: left out
    ]
    assert calibration.behaviours(samples[0]) == ("a", "b")
    readouts = [{"a": 0.5, "b": 0.1}, {"c": 0.9}, {}]
    cell = calibration.calibrate_readout(samples, readouts, top_k=3, bins=10)
    # Pairs (object rate, read probability): (0.25, 0.1), (0.75, 0.5), (1.0, 0.9); one bin each.
    np.testing.assert_allclose(cell.curve.object_mean, [0.25, 0.75, 1.0])
    np.testing.assert_allclose(cell.curve.hypothetical_mean, [0.1, 0.5, 0.9])
    assert cell.items == 2 and cell.pairs == 3
    assert cell.curve.mad == pytest.approx(100 * (0.15 + 0.25 + 0.1) / 3)


def test_readout_probabilities_are_absolute_unless_overlapping_answers_exceed_one():
    assert calibration.readout_distribution({"a": math.log(0.5), "b": math.log(0.2)}) == pytest.approx(
        {"a": 0.5, "b": 0.2}
    )
    assert calibration.readout_distribution({"a": math.log(0.9), "ab": math.log(0.6)}) == pytest.approx(
        {"a": 0.6, "ab": 0.4}
    )
