"""Lower a checked study (IR) to a plan: render every prompt, hash every step, merge identical steps.

Lowering is memoised on IR values, which compare by meaning, so the same model, prompt set or
finetuning run reached from two measurements becomes one step.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

from . import dataflow as df
from . import injected_thought, ir, sentence_trials
from .declarations import render
from .lower_dataflow import DataflowLowering
from .plan import STEP_VERSIONS, Measure, ModelEntry, Plan, Prompt, Step, digest


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
    def add_step(self, id_: str, kind: str, deps: Iterable[str], params: dict[str, Any], content: Any) -> str:
        """Add a step unless one with the same hash exists; return the id of the step that holds it."""
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
        hparams = dict(model.hparams)
        # Finetuning a finetuned model starts from its adapter: it must exist first.
        parent = [self.models[base].params["step"]] if self.models[base].kind == "finetuned" else []
        step = self.add_step(
            f"finetune.{self.study.name}.{self.label(model)}",
            "finetune",
            [*parent, data],
            {"base": base, "data": data, "hparams": hparams},
            [self.models[base].identity, hparams],
        )
        key = f"ft-{self.steps[step].hash[:12]}"
        params = {"base": base, "step": step, "label": self.label(model), "root": ir.root_model(model).name}
        self.models[key] = ModelEntry(key, "finetuned", f"finetuned:{self.steps[step].hash}", params)
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
                params = {
                    "op": "concept",
                    "model": model,
                    "word": vector.word,
                    "layer": vector.layer,
                    "baseline": list(vector.baseline),
                    "template": vector.template,
                }
                content = [self.models[model].identity, {k: v for k, v in params.items() if k != "model"}]
                return self.add_step(
                    f"{name}.concept[{vector.word},{vector.layer}]", "vector", [], params, content
                )
            case ir.RandomVector():
                like = self.vector(vector.like)
                params = {"op": "random", "of": like, "seed": vector.seed}
                return self.add_step(f"{name}.random[{vector.seed}]", "vector", [like], params, params)
            case ir.ScaledVector():
                of = self.vector(vector.vector)
                params = {"op": "scale", "of": of, "factor": vector.factor}
                return self.add_step(f"{name}.scaled[{vector.factor:g}]", "vector", [of], params, params)
            case ir.FileVector():
                params = {"op": "file", "path": vector.path}
                return self.add_step(f"{name}.file", "vector", [], params, ["file", vector.digest])
            case ir.ActivationVector():
                model = self.model(vector.model)
                prompts = [key for _, key, _ in self.dataflow.static_rows(vector.prompts)]
                reads = {"op": "activations", "model": model, "layer": vector.layer, "prompts": prompts}
                identity = [self.models[model].identity, str(vector.layer), prompts]
                return self.add_step(f"{name}.activations[{vector.layer}]", "vector", [], reads, identity)
            case ir.SumVector():
                first, second = self.vector(vector.first), self.vector(vector.second)
                adds = {"op": "add", "of": [first, second]}
                summed = ["add", self.steps[first].hash, self.steps[second].hash]
                return self.add_step(f"{name}.sum", "vector", [first, second], adds, summed)
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

    def object_prompt(self, task: ir.Task, row: dict[str, Any]) -> Prompt:
        return _prompt(task.system, self.object_text(task, row))

    def object_text(self, task: ir.Task, row: dict[str, Any]) -> str:
        # Each item's object prompt is quoted in one hypothetical per property: render it once.
        return self._memoised(("object_text", task, task.row_id(row)), lambda: _render(task.prompt, row))  # type: ignore[no-any-return]

    def hypothetical_prompt(
        self, task: ir.Task, row: dict[str, Any], prop: ir.Property, template: str
    ) -> Prompt:
        object_text = self.object_text(task, row)
        question = _render(prop.question, row)
        return _prompt(task.system, _render(template, {"object_prompt": object_text, "question": question}))

    # ------------------------------------------------------------ sampling
    def sample(
        self, model: ir.Model, task: ir.Task, role: str, prompts: Sequence[str], sampling: ir.Sampling
    ) -> str:
        key = self.model(model)
        params = {
            "model": key,
            "temperature": sampling.temperature,
            "max_tokens": sampling.max_tokens,
            "stop": list(sampling.stop),
            "seed": sampling.seed,
            "samples": sampling.samples,
            # Sorted: the same set of prompts is the same step, whichever measurement asked for it.
            "prompts": sorted(set(prompts)),
        }
        content = [self.models[key].identity, {k: v for k, v in params.items() if k != "model"}]
        deps = [self.models[key].params["step"]] if self.models[key].kind == "finetuned" else []
        if self.models[key].kind == "steered":
            deps = [self.models[key].params["vector"]]
        step_id = f"sample.{self.study.name}.{role}[{self.label(model)},{task.name}]"
        return self.add_step(step_id, "sample", deps, params, content)

    def object_steps(self, model: ir.Model, selection: ir.Selection, sampling: ir.Sampling) -> dict[str, str]:
        by_task: dict[str, tuple[ir.Task, list[str]]] = {}
        for task, _, row in self.rows(selection):
            by_task.setdefault(task.name, (task, []))[1].append(self.prompt(self.object_prompt(task, row)))
        return {
            name: self.sample(model, task, "object", ps, sampling) for name, (task, ps) in by_task.items()
        }

    def hypothetical_rows(
        self, selection: ir.Selection, properties: Sequence[ir.Property], template: str
    ) -> list[list[Any]]:
        """[task, item, property, object prompt, hypothetical prompt] for every readable combination."""
        rows = []
        for task, item_key, row in self.rows(selection):
            object_key = self.prompt(self.object_prompt(task, row))
            for prop in properties:
                if prop.reads_task(task):
                    hypothetical = self.prompt(self.hypothetical_prompt(task, row, prop, template))
                    rows.append([task.name, item_key, prop.name, object_key, hypothetical])
        return rows

    def hypothetical_steps(
        self, model: ir.Model, selection: ir.Selection, rows: list[list[Any]], sampling: ir.Sampling
    ) -> dict[str, str]:
        tasks = {t.name: t for t in selection.tasks}
        by_task: dict[str, list[str]] = {}
        for task, _, _, _, hypothetical in rows:
            by_task.setdefault(task, []).append(hypothetical)
        return {
            name: self.sample(model, tasks[name], "hypothetical", ps, sampling)
            for name, ps in by_task.items()
        }

    # ------------------------------------------------------------ training data
    def training_data(self, data: ir.TrainingData) -> str:
        return self._memoised(("data", data), lambda: self._training_data(data))  # type: ignore[no-any-return]

    def _training_data(self, data: ir.TrainingData) -> str:
        if isinstance(data, df.Examples):
            return self.dataflow.examples(data)
        if isinstance(data, ir.Hypotheticals):
            rows = self.hypothetical_rows(data.selection, data.properties, data.template)
            objects = self.object_steps(data.subject, data.selection, data.sampling)
            params = {
                "subject": self.model(data.subject),
                "rows": rows,
                "object_steps": objects,
                "reduce": data.sampling.reduce,
                "properties": _extractors(data.properties),
                "tasks": _tasks(data.selection),
            }
            content = {k: v for k, v in params.items() if k not in ("subject", "object_steps")}
            step_id = f"hypotheticals.{self.study.name}[{self.label(data.subject)}]"
            return self.add_step(step_id, "hypotheticals", objects.values(), params, content)
        objects = self.object_steps(data.model, data.selection, data.sampling)
        rows = [[t.name, k, self.prompt(self.object_prompt(t, r))] for t, k, r in self.rows(data.selection)]
        params = {
            "model": self.model(data.model),
            "rows": rows,
            "object_steps": objects,
            "reduce": data.sampling.reduce,
            "tasks": _tasks(data.selection),
        }
        content = {"rows": rows, "reduce": data.sampling.reduce}
        return self.add_step(
            f"answers.{self.study.name}[{self.label(data.model)}]",
            "answers",
            objects.values(),
            params,
            content,
        )

    # ------------------------------------------------------------ measurements
    def measurement(self, point: ir.MeasurePoint) -> tuple[str, str]:
        value = point.value
        coords = ",".join(str(v) for _, v in point.coords)
        step_id = f"{_kind(value)}.{self.study.name}.{point.name}" + (f"[{coords}]" if coords else "")
        if isinstance(value, df.MEASURABLE):
            return df.measure_kind(value), self.dataflow.measure(value)
        if isinstance(value, ir.Prediction):
            return "prediction", self._prediction(step_id, value)
        if isinstance(value, ir.Calibration):
            return "calibration", self._calibration(step_id, value)
        if isinstance(value, ir.BehaviourChange):
            return "behaviour_change", self._behaviour_change(step_id, value)
        if isinstance(value, ir.InjectedThought):
            return "injected_thought", injected_thought.lower_injected_thought(self, step_id, value)
        if type(value) in sentence_trials.LOWER:
            kind, lower_one = sentence_trials.LOWER[type(value)]
            return kind, lower_one(self, step_id, value)
        raise NotImplementedError(f"measurement {_kind(value)} cannot be lowered yet")

    def _prediction(self, step_id: str, m: ir.Prediction) -> str:
        rows = self.hypothetical_rows(m.selection, m.properties, m.template)
        objects = self.object_steps(m.subject, m.selection, m.object_sampling)
        hypotheticals = self.hypothetical_steps(m.predictor, m.selection, rows, m.hypothetical_sampling)
        params = {
            "predictor": self.model(m.predictor),
            "subject": self.model(m.subject),
            "rows": rows,
            "object_steps": objects,
            "hypothetical_steps": hypotheticals,
            "reduce": m.object_sampling.reduce,
            "hypothetical_reduce": m.hypothetical_sampling.reduce,
            "properties": _extractors(m.properties),
            "tasks": _tasks(m.selection),
        }
        return self._measure_step(step_id, "prediction", params, [*objects.values(), *hypotheticals.values()])

    def _calibration(self, step_id: str, m: ir.Calibration) -> str:
        rows = self.hypothetical_rows(m.selection, m.properties, m.template)
        objects = self.object_steps(m.subject, m.selection, m.sampling)
        hypotheticals = self.hypothetical_steps(m.predictor, m.selection, rows, m.sampling)
        params = {
            "predictor": self.model(m.predictor),
            "subject": self.model(m.subject),
            "rows": rows,
            "object_steps": objects,
            "hypothetical_steps": hypotheticals,
            "top_k": m.top_k,
            "properties": _extractors(m.properties),
            "tasks": _tasks(m.selection),
        }
        return self._measure_step(
            step_id, "calibration", params, [*objects.values(), *hypotheticals.values()]
        )

    def _behaviour_change(self, step_id: str, m: ir.BehaviourChange) -> str:
        rows = self.hypothetical_rows(m.selection, m.properties, m.template)
        before = self.object_steps(m.before, m.selection, m.sampling)
        after = self.object_steps(m.after, m.selection, m.sampling)
        hypotheticals = self.hypothetical_steps(m.after, m.selection, rows, m.sampling)
        params = {
            "before": self.model(m.before),
            "after": self.model(m.after),
            "rows": rows,
            "before_steps": before,
            "object_steps": after,
            "hypothetical_steps": hypotheticals,
            "reduce": m.sampling.reduce,
            "properties": _extractors(m.properties),
            "tasks": _tasks(m.selection),
        }
        deps = [*before.values(), *after.values(), *hypotheticals.values()]
        return self._measure_step(step_id, "behaviour_change", params, deps)

    def _measure_step(self, step_id: str, kind: str, params: dict[str, Any], deps: list[str]) -> str:
        model_keys = ("predictor", "subject", "before", "after")
        content = {k: v for k, v in params.items() if not k.endswith("_steps") and k not in model_keys}
        return self.add_step(step_id, kind, deps, params, content)

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


def _render(template: str, values: dict[str, Any]) -> str:
    # Most property questions are plain text, which jinja would return unchanged (it only rewrites
    # `{`-syntax and carriage returns). With object prompts rendered once, lowering takes half the time.
    if "{" not in template and "\r" not in template:
        return template
    return render(template, values)


def _prompt(system: str | None, text: str) -> Prompt:
    messages = ((("system", system),) if system else ()) + (("user", text),)
    return Prompt(messages)


def _tasks(selection: ir.Selection) -> dict[str, dict[str, Any]]:
    return {t.name: {"answer": t.answer, "choices": list(t.choices)} for t in selection.tasks}


def _extractors(properties: Sequence[ir.Property]) -> dict[str, dict[str, Any]]:
    return {p.name: {"extract": p.extract, "values": list(p.choices)} for p in properties}


def _kind(value: Any) -> str:
    if isinstance(value, df.MEASURABLE):
        return df.measure_kind(value)
    return {
        ir.Prediction: "prediction",
        ir.Calibration: "calibration",
        ir.BehaviourChange: "behaviour_change",
        ir.InjectedThought: "injected_thought",
        **{t: kind for t, (kind, _) in sentence_trials.LOWER.items()},
    }[type(value)]


def lower(study: ir.Study, source: str) -> Plan:
    return Lowering(study, source).lower()
