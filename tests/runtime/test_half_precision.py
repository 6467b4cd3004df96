"""Tiny models in bfloat16 and float16 on the CPU, through everything the in-process backend does: generation
(with shared prefixes), scoring, steering with float32 vector files, activation readings and LoRA training.
CUDA computes in these dtypes (runtime/backends/precision.py); the CPU supports them too, so the dtype
handling of every tensor the backend makes is tested here without a GPU (tests/runtime/test_gpu.py adds the
device)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from intro.runtime.backends.activations import concept_vector, last_token_activations
from intro.runtime.backends.local import LocalBackend
from intro.runtime.backends.local_model import load_local_model
from intro.runtime.backends.requests import GenerationRequest, Message, Steering
from intro.runtime.backends.steering import decoder_layers
from intro.runtime.training.adapters import read_adapter, train_adapter
from intro.runtime.training.finetune import LoraHyperparameters
from tests.tinymodels import make_tiny_model
from tests.tinyrequests import QUESTIONS, asks, scores

EXAMPLES = [
    ((Message("user", "What is the capital of Japan?"),), "Tokyo"),
    ((Message("user", "Is fire cold?"),), "No"),
] * 3
TRAINING = LoraHyperparameters(rank=4, alpha=8, lr=3e-2, epochs=4, batch_size=2, seed=1)

pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("half") / "tiny", "qwen2")


@pytest.fixture(scope="module")
def full(tiny):
    return load_local_model(str(tiny), device="cpu")


@pytest.fixture(scope="module")
def bf16(tiny):
    return load_local_model(str(tiny), device="cpu", dtype="bfloat16")


def float32_vector(path: Path, hidden: int, seed: int = 0) -> str:
    from safetensors.torch import save_file

    vector = torch.randn(hidden, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    save_file({"vector": vector * 4}, str(path))
    return str(path)


def layer_output_dtypes(loaded, layer: int) -> tuple[list[torch.dtype], object]:
    """The dtypes the layer after `layer` receives: steering must hand on the model's dtype, not float32."""
    seen: list[torch.dtype] = []
    following = decoder_layers(loaded.model)[layer + 1]
    handle = following.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    return seen, handle


# ---------------------------------------------------------------------------------------------------------
# Answering


def test_bf16_weights_answer_as_float32_does_up_to_rounding(full, bf16):
    assert bf16.dtype == torch.bfloat16 and full.dtype == torch.float32
    reference = LocalBackend(full).generate_now(asks())
    for share_prefix in (True, False):
        texts = LocalBackend(bf16, share_prefix=share_prefix).generate_now(asks())
        # The first tokens agree; later ones may part ways once rounding tips a near-tie.
        for one, other in zip(texts, reference, strict=True):
            assert one.text[:2] == other.text[:2] and one.completion_tokens > 0
    half, whole = LocalBackend(bf16).score_now(scores()), LocalBackend(full).score_now(scores())
    for one, other in zip(half, whole, strict=True):
        assert one.raw_logprobs == pytest.approx(other.raw_logprobs, abs=0.3)
        assert max(one.logprobs, key=one.logprobs.get) == max(other.logprobs, key=other.logprobs.get)


def test_a_float32_vector_steers_a_bf16_model_in_bf16(bf16, full, tmp_path):
    vector = float32_vector(tmp_path / "v.safetensors", bf16.hidden_size)
    steering = Steering(vector=vector, layer=0, strength=8.0, start=2)
    seen, handle = layer_output_dtypes(bf16, 0)
    try:
        steered = LocalBackend(bf16).generate_now(asks(steering=steering))
        scored = LocalBackend(bf16).score_now(scores(steering=steering))
    finally:
        handle.remove()
    assert seen and set(seen) == {torch.bfloat16}
    plain = LocalBackend(bf16).generate_now(asks())
    assert [g.text for g in steered] != [g.text for g in plain]
    reference = LocalBackend(full).score_now(scores(steering=steering))
    for one, other in zip(scored, reference, strict=True):
        assert all(math.isfinite(value) for value in one.raw_logprobs.values())
        assert one.raw_logprobs == pytest.approx(other.raw_logprobs, abs=0.5)


def test_activations_of_a_bf16_model_come_back_as_float32_on_the_cpu(bf16, full):
    prompts = [bf16.render((Message("user", q),)) for q in QUESTIONS]
    half, whole = last_token_activations(bf16, prompts, 1), last_token_activations(full, prompts, 1)
    assert half.dtype == torch.float32 and half.device.type == "cpu"
    cosines = torch.nn.functional.cosine_similarity(half, whole, dim=-1)
    assert bool((cosines > 0.99).all())
    vector = concept_vector(bf16, "dog", ["cat", "tree", "ocean"], 1)
    assert vector.dtype == torch.float32 and vector.shape == (bf16.hidden_size,)


# ---------------------------------------------------------------------------------------------------------
# Training


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_half_precision_model_trains_a_float32_adapter_and_answers_with_it(tiny, tmp_path, dtype):
    loaded = load_local_model(str(tiny), device="cpu", dtype=dtype)
    result = train_adapter(loaded, EXAMPLES, TRAINING, tmp_path / "adapter")
    assert all(math.isfinite(loss) for loss in result.losses)
    assert result.losses[-1] < result.losses[0] / 10
    factors = read_adapter(tmp_path / "adapter").factors
    assert {a.dtype for a, b in factors.values()} | {b.dtype for a, b in factors.values()} == {torch.float32}
    assert loaded.dtype == getattr(torch, dtype)  # the shared base weights are as they were
    assert {p.dtype for p in loaded.model.parameters()} == {getattr(torch, dtype)}
    ask = GenerationRequest(key="k", messages=EXAMPLES[0][0], max_tokens=3)
    assert LocalBackend(loaded, adapter=str(tmp_path / "adapter")).generate_now([ask])[0].text == "Tokyo"
