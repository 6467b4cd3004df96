"""Which kernels multiply an in-process model's float32 linear layers on the CPU: oneDNN's, or torch's BLAS.

torch hands a float32 `nn.Linear` on the CPU to its BLAS, Intel's MKL in the x86 wheels. On AMD CPUs MKL
runs its AVX2 kernels even where the CPU has AVX-512, at about half the rate the CPU can do: on this
project's 2-core AMD EPYC (Zen 5) MKL multiplies Qwen 0.5B's MLP shapes at 185-192 GFLOP/s and oneDNN,
which torch also ships and which picks its kernels by the instructions the CPU has, at 390-403; 16
greedy generations on Qwen 0.5B took 2.6 s instead of 5.7 s, with the same answers (`bench/precision.py`).

The model's own code is untouched: `use_onednn_linears` gives each float32 `nn.Linear` on the CPU the
class `OneDnnLinear`, which computes the same product through oneDNN's inner product (`torch.ops.mkldnn._linear_pointwise`, the kernel torch's compiler uses for CPU linears) in the
forward pass and, for the input's gradient, in the backward pass. A linear whose weight is being trained
(not LoRA's frozen base) keeps torch's path, which also gives the weight its gradient.

Both are float32 arithmetic; they add the same products in another order, so results differ in the last
bits (about 1e-6 relative) and a greedy answer can change where two tokens are within that of each other.
`INTRO_CPU_MATMUL=torch` (precision.py) keeps torch's kernels, for answers bit for bit those of runs
before this module. The choice does not enter cache keys, any more than the CPU model or the thread count,
which change the same last bits.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def onednn_available() -> bool:
    """Whether this torch build has oneDNN and the inner-product op `OneDnnLinear` calls."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _inner_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _OneDnnLinearFunction(torch.autograd.Function):
    """x @ weight.T + bias through oneDNN, with the input's gradient through oneDNN too (the weight is frozen)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return _inner_product(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (weight,) = ctx.saved_tensors
        # d(x W^T)/dx = grad W: an inner product with W^T as its weight (a view; oneDNN reads its strides).
        grad_input = _inner_product(grad, weight.t(), None) if ctx.needs_input_grad[0] else None
        return grad_input, None, None


class OneDnnLinear(nn.Linear):
    """An `nn.Linear` whose product runs in oneDNN: the same parameters, state dict and hooks."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        trains_weight = torch.is_grad_enabled() and (
            self.weight.requires_grad or (self.bias is not None and self.bias.requires_grad)
        )
        if trains_weight or input.dtype != torch.float32:
            return F.linear(input, self.weight, self.bias)
        return _OneDnnLinearFunction.apply(input, self.weight, self.bias)


def use_onednn_linears(model: nn.Module) -> int:
    """Give every plain float32 `nn.Linear` of `model` on the CPU oneDNN's kernels; how many it changed.

    Only the class changes (`OneDnnLinear` adds no state), so peft still sees `nn.Linear`s to wrap, and
    `use_torch_linears` undoes it."""
    changed = 0
    for module in model.modules():
        if (
            type(module) is nn.Linear
            and module.weight.dtype == torch.float32
            and module.weight.device.type == "cpu"
        ):
            _set_class(module, OneDnnLinear)
            changed += 1
    return changed


def use_torch_linears(model: nn.Module) -> int:
    """Give `model`'s `OneDnnLinear`s torch's kernels back; how many it changed."""
    changed = 0
    for module in model.modules():
        if type(module) is OneDnnLinear:
            _set_class(module, nn.Linear)
            changed += 1
    return changed


def _set_class(module: nn.Module, cls: type[nn.Module]) -> None:
    module.__class__ = cls
