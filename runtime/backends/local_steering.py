"""Where in a batch a steering vector is added: per-row token windows and the vectors read from their files.

A `Steering` names its window in the rendered prompt by token positions or by text (`start_text`,
`span_text`), which is found in the prompt and mapped to the tokens that overlap it. Positions are
shifted by each row's left padding, so one batch can steer each row over its own window; a window with no
end runs through every generated token. All rows of a steered batch share one layer (`plan_batches` in
local.py groups them so). The vector file (safetensors, one tensor named `vector`) is read once per
modification time and must match the model's residual width.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from attrs import frozen

from intro.runtime.backends.local_model import LoadedModel
from intro.runtime.backends.requests import BackendError, GenerationRequest, ScoreRequest, Steering

_FOREVER = 2**62


@frozen(eq=False)
class SteeringWindows:
    """Per-row residual additions for one batch: all rows share `layer`."""

    layer: int
    deltas: torch.Tensor  # [batch, hidden], already scaled by strength
    start: torch.Tensor  # [batch] absolute padded positions
    end: torch.Tensor  # [batch]

    def context(self, model: Any, rows: torch.Tensor | None = None) -> contextlib.AbstractContextManager:
        from intro.runtime.backends.steering import add_to_residual

        if rows is None:
            return add_to_residual(model, self.layer, self.deltas, self.start, self.end)
        return add_to_residual(model, self.layer, self.deltas[rows], self.start[rows], self.end[rows])


def steering_windows(
    loaded: LoadedModel,
    requests: Sequence[GenerationRequest | ScoreRequest],
    prompts: Sequence[str],
    attention_mask: torch.Tensor,
) -> SteeringWindows | None:
    """The steering of a batch (whose requests all steer the same layer, or none does)."""
    found = [request.steering for request in requests]
    steerings = [steering for steering in found if steering is not None]
    if not steerings:
        return None
    if len(steerings) < len(found) or len({s.layer for s in steerings}) > 1:
        raise BackendError("a steered batch must steer one layer in every row")
    pads = (attention_mask.shape[1] - attention_mask.sum(dim=1)).tolist()
    bounds = [
        _window(loaded, steering, prompt, int(pad))
        for steering, prompt, pad in zip(steerings, prompts, pads, strict=True)
    ]
    vectors = [_steering_vector(steering.vector, loaded.hidden_size) for steering in steerings]
    deltas = torch.stack(
        [steering.strength * vector for steering, vector in zip(steerings, vectors, strict=True)]
    )
    return SteeringWindows(
        layer=steerings[0].layer,
        deltas=deltas.to(loaded.device),
        start=torch.tensor([start for start, _ in bounds]),
        end=torch.tensor([end for _, end in bounds]),
    )


def _window(loaded: LoadedModel, steering: Steering, prompt: str, pad: int) -> tuple[int, int]:
    if steering.span_text is not None:
        first, stop = _tokens_of_text(loaded, prompt, steering.span_text)
        return first + pad, stop + pad
    start = steering.start
    if steering.start_text is not None:
        start = _token_before_text(loaded, prompt, steering.start_text)
    end = _FOREVER if steering.end is None else steering.end + pad
    return start + pad, end


def _token_before_text(loaded: LoadedModel, prompt: str, text: str) -> int:
    """Index of the token just before the first token that overlaps `text`'s first occurrence."""
    offset = prompt.find(text)
    if offset < 0:
        raise BackendError(f"steering start_text {text!r} does not occur in the rendered prompt")
    first = next(index for index, (_, stop) in enumerate(_offsets(loaded, prompt)) if stop > offset)
    return max(first - 1, 0)


def _tokens_of_text(loaded: LoadedModel, prompt: str, text: str) -> tuple[int, int]:
    """[first, stop) token indices of the tokens that overlap the first occurrence of `text`."""
    offset = prompt.find(text) if text else -1
    if offset < 0:
        raise BackendError(f"steering span_text {text!r} does not occur in the rendered prompt")
    spans = _offsets(loaded, prompt)
    overlapping = [i for i, (begin, stop) in enumerate(spans) if begin < offset + len(text) and stop > offset]
    return overlapping[0], overlapping[-1] + 1


def _offsets(loaded: LoadedModel, prompt: str) -> list[tuple[int, int]]:
    encoded = loaded.tokenizer(
        prompt, add_special_tokens=loaded.prompt_format == "plain", return_offsets_mapping=True
    )
    return [tuple(pair) for pair in encoded["offset_mapping"]]


_VECTORS: dict[tuple[str, int], torch.Tensor] = {}


def _steering_vector(path: str, hidden_size: int) -> torch.Tensor:
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise BackendError(f"steering vector file {path} does not exist")
    key = (path, Path(path).stat().st_mtime_ns)
    if key not in _VECTORS:
        tensors = load_file(path)
        if "vector" not in tensors:
            raise BackendError(f"steering file {path} holds no tensor named 'vector'")
        _VECTORS[key] = tensors["vector"].float().reshape(-1)
    if _VECTORS[key].numel() != hidden_size:
        raise BackendError(
            f"steering vector {path} has {_VECTORS[key].numel()} values but the model's residual stream "
            f"has {hidden_size}"
        )
    return _VECTORS[key]
