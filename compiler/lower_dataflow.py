"""Lower the open language's values (compiler/dataflow.py) to plan steps.

Each value becomes a step whose result is a *table* (rows of item, sample and a text or value) or a
statistic over tables. Prompts built from rows are rendered here, so their model calls are plain requests
in the plan; prompts built from results become a `render` step, run when its source is done, keyed by its
template and its source's hash. Every table knows its size (exact unless a `filter` lies upstream), so
`intro plan` counts the calls of run-time prompts too.

Step kinds (executed by runtime/dataflow/):
  generate   model calls: params `rows` [[item, source sample, prompt key]] or `from` a render step
  choose     one scoring pass per prompt over `options`;  score: log-probability of a continuation
  render     prompts from a source table and a template (pure)
  extract, filter, labels   values from texts (pure); consensus: one text per prompt from its samples
  estimate, comparison      statistics with bootstrap intervals (pure)
  examples   training examples for `finetune` (an artifact, like `hypotheticals`)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from attrs import evolve, frozen

from . import dataflow as df
from . import ir
from . import step_params as sp
from .declarations import render
from .plan import Prompt

if TYPE_CHECKING:
    from .lower import Lowering


@frozen
class Table:
    step: str  # the step whose result it is
    size: int  # its rows (at most, when not exact)
    exact: bool


class DataflowLowering:
    def __init__(self, lowering: Lowering):
        self.low = lowering
        self.study = lowering.study.name

    def table(self, value: Any) -> Table:
        return self.low._memoised(("table", value), lambda: self._table(value))  # type: ignore[no-any-return]

    def _table(self, value: Any) -> Table:
        match value:
            case df.Generate():
                return self._generate(value)
            case df.Filter():
                source = self.table(value.texts)
                step = self._pure([source], sp.FilterParams(source.step, _rule(value.rule)))
                return Table(step, source.size, exact=False)
            case df.Consensus():  # one text per prompt at most: the table's size is a bound
                source = self.table(value.texts)
                return Table(self._pure([source], sp.ConsensusParams(source.step)), source.size, False)
            case df.Extract():
                source = self.table(value.texts)
                each = tuple(sp.NamedRule(name, _rule(rule)) for name, rule in value.each) or None
                params = sp.ExtractParams(source.step, _rule(value.rule), self._answer_kinds(value), each)
                return Table(self._pure([source], params), source.size, source.exact)
            case df.Judge():
                judged = self.table(value.texts)
                replies = self.table(
                    df.Generate(
                        value.grader,
                        df.PromptSet(value.texts, value.rubric, values=value.values),
                        value.sampling,
                    )
                )
                labels = sp.LabelsParams(judged.step, replies.step, tuple(value.labels))
                step = self._pure([judged, replies], labels)
                return Table(step, replies.size, replies.exact)
            case df.Choose() | df.Score():
                return self._scoring(value)
            case df.Differs():
                a, b = self.table(value.a), self.table(value.b)
                return Table(self._pure([a, b], sp.DiffersParams(a.step, b.step)), a.size, a.exact)
            case df.Balance():
                return self._balance(value)
            case df.AllOf():
                return self._all_of(value)
            case df.Residuals():
                return self._residuals(value)
            case df.Cosine():
                source = self.table(value.residuals)
                vectors = [self.low.vector(v) for v in value.vectors]
                cosine = sp.CosineParams(source.step, tuple(vectors), value.several)
                step = self._pure([source, *(Table(v, 0, True) for v in vectors)], cosine)
                return Table(step, source.size * len(vectors), True)
            case df.Probability():
                choices = self.table(value.choices)
                probability = sp.ProbabilityParams(choices.step, value.option, value.against)
                return Table(self._pure([choices], probability), choices.size, True)
        raise AssertionError(f"not a table: {value!r}")

    def _balance(self, value: df.Balance) -> Table:
        sides = [self.table(v) for v in (value.values, value.first, value.second)]
        where = [self.table(value.where)] if value.where is not None else []
        values, first, second = (side.step for side in sides)
        params = sp.BalanceParams(
            values, first, second, where[0].step if where else None, value.top, value.seed
        )
        return Table(self._pure([*sides, *where], params), sides[0].size, sides[0].exact)

    def _all_of(self, value: df.AllOf) -> Table:
        """One row per trial of the side with more rows (the other's per-item grades stand for each
        sample)."""
        a = self.table(value.a)
        b = None if value.b is None else self.table(value.b)
        sides = [a] if b is None else [a, b]
        params = sp.AllOfParams(a.step, None if b is None else b.step)
        widest = max(sides, key=lambda t: t.size)
        return Table(self._pure(sides, params), widest.size, all(t.exact for t in sides))

    def _answer_kinds(self, value: df.Extract) -> dict[str, sp.TaskAnswer] | None:
        """For a property read off answers to task prompts: each task's answer kind and choices, so that an
        answer that does not comply with its task (not one of the choices) has no value, as in prediction."""
        origin = _prompts_of(value.texts)
        if "property" not in {value.rule.name, *(r.name for _, r in value.each)}:
            return None
        if not isinstance(origin.source, ir.Selection):
            return None
        return {t.name: sp.TaskAnswer(t.answer, tuple(t.choices)) for t in origin.source.tasks}

    # ------------------------------------------------------------ steps
    def _pure(self, sources: list[Table], params: sp.StepParams, label: str = "") -> str:
        """A step computed from its sources' results; step ids in params are covered by the dep hashes."""
        content = {k: v for k, v in params.to_json().items() if not _is_reference(k)}
        step_id = f"{params.KIND}.{self.study}" + (f"[{label}]" if label else "")
        return self.low.add_step(step_id, [s.step for s in sources], params, content)

    def _model_deps(self, key: str) -> list[str]:
        """The steps a derived model needs first: its finetuning run, its steering vector, its base's."""
        deps = []
        entry = self.low.models[key]
        while entry.kind in ("finetuned", "steered"):
            deps.append(entry.params["step"] if entry.kind == "finetuned" else entry.params["vector"])
            entry = self.low.models[entry.params["base"]]
        return deps

    # ------------------------------------------------------------ prompts
    def static_rows(self, prompts: df.PromptSet) -> list[tuple[str, str, dict[str, Any]]]:
        """(item key, prompt key, row) for a prompt set rendered now (its source is rows or a selection)."""
        return self.low._memoised(("static_rows", prompts), lambda: self._static_rows(prompts))  # type: ignore[no-any-return]

    def _static_rows(self, prompts: df.PromptSet) -> list[tuple[str, str, dict[str, Any]]]:
        out = []
        for item, row, system, text in self._rendered(prompts):
            self.low.items[item.split("#", 1)[0] if isinstance(prompts.about, tuple) else item] = row
            asked = (("user", text),) if prompts.template is not None or not prompts.turns else ()
            turns = prompts.turns
            if prompts.templated_turns:
                turns = tuple((role, self._text(content, prompts.fields(row))) for role, content in turns)
            messages = ((("system", system),) if system else ()) + turns + asked
            prefill = prompts.prefill  # a template over the row, but in a fixed conversation
            if prompts.templated_turns or not prompts.turns:
                prefill = self._text(prefill, prompts.fields(row))
            out.append((item, self.low.prompt(Prompt(messages, prefill)), row))
        return out

    def _rendered(self, prompts: df.PromptSet) -> list[tuple[str, dict[str, Any], str | None, str]]:
        source = prompts.source
        if isinstance(prompts.about, tuple):  # one row per item and property it can read, item by item
            return [
                (
                    f"{item}#{prop.name}",
                    row,
                    prompts.system or task.system,
                    self._selection_text(prompts, task, row, prop),
                )
                for task, item, row in self.low.rows(source)
                for prop in prompts.about
                if prop.reads_task(task)
            ]
        if isinstance(source, ir.Selection):
            return [
                (
                    item,
                    row,
                    prompts.system or task.system,
                    self._selection_text(prompts, task, row, prompts.about),
                )
                for task, item, row in self.low.rows(source)
                if prompts.about is None or prompts.about.reads_task(task)
            ]
        return [
            (item, dict(row), prompts.system, self._text(prompts.template or "", prompts.fields(row)))
            for item, row in source.keyed()
        ]

    def _selection_text(
        self, prompts: df.PromptSet, task: ir.Task, row: dict[str, Any], about: ir.Property | None
    ) -> str:
        """A selection row's user turn: the task's own prompt, or the template over the row's fields, the
        task's name, its prompt for the row and (about a property) the property's question."""
        object_prompt = self.low.object_text(task, row)
        if prompts.template is None:
            return object_prompt  # type: ignore[no-any-return]
        fields = {**prompts.fields(row), "task": task.name, "object_prompt": object_prompt}
        if about is not None:
            fields["question"] = self._text(about.question, row)
        return self._text(prompts.template, fields)

    def _text(self, template: str, row: dict[str, Any]) -> str:
        return render(template, row) if "{" in template else template

    def _render(self, prompts: df.PromptSet) -> Table:
        source = self.table(prompts.source)
        assert prompts.template is not None  # prompts over results need one (compiler/prompt_sets.py)
        params = sp.RenderParams(
            source.step, prompts.template, prompts.system, prompts.prefill, dict(prompts.values)
        )
        return Table(self._pure([source], params), source.size, source.exact)

    # ------------------------------------------------------------ model calls
    def _generate(self, value: df.Generate) -> Table:
        key = self.low.model(value.model)
        s = value.sampling
        sampling = (s.temperature, s.max_tokens, s.stop, s.seed, s.samples)
        deps = self._model_deps(key)
        if df.is_run_time(value.prompts):
            source = self._render(value.prompts)
            size, exact = source.size * s.samples, source.exact
            params = sp.GenerateParams(key, *sampling, from_=source.step, count=size, exact=exact)
            deps.append(source.step)
        else:
            rows = self.static_rows(value.prompts)
            generated = tuple(sp.GenerateRow(item, 0, prompt) for item, prompt, _ in rows)
            params = sp.GenerateParams(key, *sampling, rows=generated, spans=self._spans(value.model, rows))
            size, exact = len(rows) * s.samples, True
        content = [self.low.models[key].identity, _content(params, "model", "from")]
        step_id = f"generate.{self.study}[{self.low.label(value.model)}]"
        return Table(self.low.add_step(step_id, deps, params, content), size, exact)

    def _scoring(self, value: df.Choose | df.Score) -> Table:
        key = self.low.model(value.model)
        rows = self.static_rows(value.prompts)
        spans = self._spans(value.model, rows)
        params: sp.ChooseParams | sp.ScoreParams
        if isinstance(value, df.Choose):
            prompts = tuple(sp.PromptRow(item, prompt) for item, prompt, _ in rows)
            params = sp.ChooseParams(key, tuple(value.options), prompts, spans)
        else:
            scored = tuple(
                sp.ScoreRow(item, prompt, self._text(value.continuation, row)) for item, prompt, row in rows
            )
            params = sp.ScoreParams(key, scored, spans)
        content = [self.low.models[key].identity, _content(params, "model")]
        step_id = f"{params.KIND}.{self.study}[{self.low.label(value.model)}]"
        return Table(self.low.add_step(step_id, self._model_deps(key), params, content), len(rows), True)

    def _residuals(self, value: df.Residuals) -> Table:
        key = self.low.model(value.model)
        rows = self.static_rows(value.prompts)
        spans = None
        if value.span is not None:
            values = dict(value.values)
            spans = tuple(self._text(value.span, {**values, **row}) for _, _, row in rows)
        prompts = tuple(sp.PromptRow(item, prompt) for item, prompt, _ in rows)
        params = sp.ResidualsParams(key, value.layer, prompts, spans)
        content = [self.low.models[key].identity, _content(params, "model")]
        step_id = f"residuals.{self.study}[{self.low.label(value.model)}]"
        step = self.low.add_step(step_id, self._model_deps(key), params, content)
        return Table(step, len(rows), True)

    def _spans(self, model: ir.Model, rows: list[tuple[str, str, dict[str, Any]]]) -> tuple[str, ...] | None:
        """A model steered on a span: the text each prompt is steered on, rendered with the prompt's row."""
        if not isinstance(model, ir.SteeredModel) or model.span_text is None:
            return None
        values = dict(model.span_values)
        return tuple(self._text(model.span_text, {**values, **row}) for _, _, row in rows)

    # ------------------------------------------------------------ statistics and measures
    def measure(self, value: Any) -> str:
        """The step whose result a measure stores."""
        if isinstance(value, df.Estimate):
            return self.estimate(value)
        if isinstance(value, df.Comparison):
            a, b = self.estimate(value.a), self.estimate(value.b)
            sources = [Table(a, 0, True), Table(b, 0, True)]
            return self._pure(sources, sp.ComparisonParams(value.statistic, a, b))
        return self.table(value).step

    def estimate(self, value: df.Estimate) -> str:
        values = self.table(value.values)
        where = None if value.where is None else self.table(value.where)
        other = None if value.other is None else self.table(value.other)
        params = sp.EstimateParams(
            value.statistic,
            values.step,
            value.equals,
            by=value.by,
            over=value.over,
            top_k=value.top_k if value.statistic == "calibration" else None,
            where=None if where is None else where.step,
            other=None if other is None else other.step,
        )
        sources = [t for t in (values, where, other) if t is not None]
        return self._pure(sources, params, value.statistic)

    # ------------------------------------------------------------ training data
    def examples(self, value: df.Examples) -> str:
        params = sp.ExamplesParams()
        sources: list[Table] = []
        if value.fixed:
            params = sp.ExamplesParams(fixed=tuple(sp.FixedExample(m, t) for m, t in value.fixed))
        elif value.prompts is not None and df.is_run_time(value.prompts):
            source = self._render(value.prompts)
            sources.append(source)
            params = sp.ExamplesParams(from_=source.step)
            if isinstance(value.completions, str):  # rendered per row of the results the prompts come from
                results = self.table(value.prompts.source)
                sources.append(results)
                params = evolve(params, results=results.step, template=value.completions)
        elif value.prompts is not None:
            params = sp.ExamplesParams(rows=self._example_rows(value.prompts, value.completions))
        if isinstance(value.completions, (*df.TEXTS, *df.VALUES)):
            completions = self.table(value.completions)
            sources.append(completions)
            # VALUES: each item's value (its mode over samples) answers its prompts, in the prompts' order
            target = "value" if isinstance(value.completions, df.VALUES) else None
            params = evolve(params, completions=completions.step, target=target)
        return self._pure(sources, params)

    def _example_rows(self, prompts: df.PromptSet, completions: Any) -> tuple[sp.ExampleRow, ...]:
        """The prompts, each with its target where `completions` is a template over the prompt's row."""
        rows = self.static_rows(prompts)
        if isinstance(completions, str):
            return tuple(
                sp.ExampleRow(item, prompt, self._text(completions, row)) for item, prompt, row in rows
            )
        return tuple(sp.ExampleRow(item, prompt) for item, prompt, _ in rows)


def _prompts_of(value: Any) -> df.PromptSet:
    """The prompt set a result's items came from (through filters, extracts and judges)."""
    while not isinstance(value, df.Generate | df.Choose | df.Score | df.Residuals):
        value = df.upstream(value)
    return value.prompts


def _rule(rule: df.Rule) -> sp.Rule:
    return sp.Rule(rule.name, dict(rule.args))


def _content(params: sp.StepParams, *left_out: str) -> dict[str, Any]:
    """What a model call's hash covers of its params: all but the model's key (its identity is hashed
    instead) and a render step's id (its hash is a dep's)."""
    return {k: v for k, v in params.to_json().items() if k not in left_out}


def _is_reference(key: str) -> bool:
    """Params that name other steps (their hashes are in the step's hash through its deps)."""
    return key in REFERENCES


REFERENCES = frozenset(
    {"texts", "replies", "source", "values", "other", "a", "b", "from", "completions", "results", "residuals"}
    | {"vectors"}
)
