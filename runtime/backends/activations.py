"""Concept vectors and activation readouts for "Emergent Introspective Awareness" (Lindsey 2025).

A concept vector is the residual stream after layer L on the last token of the chat prompt
"Tell me about {word}", minus the mean of the same over baseline words. The prompt goes through the
model's own chat template: vectors read from raw prompts came out ~10x larger on Qwen 0.5B and broke
generation when injected (DESIGN.md §5). Prompts run in left-padded batches with position ids that skip
the padding, so a word's activation does not depend on what it was batched with.

Vectors are stored as safetensors files holding one tensor named "vector" (the form `Steering.vector`
points at), always float32 on the CPU so they hash and load the same everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from intro.runtime.backends.requests import Message
from intro.runtime.backends.steering import read_residual, residual_stream

DEFAULT_TEMPLATE = "Tell me about {word}"
VECTOR_KEY = "vector"


class ChatModel(Protocol):
    """What activation reading needs from a loaded model (`LoadedModel`): rendering and encoding as at inference."""

    model: nn.Module
    tokenizer: Any

    def render(self, messages: Sequence[Message], prefill: str = "") -> str: ...

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]: ...


def chat_prompt(chat: ChatModel, word: str, template: str = DEFAULT_TEMPLATE) -> str:
    """The rendered single-turn prompt whose last token a concept is read from."""
    return chat.render((Message("user", template.format(word=word)),))


def last_token_activations(
    chat: ChatModel, prompts: Sequence[str], layer: int | float, batch_size: int = 16
) -> torch.Tensor:
    """Residual stream after `layer` on the last token of each rendered prompt: [len(prompts), hidden]."""
    chunks = []
    for first in range(0, len(prompts), batch_size):
        ids, mask = chat.encode(prompts[first : first + batch_size])
        chunks.append(read_residual(chat.model, ids, mask, layer, last_positions(mask)).float().cpu())
    return torch.cat(chunks)


def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token, whichever side the tokenizer pads on."""
    return attention_mask.shape[1] - 1 - attention_mask.flip(-1).argmax(dim=-1)


def concept_vectors(
    chat: ChatModel,
    words: Sequence[str],
    baseline_words: Sequence[str],
    layer: int | float,
    template: str = DEFAULT_TEMPLATE,
    batch_size: int = 16,
) -> dict[str, torch.Tensor]:
    """Mean-difference vectors for several words against one baseline (computed once): word -> [hidden]."""
    if not baseline_words:
        raise ValueError("a concept vector needs at least one baseline word")
    prompts = [chat_prompt(chat, word, template) for word in [*words, *baseline_words]]
    activations = last_token_activations(chat, prompts, layer, batch_size)
    baseline = activations[len(words) :].mean(dim=0)
    return {word: activations[index] - baseline for index, word in enumerate(words)}


def concept_vector(
    chat: ChatModel,
    word: str,
    baseline_words: Sequence[str],
    layer: int | float,
    template: str = DEFAULT_TEMPLATE,
    batch_size: int = 16,
) -> torch.Tensor:
    """Activation for `word` minus the mean over `baseline_words`, at `layer`: a float32 [hidden] vector."""
    return concept_vectors(chat, [word], baseline_words, layer, template, batch_size)[word]


def random_vector_like(vector: torch.Tensor, seed: int) -> torch.Tensor:
    """A Gaussian direction with the same norm, shape and dtype as `vector`: the paper's random control."""
    generator = torch.Generator().manual_seed(seed)
    direction = torch.randn(vector.shape, generator=generator, dtype=torch.float32)
    scale = vector.detach().float().norm() / direction.norm()
    return (direction * scale).to(vector.dtype)


def save_vector(path: str | Path, vector: torch.Tensor) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({VECTOR_KEY: vector.detach().float().cpu().contiguous()}, str(path))
    return path


def load_vector(path: str | Path) -> torch.Tensor:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    if VECTOR_KEY not in tensors:
        raise ValueError(f"{path} holds no tensor named {VECTOR_KEY!r} (found: {sorted(tensors)})")
    return tensors[VECTOR_KEY]


def span_token_positions(chat: ChatModel, text: str, span: str) -> list[int]:
    """Positions of the tokens of `text` that overlap the last occurrence of `span` in it."""
    begin = text.rfind(span)
    if begin < 0 or not span:
        raise ValueError(f"{span!r} does not occur in the rendered prompt")
    end = begin + len(span)
    ids, _ = chat.encode([text])
    offsets = _offsets_matching(chat, text, ids[0].tolist())
    return [index for index, (first, last) in enumerate(offsets) if first < end and last > begin]


def _offsets_matching(chat: ChatModel, text: str, ids: list[int]) -> list[tuple[int, int]]:
    # Offsets come from the tokenizer directly; try both special-token settings and keep the one that
    # reproduces the model's own encoding, so a BOS the format adds cannot shift the span.
    for add_special_tokens in (False, True):
        encoding = chat.tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        if list(encoding["input_ids"]) == ids:
            return [tuple(pair) for pair in encoding["offset_mapping"]]
    raise ValueError("cannot align the tokenizer's offsets with the model's encoding of the prompt")


def span_activation(
    chat: ChatModel, messages: Sequence[Message], span: str, layer: int | float, prefill: str = ""
) -> torch.Tensor:
    """Mean residual stream after `layer` over the tokens of `span` in the rendered conversation: [hidden].

    For "think about X / don't think about X" the span is the sentence the model wrote, passed as the
    prefill of the assistant turn so it is read exactly as the model would have produced it.
    """
    text = chat.render(messages, prefill)
    positions = span_token_positions(chat, text, span)
    ids, mask = chat.encode([text])
    hidden = residual_stream(chat.model, ids, mask, layer)
    return hidden[0, positions].float().mean(dim=0).cpu()


def cosines_with_concepts(
    chat: ChatModel,
    messages: Sequence[Message],
    span: str,
    vectors: Mapping[str, torch.Tensor],
    layer: int | float,
    prefill: str = "",
) -> dict[str, float]:
    """Cosine of the span's mean activation with each named vector (the concept and its control words)."""
    activation = span_activation(chat, messages, span, layer, prefill)
    return {
        name: torch.nn.functional.cosine_similarity(activation, vector.float().cpu(), dim=0).item()
        for name, vector in vectors.items()
    }


def cosine_with_concept(
    chat: ChatModel,
    messages: Sequence[Message],
    span: str,
    vector: torch.Tensor,
    layer: int | float,
    prefill: str = "",
) -> float:
    """Cosine of the span's mean activation at `layer` with one concept vector."""
    return cosines_with_concepts(chat, messages, span, {"concept": vector}, layer, prefill)["concept"]
