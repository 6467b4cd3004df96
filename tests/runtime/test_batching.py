"""Batches sized to memory (runtime/backends/batching.py) and halved when the device runs out of it
(LocalBackend), on tiny models on the CPU: the sizing is pure, and the out-of-memory error is raised by the
real model's forward pass, from a hook, exactly as CUDA raises it."""

from __future__ import annotations

import contextlib

import pytest
import torch
from transformers import Qwen2Config

from intro.runtime.backends.batching import (
    CPU_ROWS,
    MOST_ROWS,
    TokenCost,
    fixed_rows,
    plan_batches,
    rows_that_fit,
    token_cost,
)
from intro.runtime.backends.local import LocalBackend
from intro.runtime.backends.local_model import load_local_model
from intro.runtime.backends.requests import BackendError, GenerationRequest, Message, ScoreRequest
from tests import tinyrequests
from tests.tinymodels import make_tiny_model

QUESTIONS = (*tinyrequests.QUESTIONS, "What is the capital of France?", "Say yes.")


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return load_local_model(str(make_tiny_model(tmp_path_factory.mktemp("qwen"), "qwen2")), device="cpu")


def ask(question: str, key: str, **options) -> GenerationRequest:
    return GenerationRequest(key=key, messages=(Message("user", question),), max_tokens=6, **options)


def asks() -> list[GenerationRequest]:
    return [ask(q, f"k{i}") for i, q in enumerate(QUESTIONS)]


def texts(results) -> list[str]:
    return [r.text for r in results]


@contextlib.contextmanager
def device_memory_of(model, rows: int):
    """The model runs out of memory, as CUDA says it, on any forward pass of more than `rows` rows."""
    sizes: list[int] = []

    def check(module, args, kwargs):
        batch = kwargs["input_ids"].shape[0]
        sizes.append(batch)
        if batch > rows:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate a batch of {batch} rows")

    handle = model.register_forward_pre_hook(check, with_kwargs=True)
    try:
        yield sizes
    finally:
        handle.remove()


# ---------------------------------------------------------------------------------------------------------
# Sizing, pure


def test_a_token_costs_its_kv_cache_and_one_layers_activations():
    # Qwen2.5-0.5B's shape: 24 layers, 2 key/value heads of 64, hidden 896, MLP 4864, vocabulary 151936.
    config = Qwen2Config(
        num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, hidden_size=896,
        intermediate_size=4864, vocab_size=151936,
    )  # fmt: skip
    cost = token_cost(config, 2)
    kv = 2 * 24 * 2 * 64 * 2  # keys and values, every layer, bf16: 12 KiB a token
    activations = (2 * 4864 + 4 * 896) * 2
    assert cost == TokenCost(kv + activations, 2 * 4 * 151936)
    assert token_cost(config, 4).per_token == 2 * cost.per_token  # float32 costs twice bfloat16


def test_rows_follow_free_memory_and_row_length():
    cost = TokenCost(per_token=40_000, per_row=1_000_000)
    gib = 2**30
    many = rows_that_fit(40 * gib, cost, 300)
    assert many == MOST_ROWS  # an H200's worth of memory: the ceiling, not the memory, limits
    assert rows_that_fit(2 * gib, cost, 300) == int(2 * gib * 0.8) // (40_000 * 300 + 1_000_000)
    assert rows_that_fit(2 * gib, cost, 600) < rows_that_fit(2 * gib, cost, 300)  # longer rows: fewer
    assert rows_that_fit(1_000, cost, 300) == 1  # nothing fits: a batch of one, which fails in one line
    assert rows_that_fit(2 * gib, cost, 300, most=4) == 4


def test_batches_pack_short_prompts_more_densely_than_long_ones():
    requests = asks()
    lengths = [10, 10, 10, 10, 100, 100, 100, 100]
    # Room for 400 token positions: 20 rows of 10 prompt + 10 added tokens, 3 rows of 100 + 10.
    batches = plan_batches(requests, lengths, lambda tokens: 400 // tokens, added=[10] * 8)
    assert batches == [[0, 1, 2, 3], [4, 5, 6], [7]]
    assert plan_batches(requests, lengths, fixed_rows(3)) == [[0, 1, 2], [3, 4, 5], [6, 7]]


def test_every_request_is_in_exactly_one_batch_and_a_batch_never_mixes_layers():
    from intro.runtime.backends.requests import Steering

    requests = [ask("q", f"k{i}", steering=Steering("v", i % 3, 1.0) if i % 2 else None) for i in range(20)]
    lengths = list(range(20, 0, -1))
    batches = plan_batches(requests, lengths, lambda tokens: max(1, 60 // tokens))
    assert sorted(i for batch in batches for i in batch) == list(range(20))
    for batch in batches:
        layers = {requests[i].steering.layer if requests[i].steering else None for i in batch}
        assert len(layers) == 1
        assert len(batch) <= max(1, 60 // max(lengths[i] for i in batch))


# ---------------------------------------------------------------------------------------------------------
# The backend


def test_on_the_cpu_batches_keep_their_fixed_size(qwen):
    backend = LocalBackend(qwen, share_prefix=False)
    with device_memory_of(qwen.model, rows=100) as sizes:
        backend.generate_now([ask("Count to five.", f"k{i}") for i in range(CPU_ROWS + 4)])
    assert sizes[0] == CPU_ROWS


def test_a_memory_budget_sizes_the_batches_and_answers_stay_the_same(qwen):
    whole = texts(LocalBackend(qwen, batch_size=8, share_prefix=False).generate_now(asks()))
    cost = token_cost(qwen.model.config, 4)
    longest = max(len(ids) for ids in qwen.tokenize([qwen.render(r.messages) for r in asks()])) + 6
    budget = int(3 * (cost.per_token * longest + cost.per_row) / 0.8) + 1  # three of the longest rows
    backend = LocalBackend(qwen, memory=budget, share_prefix=False)
    with device_memory_of(qwen.model, rows=100) as sizes:
        sized = texts(backend.generate_now(asks()))
    assert sized == whole
    assert 3 in sizes and max(sizes) <= 4  # shorter prompts may take a fourth row


def test_a_batch_out_of_memory_is_halved_and_later_batches_stay_smaller(qwen):
    reference = texts(LocalBackend(qwen, batch_size=2, share_prefix=False).generate_now(asks()))
    backend = LocalBackend(qwen, batch_size=8, share_prefix=False)
    with device_memory_of(qwen.model, rows=2) as sizes:
        assert texts(backend.generate_now(asks())) == reference
        assert sizes[:3] == [8, 4, 2]  # 8 fails, its first half of 4 fails, its first quarter runs
        assert backend.most_rows == 2
        sizes.clear()
        assert texts(backend.generate_now(asks())) == reference
    assert max(sizes) == 2  # the next call plans batches of two from the start


def test_scoring_out_of_memory_is_halved_too(qwen):
    requests = [
        ScoreRequest(f"s{i}", (Message("user", q),), ("yes", "no", "Tokyo")) for i, q in enumerate(QUESTIONS)
    ]
    reference = LocalBackend(qwen, batch_size=1, share_prefix=False).score_now(requests)
    with device_memory_of(qwen.model, rows=3):
        halved = LocalBackend(qwen, batch_size=8, share_prefix=False).score_now(requests)
    for one, other in zip(halved, reference, strict=True):
        assert one.logprobs == pytest.approx(other.logprobs, abs=1e-5)


def test_a_prompt_that_does_not_fit_alone_fails_in_one_line(qwen):
    backend = LocalBackend(qwen, batch_size=4, share_prefix=False)
    with device_memory_of(qwen.model, rows=0), pytest.raises(BackendError) as raised:
        backend.generate_now(asks()[:2])
    message = str(raised.value)
    assert "does not fit in the memory of cpu even alone" in message and "\n" not in message
