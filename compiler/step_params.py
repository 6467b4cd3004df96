"""Each plan step kind's parameters: one frozen class per kind, holding exactly what its handler reads.

Lowering (compiler/lower.py, compiler/lower_dataflow.py) builds them; the runtime reads their attributes
(`step.params_as(GenerateParams).model`); a plan read back from plan.json decodes every step's params once,
here, so a malformed file fails with one error naming the step and the field. On the wire a step's params
are a JSON object whose form its kind (the step's `kind`) gives: field order is key order, and a field
marked `omit` is left out while it holds that value (compiler/params_codec.py). That JSON is what step
hashes cover, so it never changes for an existing kind without a version bump.

Adding a step kind: its class here (with KIND and VERSION, listed in _KINDS), its lowering, and a `Tables`
method or a handler in runtime/.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

from attrs import Factory, frozen

from .params_codec import ParamError, decode_record, encode_record, field

Scalar = str | int | float | bool


class Record:
    """A structured parameter stored as a JSON object (a rule, hyperparameters)."""

    def to_json(self) -> dict[str, Any]:
        return encode_record(self)

    @classmethod
    def from_json(cls: type[Any], data: Any) -> Any:
        return decode_record(cls, data)


class StepParams(Record):
    """The parameters of one step kind (KIND), whose code is at VERSION (in the step's hash)."""

    KIND: ClassVar[str]
    VERSION: ClassVar[int] = 1

    @property
    def reads(self) -> str | None:
        """The model whose answers or activations this step reads (None: a pure step, or training)."""
        return None

    @property
    def models(self) -> tuple[str, ...]:
        """Every model this step needs loaded or served (a finetune's base, a call's model)."""
        return () if self.reads is None else (self.reads,)


# ---------------------------------------------------------------- rows
class GenerateRow(NamedTuple):
    item: str
    sample: int  # the sample index the prompt was rendered from (0 for prompts rendered when lowering)
    prompt: str  # prompt key


class PromptRow(NamedTuple):
    item: str
    prompt: str  # prompt key


class ScoreRow(NamedTuple):
    item: str
    prompt: str
    continuation: str  # the text whose log-probability is read after the prompt


class ExampleRow(NamedTuple):
    """A training example's prompt, and its target where it was rendered when lowering."""

    item: str
    prompt: str
    target: str | None = None  # None: the target comes from `completions`


class FixedExample(NamedTuple):
    messages: tuple[tuple[str, str], ...]  # (role, content)
    target: str


class TaskAnswer(NamedTuple):
    """What complies with a task's answers: its answer kind, and its choices for a choice task."""

    answer: str
    choices: tuple[str, ...]


@frozen
class Rule(Record):
    """A leaf function of stdlib.rules with its arguments (compiler/dataflow.py's Rule)."""

    name: str
    args: Mapping[str, Scalar]


class NamedRule(NamedTuple):
    name: str  # the property it reads, appended to the item key (`item#name`)
    rule: Rule


@frozen
class Hparams(Record):
    """A finetuning run's hyperparameters, as the spec gave them (an int stays an int: it is hashed)."""

    rank: int
    alpha: float
    lr: float
    epochs: int
    batch: int
    seed: int
    lr_multiplier: float | None = field(default=None, omit=None)  # an API provider's multiplier
    shuffle: bool = field(default=False, omit=False)  # API uploads are shuffled with `seed`


# ---------------------------------------------------------------- model calls
@frozen
class CallParams(StepParams):
    """A step that calls `model` once per row (a model steered on a span: each row's span text)."""

    model: str

    @property
    def reads(self) -> str | None:
        return self.model


@frozen
class GenerateParams(CallParams):
    """Texts sampled for prompts rendered when lowering (`rows`) or by a render step (`from_`)."""

    KIND = "generate"
    temperature: float
    max_tokens: int
    stop: tuple[str, ...]
    seed: int
    samples: int
    from_: str | None = field(key="from", default=None, omit=None)
    count: int | None = field(default=None, omit=None)  # with `from_`: the calls, at most (see `exact`)
    exact: bool | None = field(default=None, omit=None)
    rows: tuple[GenerateRow, ...] | None = field(default=None, omit=None)
    spans: tuple[str, ...] | None = field(default=None, omit=None)

    def __attrs_post_init__(self) -> None:
        if (self.rows is None) == (self.from_ is None):
            raise ParamError("a generate step has either rows or from")

    def sampling(self) -> dict[str, Any]:
        """The parameters that reach the model (what a request's key covers; plan.request_key)."""
        return {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "stop": list(self.stop),
            "seed": self.seed,
        }


@frozen
class ChooseParams(CallParams):
    KIND = "choose"
    options: tuple[str, ...]
    rows: tuple[PromptRow, ...]
    spans: tuple[str, ...] | None = field(default=None, omit=None)


@frozen
class ScoreParams(CallParams):
    KIND = "score"
    rows: tuple[ScoreRow, ...]
    spans: tuple[str, ...] | None = field(default=None, omit=None)


@frozen
class ResidualsParams(CallParams):
    KIND = "residuals"
    layer: int
    rows: tuple[PromptRow, ...]
    spans: tuple[str, ...] | None = field(default=None, omit=None)


# ---------------------------------------------------------------- pure steps over tables
@frozen
class RenderParams(StepParams):
    """Prompts rendered at run time from each row of `source` (a table)."""

    KIND = "render"
    source: str
    template: str
    system: str | None
    prefill: str
    bound: Mapping[str, Any] = field(
        default=Factory(dict), omit={}
    )  # values bound where the prompts were written


@frozen
class ExtractParams(StepParams):
    KIND = "extract"
    texts: str
    rule: Rule
    tasks: Mapping[str, TaskAnswer] | None = field(default=None, omit=None)  # by task name
    each: tuple[NamedRule, ...] | None = field(default=None, omit=None)  # one row per text and rule


@frozen
class FilterParams(StepParams):
    KIND = "filter"
    texts: str
    rule: Rule


@frozen
class ConsensusParams(StepParams):
    KIND = "consensus"
    texts: str


@frozen
class LabelsParams(StepParams):
    KIND = "labels"
    texts: str
    replies: str
    labels: tuple[str, ...]


@frozen
class DiffersParams(StepParams):
    KIND = "differs"
    a: str
    b: str


@frozen
class BalanceParams(StepParams):
    """Binder et al. 2024's entropy control (compiler/dataflow.py's Balance)."""

    KIND = "balance"
    values: str
    first: str
    second: str
    where: str | None
    top: int
    seed: int


@frozen
class AllOfParams(StepParams):
    KIND = "all_of"
    VERSION = 2  # 2: per trial (item, sample), a none does not pass
    a: str
    b: str | None


@frozen
class ProbabilityParams(StepParams):
    KIND = "probability"
    values: str
    option: str
    against: str | None


@frozen
class CosineParams(StepParams):
    KIND = "cosine"
    residuals: str
    vectors: tuple[str, ...]
    several: bool


@frozen
class EstimateParams(StepParams):
    KIND = "estimate"
    statistic: str
    values: str
    equals: Scalar | None
    by: str | None = field(default=None, omit=None)
    over: str = field(default="items", omit="items")
    top_k: int | None = field(default=None, omit=None)  # calibration only
    where: str | None = field(default=None, omit=None)
    other: str | None = field(default=None, omit=None)


@frozen
class ComparisonParams(StepParams):
    KIND = "comparison"
    statistic: str
    a: str
    b: str


@frozen
class ExamplesParams(StepParams):
    """Training examples: fixed ones, or prompts (rendered now: `rows`; at run time: `from_`) answered by
    a template (`template` over `results`, or each row's target) or by `completions` (texts, or values)."""

    KIND = "examples"
    fixed: tuple[FixedExample, ...] | None = field(default=None, omit=None)
    from_: str | None = field(key="from", default=None, omit=None)
    results: str | None = field(default=None, omit=None)
    template: str | None = field(default=None, omit=None)
    rows: tuple[ExampleRow, ...] | None = field(default=None, omit=None)
    completions: str | None = field(default=None, omit=None)
    target: str | None = field(default=None, omit=None)  # "value": each item's value (its mode)


# ---------------------------------------------------------------- artifacts
@frozen
class FinetuneParams(StepParams):
    KIND = "finetune"
    base: str
    data: str  # the examples step
    hparams: Hparams

    @property
    def models(self) -> tuple[str, ...]:
        return (self.base,)


class VectorParams(StepParams):
    """A steering vector; on the wire `op` says which operation (the first key)."""

    KIND = "vector"
    OP: ClassVar[str]

    def to_json(self) -> dict[str, Any]:
        return {"op": self.OP, **encode_record(self)}

    @classmethod
    def from_json(cls: type[Any], data: Any) -> Any:
        if cls is not VectorParams:
            return decode_record(cls, data)
        if not isinstance(data, Mapping):
            raise ParamError(f"expected an object, got {type(data).__name__}")
        op = data.get("op")
        op = VECTOR_OPS.get(op) if isinstance(op, str) else None
        if op is None:
            raise ParamError(f"expected one of {', '.join(VECTOR_OPS)}", ("op",))
        return decode_record(op, {k: v for k, v in data.items() if k != "op"})


@frozen
class ConceptVector(VectorParams):
    """Lindsey 2025: the word's mean activation, less the baseline words', at `layer`."""

    OP = "concept"
    model: str
    word: str
    layer: int
    baseline: tuple[str, ...]
    template: str

    @property
    def reads(self) -> str | None:
        return self.model


@frozen
class RandomVector(VectorParams):
    OP = "random"
    of: str  # the vector step whose norm it matches
    seed: int


@frozen
class ScaledVector(VectorParams):
    OP = "scale"
    of: str
    factor: float


@frozen
class FileVector(VectorParams):
    OP = "file"
    path: str


@frozen
class ActivationsVector(VectorParams):
    """The mean last-token activation of `prompts` at `layer`."""

    OP = "activations"
    model: str
    layer: int
    prompts: tuple[str, ...]

    @property
    def reads(self) -> str | None:
        return self.model


@frozen
class SumVector(VectorParams):
    OP = "add"
    of: tuple[str, str]


VECTOR_OPS: dict[str, type[VectorParams]] = {
    c.OP: c for c in (ConceptVector, RandomVector, ScaledVector, FileVector, ActivationsVector, SumVector)
}

# ---------------------------------------------------------------- the registry
_KINDS: tuple[type[StepParams], ...] = (FinetuneParams, VectorParams, GenerateParams, ChooseParams)
_KINDS += (ScoreParams, RenderParams, ExtractParams, FilterParams, ConsensusParams, LabelsParams)
_KINDS += (EstimateParams, ComparisonParams, ExamplesParams, DiffersParams, AllOfParams)
_KINDS += (ProbabilityParams, ResidualsParams, CosineParams, BalanceParams)

PARAMS: dict[str, type[StepParams]] = {c.KIND: c for c in _KINDS}
VERSIONS: dict[str, int] = {c.KIND: c.VERSION for c in _KINDS}


def decode(kind: str, data: Any) -> StepParams:
    """A step's params from their JSON form; ParamError names the bad field."""
    cls = PARAMS.get(kind)
    if cls is None:
        raise ParamError(f"unknown step kind '{kind}'")
    return cls.from_json(data)  # type: ignore[no-any-return]
