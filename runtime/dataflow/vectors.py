"""The `vector` step: a vector written to `<cache>/artifacts/<step hash>/vector.safetensors`, where steering
reads it. Operations: a concept vector read from a model (Lindsey 2025), the mean activation of a set of
prompts (`activations`), a norm-matched random direction, a scaled vector, a sum of two, or a user's file.
"""

from __future__ import annotations

import asyncio
from typing import Any

from intro.compiler import step_params as sp
from intro.compiler.plan import Plan, Step
from intro.runtime.backends.requests import BackendError, Message

VECTOR_FILE = "vector.safetensors"


class VectorSteps:
    """The `vector` handler of one study run (`run` is the engine's `_StudyRun`: plan, cache, pool, executor)."""

    def __init__(self, run: Any):
        self.run = run
        self.plan: Plan = run.plan
        self.cache = run.cache

    def handlers(self) -> dict[str, Any]:
        return {"vector": self.vector}

    async def vector(self, step: Step) -> None:
        if self.cache.artifact_done(step.hash):
            return
        # Load on the event loop, as the executor does: two threads loading one model would race.
        p = step.params_as(sp.VectorParams)
        loaded = self.run.pool.loaded(p.reads) if p.reads is not None else None
        async with self.run.executor.compute:
            vector = await asyncio.to_thread(self._make, p, loaded)
        from intro.runtime.backends.activations import save_vector

        save_vector(self.path(step.hash), vector)
        norm = float(vector.norm())
        self.cache.mark_artifact_done(step.hash, {"kind": "vector", "op": p.OP, "norm": norm})
        self.run.say(f"  {step.id}: norm {norm:.2f}")

    def path(self, step_hash: str) -> Any:
        return self.cache.artifact_dir(step_hash) / VECTOR_FILE

    def _make(self, p: sp.VectorParams, loaded: Any) -> Any:
        from intro.runtime.backends import activations as act

        match p:
            case sp.ConceptVector():
                with loaded.lock:
                    return act.concept_vector(loaded, p.word, p.baseline, p.layer, p.template)
            case sp.ActivationsVector():
                with loaded.lock:
                    return act.last_token_activations(
                        loaded, self._rendered(loaded, p.prompts), p.layer
                    ).mean(0)
            case sp.FileVector():
                return act.load_vector(p.path)
            case sp.SumVector():
                first, second = (act.load_vector(self.path(self.plan.step(s).hash)) for s in p.of)
                return first + second
            case sp.RandomVector():
                return act.random_vector_like(self._source(p.of), p.seed)
            case sp.ScaledVector():
                return self._source(p.of) * float(p.factor)
        raise BackendError(f"unknown vector operation '{p.OP}'")

    def _source(self, step_id: str) -> Any:
        from intro.runtime.backends import activations as act

        return act.load_vector(self.path(self.plan.step(step_id).hash))

    def _rendered(self, loaded: Any, prompt_keys: tuple[str, ...]) -> list[str]:
        """Each prompt as the model reads it: its chat template applied, the reply about to start."""
        prompts = [self.plan.prompts[key] for key in prompt_keys]
        return [loaded.render(tuple(Message(r, c) for r, c in p.messages), p.prefill) for p in prompts]


def handlers(run: Any) -> dict[str, Any]:
    return VectorSteps(run).handlers()
