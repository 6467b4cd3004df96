"""The execution plan: a versioned, content-hashed DAG of steps, and its JSON form.

A step's hash covers exactly what determines its output: the model's identity, the rendered prompts,
sampling parameters (seed and sample index included), upstream hashes and the version of the code that
runs it. Never comments, layout, step ids or where a model is served. A step calling a model holds
prompts; each (prompt, sample index) is one *request* whose key (`request_key`) is what the runtime caches,
so identical requests anywhere, in this study or another sharing the cache, run once. Each step kind's
parameters are a typed class (compiler/step_params.py), decoded and checked once when a plan is read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, TypeVar

from attrs import field, frozen

from . import step_params
from .step_params import ParamError, StepParams

P = TypeVar("P", bound=StepParams)

SCHEMA_VERSION = 1

# Bump a kind's version (its params class's VERSION, compiler/step_params.py) when the code that executes it
# changes what it produces.
STEP_VERSIONS: dict[str, int] = {
    "sample": 1,  # no step of its own now: the version of every cached model request (request_key)
    **step_params.VERSIONS,
}


class PlanError(ValueError):
    """A plan (plan.json) that this intro cannot read: one line naming what is wrong."""


def digest(value: Any) -> str:
    """sha256 of a JSON-able value in canonical form."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


@frozen
class Prompt:
    messages: tuple[tuple[str, str], ...]  # (role, content)
    prefill: str = ""

    @property
    def key(self) -> str:
        return digest(["prompt", self.messages, self.prefill])

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"messages": [list(m) for m in self.messages]}
        if self.prefill:
            data["prefill"] = self.prefill
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Prompt:
        return cls(tuple((m[0], m[1]) for m in data["messages"]), data.get("prefill", ""))


@frozen
class ModelEntry:
    """A model the plan uses: a declared one, or one a step produces (finetuned, steered)."""

    key: str
    kind: str  # embedded | litellm | local | finetuned | steered
    identity: str
    params: Mapping[str, Any] = field(factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "identity": self.identity, **dict(self.params)}

    @classmethod
    def from_json(cls, key: str, data: Mapping[str, Any]) -> ModelEntry:
        rest = {k: v for k, v in data.items() if k not in ("kind", "identity")}
        return cls(key, data["kind"], data["identity"], rest)


@frozen
class Step:
    id: str
    kind: str
    hash: str
    deps: tuple[str, ...]
    params: StepParams = field(eq=False)  # the class step_params.PARAMS gives `kind`

    def params_as(self, cls: type[P]) -> P:
        """The params, as the class the caller handles (a handler for the wrong kind fails here)."""
        if not isinstance(self.params, cls):
            raise TypeError(
                f"step {self.id} ({self.kind}) has {type(self.params).__name__}, not {cls.__name__}"
            )
        return self.params

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "hash": self.hash,
            "deps": list(self.deps),
            "params": self.params.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Step:
        step_id, kind = data["id"], data["kind"]
        try:
            params = step_params.decode(kind, data["params"])
        except ParamError as error:
            where = f"param {error.path}: " if error.where else ""
            raise PlanError(f"plan step '{step_id}' ({kind}): {where}{error.problem}") from None
        return cls(step_id, kind, data["hash"], tuple(data["deps"]), params)


@frozen
class Measure:
    """A measurement's place in the result cube: its axes and the step at each point."""

    name: str
    kind: str
    axes: tuple[tuple[str, tuple[Any, ...]], ...]
    points: tuple[tuple[tuple[Any, ...], str], ...]  # (coordinates in axis order, step id)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "axes": [[name, list(values)] for name, values in self.axes],
            "points": [[list(coords), step] for coords, step in self.points],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Measure:
        axes = tuple((name, tuple(values)) for name, values in data["axes"])
        points = tuple((tuple(coords), step) for coords, step in data["points"])
        return cls(data["name"], data["kind"], axes, points)


@frozen
class Plan:
    study: str
    source: str
    models: Mapping[str, ModelEntry]
    prompts: Mapping[str, Prompt] = field(eq=False, repr=False)
    items: Mapping[str, Mapping[str, Any]] = field(eq=False, repr=False)
    steps: tuple[Step, ...]
    measures: tuple[Measure, ...]
    # Where models are served (api_base, key variable names): late-bound, outside every hash.
    serving: Mapping[str, Mapping[str, Any]] = field(eq=False, factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def hash(self) -> str:
        return digest(
            [self.schema_version, [s.hash for s in self.steps], [m.to_json() for m in self.measures]]
        )

    def step(self, step_id: str) -> Step:
        return self._by_id()[step_id]

    def _by_id(self) -> dict[str, Step]:
        return {s.id: s for s in self.steps}

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "study": self.study,
            "source": self.source,
            "plan_hash": self.hash,
            "models": {k: m.to_json() for k, m in self.models.items()},
            "serving": {k: dict(v) for k, v in self.serving.items()},
            "steps": [s.to_json() for s in self.steps],
            "measures": [m.to_json() for m in self.measures],
            "prompts": {k: p.to_json() for k, p in self.prompts.items()},
            "items": {k: dict(v) for k, v in self.items.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Plan:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise PlanError(
                f"plan schema_version {version!r} is not supported (this intro reads {SCHEMA_VERSION})"
            )
        try:
            return cls._from_json(data)
        except KeyError as error:
            raise PlanError(f"the plan has no {error.args[0]!r} where one is needed") from None

    @classmethod
    def _from_json(cls, data: Mapping[str, Any]) -> Plan:
        version = data["schema_version"]
        return cls(
            study=data["study"],
            source=data["source"],
            models={k: ModelEntry.from_json(k, v) for k, v in data["models"].items()},
            prompts={k: Prompt.from_json(v) for k, v in data["prompts"].items()},
            items=data["items"],
            steps=tuple(Step.from_json(s) for s in data["steps"]),
            measures=tuple(Measure.from_json(m) for m in data["measures"]),
            serving=data.get("serving", {}),
            schema_version=version,
        )

    def dumps(self) -> str:
        """One line per model, step, measure, prompt and item: diffable, and fast (the C JSON encoder)."""
        data = self.to_json()
        lines = ["{"]
        for index, (key, value) in enumerate(data.items()):
            comma = "," if index < len(data) - 1 else ""
            lines.append(f" {json.dumps(key)}: {_block(value)}{comma}")
        lines.append("}")
        return "\n".join(lines) + "\n"

    @classmethod
    def loads(cls, text: str) -> Plan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise PlanError(f"the plan is not JSON: {error}") from None
        if not isinstance(data, dict):
            raise PlanError("the plan is not a JSON object")
        return cls.from_json(data)


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _block(value: Any) -> str:
    if isinstance(value, dict) and value:
        inner = ",\n".join(f"  {json.dumps(k, ensure_ascii=False)}: {_compact(v)}" for k, v in value.items())
        return "{\n" + inner + "\n }"
    if isinstance(value, list) and value:
        return "[\n" + ",\n".join(f"  {_compact(v)}" for v in value) + "\n ]"
    return _compact(value)


# ---------------------------------------------------------------- requests
def request_key(model_identity: str, prompt_key: str, params: Mapping[str, Any], sample: int) -> str:
    """The cache key of one model call: the same inputs give the same key in any study."""
    return digest(["request", STEP_VERSIONS["sample"], model_identity, prompt_key, dict(params), sample])
