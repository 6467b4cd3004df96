"""Semantic diff of two studies: what changed in meaning, and what must be recomputed because of it.

Two layers, like `dbt`'s state comparison:
- the *spec diff* compares the named things a study uses (models, tasks, properties, splits, sampling,
  measurements, axes) by meaning, so layout, comments and declaration order never show up;
- the *plan diff* matches steps by their readable ids and, for each modified step, names the hashed input
  that changed (prompt text, model identity, a sampling parameter, an upstream step, the code version).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from attrs import frozen

from . import ir
from .declarations import render
from .plan import STEP_VERSIONS, Plan, Step


@frozen
class Change:
    kind: str  # added | removed | changed
    what: str  # model | task | property | split | sampling | measure | axis
    name: str
    details: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "what": self.what, "name": self.name, "details": list(self.details)}


# ---------------------------------------------------------------- spec diff
def spec_changes(a: ir.Study, b: ir.Study) -> list[Change]:
    changes: list[Change] = []
    entities_a, entities_b = entities(a), entities(b)
    for what in ("model", "task", "property", "split", "sampling", "measure"):
        changes.extend(_compare(what, entities_a.get(what, {}), entities_b.get(what, {})))
    changes.extend(_compare("axis", dict(_axes(a)), dict(_axes(b))))
    return changes


def _axes(study: ir.Study) -> Iterable[tuple[str, dict[str, Any]]]:
    for name, values in study.axes:
        yield name, {"values": list(values)}


def _compare(what: str, a: Mapping[str, Any], b: Mapping[str, Any]) -> list[Change]:
    out = [Change("removed", what, name) for name in a if name not in b]
    out += [Change("added", what, name) for name in b if name not in a]
    for name in a:
        if name in b and a[name] != b[name]:
            out.append(Change("changed", what, name, _field_changes(what, a[name], b[name])))
    return out


def _field_changes(what: str, a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[str, ...]:
    details = []
    for key in dict.fromkeys([*a, *b]):
        old, new = a.get(key), b.get(key)
        if old == new:
            continue
        if key in ("prompt", "question") and isinstance(old, str) and isinstance(new, str):
            details.append(f"{key} template changed:\n" + _text_diff(old, new))
        elif key == "example":
            details.append("rendered first prompt:\n" + _text_diff(str(old), str(new)))
        else:
            details.append(f"{key}: {_show(old)} -> {_show(new)}")
    return tuple(details)


def _text_diff(old: str, new: str) -> str:
    lines = difflib.unified_diff(old.splitlines(), new.splitlines(), "before", "after", lineterm="", n=1)
    return "\n".join("    " + line for line in list(lines)[2:])


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def entities(study: ir.Study) -> dict[str, dict[str, dict[str, Any]]]:
    """Every named thing a study uses, described by the fields that carry meaning."""
    found: dict[str, dict[str, dict[str, Any]]] = {}

    def add(what: str, name: str, description: dict[str, Any]) -> None:
        found.setdefault(what, {}).setdefault(name, description)

    for model in study.models:
        _describe_model(model, add)
    measures: dict[str, dict[str, Any]] = {}
    for point in study.points:
        _walk(point.value, add)
        entry = measures.setdefault(point.name, {"kind": type(point.value).__name__, "points": 0})
        entry["axes"] = [name for name, _ in point.coords]
        entry["points"] += 1
    for name, description in measures.items():
        add("measure", name, description)
    return found


def _walk(value: Any, add: Any) -> None:
    """Visit the IR below a measurement, describing each named entity once."""
    match value:
        case ir.BaseModel() | ir.FinetunedModel() | ir.SteeredModel():
            _describe_model(value, add)
        case ir.Task():
            add("task", value.name, _describe_task(value))
        case ir.Property():
            add("property", value.name, {"extract": value.extract, "question": value.question})
        case ir.Sampling():
            add(
                "sampling",
                _sampling_name(value),
                {
                    k: getattr(value, k)
                    for k in ("temperature", "samples", "max_tokens", "seed", "stop", "reduce")
                },
            )
        case ir.Selection():
            add(
                "split",
                f"{value.part} selection",
                {"tasks": [t.name for t in value.tasks], "items": value.items, "seed": value.seed},
            )
    if hasattr(value, "__attrs_attrs__"):
        for field in value.__attrs_attrs__:
            if field.eq:
                _walk(getattr(value, field.name), add)
    elif isinstance(value, tuple):
        for item in value:
            _walk(item, add)


def _sampling_name(sampling: ir.Sampling) -> str:
    # Sampling settings are values; name them by what they are so two specs line up.
    return f"T={sampling.temperature:g} n={sampling.samples}"


def _describe_model(model: ir.Model, add: Any) -> None:
    if isinstance(model, ir.BaseModel):
        add(
            "model",
            model.name,
            {
                "backend": model.backend,
                "locator": model.locator,
                "identity": model.identity,
                "capabilities": sorted(model.capabilities),
            },
        )
    elif isinstance(model, ir.FinetunedModel):
        add("model", f"{model.label}({_root(model)})", {"base": _root(model), "hparams": dict(model.hparams)})
    else:
        add(
            "model",
            f"{model.label}({_root(model)})",
            {"base": _root(model), "layer": model.layer, "strength": model.strength, "start": model.start},
        )


def _root(model: ir.Model) -> str:
    return ir.root_model(model).name


def _describe_task(task: ir.Task) -> dict[str, Any]:
    first = task.rows[0] if task.rows else {}
    return {
        "data": task.data_digest[:12],
        "prompt": task.prompt,
        "answer": task.answer,
        "choices": list(task.choices),
        "system": task.system,
        "example": render(task.prompt, first) if first else "",
    }


# ---------------------------------------------------------------- plan diff
@frozen
class StepChange:
    kind: str  # added | removed | modified
    step: str
    reasons: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "step": self.step, "reasons": list(self.reasons)}


# The steps that call a model: _call_reasons names what changed in their model, sampling and prompts.
MODEL_CALLS = frozenset({"generate", "choose", "score", "residuals"})
SAMPLING_KEYS = ("temperature", "max_tokens", "seed", "samples", "stop")
CALL_KEYS = ("model", "prompts", "rows", *SAMPLING_KEYS)


def plan_changes(a: Plan, b: Plan) -> list[StepChange]:
    steps_a = {s.id: s for s in a.steps}
    steps_b = {s.id: s for s in b.steps}
    by_hash_a = {s.hash for s in a.steps}
    out = []
    for step in b.steps:
        old = steps_a.get(step.id)
        if old is None:
            if step.hash not in by_hash_a:
                out.append(StepChange("added", step.id))
        elif old.hash != step.hash:
            out.append(StepChange("modified", step.id, tuple(_reasons(a, old, b, step, steps_a, steps_b))))
    hashes_b = {s.hash for s in b.steps}
    out += [StepChange("removed", s.id) for s in a.steps if s.id not in steps_b and s.hash not in hashes_b]
    return out


def _reasons(
    a: Plan, old: Step, b: Plan, new: Step, steps_a: Mapping[str, Step], steps_b: Mapping[str, Step]
) -> list[str]:
    reasons = []
    if old.kind in MODEL_CALLS:
        reasons += _call_reasons(a, old, b, new)
    upstream = [d for d in new.deps if d in steps_a and steps_a[d].hash != steps_b[d].hash]
    upstream += [d for d in new.deps if d not in steps_a]
    reasons += [f"upstream step changed: {d}" for d in upstream]
    if set(old.deps) - set(new.deps):
        reasons.append("depends on different steps")
    described = CALL_KEYS if old.kind in MODEL_CALLS else ("prompts", "model")
    before, after = old.params.to_json(), new.params.to_json()  # compared key by key, as the plan holds them
    content_keys = [k for k in after if not k.endswith("_steps") and k not in described]
    for key in content_keys:
        if before.get(key) != after.get(key):
            reasons.append(f"parameter changed: {key}")
    if not reasons:
        reasons.append(f"code version ({new.kind} v{STEP_VERSIONS.get(new.kind)})")
    return reasons


def _call_reasons(a: Plan, old: Step, b: Plan, new: Step) -> list[str]:
    """What changed in a step that calls a model: its model's identity, its sampling, its prompts."""
    reasons = []
    was, now = old.params.to_json(), new.params.to_json()
    if a.models[was["model"]].identity != b.models[now["model"]].identity:
        reasons.append("model identity changed")
    for key in SAMPLING_KEYS:
        if key in now and was.get(key) != now[key]:
            reasons.append(f"sampling parameter {key}: {was.get(key)} -> {now[key]}")
    before, after = _entries(was.get("rows")), _entries(now.get("rows"))
    if before != after:
        reasons.append(f"prompt text: {len(after - before)} of {len(after)} prompts changed")
    return reasons


def _entries(prompts: list[Any] | None) -> set[Any]:
    """A step's prompts (or rows of item and prompt) as a set to compare."""
    return {tuple(p) if isinstance(p, list) else p for p in prompts or ()}
