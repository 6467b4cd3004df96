"""The number format an in-process model computes in, and how it qualifies the model's cached answers.

`choose_dtype` is the rule, a pure function: float32 on the CPU, bfloat16 on a CUDA device that computes
it natively (compute capability 8.0 on), float16 on older CUDA devices; `INTRO_DTYPE` (float32, bfloat16,
float16 or auto) overrides it for every in-process model of a run.

A model loads its weights in that dtype (backends/local_model.py) and the run's summary says which dtype
each model computed in (`ModelWork.numerics`).

The CPU stays in float32 so that answers are those every earlier run gave, not for speed: where the CPU has
native bf16 instructions (AVX512-BF16 or AMX; `bench/precision.py` says), bfloat16 is the fast choice.
On this project's 2-core AMD EPYC machine (AVX512-BF16) matmuls shaped like Qwen 0.5B's ran about 4x the
rate of float32 in torch's kernels and 2x that of float32 in oneDNN's (the CPU's float32 default, see
below); 16 greedy generations took 1.6 s against 2.6 s, with 15 of 16 answers float32's. Without those
instructions bf16 is emulated and slower than float32 (DESIGN.md §5 measured 6x on a forward pass).

The same weights answer a little differently in bfloat16 than in float32 (a greedy answer can change), so
the dtype is part of what makes a cached answer valid: `numerics_identity` gives the identity a call's cache
key names for a model computing in a given dtype. float32 keeps the plan's identity unchanged, so answers
cached before dtypes were chosen (all float32, on the CPU) stay valid; any other dtype gets an identity of
its own, and a bfloat16 answer is never served for a float32 call or the other way round.

Within float32, the CPU's kernels can differ too: `INTRO_CPU_MATMUL` (onednn, the default, or torch) says
which multiply float32 linear layers on the CPU (backends/cpu_matmul.py). They differ only in the order
they add products, as CPUs and thread counts do, so the choice does not qualify cached answers.

Only the standard library at import time: `intro plan` resolves a run's dtypes without loading torch where
the answer is certain without it (an override, a CPU device, a CPU-only torch build).
"""

from __future__ import annotations

import importlib.metadata
import os
from typing import Any

DTYPE_ENV = "INTRO_DTYPE"
DTYPES = ("float32", "bfloat16", "float16")
_ALIASES = {
    "fp32": "float32",
    "f32": "float32",
    "float": "float32",
    "bf16": "bfloat16",
    "fp16": "float16",
    "f16": "float16",
    "half": "float16",
}
MATMUL_ENV = "INTRO_CPU_MATMUL"
MATMUL_CHOICES = ("onednn", "torch")
# bfloat16 runs natively from compute capability 8.0 (Ampere) on; older GPUs only emulate it, slowly.
BF16_MAJOR_CAPABILITY = 8


def parse_dtype(text: str) -> str | None:
    """The dtype a user named (`bf16`, `float16`, ...), or None for `auto`; ValueError with a one-line
    reason for anything else."""
    name = text.strip().lower()
    if name in ("", "auto"):
        return None
    name = _ALIASES.get(name, name)
    if name not in DTYPES:
        raise ValueError(
            f"{text!r} is not a dtype; use one of auto, {', '.join(DTYPES)} (or bf16, fp16, fp32)"
        )
    return name


def dtype_override(environ: dict[str, str] | None = None) -> str | None:
    """The dtype `INTRO_DTYPE` asks for (None: choose by device)."""
    return parse_dtype((os.environ if environ is None else environ).get(DTYPE_ENV, ""))


def matmul_choice(environ: dict[str, str] | None = None) -> str:
    """The kernels `INTRO_CPU_MATMUL` asks for on the CPU ("onednn" when unset); ValueError with a one-line
    reason for anything else."""
    text = (os.environ if environ is None else environ).get(MATMUL_ENV, "")
    choice = text.strip().lower() or "onednn"
    if choice not in MATMUL_CHOICES:
        raise ValueError(f"{text!r} is not a choice of kernels; use {' or '.join(MATMUL_CHOICES)}")
    return choice


def choose_dtype(device_type: str, *, native_bf16: bool, override: str | None = None) -> str:
    """The dtype a model computes in on a device of `device_type` ("cpu", "cuda", ...): the override when
    given, else bfloat16 on a CUDA device with `native_bf16`, float16 on older CUDA devices, float32
    elsewhere."""
    if override is not None:
        return override
    if device_type == "cuda":
        return "bfloat16" if native_bf16 else "float16"
    return "float32"


def numerics_identity(identity: str, dtype: str | None) -> str:
    """The model identity a cached answer computed in `dtype` is keyed by (None: not computed in this
    process, e.g. an API model, whose answers are keyed by its identity alone)."""
    if dtype is None or dtype == "float32":
        return identity
    from intro.compiler.plan import digest

    return digest(["numerics", identity, dtype])


def torch_dtype(name: str) -> Any:
    """The torch dtype of a dtype name."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def dtype_name(dtype: Any) -> str:
    """The name of a torch dtype (`torch.bfloat16` -> "bfloat16")."""
    return str(dtype).removeprefix("torch.")


def device_dtype(device: Any, override: str | None = None) -> str:
    """The dtype for a torch device on this machine, asking the device whether it computes bf16 natively."""
    native = device.type == "cuda" and cuda_native_bf16(device)
    return choose_dtype(device.type, native_bf16=native, override=override)


def cuda_native_bf16(device: Any) -> bool:
    import torch

    major, _ = torch.cuda.get_device_capability(device)
    return major >= BF16_MAJOR_CAPABILITY


def planned_dtype(device: str | None, override: str | None = None) -> str:
    """The dtype a model served on `device` (None: CUDA when available, else the CPU) will compute in,
    without importing torch when the answer is certain without it."""
    if override is not None:
        return override
    device_type = (device or "cpu").split(":")[0]
    if (device is not None and device_type != "cuda") or (device is None and not _torch_has_cuda()):
        return choose_dtype(device_type, native_bf16=False)
    import torch

    target = torch.device(device or "cuda")
    if target.type == "cuda" and not torch.cuda.is_available():
        return "float32"  # the load refuses an unavailable device itself, in one line
    return device_dtype(target)


def _torch_has_cuda() -> bool:
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return False
    if "+cpu" in version:  # a CPU-only build: no CUDA device can be used, whatever the machine has
        return False
    import torch

    return bool(torch.cuda.is_available())
