"""The CPU's numerics: float32 in torch's kernels, float32 in oneDNN's, and bfloat16, on matmuls and a model.

intro computes in float32 on the CPU (runtime/backends/precision.py) so that answers stay those every
earlier run gave, and multiplies float32 linear layers in oneDNN's kernels (runtime/backends/cpu_matmul.py):
torch's BLAS (MKL) runs AVX2 kernels on AMD CPUs, oneDNN the AVX-512 ones the CPU has. `INTRO_DTYPE=
bfloat16` trades float32's answers for more speed where the CPU has native bf16 instructions (AVX512-BF16,
AMX); without them bf16 is emulated and slower. This prints which bf16 instructions the CPU has; the rate
of matmuls shaped like Qwen 0.5B's MLP in each of the three (the baseline: torch's float32); the time of
one batch of 16 greedy generations on an embedded model in each, as a ratio to torch's float32; and how
many greedy answers are the same as torch's float32 ones. Usage:

    python bench/precision.py                      # embedded Qwen 0.5B
    python bench/precision.py --model gemma-3-270m

On the project's 2-core AMD EPYC (Zen 5, AVX512-BF16): matmuls at 74-192 GFLOP/s in torch's float32,
2.0-2.3x that in oneDNN's float32 and 4.0-4.2x in bfloat16; 16 generations on Qwen 0.5B in 5.7 s, 2.6 s
(16/16 answers the same) and 1.6 s (15/16).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from intro.runtime.backends.cpu_matmul import use_onednn_linears
from intro.runtime.backends.local import LocalBackend
from intro.runtime.backends.local_model import load_local_model
from intro.runtime.backends.requests import GenerationRequest, Message

# (rows, inner, columns): a prefill's MLP up projection, its down projection, and a decode step's.
SHAPES = ((1024, 896, 4864), (1024, 4864, 896), (16, 896, 4864))
QUESTIONS = (
    "What is the capital of Japan?",
    "Name three colours of the rainbow.",
    "What are the next 3 animals after cat, dog, horse?",
    "Is the number 17 even or odd?",
    "Spell the word 'river' backwards.",
    "What is 12 times 7?",
    "Which planet is closest to the sun?",
    "Give one synonym for 'happy'.",
)


def cpu_bf16_flags() -> list[str]:
    """The CPU's native bf16 instruction sets named in /proc/cpuinfo (none elsewhere)."""
    try:
        flags = next(
            line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
        )
    except (OSError, StopIteration):
        return []
    return sorted({flag for flag in flags.split() if flag in ("avx512_bf16", "amx_bf16")})


def matmul_rate(shape: tuple[int, int, int], kind: str) -> float:
    """GFLOP/s of a linear layer shaped `shape` (rows, inner, columns) in `kind` ("float32", "onednn",
    "bfloat16"), the mean over repeats after warm-up."""
    rows, inner, columns = shape
    dtype = torch.bfloat16 if kind == "bfloat16" else torch.float32
    layer = torch.nn.Linear(inner, columns, bias=False).to(dtype).requires_grad_(False)
    if kind == "onednn":
        use_onednn_linears(layer)
    inputs = torch.randn(rows, inner).to(dtype)
    for _ in range(3):
        layer(inputs)
    repeats = 20 if rows > 100 else 400
    started = time.perf_counter()
    for _ in range(repeats):
        layer(inputs)
    return 2 * rows * inner * columns * repeats / (time.perf_counter() - started) / 1e9


def generation(model: str, kind: str) -> tuple[float, list[str]]:
    """Seconds for one batch of 16 greedy generations (the second of two) in `kind`, and their texts."""
    dtype, matmul = ("float32", "onednn") if kind == "onednn" else (kind, "torch")
    loaded = load_local_model(f"embedded:{model}", device="cpu", dtype=dtype, matmul=matmul)
    backend = LocalBackend(loaded, batch_size=16)
    requests = [
        GenerationRequest(key=str(i), messages=(Message("user", f"{q} (question {i})"),), max_tokens=16)
        for i, q in enumerate(QUESTIONS * 2)
    ]
    backend.generate_now(requests)  # warm-up: first-call allocations and kernel choices
    started = time.perf_counter()
    texts = [g.text for g in backend.generate_now(requests)]
    return time.perf_counter() - started, texts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="an embedded model's name")
    args = parser.parse_args()
    print(
        f"native bf16 instructions: {', '.join(cpu_bf16_flags()) or 'none'}; torch threads {torch.get_num_threads()}"
    )
    kinds = {"float32": "float32 (torch)", "onednn": "float32 (oneDNN)", "bfloat16": "bfloat16"}
    for shape in SHAPES:
        rates = {kind: matmul_rate(shape, kind) for kind in kinds}
        print(f"matmul {shape}: " + ", ".join(_rate(kinds[k], r, rates["float32"]) for k, r in rates.items()))
    runs = {kind: generation(args.model, kind) for kind in kinds}
    baseline_s, baseline_texts = runs["float32"]
    print(f"{args.model}, 16 greedy generations, time and answers the same as float32 (torch)'s:")
    for kind, (seconds, texts) in runs.items():
        same = sum(a == b for a, b in zip(baseline_texts, texts, strict=True))
        print(f"  {kinds[kind]}: {seconds:.1f} s ({baseline_s / seconds:.2f}x); same {same}/{len(texts)}")


def _rate(name: str, rate: float, baseline: float) -> str:
    return f"{name} {rate:.0f} GFLOP/s ({rate / baseline:.2f}x)"


if __name__ == "__main__":
    main()
