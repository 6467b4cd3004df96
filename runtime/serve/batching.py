"""The scheduler of `intro serve`: requests from many HTTP threads merged into batches, generated in turns.

The backend side is one asyncio loop in its own thread that gathers requests arriving together into one
`backend.generate` call, because in-process models answer a batch of 32 prompts in little more time than
one.

Sharing: a request is generated in turns of at most `turn_tokens` tokens. A request that needs more goes
back to the end of the queue after each turn and continues from its text so far (as a prefill, which
every in-process backend continues), so one request asking for a long reply holds the model for one turn
at a time and requests arriving meanwhile join the next batch. A reply no longer than one turn is exactly
the backend's answer; a longer one is re-tokenized at each turn boundary, as any prefill is, so it may
differ from the reply the model gives in one piece (a tiny random model's reply did so right after the
first boundary; a real model's text mostly re-tokenizes as it was generated). `turn_tokens=None` runs
every request whole: exact replies, but a long one holds the model until it is done.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from typing import Any

from attrs import define, evolve, field

from intro.runtime.backends.requests import Backend, BackendError, Generation, GenerationRequest, TokenLogprob
from intro.runtime.serve.protocol import DEFAULT_MAX_TOKENS, InvalidRequestError

# The most tokens one request generates before others get their turn (see the module docstring): as
# many as a request without max_tokens asks for, so that such replies are always generated whole.
DEFAULT_TURN_TOKENS = DEFAULT_MAX_TOKENS


@define
class _Job:
    """One request's progress through its turns, and the future its HTTP thread waits on."""

    request: GenerationRequest
    future: concurrent.futures.Future[Generation]
    text: str = ""
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] = field(factory=list)
    turns: int = 0
    first_prompt_tokens: int = 0
    last: Generation | None = None
    finish_reason: str | None = None

    def turn_request(self, turn_tokens: int | None, context: int | None) -> GenerationRequest:
        """What to generate this turn: the request itself first, then its continuation."""
        budget = self.request.max_tokens - self.completion_tokens
        budget = budget if turn_tokens is None else min(turn_tokens, budget)
        if self.last is None:
            return evolve(self.request, max_tokens=budget)
        if context is not None:
            budget = min(budget, context - self.last.prompt_tokens - self.last.completion_tokens)
        # A fresh seed per turn, or a sampled reply would repeat its first turn's draws.
        seed = (self.request.seed + self.turns + 2**63) % 2**64 - 2**63
        return evolve(self.request, prefill=self.request.prefill + self.text, max_tokens=budget, seed=seed)

    def absorb(self, generation: Generation, context: int | None) -> None:
        """Add one turn's generation; sets `finish_reason` when the request is done."""
        if self.last is None and context is not None and generation.prompt_tokens >= context:
            raise InvalidRequestError(
                f"the prompt is {generation.prompt_tokens} tokens; this model's context is {context} tokens"
            )
        if self.last is None:
            self.first_prompt_tokens = generation.prompt_tokens
        self.turns += 1
        self.last = generation
        self.completion_tokens += generation.completion_tokens
        self.logprobs.extend(generation.logprobs or ())
        text = generation.text
        self.finish_reason = self._finish(generation, context)
        if self.finish_reason is None:
            # A turn may end inside a multi-byte character; its next turn writes the character whole.
            text = text.rstrip("\ufffd")
        self.text += text
        self._cut_at_stop()

    def _finish(self, generation: Generation, context: int | None) -> str | None:
        if generation.finish_reason != "length":
            return generation.finish_reason
        used = generation.prompt_tokens + generation.completion_tokens
        out_of_room = context is not None and used >= context
        # A turn that added no text cannot be continued faithfully: its continuation would start over.
        if self.completion_tokens >= self.request.max_tokens or out_of_room or not generation.text:
            return "length"
        return None

    def _cut_at_stop(self) -> None:
        # A stop string may straddle two turns, where neither turn's backend call saw it whole.
        found = [self.text.find(stop) for stop in self.request.stop if stop and stop in self.text]
        if found and self.turns > 1:
            self.text, self.finish_reason = self.text[: min(found)], "stop"

    def generation(self) -> Generation:
        assert self.last is not None and self.finish_reason is not None
        if self.turns == 1:
            return self.last
        logprobs = tuple(self.logprobs) if self.request.top_logprobs > 0 else None
        return Generation(
            key=self.request.key,
            text=self.text,
            prompt_tokens=self.first_prompt_tokens,
            completion_tokens=self.completion_tokens,
            finish_reason=self.finish_reason,
            logprobs=logprobs,
        )


class BatchingRunner:
    """Runs a backend on a private event loop and merges requests that arrive together into batches.

    At most `batches_in_flight` batches run at once; while they do, new requests queue up, so the next
    batch takes everything that arrived meanwhile (up to `max_batch`). An idle runner waits
    `batch_window` seconds after the first request for company before starting a batch. Each batch is
    one turn of at most `turn_tokens` tokens per request; unfinished requests queue again behind those
    that arrived meanwhile. `context_tokens`, when known, bounds prompt plus reply. A request whose
    future is cancelled (its client went away) is dropped before its next turn; `cancelled` counts them.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        max_batch: int,
        batch_window: float,
        batches_in_flight: int,
        turn_tokens: int | None = DEFAULT_TURN_TOKENS,
        context_tokens: int | None = None,
    ):
        if turn_tokens is not None and turn_tokens < 1:
            raise ValueError("turn_tokens must be at least 1, or None for no turns")
        self.backend = backend
        self.max_batch = max_batch
        self.batch_window = batch_window
        self.turn_tokens = turn_tokens
        self.context_tokens = context_tokens
        self.batch_sizes: list[int] = []
        self.cancelled = 0
        self.active = 0  # submitted requests not yet answered or dropped
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="intro-serve-loop", daemon=True)
        self._thread.start()
        # Created here, not on the loop, so `submit` works at once; a Queue binds to a loop on first wait.
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._collector = asyncio.run_coroutine_threadsafe(
            self._spawn(batches_in_flight), self._loop
        ).result()

    async def _spawn(self, batches_in_flight: int) -> asyncio.Task[None]:
        return asyncio.create_task(self._start(batches_in_flight))

    async def _stop_collector(self) -> None:
        # Let the cancellation finish on the loop, so no task is left pending when the loop stops.
        self._collector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._collector

    async def _start(self, batches_in_flight: int) -> None:
        slots = asyncio.Semaphore(batches_in_flight)
        tasks: set[asyncio.Task[None]] = set()
        while True:
            await slots.acquire()
            batch = await self._next_batch()
            task = asyncio.create_task(self._run(batch, slots))
            tasks.add(task)  # keep a reference until done, or the loop may drop the task
            task.add_done_callback(tasks.discard)

    def submit(self, request: GenerationRequest) -> concurrent.futures.Future[Generation]:
        """Queue one request from any thread; the future completes with its generation. Cancel the
        future to drop the request."""
        future: concurrent.futures.Future[Generation] = concurrent.futures.Future()
        self._loop.call_soon_threadsafe(self._enqueue, _Job(request, future))
        return future

    def _enqueue(self, job: _Job) -> None:
        self.active += 1
        self._queue.put_nowait(job)

    async def _next_batch(self) -> list[_Job]:
        batch = [await self._queue.get()]
        deadline = self._loop.time() + self.batch_window
        while len(batch) < self.max_batch:
            if self._queue.empty():
                remaining = deadline - self._loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            else:
                batch.append(self._queue.get_nowait())
        return batch

    async def _run(self, batch: list[_Job], slots: asyncio.Semaphore) -> None:
        try:
            live = [job for job in batch if not self._dropped(job)]
            if live:
                self.batch_sizes.append(len(live))
                await self._answer(live)
        finally:
            slots.release()

    def _dropped(self, job: _Job) -> bool:
        if not job.future.done():
            return False
        self.cancelled += 1
        self.active -= 1
        return True

    async def _answer(self, batch: list[_Job]) -> None:
        requests = [job.turn_request(self.turn_tokens, self.context_tokens) for job in batch]
        try:
            generations = await self.backend.generate(requests)
        except Exception as error:
            if len(batch) == 1:
                self._finish(batch[0], error=error)
                return
            # One bad request must not fail its neighbours: answer them one by one.
            for job in batch:
                await self._answer([job])
            return
        by_key = {generation.key: generation for generation in generations}
        for job in batch:
            self._take_turn(job, by_key.get(job.request.key))

    def _take_turn(self, job: _Job, generation: Generation | None) -> None:
        if generation is None:
            missing = BackendError(f"the backend returned no generation for request {job.request.key}")
            self._finish(job, error=missing)
            return
        try:
            job.absorb(generation, self.context_tokens)
        except InvalidRequestError as error:
            self._finish(job, error=error)
            return
        if job.finish_reason is not None:
            self._finish(job, result=job.generation())
        else:
            self._queue.put_nowait(job)  # behind everything that arrived during this turn

    def _finish(self, job: _Job, *, result: Generation | None = None, error: BaseException | None = None):
        self.active -= 1
        _settle(job.future, result=result, error=error)

    def close(self, *, close_backend: bool = False) -> None:
        """Stop the loop; with `close_backend`, first close the backend on it, the loop it ran on."""
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._stop_collector(), self._loop).result(timeout=30)
        if close_backend and self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.backend.aclose(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()


def _settle(future: concurrent.futures.Future, *, result: Any = None, error: BaseException | None = None):
    # The HTTP thread may have given up (cancelled the future) at any moment, even between these lines.
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def context_tokens_of(backend: Backend) -> int | None:
    """The context length of an in-process backend's model (prompt plus reply), or None if unknown."""
    config = getattr(getattr(getattr(backend, "loaded", None), "model", None), "config", None)
    config = getattr(config, "text_config", None) or config
    value = getattr(config, "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None
