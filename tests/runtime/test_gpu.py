"""The in-process backend on a CUDA device, against the same tiny models on the CPU (marked `gpu`; skipped
where torch sees no CUDA device). `bench/gpu_check.sh` runs this file on a machine with a GPU in one command.

On CUDA the weights compute in bfloat16 (float16 on GPUs older than compute capability 8.0) and batches are
sized to the device's free memory; the CPU computes in float32 with batches of 16. The comparisons allow for
that: greedy answers agree on their first tokens, scores within a bfloat16 rounding, choices agree.
tests/runtime/test_half_precision.py runs the same dtypes on the CPU, so every code path here is also tested
without a GPU; this file adds the device: tensors made on it, its kernels, its memory, its OOM error.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest
import torch

from intro.cli import main
from intro.runtime.backends.activations import last_token_activations
from intro.runtime.backends.local import LocalBackend
from intro.runtime.backends.local_model import load_local_model
from intro.runtime.backends.precision import device_dtype
from intro.runtime.backends.requests import GenerationRequest, Message, Steering
from intro.runtime.training.adapters import train_adapter
from intro.runtime.training.finetune import LoraHyperparameters
from tests.tinymodels import make_tiny_model
from tests.tinyrequests import QUESTIONS, asks, scores

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning"),
]

STUDY = """
model a = local "tiny" {{ device: "{device}" }}
sampling short {{ temperature: 0 max_tokens: 4 }}
study on_device {{
  let asked = prompts(["What is the capital of Japan?", "Is the sky blue?", "Count to five.", "Name an animal."])
  measure said = generate(a, asked, short)
  measure picked = choose(a, asked, ["yes", "no", "Tokyo"])
}}
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("gpu") / "tiny", "qwen2")


@pytest.fixture(scope="module")
def cpu(tiny):
    return load_local_model(str(tiny), device="cpu")


@pytest.fixture(scope="module")
def cuda(tiny):
    return load_local_model(str(tiny), device="cuda")


def test_cuda_weights_load_in_the_devices_dtype(cuda):
    assert cuda.device.type == "cuda"
    assert cuda.dtype == {"bfloat16": torch.bfloat16, "float16": torch.float16}[device_dtype(cuda.device)]


def test_greedy_answers_and_scores_agree_with_the_cpu(cuda, cpu):
    on_gpu, on_cpu = LocalBackend(cuda).generate_now(asks()), LocalBackend(cpu).generate_now(asks())
    agree = sum(g.text[:2] == c.text[:2] for g, c in zip(on_gpu, on_cpu, strict=True))
    assert agree >= len(QUESTIONS) - 1, [(g.text, c.text) for g, c in zip(on_gpu, on_cpu, strict=True)]
    for g, c in zip(
        LocalBackend(cuda).score_now(scores()), LocalBackend(cpu).score_now(scores()), strict=True
    ):
        assert g.raw_logprobs == pytest.approx(c.raw_logprobs, abs=0.3)


def test_sampling_with_a_seed_hardly_depends_on_the_batch_on_cuda(cuda):
    requests = asks(temperature=1.0, seed=5)
    together = LocalBackend(cuda).generate_now(requests)
    alone = [LocalBackend(cuda).generate_now([r])[0] for r in requests]
    # Each row draws from its own seeded generator; only bfloat16 rounding (a batch of one and of six may
    # round differently) can move a draw across a token boundary, and then the text parts ways.
    assert sum(t.text[:2] == a.text[:2] for t, a in zip(together, alone, strict=True)) >= len(requests) - 1


def test_a_float32_vector_steers_the_cuda_model(cuda, cpu, tmp_path):
    from safetensors.torch import save_file

    vector = torch.randn(cuda.hidden_size, generator=torch.Generator().manual_seed(0)) * 4
    save_file({"vector": vector}, str(tmp_path / "v.safetensors"))
    steering = Steering(vector=str(tmp_path / "v.safetensors"), layer=0, strength=8.0, start=2)
    steered = LocalBackend(cuda).generate_now(asks(steering=steering))
    assert [g.text for g in steered] != [g.text for g in LocalBackend(cuda).generate_now(asks())]
    on_gpu = LocalBackend(cuda).score_now(scores(steering=steering))
    on_cpu = LocalBackend(cpu).score_now(scores(steering=steering))
    for g, c in zip(on_gpu, on_cpu, strict=True):
        assert g.raw_logprobs == pytest.approx(c.raw_logprobs, abs=0.5)


def test_activations_come_back_as_float32_on_the_cpu(cuda, cpu):
    prompts = [cpu.render((Message("user", q),)) for q in QUESTIONS]
    on_gpu, on_cpu = last_token_activations(cuda, prompts, 1), last_token_activations(cpu, prompts, 1)
    assert on_gpu.dtype == torch.float32 and on_gpu.device.type == "cpu"
    assert bool((torch.nn.functional.cosine_similarity(on_gpu, on_cpu, dim=-1) > 0.99).all())


def test_lora_trains_on_cuda_and_answers_with_its_adapter(tiny, tmp_path):
    loaded = load_local_model(str(tiny), device="cuda")
    examples = [
        ((Message("user", "What is the capital of Japan?"),), "Tokyo"),
        ((Message("user", "Is fire cold?"),), "No"),
    ]
    quick = LoraHyperparameters(rank=4, alpha=8, lr=3e-2, epochs=12, batch_size=2, seed=1)
    result = train_adapter(loaded, examples * 3, quick, tmp_path / "adapter")
    assert all(math.isfinite(loss) for loss in result.losses) and result.losses[-1] < result.losses[0] / 10
    ask = GenerationRequest(key="k", messages=examples[0][0], max_tokens=3)
    assert LocalBackend(loaded, adapter=str(tmp_path / "adapter")).generate_now([ask])[0].text == "Tokyo"


def test_batches_are_sized_to_the_free_memory(cuda):
    rows_for = LocalBackend(cuda)._rows_for()
    assert rows_for(64) > 16  # a tiny model on any GPU: far more than the CPU's 16 rows fit
    many = [
        GenerationRequest(key=f"m{i}", messages=(Message("user", f"Count to {i}."),), max_tokens=3)
        for i in range(64)
    ]
    assert all(g.completion_tokens > 0 for g in LocalBackend(cuda).generate_now(many))


def test_a_real_out_of_memory_error_halves_the_batch(tiny):
    loaded = load_local_model(str(tiny), device="cuda")
    long_prompts = [
        GenerationRequest(
            key=f"l{i}",
            messages=(Message("user", "The dog found the red ball. " * 60 + str(i)),),
            max_tokens=2,
        )
        for i in range(64)
    ]
    reference = [g.text for g in LocalBackend(loaded, batch_size=1).generate_now(long_prompts[:4])]
    torch.cuda.empty_cache()
    held = torch.cuda.memory_reserved(loaded.device)
    total = torch.cuda.get_device_properties(loaded.device).total_memory
    index = torch.cuda.current_device() if loaded.device.index is None else loaded.device.index
    # 16 MiB to spare: a batch of 64 prompts of ~500 tokens needs more (its attention mask alone is ~30 MB),
    # a batch of one needs a fraction of it.
    torch.cuda.set_per_process_memory_fraction((held + 16 * 2**20) / total, index)
    try:
        backend = LocalBackend(loaded, batch_size=64, share_prefix=False)
        texts = [g.text for g in backend.generate_now(long_prompts)]
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, index)
    assert backend.most_rows < 64  # the batch of 64 ran out of memory and was halved
    assert sum(t == r for t, r in zip(texts, reference, strict=False)) >= 3


def run_study(root: Path, device: str) -> dict:
    (root / "study.intro").write_text(STUDY.format(device=device))
    out, err = io.StringIO(), io.StringIO()
    argv = ["run", str(root / "study.intro"), "--runs", str(root / "runs"), "--cache", str(root / "cache")]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main([*argv, "--json-progress"]) == 0, err.getvalue()
    return next(e for e in map(json.loads, out.getvalue().splitlines()) if e["event"] == "run_finished")


def test_a_study_runs_on_cuda_and_agrees_with_the_cpu(tiny, tmp_path):
    import xarray as xr

    results = {}
    for device in ("cuda", "cpu"):
        root = tmp_path / device
        root.mkdir()
        (root / "tiny").symlink_to(tiny)
        finished = run_study(root, device)
        assert finished["calls"] == 8
        (how,) = finished["numerics"].values()
        assert how.startswith(
            "float32 on cpu" if device == "cpu" else ("bfloat16 on cuda", "float16 on cuda")
        )
        results[device] = xr.open_zarr(root / "runs" / "on_device" / "cube.zarr", group="picked").load()
    # Each device's answers are cached under keys of their own dtype: neither run read the other's.
    gpu, cpu = results["cuda"], results["cpu"]
    assert (gpu["value"].values == cpu["value"].values).mean() >= 0.75
    assert abs(gpu["probs"].values - cpu["probs"].values).max() < 0.1
