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

from attrs import frozen

from . import dataflow as df
from . import ir
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
                step = self._pure("filter", [source], {"texts": source.step, "rule": value.rule.to_json()})
                return Table(step, source.size, exact=False)
            case df.Consensus():  # one text per prompt at most: the table's size is a bound
                source = self.table(value.texts)
                return Table(self._pure("consensus", [source], {"texts": source.step}), source.size, False)
            case df.Extract():
                source = self.table(value.texts)
                params = {"texts": source.step, "rule": value.rule.to_json(), **self._answer_kinds(value)}
                if value.each:
                    params["each"] = [[name, rule.to_json()] for name, rule in value.each]
                return Table(self._pure("extract", [source], params), source.size, source.exact)
            case df.Judge():
                judged = self.table(value.texts)
                replies = self.table(
                    df.Generate(
                        value.grader,
                        df.PromptSet(value.texts, value.rubric, values=value.values),
                        value.sampling,
                    )
                )
                params = {"texts": judged.step, "replies": replies.step, "labels": list(value.labels)}
                step = self._pure("labels", [judged, replies], params)
                return Table(step, replies.size, replies.exact)
            case df.Choose() | df.Score():
                return self._scoring(value)
            case df.Differs():
                a, b = self.table(value.a), self.table(value.b)
                return Table(self._pure("differs", [a, b], {"a": a.step, "b": b.step}), a.size, a.exact)
            case df.Balance():
                return self._balance(value)
            case df.AllOf():
                return self._all_of(value)
            case df.Residuals():
                return self._residuals(value)
            case df.Cosine():
                source = self.table(value.residuals)
                vectors = [self.low.vector(v) for v in value.vectors]
                params = {"residuals": source.step, "vectors": vectors, "several": value.several}
                step = self._pure("cosine", [source, *(Table(v, 0, True) for v in vectors)], params)
                return Table(step, source.size * len(vectors), True)
            case df.Probability():
                choices = self.table(value.choices)
                params = {"values": choices.step, "option": value.option, "against": value.against}
                return Table(self._pure("probability", [choices], params), choices.size, True)
        raise AssertionError(f"not a table: {value!r}")

    def _balance(self, value: df.Balance) -> Table:
        sides = [self.table(v) for v in (value.values, value.first, value.second)]
        where = [self.table(value.where)] if value.where is not None else []
        params = {"values": sides[0].step, "first": sides[1].step, "second": sides[2].step}
        params |= {"where": where[0].step if where else None, "top": value.top, "seed": value.seed}
        return Table(self._pure("balance", [*sides, *where], params), sides[0].size, sides[0].exact)

    def _all_of(self, value: df.AllOf) -> Table:
        """One row per trial of the side with more rows (the other's per-item grades stand for each
        sample)."""
        a = self.table(value.a)
        b = None if value.b is None else self.table(value.b)
        sides = [a] if b is None else [a, b]
        params = {"a": a.step, "b": None if b is None else b.step}
        widest = max(sides, key=lambda t: t.size)
        return Table(self._pure("all_of", sides, params), widest.size, all(t.exact for t in sides))

    def _answer_kinds(self, value: df.Extract) -> dict[str, Any]:
        """For a property read off answers to task prompts: each task's answer kind and choices, so that an
        answer that does not comply with its task (not one of the choices) has no value, as in prediction."""
        origin = _prompts_of(value.texts)
        if "property" not in {value.rule.name, *(r.name for _, r in value.each)}:
            return {}
        if not isinstance(origin.source, ir.Selection):
            return {}
        return {"tasks": {t.name: [t.answer, list(t.choices)] for t in origin.source.tasks}}

    # ------------------------------------------------------------ steps
    def _pure(self, kind: str, sources: list[Table], params: dict[str, Any], label: str = "") -> str:
        """A step computed from its sources' results; step ids in params are covered by the dep hashes."""
        content = {k: v for k, v in params.items() if not _is_reference(k)}
        step_id = f"{kind}.{self.study}" + (f"[{label}]" if label else "")
        return self.low.add_step(step_id, kind, [s.step for s in sources], params, content)

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
        params: dict[str, Any] = {
            "source": source.step,
            "template": prompts.template,
            "system": prompts.system,
            "prefill": prompts.prefill,
        }
        if prompts.values:
            params["bound"] = dict(prompts.values)
        return Table(self._pure("render", [source], params), source.size, source.exact)

    # ------------------------------------------------------------ model calls
    def _generate(self, value: df.Generate) -> Table:
        key = self.low.model(value.model)
        s = value.sampling
        params: dict[str, Any] = {
            "model": key,
            "temperature": s.temperature,
            "max_tokens": s.max_tokens,
            "stop": list(s.stop),
            "seed": s.seed,
            "samples": s.samples,
        }
        deps = self._model_deps(key)
        if df.is_run_time(value.prompts):
            source = self._render(value.prompts)
            params.update({"from": source.step, "count": source.size * s.samples, "exact": source.exact})
            deps.append(source.step)
            size, exact = source.size * s.samples, source.exact
        else:
            rows = self.static_rows(value.prompts)
            params["rows"] = [[item, 0, prompt] for item, prompt, _ in rows]
            params.update(self._spans(value.model, rows))
            size, exact = len(rows) * s.samples, True
        content = [
            self.low.models[key].identity,
            {k: v for k, v in params.items() if k not in ("model", "from")},
        ]
        step_id = f"generate.{self.study}[{self.low.label(value.model)}]"
        return Table(self.low.add_step(step_id, "generate", deps, params, content), size, exact)

    def _scoring(self, value: df.Choose | df.Score) -> Table:
        key = self.low.model(value.model)
        rows = self.static_rows(value.prompts)
        params: dict[str, Any] = {"model": key}
        if isinstance(value, df.Choose):
            kind = "choose"
            params["options"] = list(value.options)
            params["rows"] = [[item, prompt] for item, prompt, _ in rows]
        else:
            kind = "score"
            params["rows"] = [
                [item, prompt, self._text(value.continuation, row)] for item, prompt, row in rows
            ]
        params.update(self._spans(value.model, rows))
        content = [self.low.models[key].identity, {k: v for k, v in params.items() if k != "model"}]
        step_id = f"{kind}.{self.study}[{self.low.label(value.model)}]"
        return Table(
            self.low.add_step(step_id, kind, self._model_deps(key), params, content), len(rows), True
        )

    def _residuals(self, value: df.Residuals) -> Table:
        key = self.low.model(value.model)
        rows = self.static_rows(value.prompts)
        params: dict[str, Any] = {"model": key, "layer": value.layer}
        params["rows"] = [[item, prompt] for item, prompt, _ in rows]
        if value.span is not None:
            values = dict(value.values)
            params["spans"] = [self._text(value.span, {**values, **row}) for _, _, row in rows]
        content = [self.low.models[key].identity, {k: v for k, v in params.items() if k != "model"}]
        step_id = f"residuals.{self.study}[{self.low.label(value.model)}]"
        step = self.low.add_step(step_id, "residuals", self._model_deps(key), params, content)
        return Table(step, len(rows), True)

    def _spans(self, model: ir.Model, rows: list[tuple[str, str, dict[str, Any]]]) -> dict[str, Any]:
        """A model steered on a span: the text each prompt is steered on, rendered with the prompt's row."""
        if not isinstance(model, ir.SteeredModel) or model.span_text is None:
            return {}
        values = dict(model.span_values)
        return {"spans": [self._text(model.span_text, {**values, **row}) for _, _, row in rows]}

    # ------------------------------------------------------------ statistics and measures
    def measure(self, value: Any) -> str:
        """The step whose result a measure stores."""
        if isinstance(value, df.Estimate):
            return self.estimate(value)
        if isinstance(value, df.Comparison):
            a, b = self.estimate(value.a), self.estimate(value.b)
            sources = [Table(a, 0, True), Table(b, 0, True)]
            return self._pure("comparison", sources, {"statistic": value.statistic, "a": a, "b": b})
        return self.table(value).step

    def estimate(self, value: df.Estimate) -> str:
        values = self.table(value.values)
        sources = [values]
        params: dict[str, Any] = {"statistic": value.statistic, "values": values.step, "equals": value.equals}
        if value.by is not None:
            params["by"] = value.by
        if value.over != "items":
            params["over"] = value.over
        if value.statistic == "calibration":
            params["top_k"] = value.top_k
        if value.where is not None:
            where = self.table(value.where)
            sources.append(where)
            params["where"] = where.step
        if value.other is not None:
            other = self.table(value.other)
            sources.append(other)
            params["other"] = other.step
        return self._pure("estimate", sources, params, value.statistic)

    # ------------------------------------------------------------ training data
    def examples(self, value: df.Examples) -> str:
        params: dict[str, Any] = {}
        sources: list[Table] = []
        if value.fixed:
            params["fixed"] = [[[list(m) for m in messages], target] for messages, target in value.fixed]
        elif value.prompts is not None and df.is_run_time(value.prompts):
            source = self._render(value.prompts)
            sources.append(source)
            params["from"] = source.step
            if isinstance(value.completions, str):  # rendered per row of the results the prompts come from
                results = self.table(value.prompts.source)
                sources.append(results)
                params.update({"results": results.step, "template": value.completions})
        elif value.prompts is not None:
            rows = self.static_rows(value.prompts)
            if isinstance(value.completions, str):
                template = value.completions
                params["rows"] = [[item, prompt, self._text(template, row)] for item, prompt, row in rows]
            else:
                params["rows"] = [[item, prompt] for item, prompt, _ in rows]
        if isinstance(value.completions, (*df.TEXTS, *df.VALUES)):
            completions = self.table(value.completions)
            sources.append(completions)
            params["completions"] = completions.step
            if isinstance(value.completions, df.VALUES):
                params["target"] = "value"  # the item's value (its mode over samples), in the prompts' order
        return self._pure("examples", sources, params)


def _prompts_of(value: Any) -> df.PromptSet:
    """The prompt set a result's items came from (through filters, extracts and judges)."""
    while not isinstance(value, df.Generate | df.Choose | df.Score | df.Residuals):
        value = df.upstream(value)
    return value.prompts


def _is_reference(key: str) -> bool:
    """Params that name other steps (their hashes are in the step's hash through its deps)."""
    return key in REFERENCES


REFERENCES = frozenset(
    {"texts", "replies", "source", "values", "other", "a", "b", "from", "completions", "results", "residuals"}
    | {"vectors"}
)
