"""Walk a plan's DAG: run each step once its dependencies are done, caching every result as it lands.

A step starts as soon as its dependencies are done, except that steps computing on this process's
weights take one model at a time (schedule.py); API calls and statistics overlap with everything, and
each backend bounds its own concurrency. Model-calling steps send only the calls missing
from the cache, in chunks, writing each result the moment it arrives: a crash loses at most the calls in
flight. Measurement steps are pure functions of cached results and are recomputed on every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from attrs import define, evolve, field

from intro.compiler import step_params as sp
from intro.compiler.plan import Plan, Step
from intro.runtime.backends.requests import Generation, GenerationRequest, Message, ScoreRequest, Steering
from intro.runtime.backends.work import ModelWork
from intro.runtime.dataflow.tables import Call, Tables
from intro.runtime.engine.pool import BackendPool
from intro.runtime.engine.schedule import RootSchedule
from intro.runtime.store.cache import Cache

CHUNK = 32  # requests handed to a backend at once: the most a crash can lose per model


@define
class Counters:
    calls: int = 0  # model calls made in this run
    cached: int = 0  # calls answered by the cache
    prompt_tokens: int = 0
    completion_tokens: int = 0
    trained: int = 0
    steps_done: int = 0
    started: float = field(factory=time.monotonic)
    model_work: ModelWork | None = None  # in-process seconds and tokens, filled in when the run ends


StepHandler = Callable[[Step], Any]


class Executor:
    def __init__(
        self,
        plan: Plan,
        cache: Cache,
        pool: BackendPool,
        *,
        handlers: Mapping[str, StepHandler] | None = None,
        on_step: Callable[[Step, Counters], None] | None = None,
        on_progress: Callable[[Step, int, int], None] | None = None,
    ):
        self.plan = plan
        self.cache = cache
        self.pool = pool
        self.counters = Counters()
        self.handlers: dict[str, StepHandler] = dict(handlers or {})
        self.on_step = on_step
        self.on_progress = on_progress
        self._steps = {s.id: s for s in plan.steps}
        # In-process models share the CPU (or GPU): running two at once only makes both slower.
        # Public: step handlers that compute in-process (training, vectors, scoring) take it too.
        self.compute = asyncio.Lock()
        self._inflight: dict[str, asyncio.Future[None]] = {}
        # Results of the open language's steps, and the prompts rendered from results at run time; call keys
        # name the dtype each in-process model computes in (backends/precision.py).
        self.tables = Tables(plan, cache, numerics=pool.numerics)

    async def run(self) -> Counters:
        """Run every step, each as soon as its dependencies are done and the schedule lets it start
        (schedule.py: one in-process model's steps at a time). The first step to fail cancels the others
        running and is raised; what they finished is cached."""
        schedule = RootSchedule(self.pool.roots_computed_here, self.pool.loaded_models)
        done: set[str] = set()
        waiting = list(self.plan.steps)
        running: dict[asyncio.Task[None], Step] = {}
        try:
            while waiting or running:
                ready = [s for s in waiting if all(d in done for d in s.deps)]
                for step in schedule.startable(ready):
                    schedule.started(step)
                    running[asyncio.create_task(self._run_step(step))] = step
                    waiting.remove(step)
                if not running:
                    raise RuntimeError("the plan has a dependency cycle")  # lowering never produces one
                finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    step = running.pop(task)
                    schedule.finished(step)
                    task.result()  # a failed step raises here
                    done.add(step.id)
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        return self.counters

    async def _run_step(self, step: Step) -> None:
        handler = self.handlers.get(step.kind)
        if handler is None:
            raise NotImplementedError(f"this intro cannot run '{step.kind}' steps yet ({step.id})")
        result = handler(step)
        if asyncio.iscoroutine(result):
            await result
        self.counters.steps_done += 1
        self.pool.step_finished(step)  # models no remaining step needs are released
        if self.on_step:
            self.on_step(step, self.counters)

    # ------------------------------------------------------------ sampling
    async def generate(
        self, step: Step, calls: list[tuple[str, str, int]], spans: Mapping[str, str] | None = None
    ) -> None:
        """Make the calls (request key, prompt key, sample index) of a step that are not cached yet: the one
        path of every generation, whichever step kind asks. `spans`: request key -> the prompt text a call
        of a model steered on a span is steered on."""
        unique = list({key: (key, prompt, sample) for key, prompt, sample in calls}.values())
        todo = [r for r in unique if not self.cache.has(r[0])]
        total = len(unique)
        self.counters.cached += total - len(todo)
        # Another step running now may already be asking for some of these: wait for its answer instead.
        theirs = [self._inflight[key] for key, _, _ in todo if key in self._inflight]
        mine = [r for r in todo if r[0] not in self._inflight]
        loop = asyncio.get_running_loop()
        for key, _, _ in mine:
            self._inflight[key] = loop.create_future()
        try:
            await self._call(step, mine, total - len(todo), total, spans or {})
        except BaseException as error:
            self._release(mine, error)
            raise
        await asyncio.gather(*theirs)

    async def _call(
        self,
        step: Step,
        todo: list[tuple[str, str, int]],
        finished: int,
        total: int,
        spans: Mapping[str, str],
    ) -> None:
        if not todo:
            return
        model = step.params_as(sp.GenerateParams).model
        backend = self.pool.backend(model)
        steering = self.steering(model)

        async def run_chunk(chunk: list[tuple[str, str, int]]) -> None:
            nonlocal finished
            batch = [
                self._request(step, key, prompt, sample, _on_span(steering, spans.get(key)))
                for key, prompt, sample in chunk
            ]
            if self.pool.in_process(model) and not _remote(backend):
                async with self.compute:
                    results = await backend.generate(batch)
            else:
                results = await backend.generate(batch)
            for result in results:
                self.cache.put(result.key, generation_record(result))
                self.counters.calls += 1
                self.counters.prompt_tokens += result.prompt_tokens
                self.counters.completion_tokens += result.completion_tokens
                self._inflight.pop(result.key).set_result(None)
            finished += len(chunk)
            if self.on_progress:
                self.on_progress(step, finished, total)

        await _each(_width(backend), list(_chunks(todo, CHUNK)), run_chunk)

    def _release(self, claimed: list[tuple[str, str, int]], error: BaseException) -> None:
        for key, _, _ in claimed:
            future = self._inflight.pop(key, None)
            if future is not None and not future.done():
                future.set_exception(RuntimeError(f"the call this step shares failed: {error}"))
                future.exception()  # mark retrieved: the failing step reports the error itself

    async def score(self, step: Step, calls: list[Call], choices: list[list[str]]) -> None:
        """Make the scoring calls of a step that are not cached yet (`choices[i]` are call i's options):
        each record holds the options' normalised probabilities and raw log-probabilities."""
        unique = {c.key: (c, options) for c, options in zip(calls, choices, strict=True)}
        todo = [(c, options) for key, (c, options) in unique.items() if not self.cache.has(key)]
        self.counters.cached += len(unique) - len(todo)
        if not todo:
            return
        model = step.params_as(sp.CallParams).model
        backend = self.pool.backend(model)
        steering = self.steering(model)
        finished = len(unique) - len(todo)

        async def run_chunk(chunk: list[tuple[Call, list[str]]]) -> None:
            nonlocal finished
            batch = [
                self._score_request(call, options, _on_span(steering, call.span)) for call, options in chunk
            ]
            async with contextlib.nullcontext() if _remote(backend) else self.compute:
                scores = await backend.score(batch)
            for score in scores:
                probs = {option: math.exp(lp) for option, lp in score.logprobs.items()}
                self.cache.put(score.key, {"probs": probs, "logprobs": dict(score.raw_logprobs),
                                           "logprob": sum(score.raw_logprobs.values()),
                                           "prompt_tokens": score.prompt_tokens})  # fmt: skip
                self.counters.calls += 1
                self.counters.prompt_tokens += score.prompt_tokens
            finished += len(chunk)
            if self.on_progress:
                self.on_progress(step, finished, len(unique))

        await _each(_width(backend), list(_chunks(todo, CHUNK)), run_chunk)

    def _score_request(self, call: Call, options: list[str], steering: Steering | None) -> ScoreRequest:
        prompt = self.tables.prompt(call.prompt)
        messages = tuple(Message(role, content) for role, content in prompt.messages)
        return ScoreRequest(call.key, messages, tuple(options), prompt.prefill, steering)

    def _request(
        self, step: Step, key: str, prompt_key: str, sample: int, steering: Steering | None
    ) -> GenerationRequest:
        prompt = self.tables.prompt(prompt_key)
        p = step.params_as(sp.GenerateParams)
        return GenerationRequest(
            key=key,
            messages=tuple(Message(role, content) for role, content in prompt.messages),
            temperature=p.temperature,
            max_tokens=p.max_tokens,
            seed=p.seed + sample,
            stop=p.stop,
            prefill=prompt.prefill,
            steering=steering,
        )

    def steering(self, model_key: str) -> Steering | None:
        entry = self.plan.models[model_key]
        if entry.kind != "steered":
            return None
        vector = self._steps[entry.params["vector"]]
        path = self.cache.artifact_dir(vector.hash) / "vector.safetensors"
        return Steering(
            str(path), entry.params["layer"], entry.params["strength"], start_text=entry.params["start"]
        )


def generation_record(result: Generation) -> dict[str, Any]:
    record: dict[str, Any] = {
        "text": result.text,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "finish_reason": result.finish_reason,
    }
    if result.logprobs is not None:
        record["logprobs"] = [[t.token, t.logprob, [list(x) for x in t.top]] for t in result.logprobs]
    return record


def _on_span(steering: Steering | None, span: str | None) -> Steering | None:
    """A model's steering, narrowed to one call's span (the prompt tokens of that text) where it has one."""
    if steering is None or span is None:
        return steering
    return evolve(steering, start_text=None, span_text=span)


def _remote(backend: Any) -> bool:
    """Whether a backend computes in other processes (Ray workers), so its calls skip the driver's lock."""
    return bool(getattr(backend, "remote", False))


def _width(backend: Any) -> int:
    """Chunks a backend takes at once: one, or one per worker for a backend with several (Ray)."""
    return max(1, int(getattr(backend, "parallel_batches", 1)))


async def _each(width: int, chunks: list[Any], call: Callable[[Any], Awaitable[None]]) -> None:
    """`call` on every chunk: one after another, or `width` at a time (the first failure cancels the rest)."""
    if width == 1:
        for chunk in chunks:
            await call(chunk)
        return
    gate = asyncio.Semaphore(width)

    async def gated(chunk: Any) -> None:
        async with gate:
            await call(chunk)

    tasks = [asyncio.ensure_future(gated(chunk)) for chunk in chunks]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
