"""The resolved study: typed values the evaluator builds and the lowering pass turns into plan steps.

Values are frozen and compare by meaning (spans and display labels are out of equality), so two
expressions that mean the same thing produce equal values and, later, the same plan steps.
"""

from __future__ import annotations

from typing import Any

from attrs import field, frozen

from .diagnostics import Span
from .plan import digest

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
    data: TrainingData
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


# ---------------------------------------------------------------- training data
@frozen
class Hypotheticals:
    """Hypothetical questions about `subject`'s answers, with the true property value as the target."""

    subject: Model
    selection: Selection
    properties: tuple[Property, ...]
    sampling: Sampling
    template: str


@frozen
class ObjectAnswers:
    """Object-level prompts with `model`'s own answers as targets (used to shift another model's behaviour)."""

    model: Model
    selection: Selection
    sampling: Sampling


TrainingData = Hypotheticals | ObjectAnswers


# ---------------------------------------------------------------- measurements
@frozen
class Prediction:
    """How well `predictor` predicts a property of `subject`'s object-level answers."""

    predictor: Model
    subject: Model
    selection: Selection
    properties: tuple[Property, ...]
    object_sampling: Sampling
    hypothetical_sampling: Sampling
    template: str


@frozen
class Calibration:
    predictor: Model
    subject: Model
    selection: Selection
    properties: tuple[Property, ...]
    sampling: Sampling  # T=1, n samples, for both object and hypothetical prompts
    template: str
    top_k: int = 3


@frozen
class BehaviourChange:
    """Do `after`'s self-predictions follow its changed behaviour (vs `before`'s behaviour)?"""

    before: Model
    after: Model
    selection: Selection
    properties: tuple[Property, ...]
    sampling: Sampling
    template: str


@frozen
class InjectedThought:
    """Trials asking whether an injected thought is detected, with and without the injection."""

    model: Model
    vector: Vector
    word: str
    layer: int
    strength: float
    trials: int
    prompt: tuple[tuple[str, str], ...]  # the multi-turn conversation
    start: str  # injection starts at the token before this text
    sampling: Sampling
    grader: Grader


@frozen
class ThoughtsVsText:
    """Inject on a sentence's tokens only: is the concept named as "the word you think about", and is the
    sentence still repeated? Each sentence is one trial, with and without the injection."""

    model: Model
    vector: Vector
    word: str
    layer: int
    strength: float
    sentences: tuple[str, ...]
    candidates: tuple[str, ...]  # the n-way choice the identification is scored over, the word first
    identify: str  # question template over {sentence}
    repeat: str
    sampling: Sampling  # for the repeated line


@frozen
class PrefillIntention:
    """The assistant's earlier reply is forced to `word`; asked whether it meant it, does injecting
    `word`'s vector on the earlier sentence make it disown the word less often?"""

    model: Model
    vector: Vector
    word: str
    layer: int
    strength: float
    sentences: tuple[str, ...]
    ask: str  # the first user turn, a template over {sentence}
    question: str  # the follow-up: "Did you mean to say that, or was it an accident?"
    sampling: Sampling


@frozen
class ThinkAbout:
    """Write a sentence while told to think (or not) about `word`: cosine of the residual stream on the
    written sentence with `word`'s concept vector, and with control words' vectors."""

    model: Model
    vector: ConceptVector  # its baseline and template also make the control words' vectors
    word: str
    layer: int
    sentences: tuple[str, ...]
    controls: tuple[str, ...]
    think: str  # templates over {sentence} and {word}
    dont: str


@frozen
class Grader:
    kind: str  # logit | judge | rule
    judge: Model | None = None
    rubric: tuple[tuple[str, str], ...] = ()


Measurement = (
    Prediction
    | Calibration
    | BehaviourChange
    | InjectedThought
    | ThoughtsVsText
    | PrefillIntention
    | ThinkAbout
)


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
