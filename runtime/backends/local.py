"""The in-process backend: answering requests on a `LoadedModel` with batched generation and scoring.

Loading the model, its prompt formats and its adapters are `local_model.py`; where a batch is steered is
`local_steering.py`. Requests are grouped into batches of one steering layer and similar prompt lengths
(`batching.plan_batches`), each run under the model's lock with the backend's adapter switched on. Each
prompt is rendered and tokenised once per call. A batch holds `batch_size` rows when one is given; else
16 on the CPU and, on CUDA, as many as the device's free memory holds (`batching.py`). A batch that runs
out of device memory is halved and both halves run, and later batches stay at most that size.

Shared prefixes: the tokens every prompt of a batch starts with (the chat template's head, a task's
instruction: about half of Looking Inward's hypothetical prompts) are computed once, as a batch of one, and
their KV cache is repeated for every row; each row's own tokens follow, left-padded after the prefix, at
the positions they have in the whole prompt. The values are those of the full prompts up to float rounding
(a batch of one and a batch of sixteen may round a matmul differently), so a greedy answer can, rarely,
differ; `share_prefix=False` (`INTRO_SHARE_PREFIX=0` for `intro run`) computes every prompt whole, for exact
reproduction of results made that way. Steered batches always compute whole prompts (their windows are
token positions in the left-padded batch).

Generation (`LocalBackend.generate`) runs its own decode loop over a left-padded batch with a KV cache:
T=0 is greedy; T>0 samples by inverse CDF with one uniform draw per step from a `torch.Generator` seeded
by the request's seed, so a request's text does not depend on which requests share its batch. The text
returned is the continuation only (without the prefill); `completion_tokens` counts every token the model
produced, the end-of-sequence token included. Per-token logprobs are those of the untempered model.

Scoring (`LocalBackend.score`) runs the prompts once with a KV cache; the last logits give every choice's
first token, and a second, short pass over the cache (rows repeated per choice) scores any further tokens.
With single-token answers that is exactly one forward pass per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from attrs import define, field, frozen

from intro.runtime.backends import batching
from intro.runtime.backends.local_model import (
    LoadedModel,
    activate_adapter,
    attach_adapter,
    available_memory,
)
from intro.runtime.backends.local_steering import SteeringWindows, steering_windows
from intro.runtime.backends.requests import (
    BackendError,
    Generation,
    GenerationRequest,
    Score,
    ScoreRequest,
    TokenLogprob,
)

# Tokens a batch's rows must share before their common prefix is computed once (`shared_prefix_length`).
MIN_SHARED_PREFIX = 8

# ---------------------------------------------------------------------------------------------------------
# The backend


class LocalBackend:
    """The `Backend` protocol over a `LoadedModel`: batched generation and closed-set scoring in-process.

    `adapter` is a peft LoRA directory applied on top of the base weights. Adapters are loaded into the
    shared model under a name derived from their content and switched on per batch, so several backends
    (with and without adapters) can share one copy of the base weights. `batch_size` fixes the rows of a
    batch; without it they are sized to `memory` bytes (default: the device's free memory on CUDA; a
    fixed 16 on the CPU).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        batch_size: int | None = None,
        adapter: str | None = None,
        share_prefix: bool = True,
        memory: int | None = None,
    ):
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.loaded = loaded
        self.batch_size = batch_size
        self.memory = memory
        self.most_rows = batching.MOST_ROWS  # lowered for good when a batch runs out of device memory
        self.share_prefix = share_prefix
        self.adapter_name = attach_adapter(loaded.model, Path(adapter)) if adapter else None
        suffix = f"+{self.adapter_name}" if self.adapter_name else ""
        self.name = f"local:{loaded.identity[:12]}{suffix}"

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        return await asyncio.to_thread(self.generate_now, requests)

    async def score(self, requests: Sequence[ScoreRequest]) -> list[Score]:
        return await asyncio.to_thread(self.score_now, requests)

    async def aclose(self) -> None:
        return None

    def generate_now(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Synchronous `generate`: results in the order of `requests`."""
        return self._in_batches(requests, self._generate_batch, [r.max_tokens for r in requests])

    def score_now(self, requests: Sequence[ScoreRequest]) -> list[Score]:
        """Synchronous `score`: results in the order of `requests`."""
        for request in requests:
            _check_choices(request)
        tails = [max(len(self.loaded.encode_reply(c)) for c in r.choices) for r in requests]
        return self._in_batches(requests, self._score_batch, tails)

    def _in_batches(self, requests: Sequence, run_batch, added: Sequence[int]) -> list:
        """`run_batch(batch)` over `plan_batches`, each prompt rendered and tokenised once for all of them;
        `added[i]`: the most token positions request i adds to its prompt (for sizing batches)."""
        prompts = [self.loaded.render(r.messages, r.prefill) for r in requests]
        ids = self.loaded.tokenize(prompts) if prompts else []
        results: list = [None] * len(requests)
        rows_for = self._rows_for()
        for batch in batching.plan_batches(requests, [len(row) for row in ids], rows_for, added):
            chosen = _Batch(
                [requests[i] for i in batch], [prompts[i] for i in batch], [ids[i] for i in batch]
            )
            for index, output in zip(batch, self._run_batch(chosen, run_batch), strict=True):
                results[index] = output
        return results

    def _rows_for(self):
        """How many rows a batch of rows of n token positions takes (see the class docstring)."""
        if self.batch_size is not None:
            return batching.fixed_rows(min(self.batch_size, self.most_rows))
        device = self.loaded.device
        if self.memory is None and device.type != "cuda":
            return batching.fixed_rows(min(batching.CPU_ROWS, self.most_rows))
        free = self.memory if self.memory is not None else available_memory(device)
        config, itemsize = self.loaded.model.config, self.loaded.dtype.itemsize
        cost = batching.token_cost(config, itemsize)
        return lambda tokens: batching.rows_that_fit(free, cost, tokens, most=self.most_rows)

    def _run_batch(self, batch: _Batch, run_batch) -> list:
        """`run_batch(batch)` under the model's lock; out of device memory, the batch's two halves instead."""
        try:
            with self.loaded.lock, torch.inference_mode():
                activate_adapter(self.loaded.model, self.adapter_name)
                return run_batch(batch)  # type: ignore[no-any-return]
        except torch.OutOfMemoryError:
            pass  # retried below, once the failed attempt's tensors are freed with its traceback
        rows = len(batch.requests)
        _free_cached_memory(self.loaded.device)
        if rows == 1:
            raise BackendError(
                f"{self.name}: a prompt of {len(batch.ids[0])} tokens does not fit in the memory of "
                f"{self.loaded.device} even alone; free memory or shorten the prompt or max_tokens"
            )
        self.most_rows = min(self.most_rows, rows // 2)
        first, second = batch.split(rows // 2)
        return self._run_batch(first, run_batch) + self._run_batch(second, run_batch)

    def _generate_batch(self, batch: _Batch) -> list[Generation]:
        requests, prompts = batch.requests, batch.prompts
        input_ids, attention_mask, cache = self._encoded(batch)
        steering = steering_windows(self.loaded, requests, prompts, attention_mask)
        decoder = _Decoder(self.loaded, requests, compact=steering is None)
        with steering.context(self.loaded.model) if steering else contextlib.nullcontext():
            decoder.run(input_ids, attention_mask, cache)
        return [decoder.generation(row, len(ids)) for row, ids in enumerate(batch.ids)]

    def _score_batch(self, batch: _Batch) -> list[Score]:
        requests, prompts = batch.requests, batch.prompts
        input_ids, attention_mask, cache = self._encoded(batch)
        choice_ids = [self._choice_ids(r) for r in requests]
        steering = steering_windows(self.loaded, requests, prompts, attention_mask)
        raw = score_choices(self.loaded, input_ids, attention_mask, choice_ids, steering, cache)
        return [_score_result(r, raw[row], len(batch.ids[row])) for row, r in enumerate(requests)]

    def _encoded(self, batch: _Batch) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """The batch's input ids (after a shared prefix, if one is computed once), its attention mask over
        prefix and inputs, and the prefix's KV cache (None without one); see the module docstring."""
        steered = any(request.steering is not None for request in batch.requests)
        shared = shared_prefix_length(batch.ids) if self.share_prefix and not steered else 0
        input_ids, attention_mask = self.loaded.left_padded([row[shared:] for row in batch.ids])
        if not shared:
            return input_ids, attention_mask, None
        cache = prefix_cache(self.loaded, batch.ids[0][:shared], len(batch.ids))
        prefix_mask = attention_mask.new_ones((len(batch.ids), shared))
        return input_ids, torch.cat([prefix_mask, attention_mask], dim=1), cache

    def _choice_ids(self, request: ScoreRequest) -> list[list[int]]:
        separator = "" if request.prefill else self.loaded.reply_separator
        return [self.loaded.encode_reply(separator + choice) for choice in request.choices]


@frozen
class _Batch:
    """Requests run together, with their rendered prompts and those prompts' token ids."""

    requests: list
    prompts: list[str]
    ids: list[list[int]]

    def split(self, at: int) -> tuple[_Batch, _Batch]:
        """The rows before `at` and those from it on."""
        return (
            _Batch(self.requests[:at], self.prompts[:at], self.ids[:at]),
            _Batch(self.requests[at:], self.prompts[at:], self.ids[at:]),
        )


def _free_cached_memory(device: torch.device) -> None:
    # The failed attempt's blocks stay in torch's cache, in pieces; give them back so the halves can use them.
    if device.type == "cuda":
        torch.cuda.empty_cache()


def shared_prefix_length(ids: Sequence[Sequence[int]]) -> int:
    """Tokens every row of a batch starts with, leaving each row one token of its own; 0 when fewer than
    `MIN_SHARED_PREFIX` (a separate pass for them would cost more than it saves) or only one row."""
    if len(ids) < 2:
        return 0
    length = 0
    for column in zip(*ids, strict=False):
        if any(token != column[0] for token in column):
            break
        length += 1
    length = min(length, min(len(row) for row in ids) - 1)
    return length if length >= MIN_SHARED_PREFIX else 0


def prefix_cache(loaded: LoadedModel, prefix: Sequence[int], rows: int) -> Any:
    """The KV cache of `prefix`, computed once and repeated for `rows` rows."""
    ids = torch.tensor([list(prefix)], dtype=torch.long, device=loaded.device)
    with loaded.work.timed("prefill", loaded.device, len(prefix), len(prefix) * rows):
        cache = loaded.model(input_ids=ids, use_cache=True, logits_to_keep=1).past_key_values
    cache.batch_repeat_interleave(rows)
    return cache


def _check_choices(request: ScoreRequest) -> None:
    if not request.choices:
        raise BackendError(f"score request {request.key} has no choices")
    if any(choice == "" for choice in request.choices):
        raise BackendError(f"score request {request.key} has an empty choice; every answer needs a token")


def _score_result(request: ScoreRequest, raw: list[float], prompt_tokens: int) -> Score:
    total = torch.logsumexp(torch.tensor(raw, dtype=torch.float64), dim=0).item()
    return Score(
        key=request.key,
        logprobs={choice: value - total for choice, value in zip(request.choices, raw, strict=True)},
        raw_logprobs=dict(zip(request.choices, raw, strict=True)),
        prompt_tokens=prompt_tokens,
    )


# ---------------------------------------------------------------------------------------------------------
# Decoding


@define
class _Row:
    """One request's progress through the decode loop."""

    request: GenerationRequest
    generator: torch.Generator | None
    tokens: list[int] = field(factory=list)
    logprobs: list[TokenLogprob] = field(factory=list)
    finish_reason: str | None = None
    stop_at: int | None = None  # character index of the first stop string in the decoded text


class _Decoder:
    """A decode loop over a left-padded batch with a KV cache, one token per row per step.

    With `compact`, finished rows leave the batch (and the cache) once they are a quarter of it, so a
    batch costs about what its live rows cost; steered batches keep every row because their per-row deltas are
    bound to batch positions.
    """

    def __init__(self, loaded: LoadedModel, requests: Sequence[GenerationRequest], *, compact: bool):
        self.loaded = loaded
        self.compact = compact
        self.rows = [_Row(request, _generator(request)) for request in requests]
        self.eos = loaded.eos_token_ids
        temperatures = [request.temperature for request in requests]
        self.temperatures = torch.tensor(temperatures, dtype=torch.float32, device=loaded.device)

    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: Any = None) -> None:
        """Decode from the prompts' `input_ids`; `attention_mask` covers `cache` (a shared prefix's) and them."""
        width = input_ids.shape[1]
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -width:]
        step_ids, live = input_ids, list(range(len(self.rows)))
        kind, needed = "prefill", int(attention_mask[:, -width:].sum())
        for _ in range(max(row.request.max_tokens for row in self.rows)):
            with self.loaded.work.timed(kind, self.loaded.device, step_ids.numel(), needed):
                output = self.loaded.model(
                    input_ids=step_ids,
                    attention_mask=attention_mask,
                    position_ids=positions,
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
            cache = output.past_key_values
            tokens = self._advance(live, output.logits[:, -1, :].float())
            still = [index for index, row in enumerate(live) if self.rows[row].finish_reason is None]
            if not still:
                return
            if self.compact and _worth_compacting(len(live), len(still)):
                keep = torch.tensor(still, device=attention_mask.device)
                cache.batch_select_indices(keep)
                attention_mask, positions, tokens = attention_mask[keep], positions[keep], tokens[keep]
                live = [live[index] for index in still]
            kind, needed = "decode", len(still)  # rows already finished are fed padding: not needed
            step_ids = tokens[:, None]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(live), 1))], dim=1)
            positions = positions[:, -1:] + 1

    def _advance(self, live: list[int], logits: torch.Tensor) -> torch.Tensor:
        """Choose and record the next token of every live row; finished rows are fed padding."""
        generators = [self.rows[row].generator for row in live]
        tokens = choose_tokens(logits, self.temperatures[live], generators)
        chosen = tokens.tolist()
        logprobs = torch.log_softmax(logits, dim=-1) if self._wants_logprobs(live) else None
        for index, row in enumerate(live):
            if self.rows[row].finish_reason is None:
                self._append(self.rows[row], chosen[index], None if logprobs is None else logprobs[index])
            else:
                tokens[index] = self.loaded.tokenizer.pad_token_id
        return tokens

    def _wants_logprobs(self, live: list[int]) -> bool:
        return any(self.rows[row].request.top_logprobs > 0 for row in live)

    def _append(self, row: _Row, token: int, logprobs: torch.Tensor | None) -> None:
        row.tokens.append(token)
        if row.request.top_logprobs > 0 and logprobs is not None:
            row.logprobs.append(self._token_logprob(token, logprobs, row.request.top_logprobs))
        if token in self.eos:
            row.finish_reason = "stop"
        elif row.request.stop and self._find_stop(row) is not None:
            row.stop_at, row.finish_reason = self._find_stop(row), "stop"
        elif len(row.tokens) >= row.request.max_tokens:
            row.finish_reason = "length"

    def _find_stop(self, row: _Row) -> int | None:
        text = self._decode(row.tokens)
        found = [text.find(stop) for stop in row.request.stop if stop and stop in text]
        return min(found) if found else None

    def _token_logprob(self, token: int, logprobs: torch.Tensor, top: int) -> TokenLogprob:
        values, ids = logprobs.topk(top)
        alternatives = tuple(
            (self._decode([int(i)]), float(v)) for v, i in zip(values.tolist(), ids.tolist(), strict=True)
        )
        return TokenLogprob(token=self._decode([token]), logprob=float(logprobs[token]), top=alternatives)

    def _decode(self, tokens: list[int]) -> str:
        return self.loaded.tokenizer.decode(tokens, skip_special_tokens=True)

    def generation(self, index: int, prompt_tokens: int) -> Generation:
        row = self.rows[index]
        text = self._decode(row.tokens)
        if row.stop_at is not None:
            text = text[: row.stop_at]
        if not row.request.prefill:
            text = text.removeprefix(self.loaded.reply_separator) if self.loaded.reply_separator else text
        return Generation(
            key=row.request.key,
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(row.tokens),
            finish_reason=row.finish_reason or "length",
            logprobs=tuple(row.logprobs) if row.request.top_logprobs > 0 else None,
        )


def _worth_compacting(live: int, still: int) -> bool:
    # Dropping rows copies every layer's cache; wait until it removes a quarter of the batch.
    return live - still >= max(1, live // 4)


def _generator(request: GenerationRequest) -> torch.Generator | None:
    if request.temperature <= 0:
        return None
    return torch.Generator().manual_seed(request.seed)


def choose_tokens(
    logits: torch.Tensor, temperatures: torch.Tensor, generators: Sequence[torch.Generator | None]
) -> torch.Tensor:
    """Greedy tokens for rows at T=0; for the others one inverse-CDF draw from that row's own generator."""
    chosen = logits.argmax(dim=-1)
    sampled = [row for row, generator in enumerate(generators) if generator is not None]
    if not sampled:
        return chosen
    rows = torch.tensor(sampled, device=logits.device)
    probabilities = torch.softmax(logits[rows] / temperatures[rows, None], dim=-1)
    cumulative = probabilities.cumsum(dim=-1)
    draws = torch.stack([torch.rand((), generator=generators[row]) for row in sampled]).to(logits.device)
    picks = torch.searchsorted(cumulative, (draws * cumulative[:, -1])[:, None], right=True)[:, 0]
    chosen[rows] = picks.clamp(max=logits.shape[-1] - 1)
    return chosen


# ---------------------------------------------------------------------------------------------------------
# Scoring


def score_choices(
    loaded: LoadedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    choice_ids: Sequence[Sequence[Sequence[int]]],
    steering: SteeringWindows | None = None,
    cache: Any = None,
) -> list[list[float]]:
    """Total log-probability of each choice's tokens after each prompt (rows of a left-padded batch, after
    the shared prefix in `cache` when there is one: `attention_mask` covers both)."""
    needed = int(attention_mask[:, -input_ids.shape[1] :].sum())
    with loaded.work.timed("prefill", loaded.device, input_ids.numel(), needed):
        output = _score_prompts(loaded.model, input_ids, attention_mask, steering, cache)
    first = torch.log_softmax(output.logits[:, -1, :].float(), dim=-1).cpu()
    totals = [[float(first[row, ids[0]]) for ids in choices] for row, choices in enumerate(choice_ids)]
    tails = [
        (row, c, ids)
        for row, choices in enumerate(choice_ids)
        for c, ids in enumerate(choices)
        if len(ids) > 1
    ]
    if tails:
        cache = output.past_key_values
        for (row, c, _), value in zip(
            tails, _score_tails(loaded, cache, attention_mask, tails, steering), strict=True
        ):
            totals[row][c] += value
    return totals


def _score_prompts(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    steering: SteeringWindows | None,
    cache: Any,
) -> Any:
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1] :]
    with steering.context(model) if steering else contextlib.nullcontext():
        return model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )


def _score_tails(
    loaded: LoadedModel,
    cache: Any,
    attention_mask: torch.Tensor,
    tails: list[tuple[int, int, Sequence[int]]],
    steering: SteeringWindows | None,
) -> Iterator[float]:
    """Log-probability of tokens 2.. of multi-token choices, continuing each prompt's cache in one pass."""
    device = attention_mask.device
    rows = torch.tensor([row for row, _, _ in tails], device=device)
    cache.batch_select_indices(rows)
    width = max(len(ids) - 1 for _, _, ids in tails)
    inputs = torch.zeros((len(tails), width), dtype=torch.long, device=device)
    extension = torch.zeros((len(tails), width), dtype=attention_mask.dtype, device=device)
    for index, (_, _, ids) in enumerate(tails):
        inputs[index, : len(ids) - 1] = torch.tensor(ids[:-1], device=device)
        extension[index, : len(ids) - 1] = 1
    mask = torch.cat([attention_mask[rows], extension], dim=1)
    last_position = (attention_mask.long().sum(dim=1) - 1)[rows]
    positions = last_position[:, None] + 1 + torch.arange(width, device=device)[None, :]
    steered = steering.context(loaded.model, rows.cpu()) if steering else contextlib.nullcontext()
    with steered, loaded.work.timed("prefill", loaded.device, inputs.numel(), int(extension.sum())):
        logits = loaded.model(
            input_ids=inputs,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        ).logits
    logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
    for index, (_, _, ids) in enumerate(tails):
        targets = torch.tensor(ids[1:])
        yield float(logprobs[index, torch.arange(len(targets)), targets].sum())
