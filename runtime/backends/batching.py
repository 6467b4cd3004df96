"""How many prompts an in-process batch takes: a fixed count on the CPU, what the device's memory holds on CUDA.

A batch runs its prompts left-padded to its longest, so its memory is about rows x (longest prompt + tokens
it adds) x the bytes one token position costs: every layer's keys and values in the KV cache, plus one
layer's transient activations (`token_cost`, from the model's config and dtype). `rows_that_fit` turns the
free memory into a row count, keeping `HEADROOM` of it spare for what the estimate leaves out (the
allocator's fragmentation, kernels' workspaces). `plan_batches` packs requests, sorted by length, into
batches of one steering layer each that fit.

The estimate can still be wrong (another process takes memory, an architecture computes more than it
says): a batch that runs out of device memory is halved and both halves run (`LocalBackend`), down to a
batch of one, which fails in one line. Everything here is pure (config values and byte counts in, row
counts out), so it is tested without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from attrs import frozen

# The share of free device memory batches may plan to use.
HEADROOM = 0.8
# Rows per batch at most, however much memory is free: beyond it the decode loop's per-row bookkeeping,
# not the device, is the limit, and one batch would hold a step's calls back from the cache for long.
MOST_ROWS = 256
# Without a device to measure (the CPU): the count that was fastest on the embedded models (DESIGN.md §5).
CPU_ROWS = 16


@frozen
class TokenCost:
    """Bytes a batch needs on the device: per token position of every row, and per row."""

    per_token: int  # every layer's keys and values, plus one layer's transient activations
    per_row: int  # the last position's logits in float32 and their log-softmax


def token_cost(config: Any, dtype_bytes: int) -> TokenCost:
    """The cost of one token position for a model of `config` computing in `dtype_bytes`-byte floats."""
    config = getattr(config, "text_config", None) or config
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    kv = 2 * int(config.num_hidden_layers) * kv_heads * head_dim
    intermediate = int(getattr(config, "intermediate_size", None) or 4 * config.hidden_size)
    # A layer's live activations: the MLP's gate and up projections, the residual, its norm, the attention's
    # queries and output.
    activations = 2 * intermediate + 4 * int(config.hidden_size)
    return TokenCost((kv + activations) * dtype_bytes, 2 * 4 * int(config.vocab_size))


def rows_that_fit(
    free_bytes: int,
    cost: TokenCost,
    tokens_per_row: int,
    *,
    most: int = MOST_ROWS,
    headroom: float = HEADROOM,
) -> int:
    """Rows of `tokens_per_row` positions each that fit in `headroom` of `free_bytes`: at least 1 (a batch
    of one that does not fit fails when it runs, which says so), at most `most`."""
    per_row = cost.per_token * max(tokens_per_row, 1) + cost.per_row
    return max(1, min(most, int(free_bytes * headroom) // per_row))


def plan_batches(
    requests: Sequence[Any],
    lengths: Sequence[int],
    rows_for: Callable[[int], int],
    added: Sequence[int] | None = None,
) -> list[list[int]]:
    """Indices of `requests` in batches: one steering layer per batch, similar prompt lengths (`lengths`, in
    tokens) together so a batch computes little padding, and at most `rows_for(tokens)` rows in a batch
    whose rows hold `tokens` positions (its longest prompt plus the most tokens a request of it adds,
    `added`: a generation's `max_tokens`)."""
    added = added if added is not None else [0] * len(requests)
    groups: dict[int | None, list[int]] = {}
    for index, request in enumerate(requests):
        layer = request.steering.layer if request.steering else None
        groups.setdefault(layer, []).append(index)
    batches: list[list[int]] = []
    for indices in groups.values():
        batches += _packed(sorted(indices, key=lambda i: lengths[i]), lengths, rows_for, added)
    return batches


def _packed(
    ordered: list[int], lengths: Sequence[int], rows_for: Callable[[int], int], added: Sequence[int]
) -> list[list[int]]:
    batches: list[list[int]] = []
    batch: list[int] = []
    most_added = 0
    for index in ordered:  # ascending lengths: the newest row is the longest
        tokens = lengths[index] + max(most_added, added[index])
        if batch and len(batch) + 1 > rows_for(tokens):
            batches.append(batch)
            batch, most_added = [], 0
        batch.append(index)
        most_added = max(most_added, added[index])
    return [*batches, batch] if batch else batches


def fixed_rows(count: int) -> Callable[[int], int]:
    """`rows_for` of a fixed batch size, whatever the rows' lengths."""
    return lambda tokens: count
