"""The embedded models for real: assembly from the PyPI parts, GGUF conversion cache, answers.

Slow: the first Qwen load dequantises the GGUF (about a minute); later loads read the float32 copy.
"""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from intro.runtime.backends.embedded import EMBEDDED_WEIGHTS, intro_cache_dir, resolve_embedded
from intro.runtime.backends.local import LocalBackend
from intro.runtime.backends.local_model import load_local_model
from intro.runtime.backends.requests import GenerationRequest, Message, ScoreRequest

pytestmark = pytest.mark.slow

QWEN = "embedded:qwen2.5-coder-0.5b-instruct"
JAPAN = (Message("user", "What is the capital of Japan? Answer in one word."),)


@pytest.fixture(scope="module")
def qwen():
    return load_local_model(QWEN, device="cpu")


def test_embedded_files_assemble_and_verify():
    for name in ("qwen2.5-coder-0.5b-instruct", "gemma-3-270m"):
        resolved = resolve_embedded(name)
        assert resolved.sha256 == EMBEDDED_WEIGHTS[name].sha256
        assert resolved.path.is_relative_to(intro_cache_dir())
        started = time.perf_counter()
        resolve_embedded(name)
        assert time.perf_counter() - started < 1.0, "the verified marker should spare re-hashing"


def test_qwen_answers_tokyo(qwen):
    backend = LocalBackend(qwen)
    result = asyncio.run(backend.generate([GenerationRequest(key="japan", messages=JAPAN, max_tokens=8)]))[0]
    print(f"\nQwen answered {result.text!r}")
    assert "tokyo" in result.text.lower()
    assert result.finish_reason == "stop"


def test_qwen_scores_tokyo_highest(qwen):
    choices = ("Tokyo", "Kyoto", "Osaka", "Paris")
    request = ScoreRequest(key="japan", messages=JAPAN, choices=choices)
    scored = asyncio.run(LocalBackend(qwen).score([request]))[0]
    print(f"\nQwen scores {scored.logprobs}")
    assert max(scored.logprobs, key=scored.logprobs.get) == "Tokyo"


def test_second_load_comes_from_the_safetensors_cache(tmp_path, monkeypatch):
    """Gemma (the smaller GGUF) into a fresh cache: convert once, then load the saved float32 copy."""
    monkeypatch.setenv("INTRO_CACHE_DIR", str(tmp_path))
    started = time.perf_counter()
    first = load_local_model("embedded:gemma-3-270m", device="cpu")
    first_seconds = time.perf_counter() - started
    started = time.perf_counter()
    second = load_local_model("embedded:gemma-3-270m", device="cpu")
    second_seconds = time.perf_counter() - started
    print(
        f"\nfirst load (GGUF conversion) {first_seconds:.1f} s, second load (safetensors) {second_seconds:.1f} s"
    )
    assert (tmp_path / "converted" / first.identity / "model.safetensors").exists()
    assert second.identity == first.identity == EMBEDDED_WEIGHTS["gemma-3-270m"].sha256
    assert second_seconds < first_seconds / 3
    request = GenerationRequest(key="g", messages=JAPAN, max_tokens=6)
    texts = [asyncio.run(LocalBackend(m).generate([request]))[0].text for m in (first, second)]
    assert texts[0] == texts[1], "the cached copy must compute exactly what the GGUF did"
    # Half a gigabyte of weights should not linger in pytest's kept temp directories.
    shutil.rmtree(tmp_path / "converted")
    shutil.rmtree(tmp_path / "embedded")


def test_a_directory_holding_a_gguf_reuses_the_converted_copy(tmp_path):
    qwen_gguf = resolve_embedded("qwen2.5-coder-0.5b-instruct")
    (tmp_path / "model.gguf").symlink_to(qwen_gguf.path)
    started = time.perf_counter()
    loaded = load_local_model(str(tmp_path), device="cpu")
    print(f"\nGGUF directory loaded in {time.perf_counter() - started:.1f} s")
    assert loaded.identity == qwen_gguf.sha256
    assert loaded.prompt_format == "chat"


def test_a_bfloat16_load_reads_its_own_copy_holding_the_same_weights():
    """Loading the float32 copy as bfloat16 held both (4 GB for Qwen); the bfloat16 copy loads alone."""
    weights = resolve_embedded("gemma-3-270m")
    loaded = load_local_model("embedded:gemma-3-270m", device="cpu", dtype="bfloat16")
    converted = intro_cache_dir() / "converted"
    assert (converted / f"{weights.sha256}-bfloat16" / "config.json").exists()
    cast = AutoModelForCausalLM.from_pretrained(converted / weights.sha256, dtype=torch.bfloat16)
    ours, reference = loaded.model.state_dict(), cast.state_dict()
    assert ours.keys() == reference.keys()
    assert all(ours[name].dtype == torch.bfloat16 for name in ours)
    assert all(torch.equal(ours[name], reference[name]) for name in ours)
