"""Lower a checked study (IR) to a plan: render every prompt, hash every step, merge identical steps.

Lowering is memoised on IR values, which compare by meaning, so the same model, prompt set or
finetuning run reached from two measurements becomes one step.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from . import dataflow as df
from . import ir
from .declarations import render
from .lower_dataflow import DataflowLowering
from .plan import STEP_VERSIONS, Measure, ModelEntry, Plan, Prompt, Step, digest
from .step_params import (
    PARAMS,
    ActivationsVector,
    ConceptVector,
    FileVector,
    FinetuneParams,
    Hparams,
    RandomVector,
    ScaledVector,
    StepParams,
    SumVector,
)


class Lowering:
    def __init__(self, study: ir.Study, source: str):
        self.study = study
        self.source = source
        self.steps: dict[str, Step] = {}  # by id, in creation (topological) order
        self._by_hash: dict[str, str] = {}
        self._numbers: dict[str, int] = {}  # the next number of each step id given more than once
        self.models: dict[str, ModelEntry] = {}
        self.serving: dict[str, dict[str, Any]] = {}
        self.prompts: dict[str, Prompt] = {}
        self.items: dict[str, dict[str, Any]] = {}
        self._memo: dict[Any, Any] = {}
        self.dataflow = DataflowLowering(self)

    # ------------------------------------------------------------ steps
    def add_step(self, id_: str, deps: Iterable[str], params: StepParams, content: Any) -> str:
        """Add a step of the params' kind unless one with the same hash exists; return the id of the step
        that holds it. `content` is what the hash covers besides the kind's version and the deps' hashes."""
        kind = params.KIND
        assert isinstance(params, PARAMS[kind]), params  # a kind's params are its registered class
        deps = tuple(dict.fromkeys(deps))
        step_hash = digest([kind, STEP_VERSIONS[kind], [self.steps[d].hash for d in deps], content])
        existing = self._by_hash.get(step_hash)
        if existing is not None:
            return existing
        # Numbered on from the last number this id got, not from 2: a sweep adds thousands of steps of one id.
        unique, n = id_, self._numbers.get(id_, 2)
        while unique in self.steps:
            unique, n = f"{id_}#{n}", n + 1
        self._numbers[id_] = n
        self.steps[unique] = Step(unique, kind, step_hash, deps, params)
        self._by_hash[step_hash] = unique
        return unique

    def _memoised(self, key: Any, build: Any) -> Any:
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]

    # ------------------------------------------------------------ models
    def model(self, model: ir.Model) -> str:
        return self._memoised(("model", model), lambda: self._model(model))  # type: ignore[no-any-return]

    def _model(self, model: ir.Model) -> str:
        if isinstance(model, ir.BaseModel):
            params = {
                "backend": model.backend,
                "locator": model.locator,
                "layers": model.layers,
                "chat": model.chat,
                "capabilities": sorted(model.capabilities),
                "label": model.name,
            }
            self.models[model.name] = ModelEntry(model.name, model.backend, model.identity, params)
            if model.serving:
                self.serving[model.name] = dict(model.serving)
            return model.name
        if isinstance(model, ir.FinetunedModel):
            return self._finetuned(model)
        return self._steered(model)

    def label(self, model: ir.Model) -> str:
        if isinstance(model, ir.BaseModel):
            return model.name
        return f"{model.label}({self.label(model.base)})"

    def _finetuned(self, model: ir.FinetunedModel) -> str:
        base = self.model(model.base)
        data = self.training_data(model.data)
        hparams: Hparams = Hparams.from_json(dict(model.hparams))  # checked as a plan read back would be
        params = FinetuneParams(base, data, hparams)
        # Finetuning a finetuned model starts from its adapter: it must exist first.
        parent = [self.models[base].params["step"]] if self.models[base].kind == "finetuned" else []
        step = self.add_step(
            f"finetune.{self.study.name}.{self.label(model)}",
            [*parent, data],
            params,
            [self.models[base].identity, params.hparams.to_json()],
        )
        key = f"ft-{self.steps[step].hash[:12]}"
        entry = {"base": base, "step": step, "label": self.label(model), "root": ir.root_model(model).name}
        self.models[key] = ModelEntry(key, "finetuned", f"finetuned:{self.steps[step].hash}", entry)
        return key

    def _steered(self, model: ir.SteeredModel) -> str:
        base = self.model(model.base)
        vector = self.vector(model.vector)
        settings: dict[str, Any] = {"layer": model.layer, "strength": model.strength, "start": model.start}
        if model.span_text is not None:  # only then: steered models without one keep their identities
            settings.update(span=model.span_text, span_values=dict(model.span_values))
        identity = digest(["steered", self.models[base].identity, self.steps[vector].hash, settings])
        key = f"steer-{identity[:12]}"
        params = {"base": base, "vector": vector, **settings, "label": self.label(model)}
        self.models[key] = ModelEntry(key, "steered", f"steered:{identity}", params)
        return key

    # ------------------------------------------------------------ vectors
    def vector(self, vector: ir.Vector) -> str:
        return self._memoised(("vector", vector), lambda: self._vector(vector))  # type: ignore[no-any-return]

    def _vector(self, vector: ir.Vector) -> str:
        name = f"vector.{self.study.name}"
        match vector:
            case ir.ConceptVector():
                model = self.model(vector.model)
                concept = ConceptVector(model, vector.word, vector.layer, vector.baseline, vector.template)
                content = [self.models[model].identity, _without_model(concept)]
                return self.add_step(f"{name}.concept[{vector.word},{vector.layer}]", [], concept, content)
            case ir.RandomVector():
                like = self.vector(vector.like)
                random_ = RandomVector(like, vector.seed)
                return self.add_step(f"{name}.random[{vector.seed}]", [like], random_, random_.to_json())
            case ir.ScaledVector():
                of = self.vector(vector.vector)
                scaled = ScaledVector(of, vector.factor)
                return self.add_step(f"{name}.scaled[{vector.factor:g}]", [of], scaled, scaled.to_json())
            case ir.FileVector():
                return self.add_step(f"{name}.file", [], FileVector(vector.path), ["file", vector.digest])
            case ir.ActivationVector():
                model = self.model(vector.model)
                prompts = tuple(key for _, key, _ in self.dataflow.static_rows(vector.prompts))
                reads = ActivationsVector(model, vector.layer, prompts)
                identity = [self.models[model].identity, str(vector.layer), list(prompts)]
                return self.add_step(f"{name}.activations[{vector.layer}]", [], reads, identity)
            case ir.SumVector():
                first, second = self.vector(vector.first), self.vector(vector.second)
                summed = ["add", self.steps[first].hash, self.steps[second].hash]
                return self.add_step(f"{name}.sum", [first, second], SumVector((first, second)), summed)
        raise AssertionError(vector)

    # ------------------------------------------------------------ prompts and items
    def rows(self, selection: ir.Selection) -> list[tuple[ir.Task, str, dict[str, Any]]]:
        return self._memoised(("rows", selection), lambda: self._rows(selection))  # type: ignore[no-any-return]

    def _rows(self, selection: ir.Selection) -> list[tuple[ir.Task, str, dict[str, Any]]]:
        chosen = []
        for task in selection.tasks:
            rows = [r for r in task.rows if task.part_of(r) == selection.part]
            random.Random(f"{selection.seed}:{task.name}").shuffle(rows)
            for row in rows[: selection.items]:
                item_key = f"{task.name}/{task.row_id(row)}"
                self.items[item_key] = row
                chosen.append((task, item_key, row))
        return chosen

    def prompt(self, prompt: Prompt) -> str:
        key = prompt.key
        self.prompts.setdefault(key, prompt)
        return key

    def object_text(self, task: ir.Task, row: dict[str, Any]) -> str:
        # Each item's object prompt is quoted in one hypothetical per property: render it once.
        return self._memoised(("object_text", task, task.row_id(row)), lambda: _render(task.prompt, row))  # type: ignore[no-any-return]

    # ------------------------------------------------------------ training data
    def training_data(self, data: df.Examples) -> str:
        return self._memoised(("data", data), lambda: self.dataflow.examples(data))  # type: ignore[no-any-return]

    # ------------------------------------------------------------ measurements
    def measurement(self, point: ir.MeasurePoint) -> tuple[str, str]:
        value = point.value
        if not isinstance(value, df.MEASURABLE):
            raise NotImplementedError(f"measurement {type(value).__name__} cannot be lowered")
        return df.measure_kind(value), self.dataflow.measure(value)

    # ------------------------------------------------------------ the plan
    def lower(self) -> Plan:
        points: dict[str, list[tuple[tuple[Any, ...], str]]] = {}
        kinds: dict[str, str] = {}
        axes: dict[str, tuple[str, ...]] = {}
        for point in self.study.points:
            kind, step = self.measurement(point)
            kinds[point.name] = kind
            axes[point.name] = tuple(name for name, _ in point.coords)
            points.setdefault(point.name, []).append((tuple(v for _, v in point.coords), step))
        study_axes = dict(self.study.axes)
        measures = tuple(
            Measure(name, kinds[name], tuple((a, study_axes[a]) for a in axes[name]), tuple(pts))
            for name, pts in points.items()
        )
        for model in self.study.models:
            self.model(model)
        return Plan(
            study=self.study.name,
            source=self.source,
            models=self.models,
            prompts=self.prompts,
            items=self.items,
            steps=tuple(self.steps.values()),
            measures=measures,
            serving=self.serving,
        )


def _without_model(params: StepParams) -> dict[str, Any]:
    """A step's params less its model's key: the hash has the model's identity instead."""
    return {k: v for k, v in params.to_json().items() if k != "model"}


def _render(template: str, values: dict[str, Any]) -> str:
    # Most property questions are plain text, which jinja would return unchanged (it only rewrites
    # `{`-syntax and carriage returns). With object prompts rendered once, lowering takes half the time.
    if "{" not in template and "\r" not in template:
        return template
    return render(template, values)


def lower(study: ir.Study, source: str) -> Plan:
    return Lowering(study, source).lower()
