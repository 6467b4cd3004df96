"""Residual-stream access for in-process models: find the decoder layers, add vectors, read activations.

Both papers' interventions live here. "Emergent Introspective Awareness" adds a concept vector to the
residual stream after one decoder layer, from a chosen prompt token through every generated token;
concept vectors themselves are read from the same place. The code works on any Hugging Face decoder
(Qwen2, Llama, Gemma 3, Mistral, GPT-2 style `transformer.h`, and any of them wrapped by peft) by hooking
the decoder layer module, so no model code is patched.

Positions are absolute indices into the left-padded batch: the prompt occupies 0..T-1 (pads first) and
the n-th generated token sits at T+n-1. A hook works out which positions each forward call covers from
the key/value cache it is handed (tokens already cached for its layer), so the same context manager is
right for a full prompt pass, for each cached decode step, and for a decode loop without a cache that
recomputes the whole sequence every step.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Iterator, Sequence

import torch
from torch import nn

# Names of the module list holding the decoder blocks, most specific family first. Matching is on the
# last component of the module's qualified name so peft wrappers (`base_model.model.model.layers`) and
# multimodal wrappers (`model.language_model.layers`) are found too.
_LAYER_LIST_NAMES = ("layers", "h", "blocks", "block")

# Keyword names under which decoder layers receive their key/value cache, across families and versions.
_CACHE_KWARGS = ("past_key_values", "past_key_value", "layer_past")


class LayerNotFoundError(ValueError):
    """The model has no recognisable stack of decoder layers (or the layer index is out of range)."""


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of `model`, in order, whatever family or wrapper it is."""
    expected = _configured_layer_count(model)
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in _LAYER_LIST_NAMES and len(module)
    ]
    if expected is not None:
        candidates = [(name, module) for name, module in candidates if len(module) == expected]
    if not candidates:
        raise LayerNotFoundError(f"cannot find the decoder layers of {type(model).__name__}")
    # The shallowest match is the model's own stack, not a nested list inside a block.
    return min(candidates, key=lambda item: item[0].count("."))[1]


def _configured_layer_count(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    text_config = getattr(config, "text_config", None) or config
    for attribute in ("num_hidden_layers", "n_layer", "num_layers"):
        count = getattr(text_config, attribute, None)
        if isinstance(count, int):
            return count
    return None


def resolve_layer(num_layers: int, layer: int | float) -> int:
    """An int is a layer index (negative counts from the end); a float in (0, 1) is a fraction of depth.

    Fractions round to the nearest layer, so 2/3 of a 24-layer model is layer 16, the depth at which the
    steering check on Qwen 0.5B (DESIGN.md §5) first produced the concept.
    """
    if isinstance(layer, bool):
        raise TypeError("layer must be an int or a float fraction, not a bool")
    if isinstance(layer, numbers.Integral):
        index = int(layer) + num_layers if layer < 0 else int(layer)
        if not 0 <= index < num_layers:
            raise LayerNotFoundError(f"layer {layer} is out of range for a model with {num_layers} layers")
        return index
    if isinstance(layer, numbers.Real) and 0.0 < float(layer) < 1.0:
        return min(num_layers - 1, round(float(layer) * num_layers))
    raise LayerNotFoundError(f"layer {layer!r} is neither a layer index nor a fraction of depth in (0, 1)")


def layer_module(model: nn.Module, layer: int | float) -> tuple[int, nn.Module]:
    """The resolved index and the module of decoder layer `layer`."""
    layers = decoder_layers(model)
    index = resolve_layer(len(layers), layer)
    return index, layers[index]


def _hidden_of(output: torch.Tensor | tuple) -> torch.Tensor:
    # Decoder layers return the hidden states alone (transformers >= 4.54) or a tuple led by them.
    return output[0] if isinstance(output, tuple) else output


def _with_hidden(output: torch.Tensor | tuple, hidden: torch.Tensor) -> torch.Tensor | tuple:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def _call_argument(args: tuple, kwargs: dict, names: Sequence[str]) -> object | None:
    for name in names:
        if kwargs.get(name) is not None:
            return kwargs[name]
    # GPT-2 passes its cache positionally; recognise it by type rather than by position.
    from transformers.cache_utils import Cache

    return next((arg for arg in args if isinstance(arg, Cache)), None)


def cached_length(args: tuple, kwargs: dict, layer_index: int) -> int:
    """How many tokens the layer's cache holds before this call: the absolute position of its first token."""
    cache = _call_argument(args, kwargs, _CACHE_KWARGS)
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length(layer_index))
    if isinstance(cache, tuple | list):
        # A legacy (key, value) pair for this layer: keys are [batch, heads, seq, head_dim].
        return int(cache[0].shape[-2])
    raise TypeError(f"unrecognised layer cache {type(cache).__name__}")


def _first_position(args: tuple, kwargs: dict, layer_index: int) -> int:
    cache_position = kwargs.get("cache_position")
    if cache_position is not None:
        return int(cache_position.reshape(-1)[0])
    return cached_length(args, kwargs, layer_index)


def _as_bounds(values: Sequence[int | None] | torch.Tensor | None, batch: int, default: int) -> torch.Tensor:
    if values is None:
        return torch.full((batch,), default, dtype=torch.long)
    if isinstance(values, torch.Tensor):
        return values.detach().to("cpu", torch.long).reshape(batch)
    return torch.tensor([default if value is None else int(value) for value in values], dtype=torch.long)


class _ResidualAdder:
    """Adds per-row deltas to a layer's output inside per-row position windows; one instance per context."""

    def __init__(self, layer_index: int, deltas: torch.Tensor, start: torch.Tensor, end: torch.Tensor):
        self.layer_index = layer_index
        self.deltas = deltas
        self.start = start
        self.end = end
        self.first_position = 0

    def before(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        # Read before the layer runs: afterwards its cache already holds this call's tokens.
        self.first_position = _first_position(args, kwargs, self.layer_index)

    def after(self, module: nn.Module, args: tuple, kwargs: dict, output):
        hidden = _hidden_of(output)
        return _with_hidden(output, hidden + self._addition(hidden))

    def _addition(self, hidden: torch.Tensor) -> torch.Tensor:
        batch, length, _ = hidden.shape
        if self.deltas.shape[0] not in (1, batch):
            raise ValueError(f"steering deltas are for {self.deltas.shape[0]} rows but the batch has {batch}")
        device = hidden.device
        positions = torch.arange(length, device=device) + self.first_position
        start, end = self.start.to(device), self.end.to(device)
        if start.shape[0] == 1:
            start, end = start.expand(batch), end.expand(batch)
        window = (positions[None, :] >= start[:, None]) & (positions[None, :] < end[:, None])
        deltas = self.deltas.to(device=device, dtype=hidden.dtype)
        # Multiplying by the 0/1 window adds exactly 0.0 outside it, so untouched positions stay bit-identical.
        return window.unsqueeze(-1).to(hidden.dtype) * deltas[:, None, :]


@contextlib.contextmanager
def add_to_residual(
    model: nn.Module,
    layer: int | float,
    deltas: torch.Tensor,
    start: Sequence[int] | torch.Tensor | None = None,
    end: Sequence[int | None] | torch.Tensor | None = None,
) -> Iterator[int]:
    """Add `deltas[b]` to the output of decoder layer `layer` at positions start[b] <= pos < end[b].

    `deltas` is [batch, hidden] (or [hidden], shared by every row), already scaled by the strength.
    `start` defaults to 0 and `end` (None entries included) to "forever", generated tokens included.
    Every forward call inside the context is steered; the hooks are removed on exit, even on error.
    Yields the resolved layer index.
    """
    index, module = layer_module(model, layer)
    deltas = deltas.detach()
    deltas = deltas.unsqueeze(0) if deltas.dim() == 1 else deltas
    rows = deltas.shape[0]
    adder = _ResidualAdder(index, deltas, _as_bounds(start, rows, 0), _as_bounds(end, rows, 2**62))
    handles = [
        module.register_forward_pre_hook(adder.before, with_kwargs=True),
        module.register_forward_hook(adder.after, with_kwargs=True),
    ]
    try:
        yield index
    finally:
        for handle in handles:
            handle.remove()


class _StopForward(Exception):
    """Raised by a reading hook once its layer has run: the layers above and the LM head are not needed."""


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding, so a padded row computes exactly what it would alone."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def residual_stream(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, layer: int | float
) -> torch.Tensor:
    """The output of decoder layer `layer` at every position: [batch, seq, hidden], in the model's dtype.

    The forward stops right after that layer, which skips the rest of the network and the vocabulary
    projection (the largest matrix in small models).
    """
    _, module = layer_module(model, layer)
    captured: list[torch.Tensor] = []

    def capture(module: nn.Module, args: tuple, output) -> None:
        captured.append(_hidden_of(output))
        raise _StopForward

    handle = module.register_forward_hook(capture)
    try:
        model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions_from_mask(attention_mask),
            use_cache=False,
        )
    except _StopForward:
        pass
    finally:
        handle.remove()
    return captured[0]


def read_residual(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    layer: int | float,
    positions: Sequence[int] | torch.Tensor,
) -> torch.Tensor:
    """The residual stream after decoder layer `layer` at given positions, in one forward pass.

    `positions` holds one position per row ([batch] -> [batch, hidden]) or several ([batch, k] ->
    [batch, k, hidden]); negative positions count from the end, so -1 is the last token of a
    left-padded batch.
    """
    hidden = residual_stream(model, input_ids, attention_mask, layer)
    index = torch.as_tensor(positions, dtype=torch.long, device=hidden.device)
    single = index.dim() == 1
    index = index.unsqueeze(1) if single else index
    index = torch.where(index < 0, index + hidden.shape[1], index)
    gathered = hidden.gather(1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    return gathered.squeeze(1) if single else gathered
