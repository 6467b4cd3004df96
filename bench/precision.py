"""float32 against bfloat16 on this CPU: matmul rate, a model's batched generation, and whether answers agree.

intro computes in float32 on the CPU (runtime/backends/precision.py) so that answers stay those of every
earlier run; `INTRO_DTYPE=bfloat16` trades that for speed. Whether the trade pays depends on the CPU: with
native bf16 instructions (AVX512-BF16, AMX) bf16 matmuls run at about twice float32's rate, without them
they are emulated and slower. This prints which instructions the CPU has, the rate of matmuls shaped like
Qwen 0.5B's MLP at each dtype, the time of one batch of greedy generations on an embedded model at each
dtype (the same prompts, a batch of 16), the ratio float32 / bfloat16 (above 1: bfloat16 is faster), and
how many greedy answers are the same. Usage:

    python bench/precision.py                      # embedded Qwen 0.5B
    python bench/precision.py --model gemma-3-270m

On the project's 2-core AMD EPYC (AVX512-BF16), two runs: matmuls 180-200 GFLOP/s in float32 and
330-860 in bfloat16 (3.9-6.0x); the 16 generations on Qwen 0.5B 3.1-3.6x faster, 15 of 16 answers the
same. The mini Looking Inward study: 14 m 55 s in float32, 7 m 08 s in bfloat16 (README).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

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


def matmul_rate(shape: tuple[int, int, int], dtype: torch.dtype) -> float:
    """GFLOP/s of `shape`'s matmul in `dtype`, the mean over repeats after warm-up."""
    rows, inner, columns = shape
    left, right = torch.randn(rows, inner).to(dtype), torch.randn(inner, columns).to(dtype)
    for _ in range(3):
        left @ right
    repeats = 20 if rows > 100 else 400
    started = time.perf_counter()
    for _ in range(repeats):
        left @ right
    return 2 * rows * inner * columns * repeats / (time.perf_counter() - started) / 1e9


def generation(model: str, dtype: str) -> tuple[float, list[str]]:
    """Seconds for one batch of 16 greedy generations (the second of two), and their texts."""
    backend = LocalBackend(load_local_model(f"embedded:{model}", device="cpu", dtype=dtype), batch_size=16)
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
    for shape in SHAPES:
        full, half = matmul_rate(shape, torch.float32), matmul_rate(shape, torch.bfloat16)
        print(f"matmul {shape}: float32 {full:.0f} GFLOP/s, bfloat16 {half:.0f} GFLOP/s ({half / full:.2f}x)")
    full_s, full_texts = generation(args.model, "float32")
    half_s, half_texts = generation(args.model, "bfloat16")
    same = sum(a == b for a, b in zip(full_texts, half_texts, strict=True))
    print(f"{args.model}, 16 greedy generations: float32 {full_s:.1f} s, bfloat16 {half_s:.1f} s")
    print(f"float32 / bfloat16 time: {full_s / half_s:.2f}x; same greedy answers {same}/{len(full_texts)}")


if __name__ == "__main__":
    main()
