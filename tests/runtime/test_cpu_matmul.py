"""float32 linear layers on the CPU multiplied in oneDNN (runtime/backends/cpu_matmul.py): the same
products and input gradients as torch's kernels to float32 rounding, through oneDNN (calls counted), on
models loaded for a run, under LoRA training, and `INTRO_CPU_MATMUL=torch` to keep torch's kernels."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from intro.runtime.backends import cpu_matmul
from intro.runtime.backends.cpu_matmul import OneDnnLinear, use_onednn_linears, use_torch_linears
from intro.runtime.backends.local import LocalBackend
from intro.runtime.backends.local_model import load_local_model
from intro.runtime.backends.precision import matmul_choice
from intro.runtime.backends.requests import BackendError, GenerationRequest, Message
from intro.runtime.training.adapters import train_adapter
from intro.runtime.training.finetune import LoraHyperparameters
from tests.tinymodels import make_tiny_model

pytestmark = [
    pytest.mark.skipif(not cpu_matmul.onednn_available(), reason="this torch build has no oneDNN"),
    pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning"),
]
EXAMPLES = [
    ((Message("user", "What is the capital of Japan?"),), "Tokyo"),
    ((Message("user", "Is the sky blue?"),), "Yes"),
    ((Message("user", "Name an animal."),), "A small bird"),
]
QUICK = LoraHyperparameters(rank=4, alpha=8, lr=1e-2, epochs=2, batch_size=2, seed=1)


@pytest.fixture
def inner_products(monkeypatch) -> list[tuple[int, ...]]:
    """The shapes of the weights every oneDNN inner product is called with, in order."""
    calls: list[tuple[int, ...]] = []
    real = cpu_matmul._inner_product

    def counted(x, weight, bias):
        calls.append(tuple(weight.shape))
        return real(x, weight, bias)

    monkeypatch.setattr(cpu_matmul, "_inner_product", counted)
    return calls


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INTRO_CACHE_DIR", str(tmp_path_factory.mktemp("intro-cache")))
        patch.delenv("INTRO_CPU_MATMUL", raising=False)
        yield


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("qwen2"), "qwen2")


def frozen_linear(inner: int, outer: int, bias: bool) -> tuple[nn.Linear, OneDnnLinear]:
    torch.manual_seed(0)
    reference = nn.Linear(inner, outer, bias=bias).requires_grad_(False)
    onednn = nn.Linear(inner, outer, bias=bias).requires_grad_(False)
    onednn.load_state_dict(reference.state_dict())
    assert use_onednn_linears(onednn) == 1 and type(onednn) is OneDnnLinear
    return reference, onednn  # type: ignore[return-value]


@pytest.mark.parametrize(
    "make_input",
    [
        lambda: torch.randn(5, 96),  # rows
        lambda: torch.randn(3, 7, 96),  # a batch of sequences
        lambda: torch.randn(3, 96, 7).transpose(1, 2),  # not contiguous
        lambda: torch.randn(0, 96),  # no rows
    ],
    ids=["rows", "batch", "strided", "empty"],
)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_onednn_gives_torchs_product_and_input_gradient_through_onednn(make_input, bias, inner_products):
    reference, onednn = frozen_linear(96, 160, bias)
    torch.manual_seed(1)
    x = make_input().requires_grad_(True)
    expected = reference(x)
    expected.backward(torch.ones_like(expected))
    wanted_grad, x.grad = x.grad, None

    got = onednn(x)
    got.backward(torch.ones_like(got))
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, wanted_grad, rtol=1e-5, atol=1e-5)
    # The forward pass with the weight, the backward pass with its transpose: both in oneDNN.
    assert inner_products == [(160, 96), (96, 160)]


def test_a_weight_being_trained_keeps_torchs_kernels_and_gets_its_gradient(inner_products):
    reference, onednn = frozen_linear(32, 48, bias=True)
    for layer in (reference, onednn):
        layer.requires_grad_(True)
        layer(torch.ones(4, 32)).sum().backward()
    assert inner_products == []
    assert torch.equal(onednn.weight.grad, reference.weight.grad)
    assert torch.equal(onednn.bias.grad, reference.bias.grad)
    with torch.no_grad():  # no gradient wanted: the frozen path again
        onednn(torch.ones(4, 32))
    assert inner_products == [(48, 32)]


def test_only_float32_linears_on_the_cpu_change_and_the_change_undoes():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8).to(torch.bfloat16), nn.ReLU(), nn.Linear(8, 4))
    assert use_onednn_linears(model) == 2
    assert [type(m).__name__ for m in model] == ["OneDnnLinear", "Linear", "ReLU", "OneDnnLinear"]
    assert all(isinstance(m, nn.Linear) for m in (model[0], model[3]))  # what peft checks before wrapping
    assert use_torch_linears(model) == 2
    assert all(type(m) in (nn.Linear, nn.ReLU) for m in model)


def test_a_loaded_model_multiplies_in_onednn_with_the_answers_of_torchs_kernels(tiny_dir, inner_products):
    onednn = load_local_model(str(tiny_dir), device="cpu")
    torch_kernels = load_local_model(str(tiny_dir), device="cpu", matmul="torch")
    assert (onednn.matmul, onednn.numerics) == ("onednn", "float32 on cpu (oneDNN)")
    assert (torch_kernels.matmul, torch_kernels.numerics) == ("torch", "float32 on cpu")
    linears = [m for m in onednn.model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is OneDnnLinear for m in linears)
    assert not any(type(m) is OneDnnLinear for m in torch_kernels.model.modules())

    ids = torch.tensor([[5, 17, 42, 99, 7, 300]])
    with torch.no_grad():
        got, expected = onednn.model(input_ids=ids).logits, torch_kernels.model(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert len(inner_products) >= len(linears)

    requests = [GenerationRequest(str(i), messages, max_tokens=8) for i, (messages, _) in enumerate(EXAMPLES)]
    texts = [[g.text for g in LocalBackend(m).generate_now(requests)] for m in (onednn, torch_kernels)]
    assert texts[0] == texts[1]


def test_bfloat16_weights_keep_torchs_kernels(tiny_dir):
    loaded = load_local_model(str(tiny_dir), device="cpu", dtype="bfloat16")
    assert (loaded.matmul, loaded.numerics) == ("torch", "bfloat16 on cpu")


def test_lora_trains_through_onednn_to_the_losses_of_torchs_kernels(tiny_dir, tmp_path, inner_products):
    onednn = load_local_model(str(tiny_dir), device="cpu")
    torch_kernels = load_local_model(str(tiny_dir), device="cpu", matmul="torch")
    expected = train_adapter(torch_kernels, EXAMPLES, QUICK, tmp_path / "torch", recompute=False)
    assert inner_products == []
    got = train_adapter(onednn, EXAMPLES, QUICK, tmp_path / "onednn", recompute=False)
    # The base's products and their input gradients went through oneDNN (the LoRA factors stay torch's).
    weights = {tuple(m.weight.shape) for m in onednn.model.modules() if type(m) is OneDnnLinear}
    assert {shape for shape in inner_products if shape in weights} == weights
    assert {shape[::-1] for shape in inner_products if shape[::-1] in weights} == weights
    assert got.losses == pytest.approx(expected.losses, rel=1e-4)
    assert got.losses[-1] < got.losses[0]


def test_the_kernels_are_chosen_by_name_and_a_bad_name_is_one_line(tiny_dir, monkeypatch):
    assert matmul_choice({}) == "onednn"
    assert matmul_choice({"INTRO_CPU_MATMUL": " Torch "}) == "torch"
    monkeypatch.setenv("INTRO_CPU_MATMUL", "torch")
    assert load_local_model(str(tiny_dir), device="cpu").matmul == "torch"
    monkeypatch.setenv("INTRO_CPU_MATMUL", "mkl")
    with pytest.raises(BackendError) as raised:
        load_local_model(str(tiny_dir), device="cpu")
    assert str(raised.value) == "INTRO_CPU_MATMUL: 'mkl' is not a choice of kernels; use onednn or torch"
