"""Tables: what the open language's steps produce, computed from the cache on demand.

A table is a list of rows, each a dict with `item` (the item key), `sample` and, by kind, `text` and
`prompt` (texts), `value` (values; None where a rule or label does not apply), `reply` (a judge's raw
answer) or `probs` (choose). Model-calling steps read their rows from the request cache; pure steps are
recomputed from their sources on every run (they are cheap, and so never stale). `intro plan` asks the
same object for the requests of a step whose prompts are rendered at run time, so planned calls are the
calls made.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from attrs import frozen

from intro.compiler import step_params as sp
from intro.compiler.plan import Plan, Prompt, Step, digest, request_key
from intro.compiler.template_sandbox import TemplateProblem, render
from intro.runtime.backends.precision import numerics_identity
from intro.runtime.dataflow import readings
from intro.runtime.dataflow.statistics import comparison, estimate
from intro.runtime.store.cache import Cache
from intro.stdlib.extractors import complies, consensus
from intro.stdlib.rules import apply, parse_label, passes

Row = dict[str, Any]
CALLING = ("generate", "choose", "score", "residuals")


class NotReady(Exception):
    """A step's inputs are not all in the cache yet (planning before a run; never during one)."""


class StepFailed(Exception):
    """A step cannot produce its table from its inputs (a template failing on a model's answer)."""


@frozen
class Call:
    """One model call of a step: its cache key, the prompt, and where its answer goes."""

    key: str
    prompt: str
    item: str
    sample: int  # the output row's sample index
    index: int  # the sampling index within the prompt (seed offset); the choice set for scoring
    continuation: str = ""
    span: str | None = None  # a model steered on a span: the prompt text this call is steered on


class Tables:
    """`numerics` (model key -> the dtype its calls compute in, None where not in this process; the pool's
    `numerics`) qualifies every call key, so answers computed in different dtypes never stand for each other
    (runtime/backends/precision.py)."""

    def __init__(self, plan: Plan, cache: Cache, numerics: Callable[[str], str | None] | None = None):
        self.plan = plan
        self.cache = cache
        self.numerics = numerics or (lambda model_key: None)
        self.prompts: dict[str, Prompt] = {}  # rendered at run time
        self._steps = {s.id: s for s in plan.steps}
        self._memo: dict[str, Any] = {}

    def prompt(self, key: str) -> Prompt:
        return self.prompts.get(key) or self.plan.prompts[key]

    def step(self, step_id: str) -> Step:
        return self._steps[step_id]

    def forget(self, step_id: str) -> None:
        """Drop a memoised result that was computed before all its inputs were there."""
        self._memo.pop(step_id, None)

    def table(self, step_id: str) -> list[Row]:
        if step_id not in self._memo:
            step = self._steps[step_id]
            self._memo[step_id] = getattr(self, "_" + step.kind)(step)
        return self._memo[step_id]  # type: ignore[no-any-return]

    def result(self, step_id: str) -> dict[str, Any]:
        """An estimate's or a comparison's summary (same memo as tables)."""
        return self.table(step_id)  # type: ignore[return-value]

    # ------------------------------------------------------------ model calls
    def calls(self, step: Step) -> list[Call]:
        """Every model call of a calling step, in row order (keys repeat where prompts do)."""
        match step.params:
            case sp.GenerateParams() as p:
                return self._generate_calls(step, p)
            case sp.ResidualsParams() as p:
                return self._residual_calls(p)
            case sp.ChooseParams() as p:
                return [
                    self._score_call(p, row.item, row.prompt, list(p.options), "", span)
                    for row, span in zip(p.rows, _spans(p.spans, p.rows), strict=True)
                ]
            case sp.ScoreParams() as p:
                return [
                    self._score_call(p, row.item, row.prompt, [row.continuation], row.continuation, span)
                    for row, span in zip(p.rows, _spans(p.spans, p.rows), strict=True)
                ]
        raise TypeError(f"{step.id}: a {step.kind} step makes no model calls")

    def _score_call(
        self,
        p: sp.CallParams,
        item: str,
        prompt: str,
        choices: list[str],
        continuation: str,
        span: str | None,
    ) -> Call:
        """A scoring call: its key covers the model, the prompt and the texts scored after it."""
        key = digest(["score-request", p.KIND, self.identity(p.model, span), prompt, choices])
        return Call(key, prompt, item, 0, 0, continuation, span)

    def identity(self, model_key: str, span: str | None) -> str:
        """What a call's key names as its model: for a model steered on a span, the base model with the
        injection on that text (the key the built-in concept experiments give the same request)."""
        entry = self.plan.models[model_key]
        if span is None:
            return numerics_identity(entry.identity, self.numerics(model_key))
        steered = entry.params  # a model's entry (compiler/lower.py), not a step's params
        injection = [self._steps[steered["vector"]].hash, steered["layer"], steered["strength"], span]
        identity = digest(["span", self.plan.models[steered["base"]].identity, injection])
        return numerics_identity(identity, self.numerics(model_key))

    def _generate_calls(self, step: Step, p: sp.GenerateParams) -> list[Call]:
        sampling = p.sampling()
        if p.rows is not None:
            sources = list(p.rows)
        else:
            assert p.from_ is not None  # a generate step has rows or a render step (GenerateParams)
            sources = [sp.GenerateRow(r["item"], r["sample"], r["prompt"]) for r in self.table(p.from_)]
        n = p.samples
        return [
            Call(
                request_key(self.identity(p.model, span), row.prompt, sampling, k),
                row.prompt,
                row.item,
                row.sample * n + k,
                k,
                span=span,
            )
            for row, span in zip(sources, _spans(p.spans, sources), strict=True)
            for k in range(n)
        ]

    def _residual_calls(self, p: sp.ResidualsParams) -> list[Call]:
        identity = self.identity(p.model, None)
        return [
            Call(
                readings.reading_key(identity, row.prompt, p.layer, span),
                row.prompt,
                row.item,
                0,
                0,
                span=span,
            )
            for row, span in zip(p.rows, _spans(p.spans, p.rows), strict=True)
        ]

    def _residuals(self, step: Step) -> list[Row]:
        return [
            {
                "item": c.item,
                "sample": 0,
                "prompt": c.prompt,
                "residual": readings.decode(dict(self._record(c, step))),
            }
            for c in self.calls(step)
        ]

    def _cosine(self, step: Step) -> list[Row]:
        """Each reading's cosine with each vector; with several vectors, keyed `item#k` (k from 1)."""
        p = step.params_as(sp.CosineParams)
        vectors = [
            readings.load_vector(self.cache.artifact_dir(self._steps[v].hash) / readings.VECTOR_FILE)
            for v in p.vectors
        ]
        rows = []
        for r in self.table(p.residuals):
            for k, vector in enumerate(vectors, start=1):
                item = f"{r['item']}#{k}" if p.several else r["item"]
                value = readings.cosine(r["residual"], vector)
                rows.append({"item": item, "sample": 0, "value": value, "prompt": r["prompt"]})
        return rows

    def _record(self, call: Call, step: Step) -> Mapping[str, Any]:
        record = self.cache.get(call.key)
        if record is None:
            raise NotReady(f"the answer {call.key[:12]} of {step.id} is not in the cache")
        return record

    def _generate(self, step: Step) -> list[Row]:
        rows = []
        for call in self.calls(step):
            record = self._record(call, step)
            rows.append(
                {"item": call.item, "sample": call.sample, "text": record["text"], "prompt": call.prompt}
            )
        return rows

    def _choose(self, step: Step) -> list[Row]:
        rows = []
        options = step.params_as(sp.ChooseParams).options
        for call in self.calls(step):
            # In the spec's order (the cache keeps keys sorted): the cube's option axis, and ties, follow it.
            record = self._record(call, step)
            probs = {option: record["probs"][option] for option in options}
            best = max(probs, key=lambda option: probs[option])
            row = {"item": call.item, "sample": 0, "value": best, "probs": probs, "prompt": call.prompt}
            rows.append({**row, "logprobs": record["logprobs"]})
        return rows

    def _score(self, step: Step) -> list[Row]:
        return [
            {"item": c.item, "sample": 0, "value": self._record(c, step)["logprob"], "prompt": c.prompt}
            for c in self.calls(step)
        ]

    # ------------------------------------------------------------ pure steps
    def _render(self, step: Step) -> list[Row]:
        p = step.params_as(sp.RenderParams)
        rows = []
        for source in self.table(p.source):
            text = self._template(step, p.template, source, p.bound)
            messages = ((("system", p.system),) if p.system else ()) + (("user", text),)
            prefill = p.prefill
            if "{" in prefill:  # a template over the row, as the user turn
                prefill = self._template(step, prefill, source, p.bound)
            prompt = Prompt(messages, prefill)
            self.prompts.setdefault(prompt.key, prompt)
            rows.append({"item": source["item"], "sample": source["sample"], "prompt": prompt.key})
        return rows

    def _template(self, step: Step, template: str, row: Row, values: Mapping[str, Any] | None = None) -> str:
        try:
            return render(template, {**(values or {}), **self.fields(row)})
        except TemplateProblem as problem:
            raise StepFailed(f"{step.id}: the template fails on item {row['item']}: {problem}") from None

    def fields(self, row: Row) -> dict[str, Any]:
        """What a template over a result row sees: the item's fields, the answer, its prompt, its value."""
        prompt = self.prompt(row["prompt"]) if "prompt" in row else None
        asked = next((c for role, c in reversed(prompt.messages) if role == "user"), "") if prompt else ""
        extra = {
            "text": row.get("text", ""),
            "sample": row["sample"],
            "prompt": asked,
            "value": row.get("value"),
        }
        return {**dict(self.item(row["item"])), **extra}

    def _filter(self, step: Step) -> list[Row]:
        p = step.params_as(sp.FilterParams)
        return [r for r in self.table(p.texts) if passes(self._apply(p.rule, r))]

    def _consensus(self, step: Step) -> list[Row]:
        """Per prompt (its item and prompt key), the row of the first sample giving the answer its samples
        agree on, if they agree (stdlib.extractors.consensus); an item's prompts numbered as its samples."""
        prompts: dict[tuple[str, str], list[Row]] = {}
        for row in self.table(step.params_as(sp.ConsensusParams).texts):
            prompts.setdefault((row["item"], row["prompt"]), []).append(row)
        rows: list[Row] = []
        numbered: Counter[str] = Counter()
        for (item, _), answers in prompts.items():
            agreed = consensus([row["text"] for row in answers])
            if agreed is not None:
                rows.append({**answers[agreed], "sample": numbered[item]})
                numbered[item] += 1
        return rows

    def item(self, key: str) -> Mapping[str, Any]:
        """An item's fields; a key `item#property` (one row per property) names its item's."""
        found = self.plan.items.get(key)
        if found is None and "#" in key:
            found = self.plan.items.get(key.rsplit("#", 1)[0])
        return found or {}

    def _extract(self, step: Step) -> list[Row]:
        p = step.params_as(sp.ExtractParams)
        tasks = p.tasks or {}
        if p.each is None:
            return [
                {**r, "value": self._apply(p.rule, r) if _complies(r, tasks) else None}
                for r in self.table(p.texts)
            ]
        return [
            {
                **r,
                "item": f"{r['item']}#{each.name}",
                "value": self._apply(each.rule, r) if _complies(r, tasks) else None,
            }
            for r in self.table(p.texts)
            for each in p.each
        ]

    def _apply(self, rule: sp.Rule, row: Row) -> str | None:
        """The rule on a row's text, or on its value read as a text (none stays none)."""
        text = row["text"] if "text" in row else row.get("value")
        if text is None:
            return None
        return apply(rule.name, rule.args, str(text), self.item(row["item"]))

    def _probability(self, step: Step) -> list[Row]:
        """A choose's probability of one option per prompt, or its log-odds against another."""
        p = step.params_as(sp.ProbabilityParams)
        rows = []
        for r in self.table(p.values):
            if p.against is None:
                value = r["probs"][p.option]
            else:  # from the raw log-probabilities: the difference is the normalised one's, and never -inf
                value = r["logprobs"][p.option] - r["logprobs"][p.against]
            rows.append({"item": r["item"], "sample": r["sample"], "value": value, "prompt": r["prompt"]})
        return rows

    def _all_of(self, step: Step) -> list[Row]:
        """Per trial (item, sample), whether every grade passes (a none does not); rows in the order of the
        side with more of them, a side's per-item grade standing for each sample (compiler/primitives.py)."""
        p = step.params_as(sp.AllOfParams)
        names = [p.a] + ([p.b] if p.b else [])
        sides = sorted((_Grades.of(self.table(name)) for name in names), key=lambda g: -len(g.trials))
        rows = []
        for item, sample in dict.fromkeys(trial for side in sides for trial in side.trials):
            grades = [side.grade(item, sample) for side in sides]
            value = None if MISSING in grades else str(all(_passes(g) for g in grades)).lower()
            rows.append({"item": item, "sample": sample, "value": value})
        return rows

    def _labels(self, step: Step) -> list[Row]:
        """The judged rows (their text and prompt), each with the grader's label and raw reply; a grader
        answers each judged row once, under the same item and sample."""
        p = step.params_as(sp.LabelsParams)
        judged = {(r["item"], r["sample"]): r for r in self.table(p.texts)}
        return [
            {
                **judged[r["item"], r["sample"]],
                "value": parse_label(r["text"], list(p.labels)),
                "reply": r["text"],
            }
            for r in self.table(p.replies)
        ]

    def _estimate(self, step: Step) -> dict[str, Any]:
        p = step.params_as(sp.EstimateParams)
        keep = self._kept(p.where)
        values = _units(keep(self.table(p.values)), p.over)
        other = _units(keep(self.table(p.other)), p.over) if p.other else None
        over = {"over": p.over}
        top_k = 3 if p.top_k is None else p.top_k
        by = p.by
        if not by:
            return {**estimate(p.statistic, values, other, p.equals, top_k), **over}
        groups: dict[str, Any] = {}
        for group in dict.fromkeys(self._group(r, by) for r in values):
            mine = [r for r in values if self._group(r, by) == group]
            theirs = None if other is None else [r for r in other if self._group(r, by) == group]
            groups[group] = {**estimate(p.statistic, mine, theirs, p.equals, top_k), **over}
        return {"by": by, "groups": groups}

    def _kept(self, where: str | None) -> Any:
        """A filter of rows to the items whose `where` value is true-like (all rows without `where`)."""
        if where is None:
            return lambda rows: rows
        items = {r["item"] for r in self.table(where) if passes(r.get("value"))}
        return lambda rows: [r for r in rows if r["item"] in items]

    def _differs(self, step: Step) -> list[Row]:
        p = step.params_as(sp.DiffersParams)
        a, b = _modes(self.table(p.a)), _modes(self.table(p.b))
        items = dict.fromkeys([*(r["item"] for r in self.table(p.a)), *a, *b])
        return [
            {
                "item": item,
                "sample": 0,
                "value": None if item not in a or item not in b else str(a[item] != b[item]).lower(),
            }
            for item in items
        ]

    def _balance(self, step: Step) -> list[Row]:
        """Binder et al. 2024's entropy control (compiler/dataflow.py's Balance): per task, the items kept on
        the side of `values` so that the two sides' distributions of values are the same."""
        p = step.params_as(sp.BalanceParams)
        values, first, second = (_modes(self.table(name)) for name in (p.values, p.first, p.second))
        scope = self._kept(p.where)
        candidates = {r["item"] for r in scope(self.table(p.values))}
        shared = [item for item in values if item in first and item in second and item in candidates]
        kept: set[str] = set()
        for task in dict.fromkeys(self._group({"item": item}, "task") for item in shared):
            members = [item for item in shared if self._group({"item": item}, "task") == task]
            kept |= _balanced(members, values, first, second, p.top, p.seed)
        items = dict.fromkeys(r["item"] for r in self.table(p.values))
        return [{"item": item, "sample": 0, "value": str(item in kept).lower()} for item in items]

    def _group(self, row: Row, by: str) -> str:
        """A row's group: its task (the item key's first part) or one of its item's fields."""
        if by == "task":
            return str(row["item"].split("/", 1)[0])
        return str(self.item(row["item"]).get(by, ""))

    def _comparison(self, step: Step) -> dict[str, Any]:
        p = step.params_as(sp.ComparisonParams)
        a, b = self.result(p.a), self.result(p.b)
        if "groups" not in a and "groups" not in b:
            return comparison(p.statistic, a, b)
        if a.get("by") != b.get("by"):
            raise StepFailed(
                f"{step.id}: cannot compare an estimate grouped by {a.get('by')} with one by {b.get('by')}"
            )
        shared = [g for g in a["groups"] if g in b["groups"]]
        return {
            "by": a["by"],
            "groups": {g: comparison(p.statistic, a["groups"][g], b["groups"][g]) for g in shared},
        }

    def _examples(self, step: Step) -> list[Row]:
        """Training examples as rows: `messages` (role, content pairs) and the `target` reply."""
        p = step.params_as(sp.ExamplesParams)
        if p.fixed is not None:
            return [{"messages": list(e.messages), "target": e.target} for e in p.fixed]
        if p.rows is not None and p.completions is None:
            return [self._example(row.prompt, row.target or "") for row in p.rows]
        if p.template is not None and p.from_ is not None and p.results is not None:
            # prompts and completions both rendered from the same result rows
            rendered = zip(self.table(p.from_), self.table(p.results), strict=True)
            return [
                self._example(r["prompt"], self._template(step, p.template, result)) for r, result in rendered
            ]
        if p.completions is None:
            raise StepFailed(f"{step.id}: training examples with neither completions nor targets")
        prompts = self._example_prompts(p)
        if p.target == "value":  # each prompt answered with its item's value, in the prompts' order
            values = _modes(self.table(p.completions))
            return [self._example(prompt, values[item]) for item, prompt in prompts.items() if item in values]
        return [
            self._example(prompts[r["item"]], r["text"])
            for r in self.table(p.completions)
            if r["item"] in prompts and r["text"].strip()
        ]

    def _example_prompts(self, p: sp.ExamplesParams) -> dict[str, str]:
        if p.rows is not None:
            return {row.item: row.prompt for row in p.rows}
        assert p.from_ is not None
        return {r["item"]: r["prompt"] for r in self.table(p.from_)}

    def _example(self, prompt_key: str, target: str) -> Row:
        prompt = self.prompt(prompt_key)
        return {"messages": list(prompt.messages), "target": prompt.prefill + target}


def _complies(row: Row, tasks: Mapping[str, sp.TaskAnswer]) -> bool:
    """Whether an answer to a task prompt complies with its task (an item's key starts with its task's
    name)."""
    task = tasks.get(row["item"].split("/", 1)[0])
    return task is None or "text" not in row or complies(row["text"], task.answer, list(task.choices))


def _spans(spans: tuple[str, ...] | None, rows: Sequence[Any]) -> Sequence[str | None]:
    """Each row's span (a model steered on a span), or None for each."""
    return [None] * len(rows) if spans is None else spans


MISSING = object()  # a trial one side of all_of has no row for


def _passes(value: Any) -> bool:
    return passes(None if value is None else str(value))


@frozen
class _Grades:
    """One side of all_of: its value per trial, and per item where an item has a single row."""

    trials: dict[tuple[str, int], Any]
    once: dict[str, Any]

    @classmethod
    def of(cls, rows: list[Row]) -> _Grades:
        trials = {(r["item"], r["sample"]): r.get("value") for r in rows}
        counts = Counter(item for item, _ in trials)
        return cls(trials, {item: v for (item, _), v in trials.items() if counts[item] == 1})

    def grade(self, item: str, sample: int) -> Any:
        if (item, sample) in self.trials:
            return self.trials[item, sample]
        return self.once.get(item, MISSING)


def _balanced(
    members: list[str],
    values: dict[str, str],
    first: dict[str, str],
    second: dict[str, str],
    top: int,
    seed: int,
) -> set[str]:
    """As the paper's adjust_for_entropy: for each of the `top` most common values of `first` (ties in the
    order first seen), min(its count in first, in second) of the members whose `values` has it, in an order
    fixed by a hash of `seed` and the item (the paper shuffles with a seeded random; the draw differs)."""
    counts_first = Counter(first[item] for item in members)
    counts_second = Counter(second[item] for item in members)
    kept: set[str] = set()
    for value, count in counts_first.most_common(top):
        pool = sorted((item for item in members if values[item] == value), key=lambda i: digest([seed, i]))
        kept.update(pool[: min(count, counts_second[value])])
    return kept


def _modes(rows: list[Row]) -> dict[str, str]:
    """Each item's most common value (None left out; a tie goes to the value seen first)."""
    seen: dict[str, list[str]] = {}
    for row in rows:
        if row.get("value") is not None:
            seen.setdefault(row["item"], []).append(str(row["value"]))
    return {item: max(values, key=values.count) for item, values in seen.items()}


def _units(rows: list[Row], over: str | None) -> list[Row]:
    """Rows as the statistic's units: per item (samples averaged first), or each sample on its own (trials
    of one prompt), keyed `item@sample`."""
    if over != "samples":
        return rows
    return [{**row, "item": f"{row['item']}@{row['sample']}"} for row in rows]
