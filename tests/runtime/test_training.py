"""Finetuning's parts on tiny random models and hand-made texts: adapters trained in place on shared weights,
adapter stacking, training examples, lineage and the training group of the cube."""

from __future__ import annotations

import copy

import attrs
import pytest
import torch

from intro.compiler.plan import Measure, ModelEntry, Plan, Step
from intro.compiler.step_params import ExamplesParams, FinetuneParams, Hparams
from intro.runtime.backends.local import LocalBackend
from intro.runtime.backends.local_model import activate_adapter, attach_adapter, load_local_model
from intro.runtime.backends.requests import BackendError, GenerationRequest, Message
from intro.runtime.store import training_cube
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
    lineage,
    lora_hyperparameters,
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


def test_hyperparameters_come_from_the_plan():
    hparams = Hparams(rank=4, alpha=16, lr=0.02, epochs=3, batch=5, seed=7)
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
    hparams = Hparams(rank=8, alpha=16, lr=1e-4, epochs=1, batch=8, seed=0)
    steps = (
        Step("data1", "examples", "d1", (), ExamplesParams(fixed=())),
        Step("ft1", "finetune", "h1", ("data1",), FinetuneParams("a", "data1", hparams)),
        Step("data2", "examples", "d2", (), ExamplesParams(fixed=())),
        Step("ft2", "finetune", "h2", ("data2",), FinetuneParams("ft-1", "data2", hparams)),
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


def test_examples_round_trip_through_json():
    example = TrainingExample("t", "t/1", None, (("user", "hi"),), "there")
    assert TrainingExample.from_json(example.to_json()) == example


def test_the_training_group_moves_aside_for_a_measure_of_that_name():
    plan = lineage_plan()
    assert training_cube.training_group(plan) == "training"
    renamed = attrs.evolve(plan, measures=(Measure("training", "estimate", (), ()),))
    assert training_cube.training_group(renamed) == "training_losses"
