"""Step handlers for finetuning: training examples and LoRA finetuning.

Training examples (written by the `examples` step, runtime/dataflow/steps.py) are `examples.jsonl` in the
step's artifact directory. A `finetune` step trains LoRA on its root model's shared
weights (`adapters.train_adapter`) and stores the adapter as safetensors under
`<cache>/artifacts/<step hash>/adapter`, which is exactly where `BackendPool` finds a finetuned model's
adapter. A finetune of an API model (litellm root) runs as the provider's fine-tuning job instead
(`api_finetune.finetune_api_model`). Artifacts are keyed by content hash and marked DONE last, so a finished
step is never redone, by this study or any other sharing the cache, and an interrupted one is redone from
scratch (an API job is resumed: its id is recorded before it is waited on).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from attrs import frozen

from intro.compiler import step_params as sp
from intro.compiler.plan import Plan, Step
from intro.runtime.backends.requests import BackendError, Message
from intro.runtime.store import training_cube
from intro.runtime.store.cache import Cache, atomic_write

EXAMPLES_FILE = "examples.jsonl"
ADAPTER_DIR = "adapter"
IN_PROCESS = ("embedded", "local")


# ---------------------------------------------------------------------------------------------------------
# Training examples


@frozen
class TrainingExample:
    """A conversation and the assistant reply to learn, with where it came from."""

    task: str
    item: str
    property: str | None  # None for object-level answers
    messages: tuple[tuple[str, str], ...]  # (role, content)
    target: str

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "item": self.item,
            "property": self.property,
            "messages": [list(m) for m in self.messages],
            "target": self.target,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrainingExample:
        messages = tuple((m[0], m[1]) for m in data["messages"])
        return cls(data["task"], data["item"], data["property"], messages, data["target"])

    def chat(self) -> tuple[tuple[Message, ...], str]:
        return tuple(Message(role, content) for role, content in self.messages), self.target


def write_examples(directory: Path, examples: Sequence[TrainingExample]) -> None:
    text = "".join(json.dumps(e.to_json(), ensure_ascii=False) + "\n" for e in examples)
    atomic_write(directory / EXAMPLES_FILE, text)


def read_examples(directory: Path) -> list[TrainingExample]:
    lines = (directory / EXAMPLES_FILE).read_text(encoding="utf-8").splitlines()
    return [TrainingExample.from_json(json.loads(line)) for line in lines if line.strip()]


# ---------------------------------------------------------------------------------------------------------
# Models and hyperparameters


@frozen
class Lineage:
    """What a finetune step trains on: the root model's key, and the adapter of a finetuned base (or None)."""

    root: str
    parent_step: str | None


def lineage(plan: Plan, base: str) -> Lineage:
    """Trace a finetune's base to its root: in-process (LoRA here) or litellm (a provider's fine-tuning job,
    runtime/training/api_finetune.py); steered models cannot be finetuned."""
    entry = plan.models[base]
    label = entry.params.get("label", base)
    if entry.kind == "finetuned":
        root = plan.models[entry.params["root"]]
        _require_trainable(root.kind, root.params.get("label", root.key))
        return Lineage(root.key, entry.params["step"])
    if entry.kind == "steered":
        raise BackendError(
            f"cannot finetune '{label}': training a steered model is not supported; finetune its base"
        )
    _require_trainable(entry.kind, label)
    return Lineage(base, None)


def _require_trainable(kind: str, label: str) -> None:
    if kind not in (*IN_PROCESS, "litellm"):
        raise BackendError(f"cannot finetune '{label}': a '{kind}' model has no weights to train")


def lora_hyperparameters(hparams: sp.Hparams) -> Any:
    from intro.runtime.training.finetune import LoraHyperparameters

    return LoraHyperparameters(
        rank=hparams.rank,
        alpha=float(hparams.alpha),
        lr=float(hparams.lr),
        epochs=hparams.epochs,
        batch_size=hparams.batch,
        seed=hparams.seed,
    )


def finetuned_model_of(plan: Plan, step_id: str) -> str:
    """The plan's key of the model a finetune step produces."""
    return next(
        k for k, m in plan.models.items() if m.kind == "finetuned" and m.params.get("step") == step_id
    )


# ---------------------------------------------------------------------------------------------------------
# Handlers


class TrainingSteps:
    """The handlers of one study run (`run` is runtime/engine/run.py's `_StudyRun`: plan, cache, pool,
    executor)."""

    def __init__(self, run: Any):
        self.run = run
        self.plan: Plan = run.plan
        self.cache: Cache = run.cache
        self.reused = 0

    def handlers(self) -> dict[str, Any]:
        return {"finetune": self.finetune}

    # ------------------------------------------------------------ finetuning
    async def finetune(self, step: Step) -> None:
        if self.cache.artifact_done(step.hash):
            self.reused += 1
            self.run.say(f"  {step.id}: adapter reused from the cache")
        else:
            await self._train(step)
            self.run.executor.counters.trained += 1
        self._write_training_cube()

    async def _train(self, step: Step) -> None:
        p = step.params_as(sp.FinetuneParams)
        origin = lineage(self.plan, p.base)
        if self.plan.models[origin.root].kind == "litellm":
            from intro.runtime.training.api_finetune import finetune_api_model

            await finetune_api_model(self.plan, self.cache, step, origin, self.run.say)
            return
        parent = self._parent_adapter(step, origin)
        data = self.plan.step(p.data)
        examples = [e.chat() for e in read_examples(self.cache.artifact_dir(data.hash))]
        if not examples:
            raise BackendError(f"{step.id}: no training examples (every answer in {data.id} was left out)")
        loaded = self.run.pool.loaded(origin.root)
        self.run.pool.make_room_to_train(origin.root)
        hyperparameters = lora_hyperparameters(p.hparams)
        self.run.say(f"  {step.id}: training LoRA on {len(examples)} examples")
        directory = self.cache.artifact_dir(step.hash)
        async with self.run.executor.compute:  # training shares the processor with generation
            result = await asyncio.to_thread(
                _train_into, directory, loaded, examples, hyperparameters, parent
            )
        info = {
            "kind": "finetune",
            "losses": list(result.losses),
            "examples": result.examples,
            "tokens": result.tokens,
            "target_tokens": result.target_tokens,
            "seconds": round(result.seconds, 3),
            "hyperparameters": hyperparameters.as_dict(),
            "root": self.plan.models[origin.root].identity,
            "parent": origin.parent_step and self.plan.step(origin.parent_step).hash,
        }
        self.cache.mark_artifact_done(step.hash, info)
        losses = result.losses
        self.run.say(
            f"  {step.id}: {len(losses)} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f} ({result.seconds:.1f} s)"
        )

    def _parent_adapter(self, step: Step, origin: Lineage) -> Path | None:
        if origin.parent_step is None:
            return None
        parent = self.plan.step(origin.parent_step)
        if not self.cache.artifact_done(parent.hash):
            raise RuntimeError(
                f"{step.id} runs before its base model's finetuning ({parent.id}) has finished"
            )
        return self.cache.artifact_dir(parent.hash) / ADAPTER_DIR

    def _write_training_cube(self) -> None:
        records = {}
        for step in self.plan.steps:
            if step.kind == "finetune" and self.cache.artifact_done(step.hash):
                records[finetuned_model_of(self.plan, step.id)] = self.cache.artifact_info(step.hash)
        dataset = training_cube.training_dataset(self.plan, records)
        # Through the run's one writer: two threads writing one store race on its metadata files.
        self.run.cube_writer.write(
            dataset, self.run.directory / "cube.zarr", training_cube.training_group(self.plan)
        )


def _train_into(
    directory: Path,
    loaded: Any,
    examples: list[Any],
    hyperparameters: Any,
    parent: Path | None,
) -> Any:
    """Train into a fresh temporary directory, then move it into place: a torn run leaves no half adapter."""
    from intro.runtime.training.adapters import train_adapter

    directory.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=directory, prefix=".tmp-adapter-"))
    try:
        result = train_adapter(loaded, examples, hyperparameters, scratch, parent=parent)
        target = directory / ADAPTER_DIR
        if target.exists():  # left by a run killed between the move and DONE
            shutil.rmtree(target)
        os.replace(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return result


def handlers(run: Any) -> dict[str, Any]:
    return TrainingSteps(run).handlers()
