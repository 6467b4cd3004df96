"""Residual-stream hooks and activation readouts on tiny random models of each supported family."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from intro.runtime.backends.activations import (
    chat_prompt,
    concept_vector,
    concept_vectors,
    cosine_with_concept,
    cosines_with_concepts,
    last_positions,
    load_vector,
    random_vector_like,
    save_vector,
    span_activation,
    span_token_positions,
)
from intro.runtime.backends.local_model import load_local_model
from intro.runtime.backends.requests import Message
from intro.runtime.backends.steering import (
    LayerNotFoundError,
    add_to_residual,
    decoder_layers,
    read_residual,
    resolve_layer,
)
from tests.tinymodels import ARCHS, HIDDEN_SIZE, make_tiny_model

PROMPTS = ["The dog likes the red ball and the blue sky.", "A cat found seven stones."]


@pytest.fixture(scope="module", params=ARCHS)
def loaded(request, tmp_path_factory):
    directory = make_tiny_model(tmp_path_factory.mktemp(request.param), request.param)
    return load_local_model(str(directory), device="cpu")


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return load_local_model(str(make_tiny_model(tmp_path_factory.mktemp("qwen2"), "qwen2")), device="cpu")


def batch_of(loaded, texts=PROMPTS):
    return loaded.encode(texts)


def logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def deltas(rows: int, scale: float = 4.0, seed: int = 0) -> torch.Tensor:
    return scale * torch.randn(rows, HIDDEN_SIZE, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------
# Finding layers


def test_finds_the_decoder_layers_of_each_family(loaded):
    layers = decoder_layers(loaded.model)
    assert layers is loaded.model.model.layers
    assert len(layers) == loaded.num_layers


def test_finds_gpt2_style_blocks():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=64, n_positions=64))
    assert decoder_layers(model) is model.transformer.h


def test_finds_mistral_layers():
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=64
    )
    model = MistralForCausalLM(config)
    assert decoder_layers(model) is model.model.layers


def test_finds_layers_through_a_peft_wrapper(qwen):
    from peft import LoraConfig, get_peft_model

    base = copy.deepcopy(qwen.model)
    wrapped = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    assert decoder_layers(wrapped) is base.model.layers


def test_a_model_without_layers_is_refused():
    with pytest.raises(LayerNotFoundError):
        decoder_layers(nn.Sequential(nn.Linear(2, 2)))


@pytest.mark.parametrize(
    ("layer", "expected"), [(0, 0), (23, 23), (-1, 23), (-24, 0), (2 / 3, 16), (0.5, 12), (0.99, 23)]
)
def test_resolve_layer(layer, expected):
    assert resolve_layer(24, layer) == expected


@pytest.mark.parametrize("layer", [24, -25, 0.0, 1.0, 1.5, -0.5])
def test_resolve_layer_rejects_out_of_range(layer):
    with pytest.raises(LayerNotFoundError):
        resolve_layer(24, layer)


def test_resolve_layer_rejects_bool():
    with pytest.raises(TypeError):
        resolve_layer(24, True)


# ---------------------------------------------------------------------------------------------------------
# Adding to the residual stream


def test_strength_zero_leaves_logits_bit_identical(loaded):
    ids, mask = batch_of(loaded)
    plain = logits(loaded.model, ids, mask)
    with add_to_residual(loaded.model, 1, torch.zeros(2, HIDDEN_SIZE)):
        hooked = logits(loaded.model, ids, mask)
    assert torch.equal(plain, hooked)


def test_only_positions_from_start_change(loaded):
    ids, mask = batch_of(loaded)
    starts = [ids.shape[1] - 5, ids.shape[1] - 2]
    plain = logits(loaded.model, ids, mask)
    with add_to_residual(loaded.model, 1, deltas(2), start=starts):
        steered = logits(loaded.model, ids, mask)
    for row, start in enumerate(starts):
        assert torch.equal(steered[row, :start], plain[row, :start])
        change = (steered[row, start:] - plain[row, start:]).abs().amax(dim=-1)
        assert (change > 1e-3).all(), change


def test_window_adds_exactly_the_delta_between_start_and_end(loaded):
    ids, mask = batch_of(loaded)
    layer = loaded.num_layers - 2
    added = deltas(2)
    start, end = [3, 6], [7, 9]
    every = torch.arange(ids.shape[1]).expand(2, -1)
    plain = read_residual(loaded.model, ids, mask, layer, every)
    with add_to_residual(loaded.model, layer, added, start=start, end=end):
        steered = read_residual(loaded.model, ids, mask, layer, every)
    for row in range(2):
        inside = torch.zeros(ids.shape[1], dtype=torch.bool)
        inside[start[row] : end[row]] = True
        assert torch.equal(steered[row, ~inside], plain[row, ~inside])
        torch.testing.assert_close(
            steered[row, inside] - plain[row, inside], added[row].expand(int(inside.sum()), -1)
        )


def test_one_shared_vector_steers_every_row(qwen):
    ids, mask = batch_of(qwen)
    shared = deltas(1)[0]
    with add_to_residual(qwen.model, 0, shared):
        one = logits(qwen.model, ids, mask)
    with add_to_residual(qwen.model, 0, shared.expand(2, -1)):
        per_row = logits(qwen.model, ids, mask)
    assert torch.equal(one, per_row)


def test_hooks_are_removed_on_exit_even_after_an_error(qwen):
    ids, mask = batch_of(qwen)
    plain = logits(qwen.model, ids, mask)
    with pytest.raises(RuntimeError), add_to_residual(qwen.model, 0, deltas(2)):
        raise RuntimeError("boom")
    assert torch.equal(logits(qwen.model, ids, mask), plain)


def test_fraction_of_depth_picks_the_layer(qwen):
    ids, mask = batch_of(qwen)
    with add_to_residual(qwen.model, 0.9, deltas(2)) as index:
        fraction = logits(qwen.model, ids, mask)
    with add_to_residual(qwen.model, index, deltas(2)):
        explicit = logits(qwen.model, ids, mask)
    assert index == 1
    assert torch.equal(fraction, explicit)


def test_a_wrong_number_of_rows_is_refused(qwen):
    ids, mask = batch_of(qwen)
    with pytest.raises(ValueError, match="rows"), add_to_residual(qwen.model, 0, deltas(3)):
        logits(qwen.model, ids, mask)


def test_deltas_follow_the_hidden_states_dtype(qwen):
    model = copy.deepcopy(qwen.model).to(torch.bfloat16)
    ids, mask = batch_of(qwen)
    plain = logits(model, ids, mask)
    with add_to_residual(model, 1, torch.zeros(2, HIDDEN_SIZE, dtype=torch.float32)):
        assert torch.equal(logits(model, ids, mask), plain)
    with add_to_residual(model, 1, deltas(2), start=[ids.shape[1] - 1] * 2):
        steered = logits(model, ids, mask)
    assert steered.dtype == torch.bfloat16
    assert torch.equal(steered[:, :-1], plain[:, :-1])
    assert not torch.equal(steered[:, -1], plain[:, -1])


class _TupleBlock(nn.Module):
    """A decoder block in the older transformers convention: returns (hidden_states, attention_weights)."""

    def __init__(self, width: int):
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, hidden: torch.Tensor, past_key_values=None) -> tuple[torch.Tensor, None]:
        return hidden + torch.tanh(self.linear(hidden)), None


class _TupleStack(nn.Module):
    def __init__(self, width: int = 8, depth: int = 3):
        super().__init__()
        self.layers = nn.ModuleList(_TupleBlock(width) for _ in range(depth))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden = layer(hidden)[0]
        return hidden


def test_layers_returning_tuples_are_steered():
    torch.manual_seed(0)
    stack = _TupleStack()
    hidden = torch.randn(2, 5, 8)
    plain = stack(hidden)
    with add_to_residual(stack, 2, torch.ones(2, 8), start=[1, 3]):
        steered = stack(hidden)
    torch.testing.assert_close(steered[0, 1:], plain[0, 1:] + 1)
    torch.testing.assert_close(steered[1, 3:], plain[1, 3:] + 1)
    assert torch.equal(steered[0, :1], plain[0, :1]) and torch.equal(steered[1, :3], plain[1, :3])


# ---------------------------------------------------------------------------------------------------------
# Generation under injection: a KV-cached decode must see the same positions as a full recompute


def _generate(model, ids, mask, use_cache: bool, new_tokens: int = 8) -> torch.Tensor:
    return model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        use_cache=use_cache,
    )[:, ids.shape[1] :]


def test_cached_and_recomputed_generation_agree_under_injection(loaded):
    ids, mask = batch_of(loaded)
    prompt_starts = [ids.shape[1] - 6, ids.shape[1] - 3]
    unsteered = _generate(loaded.model, ids, mask, use_cache=True)
    with add_to_residual(loaded.model, 1, deltas(2), start=prompt_starts):
        cached = _generate(loaded.model, ids, mask, use_cache=True)
        recomputed = _generate(loaded.model, ids, mask, use_cache=False)
    assert torch.equal(cached, recomputed)
    assert not torch.equal(cached, unsteered)


def test_injection_starting_inside_the_generation_spares_earlier_tokens(loaded):
    ids, mask = batch_of(loaded)
    # Position T+2 holds the third generated token, so tokens 0..2 are produced before any injection.
    start = ids.shape[1] + 2
    unsteered = _generate(loaded.model, ids, mask, use_cache=True)
    with add_to_residual(loaded.model, 1, deltas(2, scale=8.0), start=[start, start]):
        cached = _generate(loaded.model, ids, mask, use_cache=True)
        recomputed = _generate(loaded.model, ids, mask, use_cache=False)
    assert torch.equal(cached, recomputed)
    assert torch.equal(cached[:, :3], unsteered[:, :3])
    assert not torch.equal(cached[:, 3:], unsteered[:, 3:])


# ---------------------------------------------------------------------------------------------------------
# Reading activations


def test_read_residual_matches_the_hidden_states_output(loaded):
    ids, mask = loaded.encode([PROMPTS[0]])
    layer = loaded.num_layers - 2  # the last layer's hidden_states entry has the final norm applied
    with torch.no_grad():
        expected = loaded.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    read = read_residual(loaded.model, ids, mask, layer, [[0, 2, -1]])
    torch.testing.assert_close(read[0], expected[layer + 1][0, [0, 2, -1]], rtol=0, atol=1e-6)
    assert read_residual(loaded.model, ids, mask, layer, [-1]).shape == (1, HIDDEN_SIZE)


def test_left_padding_does_not_change_what_is_read(loaded):
    ids, mask = batch_of(loaded)
    alone_ids, alone_mask = loaded.encode([PROMPTS[1]])
    padded = read_residual(loaded.model, ids, mask, 1, [-1, -1])[1]
    alone = read_residual(loaded.model, alone_ids, alone_mask, 1, [-1])[0]
    # Only float rounding apart: a batch of two multiplies in kernels blocked otherwise than a batch of one.
    torch.testing.assert_close(padded, alone, rtol=1e-4, atol=1e-5)


def _hand_last_token_activation(loaded, prompt: str, layer: int) -> torch.Tensor:
    ids = loaded.tokenizer(prompt, add_special_tokens=loaded.prompt_format == "plain", return_tensors="pt")
    with torch.no_grad():
        hidden = loaded.model(**ids, output_hidden_states=True).hidden_states
    return hidden[layer + 1][0, -1]


def test_concept_vector_is_the_mean_difference_on_the_chat_prompt(loaded):
    baseline = ["apple", "river", "music", "table", "cloud"]
    layer = 0
    vector = concept_vector(loaded, "dog", baseline, layer, batch_size=2)
    prompts = [chat_prompt(loaded, word) for word in ["dog", *baseline]]
    assert "Tell me about dog" in prompts[0]
    hand = [_hand_last_token_activation(loaded, prompt, layer) for prompt in prompts]
    expected = hand[0] - torch.stack(hand[1:]).mean(dim=0)
    assert vector.shape == (HIDDEN_SIZE,) and vector.dtype == torch.float32
    torch.testing.assert_close(vector, expected, rtol=0, atol=1e-5)


def test_concept_vectors_share_one_baseline(qwen):
    baseline = ["apple", "river", "music"]
    together = concept_vectors(qwen, ["dog", "cat"], baseline, 1)
    torch.testing.assert_close(together["cat"], concept_vector(qwen, "cat", baseline, 1), rtol=0, atol=1e-5)
    assert not torch.allclose(together["dog"], together["cat"])


def test_last_positions_find_the_last_real_token_on_either_padding_side():
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])
    assert last_positions(left).tolist() == [3, 3]
    assert last_positions(right).tolist() == [1, 2]


def test_chat_prompt_uses_the_chat_template(qwen):
    assert chat_prompt(qwen, "dog").startswith("<|im_start|>user\nTell me about dog<|im_end|>")


def test_random_vector_is_norm_matched_and_seeded():
    vector = torch.randn(HIDDEN_SIZE) * 3
    random = random_vector_like(vector, seed=5)
    torch.testing.assert_close(random.norm(), vector.norm())
    assert random.shape == vector.shape and random.dtype == vector.dtype
    assert torch.equal(random, random_vector_like(vector, seed=5))
    assert not torch.equal(random, random_vector_like(vector, seed=6))
    assert abs(torch.nn.functional.cosine_similarity(random, vector, dim=0)) < 0.6


def test_vectors_round_trip_through_safetensors(tmp_path):
    vector = torch.randn(HIDDEN_SIZE, dtype=torch.float64)
    path = save_vector(tmp_path / "vectors" / "dog.safetensors", vector)
    assert torch.equal(load_vector(path), vector.float())


def test_loading_a_file_without_a_vector_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"weights": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="vector"):
        load_vector(tmp_path / "other.safetensors")


def test_span_positions_cover_exactly_the_span(loaded):
    messages = (Message("user", "Write a sentence about a cat."),)
    text = loaded.render(messages, "The dog likes the red ball.")
    positions = span_token_positions(loaded, text, "likes the red")
    ids, _ = loaded.encode([text])
    covered = loaded.tokenizer.decode(ids[0, positions])
    assert "likes the red" in covered
    assert positions == list(range(positions[0], positions[-1] + 1))
    assert len(covered) < len("likes the red") + 8


def test_cosine_with_concept_is_measured_on_the_span_mean(loaded):
    messages = (Message("user", "Write a sentence about a cat."),)
    sentence = "The dog likes the red ball."
    layer = 0
    activation = span_activation(loaded, messages, sentence, layer, prefill=sentence)
    text = loaded.render(messages, sentence)
    positions = span_token_positions(loaded, text, sentence)
    ids = loaded.tokenizer(text, add_special_tokens=loaded.prompt_format == "plain", return_tensors="pt")
    with torch.no_grad():
        hidden = loaded.model(**ids, output_hidden_states=True).hidden_states[layer + 1][0]
    torch.testing.assert_close(activation, hidden[positions].mean(dim=0), rtol=0, atol=1e-5)
    assert cosine_with_concept(loaded, messages, sentence, activation * 2, layer, sentence) == pytest.approx(
        1.0
    )
    assert cosine_with_concept(loaded, messages, sentence, -activation, layer, sentence) == pytest.approx(
        -1.0
    )
    cosines = cosines_with_concepts(
        loaded, messages, sentence, {"a": activation, "b": -activation}, layer, sentence
    )
    assert cosines == pytest.approx({"a": 1.0, "b": -1.0})


def test_a_span_missing_from_the_prompt_is_refused(qwen):
    with pytest.raises(ValueError, match="does not occur"):
        span_token_positions(qwen, "hello there", "dog")


# ---------------------------------------------------------------------------------------------------------
# The embedded model (slow): the DESIGN.md §5 steering check


@pytest.mark.slow
def test_a_dog_vector_at_two_thirds_depth_steers_qwen_towards_dogs():
    qwen = load_local_model("embedded:qwen2.5-coder-0.5b-instruct", device="cpu")
    baseline = ["apple", "river", "music", "table", "cloud", "chair", "money", "winter", "phone", "garden"]
    vector = concept_vector(qwen, "dogs", [*baseline, "bread", "mountain"], 2 / 3, batch_size=13)
    ids, mask = qwen.encode([qwen.render((Message("user", "Write one sentence about whatever you like."),))])

    def reply(strength: float) -> str:
        with add_to_residual(qwen.model, 2 / 3, strength * vector, start=[ids.shape[1] - 1]):
            out = qwen.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20, do_sample=False)
        return qwen.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).lower()

    assert 2 < vector.norm() < 30  # read through the chat template; raw prompts gave ~10x larger vectors
    assert "dog" not in reply(0.0)
    # Measured: strengths 1.5 and 2 give "I love playing with my new puppy (dogs)"; 2.5-4 drift to birds.
    steered = [reply(strength) for strength in (1.5, 2.0)]
    assert any("dog" in text or "pupp" in text for text in steered), steered
