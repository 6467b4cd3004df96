"""LoRA finetuning on tiny random models: the loss falls, adapters reload exactly, seeds reproduce."""

from __future__ import annotations

import copy
import json

import attrs
import pytest
import torch
from safetensors.torch import load_file

from intro.runtime.backends.local_model import load_local_model
from intro.runtime.backends.requests import Message
from intro.runtime.training.finetune import (
    LoraHyperparameters,
    attach_lora,
    collate,
    encode_example,
    end_of_reply_id,
    finetune,
    load_adapter,
    lora_target_modules,
    reply_loss,
    train_lora,
)
from tests.tinymodels import make_tiny_model

EXAMPLES = [
    ((Message("user", f"What is the capital of {country}?"),), capital)
    for country, capital in [
        ("Japan", "Tokyo"),
        ("France", "Paris"),
        ("Italy", "Rome"),
        ("Spain", "Madrid"),
        ("Egypt", "Cairo"),
        ("Peru", "Lima"),
    ]
]
FAST = LoraHyperparameters(rank=4, alpha=8, lr=1e-2, epochs=6, batch_size=3, seed=1)
# For tests that need a trained adapter but not convergence.
QUICK = LoraHyperparameters(rank=4, alpha=8, lr=1e-2, epochs=1, batch_size=3, seed=1)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return load_local_model(str(make_tiny_model(tmp_path_factory.mktemp("qwen2"), "qwen2")), device="cpu")


@pytest.fixture(scope="module")
def plain_gemma(tmp_path_factory):
    directory = make_tiny_model(tmp_path_factory.mktemp("gemma3"), "gemma3", chat_template=False)
    return load_local_model(str(directory), device="cpu")


def probe(loaded):
    return loaded.encode([loaded.render(messages) for messages, _ in EXAMPLES[:2]])


def logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


# ---------------------------------------------------------------------------------------------------------
# Encoding


def test_reply_tokens_follow_the_prompt_as_inference_encodes_it(qwen):
    messages, reply = EXAMPLES[0]
    example = encode_example(qwen, messages, reply, max_length=256)
    prompt_ids, _ = qwen.encode([qwen.render(messages)])
    assert list(example.input_ids[: example.target_start]) == prompt_ids[0].tolist()
    assert qwen.tokenizer.decode(example.input_ids[example.target_start : -1]) == "Tokyo"
    assert example.input_ids[-1] == end_of_reply_id(qwen)


def test_plain_format_replies_start_with_the_separator(plain_gemma):
    messages, reply = EXAMPLES[0]
    example = encode_example(plain_gemma, messages, reply, max_length=256)
    assert plain_gemma.render(messages).endswith("Answer:")
    assert plain_gemma.tokenizer.decode(example.input_ids[example.target_start : -1]) == " Tokyo"


def test_truncation_drops_the_prompt_head_and_keeps_the_reply(qwen):
    messages, reply = EXAMPLES[0]
    full = encode_example(qwen, messages, reply, max_length=256)
    short = encode_example(qwen, messages, reply, max_length=8)
    assert len(short.input_ids) == 8
    assert short.input_ids[short.target_start :] == full.input_ids[full.target_start :]


def test_a_reply_longer_than_max_length_keeps_one_prompt_token(qwen):
    messages, _ = EXAMPLES[0]
    example = encode_example(qwen, messages, "Tokyo is the capital of Japan", max_length=4)
    assert len(example.input_ids) == 4 and example.target_start == 1
    batch = collate([example], qwen.tokenizer.pad_token_id, torch.device("cpu"))
    assert batch.targets.tolist() == list(example.input_ids[1:])
    assert torch.isfinite(reply_loss(qwen.model, batch))


def test_reply_loss_equals_the_full_vocabulary_loss_on_reply_tokens(qwen):
    examples = [encode_example(qwen, messages, reply, 256) for messages, reply in EXAMPLES[:3]]
    batch = collate(examples, qwen.tokenizer.pad_token_id, torch.device("cpu"))
    labels = torch.full_like(batch.input_ids, -100)
    for row, example in enumerate(examples):
        labels[row, example.target_start : len(example.input_ids)] = torch.tensor(
            example.input_ids[example.target_start :]
        )
    with torch.no_grad():
        expected = qwen.model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels
        ).loss
        fast = reply_loss(qwen.model, batch)
    torch.testing.assert_close(fast, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Hyperparameters and targets


def test_hyperparameters_are_frozen_values():
    hyperparameters = LoraHyperparameters(target_modules=["q_proj", "v_proj"])
    assert hyperparameters.target_modules == ("q_proj", "v_proj")
    assert hyperparameters == LoraHyperparameters(target_modules=("q_proj", "v_proj"))
    with pytest.raises(AttributeError):
        hyperparameters.rank = 3


def test_default_targets_are_attention_and_mlp_projections(qwen):
    assert lora_target_modules(qwen.model) == (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )


def test_gpt2_targets_its_conv1d_projections():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=16))
    assert lora_target_modules(model) == ("c_attn", "c_proj", "c_fc")


# ---------------------------------------------------------------------------------------------------------
# Training


def test_training_lowers_the_loss(qwen, tmp_path):
    result = finetune(qwen, EXAMPLES, FAST, tmp_path / "adapter")
    assert len(result.losses) == FAST.epochs * 2  # 6 examples in batches of 3
    first_epoch, last_epoch = result.losses[:2], result.losses[-2:]
    assert sum(last_epoch) / 2 < 0.5 * sum(first_epoch) / 2, result.losses
    assert result.examples == 6 and result.target_tokens > 0 and result.tokens > result.target_tokens


def test_finetune_writes_a_peft_adapter_and_leaves_the_base_model_as_it_was(qwen, tmp_path):
    ids, mask = probe(qwen)
    before = logits(qwen.model, ids, mask)
    result = finetune(qwen, EXAMPLES[:3], QUICK, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["r"] == QUICK.rank
    record = json.loads((tmp_path / "adapter" / "training.json").read_text())
    assert record["losses"] == list(result.losses)
    assert record["hyperparameters"]["seed"] == QUICK.seed
    assert torch.equal(logits(qwen.model, ids, mask), before)
    assert all(parameter.requires_grad for parameter in qwen.model.parameters())
    assert not any("lora" in name for name, _ in qwen.model.named_modules())


def test_a_reloaded_adapter_reproduces_the_trained_model(qwen, tmp_path):
    base = copy.deepcopy(qwen.model)
    trained = attach_lora(copy.deepcopy(qwen.model), QUICK)
    encoded = [encode_example(qwen, messages, reply, 256) for messages, reply in EXAMPLES]
    train_lora(trained, encoded, QUICK, qwen.tokenizer.pad_token_id)
    trained.save_pretrained(str(tmp_path / "adapter"))
    ids, mask = probe(qwen)
    expected = logits(trained, ids, mask)
    assert not torch.allclose(expected, logits(base, ids, mask), atol=1e-3)
    reloaded = load_adapter(base, tmp_path / "adapter")
    torch.testing.assert_close(logits(reloaded, ids, mask), expected, rtol=0, atol=1e-5)


def test_load_adapter_on_a_loaded_model_returns_a_loaded_model(qwen, tmp_path):
    finetune(qwen, EXAMPLES, QUICK, tmp_path / "adapter")
    duplicate = attrs.evolve(qwen, model=copy.deepcopy(qwen.model))
    adapted = load_adapter(duplicate, tmp_path / "adapter")
    assert adapted.tokenizer is duplicate.tokenizer and adapted.prompt_format == duplicate.prompt_format
    ids, mask = probe(qwen)
    assert not torch.allclose(logits(adapted.model, ids, mask), logits(qwen.model, ids, mask), atol=1e-3)


def test_merged_adapter_matches_the_unmerged_one(qwen, tmp_path):
    finetune(qwen, EXAMPLES, QUICK, tmp_path / "adapter")
    ids, mask = probe(qwen)
    unmerged = logits(load_adapter(copy.deepcopy(qwen.model), tmp_path / "adapter"), ids, mask)
    merged = load_adapter(copy.deepcopy(qwen.model), tmp_path / "adapter", merge=True)
    assert not any("lora" in name for name, _ in merged.named_modules())
    torch.testing.assert_close(logits(merged, ids, mask), unmerged, rtol=1e-4, atol=1e-4)


def _adapter_tensors(directory) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "adapter_model.safetensors"))


def test_same_seed_same_adapter_other_seed_other_adapter(qwen, tmp_path):
    twice = attrs.evolve(QUICK, epochs=2)
    first = finetune(qwen, EXAMPLES, twice, tmp_path / "a")
    second = finetune(qwen, EXAMPLES, twice, tmp_path / "b")
    third = finetune(qwen, EXAMPLES, attrs.evolve(twice, seed=2), tmp_path / "c")
    a, b, c = (_adapter_tensors(tmp_path / name) for name in "abc")
    assert first.losses == second.losses
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    assert third.losses != first.losses
    assert any(not torch.equal(a[key], c[key]) for key in a)


def test_training_leaves_the_callers_random_state_alone(qwen, tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    finetune(qwen, EXAMPLES[:3], QUICK, tmp_path / "adapter")
    assert torch.equal(torch.rand(3), expected)


def test_training_needs_examples(qwen, tmp_path):
    with pytest.raises(ValueError, match="at least one example"):
        finetune(qwen, [], QUICK, tmp_path / "adapter")
