"""The resolved study: typed values the evaluator builds and the lowering pass turns into plan steps.

Values are frozen and compare by meaning (spans and display labels are out of equality), so two
expressions that mean the same thing produce equal values and, later, the same plan steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from attrs import field, frozen

from .diagnostics import Span
from .plan import digest

if TYPE_CHECKING:
    from .dataflow import Examples

Scalar = str | int | float | bool


def _meta(default: Any = None) -> Any:
    return field(default=default, eq=False, repr=False)


# ---------------------------------------------------------------- models
@frozen
class BaseModel:
    """A model declared with `model NAME = BACKEND "locator" { options }`."""

    name: str = field(eq=False)
    backend: str  # embedded | litellm | local
    locator: str
    capabilities: frozenset[str]
    identity: str  # what the model *is*: never where it is served
    layers: int | None = None
    chat: bool = True
    # Late-bound serving configuration (api_base, api_key_env, concurrency): not part of identity.
    serving: tuple[tuple[str, Scalar], ...] = _meta(())
    span: Span | None = _meta()

    @property
    def label(self) -> str:
        return self.name


@frozen
class FinetunedModel:
    base: Model
    data: Examples  # the rows it is trained on (`examples(...)`)
    hparams: tuple[tuple[str, Scalar], ...]
    label: str = _meta("finetuned")
    span: Span | None = _meta()

    @property
    def root(self) -> BaseModel:
        return root_model(self.base)

    @property
    def capabilities(self) -> frozenset[str]:
        return self.root.capabilities


@frozen
class SteeredModel:
    """`base` with `strength * vector` added to the residual stream after `layer` from `start` on."""

    base: Model
    vector: Vector
    layer: int
    strength: float
    start: str | None = None  # inject from the token before this text; None: from the first token
    # Inject only on the prompt tokens of this text, a template over each prompt's row (overrides start);
    # `span_values` are the plain values in scope where it was written that it names.
    span_text: str | None = None
    span_values: tuple[tuple[str, Any], ...] = ()
    label: str = _meta("steered")
    span: Span | None = _meta()

    @property
    def capabilities(self) -> frozenset[str]:
        return root_model(self.base).capabilities


Model = BaseModel | FinetunedModel | SteeredModel


def root_model(model: Model) -> BaseModel:
    while not isinstance(model, BaseModel):
        model = model.base
    return model


# ---------------------------------------------------------------- tasks, properties, splits, sampling
@frozen
class Task:
    name: str
    data_digest: str  # content hash of the dataset file
    rows: tuple[dict[str, Any], ...] = field(eq=False, repr=False)
    prompt: str  # jinja2 template over a row's fields
    answer: str  # text | choice | number_sequence
    choices: tuple[str, ...] = ()
    system: str | None = None
    id_column: str = "id"  # the data column that names each row (its values are unique strings)
    span: Span | None = _meta()

    def row_id(self, row: dict[str, Any]) -> str:
        return str(row[self.id_column])

    def part_of(self, row: dict[str, Any]) -> str:
        """A row's split: its own `split` field, else a stable 80/20 assignment from its id."""
        part = row.get("split")
        if part in ("train", "val"):
            return str(part)
        return "val" if int(digest(["split", self.row_id(row)])[:8], 16) % 5 == 0 else "train"


@frozen
class Property:
    name: str
    extract: str  # name of a function in stdlib.extractors
    question: str  # the property question asked in the hypothetical prompt
    reads: frozenset[str]  # answer kinds it can read
    needs: frozenset[str] = frozenset()  # row fields it reads besides the answer
    choices: tuple[str, ...] = ()  # closed answer set, when scoring by logprobs is possible
    span: Span | None = _meta()
    question_span: Span | None = _meta()  # where the question template is written, for its diagnostics
    options: tuple[str, ...] = ()  # options a choice task must offer (A or C: A to D, not an A/B task)

    def reads_task(self, task: Task) -> bool:
        """Whether the property applies to the task: its answer kind, the fields its rows carry and, for a
        choice task, the options it offers (stdlib/extractors.py)."""
        offered = set(self.options) <= set(task.choices)
        return task.answer in self.reads and self.needs <= set(task.rows[0]) and offered


@frozen
class Selection:
    """Some tasks, one part of each task's rows (train or val), at most `items` rows each, shuffled by `seed`."""

    tasks: tuple[Task, ...]
    part: str
    items: int
    seed: int


@frozen
class Split:
    name: str
    train: Selection
    test: Selection


@frozen
class Sampling:
    temperature: float = 0.0
    samples: int = 1
    max_tokens: int = 16
    seed: int = 0
    stop: tuple[str, ...] = ()
    reduce: str = "mode"  # how n samples become one behaviour: mode | first


# ---------------------------------------------------------------- vectors
@frozen
class ConceptVector:
    model: Model
    word: str
    layer: int
    baseline: tuple[str, ...]
    template: str = "Tell me about {word}"


@frozen
class RandomVector:
    like: Vector
    seed: int


@frozen
class ScaledVector:
    vector: Vector
    factor: float


@frozen
class FileVector:
    path: str = field(eq=False)
    digest: str


@frozen
class ActivationVector:
    """The mean residual stream after `layer` on the last token of each of `prompts` (a prompt set known
    before the run; compiler/dataflow.py's PromptSet)."""

    model: Model
    prompts: Any
    layer: int


@frozen
class SumVector:
    """`first + second` (a difference is a sum with a vector scaled by -1)."""

    first: Vector
    second: Vector


Vector = ConceptVector | RandomVector | ScaledVector | FileVector | ActivationVector | SumVector


# ---------------------------------------------------------------- measurements
# What a study measures is a value of the open language (compiler/dataflow.py: texts, values, estimates,
# comparisons, or a record of them); this module cannot import it (dataflow builds on these values).
Measurement = Any


@frozen
class MeasurePoint:
    """One measurement at one point of the study's axes."""

    name: str
    coords: tuple[tuple[str, Scalar], ...]
    value: Measurement
    span: Span | None = _meta()


@frozen
class Study:
    name: str
    axes: tuple[tuple[str, tuple[Scalar, ...]], ...]
    points: tuple[MeasurePoint, ...]
    models: tuple[BaseModel, ...]
