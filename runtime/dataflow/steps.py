"""The step handlers of the open language: model calls through the executor's one path, pure steps
through `Tables`, training examples as artifacts, and each measure's cube written once its points are done.
"""

from __future__ import annotations

import asyncio
from typing import Any

from intro.compiler import step_params as sp
from intro.compiler.plan import Measure, Step
from intro.runtime.backends.requests import BackendError
from intro.runtime.dataflow import cubes, readings
from intro.runtime.dataflow.tables import NotReady, StepFailed, Tables
from intro.runtime.training.training import TrainingExample, write_examples

PURE: tuple[str, ...] = ("render", "extract", "filter", "labels", "differs", "all_of", "probability")
PURE += ("cosine", "estimate", "comparison", "consensus", "balance")


class DataflowSteps:
    """The handlers of one study run (`run` is the engine's `_StudyRun`: plan, cache, executor, directory)."""

    def __init__(self, run: Any):
        self.run = run
        self.plan = run.plan
        self.measures = [m for m in self.plan.measures if m.kind in cubes.KINDS]
        self.done: set[str] = set()

    @property
    def tables(self) -> Tables:
        return self.run.executor.tables  # type: ignore[no-any-return]

    def handlers(self) -> dict[str, Any]:
        return {
            "generate": self.generate,
            "choose": self.scoring,
            "score": self.scoring,
            "examples": self.examples,
            "residuals": self.residuals,
            **{kind: self.pure for kind in PURE},
        }

    async def generate(self, step: Step) -> None:
        own = self._calls(step)
        spans = {c.key: c.span for c in own if c.span is not None}
        await self.run.executor.generate(step, [(c.key, c.prompt, c.index) for c in own], spans)
        self._finish(step)

    async def scoring(self, step: Step) -> None:
        calls = self._calls(step)
        options = list(step.params.options) if isinstance(step.params, sp.ChooseParams) else None
        choices = [options if options is not None else [c.continuation] for c in calls]
        await self.run.executor.score(step, calls, choices)
        self._finish(step)

    async def residuals(self, step: Step) -> None:
        """Read the residuals not cached yet, each under its request's key, in one pass per prompt."""
        unique = list({c.key: c for c in self._calls(step)}.values())
        todo = [c for c in unique if not self.run.cache.has(c.key)]
        if todo:
            p = step.params_as(sp.ResidualsParams)
            loaded = self.run.pool.loaded(p.model)  # on the event loop: loading threads race
            prompts = [self.tables.prompt(c.prompt) for c in todo]
            spans = [c.span for c in todo]
            async with self.run.executor.compute:
                read = await asyncio.to_thread(readings.read, loaded, prompts, spans, p.layer)
            for call, vector in zip(todo, read, strict=True):
                self.run.cache.put(call.key, readings.encode(vector))
        self.run.executor.counters.calls += len(todo)
        self.run.executor.counters.cached += len(unique) - len(todo)
        self._finish(step)

    def pure(self, step: Step) -> None:
        self._finish(step)

    def examples(self, step: Step) -> None:
        cache = self.run.cache
        if not cache.artifact_done(step.hash):
            rows = self._table(step)
            examples = [
                TrainingExample("", str(index), None, tuple(tuple(m) for m in row["messages"]), row["target"])
                for index, row in enumerate(rows)
            ]
            write_examples(cache.artifact_dir(step.hash), examples)
            cache.mark_artifact_done(step.hash, {"kind": "examples", "examples": len(examples)})
            self.run.say(f"  {step.id}: {len(examples)} training examples")
        self._finish(step)

    # ------------------------------------------------------------ results and cubes
    def _calls(self, step: Step) -> list[Any]:
        try:
            return self.tables.calls(step)
        except (NotReady, StepFailed) as error:
            raise BackendError(str(error)) from None

    def _table(self, step: Step) -> Any:
        try:
            return self.tables.table(step.id)
        except (NotReady, StepFailed) as error:
            raise BackendError(str(error)) from None

    def _finish(self, step: Step) -> None:
        """Compute the step's result now (so a failure names this step), then write finished measures."""
        self._table(step)
        self.done.add(step.id)
        for measure in self.measures:
            steps = {step_id for _, step_id in measure.points}
            if step.id in steps and steps <= self.done:
                self._write(measure)

    def _write(self, measure: Measure) -> None:
        dataset = cubes.dataset(self.plan, measure, self.tables.table, self._user_turn)
        self.run.cube_writer.write(dataset, self.run.directory / "cube.zarr", measure.name)

    def _user_turn(self, prompt_key: str) -> str:
        messages = self.tables.prompt(prompt_key).messages
        return next((content for role, content in reversed(messages) if role == "user"), "")


def handlers(run: Any) -> dict[str, Any]:
    return DataflowSteps(run).handlers()
