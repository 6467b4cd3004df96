"""Step handlers and cubes for thoughts vs text, prefill intention and think / don't think (Lindsey 2025).

The injection of these experiments is on one sentence's tokens (a `Steering.span_text` window), which
differs per trial, so the measure step makes its own model calls: each score and each reply is cached by
its content (model identity, prompt, choices or sampling, and the injection: vector hash, layer,
strength, span; keys in runtime/engine/experiment_calls.py), and an unsteered call has the key a plain call of
the same prompt has anywhere.

Cubes (group = the measure's name; dims: the measure's axes, then `trial`, one per sentence):
- thoughts_vs_text. Per trial: `sentence`; `injected_choice` / `control_choice` (the candidate most likely
  as the answer's first word), `injected_p_word` / `control_p_word` (the concept word's probability among
  the candidates), `injected_identified` / `control_identified`; `injected_repeat` / `control_repeat` (the
  reply to "Repeat the line below."), `injected_repeated` / `control_repeated` (the line is in it,
  exactly). Per point: `identification_*`, `repeat_*`, `both_*` (identified and repeated), `p_word_*` for
  `injected` and `control`; `identification_shift`, `p_word_shift` (injected - control) with `_low` /
  `_high` (95% paired bootstrap over sentences); `n`.
- prefill_intention. Per trial: `sentence`, `injected_reply` / `control_reply` (the answer to "did you mean
  it?"), `injected_disowned` / `control_disowned` (stdlib.graders.disowns), `injected_p_accident` /
  `control_p_accident` (P(" an accident") against " intentional" after "It was") and `*_accident_log_odds`
  (log P(accident) - log P(intentional)). Per point: `disown_*`, `p_accident_*`, `accident_log_odds_*`,
  their `_shift`s (injected - control: the paper's effect is negative) with `_low` / `_high` (95% paired
  bootstrap over sentences), `n`.
- think_about. Per trial: `sentence`, `cosine_think`, `cosine_dont` (the written sentence's mean residual
  with the concept vector), `control_think`, `control_dont` (mean over control words); per (trial,
  `control`): `control_cosine_think` / `_dont`, with `control_word` per (axes, control). Per point: `think`,
  `dont`, `controls` (mean of both conditions), `think_minus_dont` with `_low` / `_high` (95% paired
  bootstrap over sentences), `n`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np
import xarray as xr

from intro.compiler.plan import Measure, Plan, Prompt, Step
from intro.runtime.analysis import metrics
from intro.runtime.backends.requests import GenerationRequest, Message, ScoreRequest, Steering
from intro.runtime.dataflow.vectors import VECTOR_FILE
from intro.runtime.engine.executor import generation_record
from intro.runtime.engine.experiment_calls import injection_ids, reply_key, score_key, think_key
from intro.runtime.store import cube
from intro.stdlib import graders

KINDS = ("thoughts_vs_text", "prefill_intention", "think_about")
Injection = tuple[Steering, list[Any]] | None  # the steering and what identifies it in a cache key
Trials = dict[str, Any]  # per-trial values of one condition
Rates = dict[str, float]  # per-point values


# ---------------------------------------------------------------- cubes
class TrialCube:
    """A measure's cube: its axes, then `trial` (and any inner dims), filled point by point."""

    def __init__(self, plan: Plan, measure: Measure, inner: Mapping[str, int] | None = None):
        self.plan = plan
        self.measure = measure
        self.axes = [name for name, _ in measure.axes]
        self.axis_values = [list(values) for _, values in measure.axes]
        self.shape = tuple(len(v) for v in self.axis_values)
        trials = max((len(plan.step(s).params["sentences"]) for _, s in measure.points), default=0)
        self.sizes = {"trial": trials, **(inner or {})}
        self.variables: dict[str, tuple[tuple[str, ...], np.ndarray]] = {}

    def fill(
        self,
        coords: Sequence[Any],
        values: Mapping[str, tuple[tuple[str, ...], Any]],
        cells: Mapping[str, float],
    ) -> None:
        at = tuple(axis.index(c) for axis, c in zip(self.axis_values, coords, strict=True))
        for name, (dims, data) in values.items():
            array = np.asarray(data)
            target = self._variable(name, dims, textual=array.dtype.kind in "UO")
            where: tuple[int | slice, ...] = (*at, *(slice(0, n) for n in array.shape))
            target[where] = array
        for name, value in cells.items():
            self._variable(name, (), textual=False)[at] = value

    def _variable(self, name: str, dims: tuple[str, ...], *, textual: bool) -> np.ndarray:
        if name not in self.variables:
            shape = (*self.shape, *(self.sizes[d] for d in dims))
            empty = np.full(shape, "", dtype=object) if textual else np.full(shape, np.nan)
            self.variables[name] = (dims, empty)
        return self.variables[name][1]

    def dataset(self) -> xr.Dataset:
        data = {
            name: ((*self.axes, *dims), v.astype(str) if v.dtype == object else v)
            for name, (dims, v) in self.variables.items()
        }
        coords: dict[str, Any] = {
            n: [str(v) for v in vs] for n, vs in zip(self.axes, self.axis_values, strict=True)
        }
        coords.update({d: np.arange(n) for d, n in self.sizes.items()})
        return xr.Dataset(data, coords=coords, attrs=cube.provenance(self.plan, self.measure))


def _rate(values: Sequence[bool]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


# ---------------------------------------------------------------- model calls
class ModelCalls:
    """Scores and replies of one in-process model for a measure step, cached by content, steered per call."""

    def __init__(self, run: Any, model_key: str):
        self.run = run
        self.model_key = model_key
        self.identity = run.plan.models[model_key].identity

    def _prompt(self, key: str) -> Prompt:
        return self.run.plan.prompts[key]  # type: ignore[no-any-return]

    def _messages(self, key: str) -> tuple[Message, ...]:
        return tuple(Message(role, content) for role, content in self._prompt(key).messages)

    async def scores(
        self, prompts: Sequence[str], injections: Sequence[Injection], choices: Sequence[str]
    ) -> list[dict[str, float]]:
        """Log-probability of each choice (renormalised over them) as the reply to each prompt."""
        keyed = [
            (
                score_key(self.identity, prompt, choices, _id(injection)),
                ScoreRequest(
                    "",
                    self._messages(prompt),
                    tuple(choices),
                    prefill=self._prompt(prompt).prefill,
                    steering=_steering(injection),
                ),
            )
            for prompt, injection in zip(prompts, injections, strict=True)
        ]
        await self._fetch(keyed, "score", lambda r: {"logprobs": r.logprobs, "raw_logprobs": r.raw_logprobs})
        return [self.run.cache.get(key)["logprobs"] for key, _ in keyed]

    async def replies(
        self, prompts: Sequence[str], injections: Sequence[Injection], sampling: Mapping[str, Any]
    ) -> list[str]:
        """One reply to each prompt; an unsteered one shares its cache entry with a sample step's."""
        keyed = [
            (
                reply_key(self.identity, prompt, sampling, _id(injection)),
                GenerationRequest(
                    "",
                    self._messages(prompt),
                    temperature=sampling["temperature"],
                    max_tokens=sampling["max_tokens"],
                    seed=sampling["seed"],
                    stop=tuple(sampling["stop"]),
                    prefill=self._prompt(prompt).prefill,
                    steering=_steering(injection),
                ),
            )
            for prompt, injection in zip(prompts, injections, strict=True)
        ]
        await self._fetch(keyed, "generate", generation_record)
        return [self.run.cache.get(key)["text"] for key, _ in keyed]

    async def _fetch(self, keyed: Sequence[tuple[str, Any]], method: str, record: Any) -> None:
        """Make the calls not cached yet. The cache is read under the compute lock: points that share a
        control call run at once, and the first to get the lock makes it for all of them."""
        async with self.run.executor.compute:
            todo = [attrs.evolve(r, key=k) for k, r in dict(keyed).items() if not self.run.cache.has(k)]
            if todo:
                results = await getattr(self.run.pool.backend(self.model_key), method)(todo)
                for result in results:
                    self.run.cache.put(result.key, record(result))
        self._count(len(todo), len(keyed))

    def _count(self, made: int, asked: int) -> None:
        self.run.executor.counters.calls += made
        self.run.executor.counters.cached += asked - made


# ---------------------------------------------------------------- handlers
class ExperimentSteps:
    """The handlers of one study run (`run` is runtime/engine/run.py's `_StudyRun`)."""

    def __init__(self, run: Any):
        self.run = run
        self.plan: Plan = run.plan
        self.cubes: dict[str, TrialCube] = {}
        for m in self.plan.measures:
            if m.kind in KINDS:
                controls = max(
                    (len(self.plan.step(s).params.get("controls", ())) for _, s in m.points), default=0
                )
                self.cubes[m.name] = TrialCube(self.plan, m, {"control": controls} if controls else None)

    def handlers(self) -> dict[str, Any]:
        return {
            "thoughts_vs_text": self.thoughts_vs_text,
            "prefill_intention": self.prefill_intention,
            "think_about": self.think_about,
        }

    def _injections(self, p: Mapping[str, Any]) -> list[Injection]:
        """The concept on each sentence's tokens: where the prompt quotes the sentence, and nowhere else."""
        path = str(self.run.cache.artifact_dir(self.plan.step(p["vector"]).hash) / VECTOR_FILE)
        return [
            (Steering(path, p["layer"], p["strength"], span_text=s), ids)
            for s, ids in zip(p["sentences"], injection_ids(self.plan, p), strict=True)
        ]

    def _write(self, step: Step, values: Mapping[str, Any], cells: Mapping[str, float]) -> None:
        name, coords = self.run.point_of[step.id]
        trial = {k: (("trial",), v) for k, v in values.items()}
        self.cubes[name].fill(coords, {"sentence": (("trial",), step.params["sentences"]), **trial}, cells)
        cube.write(self.cubes[name].dataset(), self.run.directory / "cube.zarr", name)

    def _conditions(self, p: Mapping[str, Any]) -> list[tuple[str, list[Injection]]]:
        return [("injected", self._injections(p)), ("control", [None] * len(p["sentences"]))]

    async def _by_condition(self, step: Step, condition: Any) -> tuple[Trials, Rates]:
        """Each condition's trial values and rates, named `<condition>_<value>` and `<rate>_<condition>`."""
        p = step.params
        calls = ModelCalls(self.run, p["model"])
        values: Trials = {}
        cells: Rates = {"n": len(p["sentences"])}
        for name, injections in self._conditions(p):
            trial, rates = await condition(calls, p, injections)
            values.update({f"{name}_{k}": v for k, v in trial.items()})
            cells.update({f"{k}_{name}": v for k, v in rates.items()})
        return values, cells

    # ------------------------------------------------------------ thoughts vs text
    async def thoughts_vs_text(self, step: Step) -> None:
        values, cells = await self._by_condition(step, _identify_and_repeat)
        for stem, trial in (("identification", "identified"), ("p_word", "p_word")):
            cells.update(paired_shift(values, stem, trial))
        self._write(step, values, cells)

    # ------------------------------------------------------------ prefill intention
    async def prefill_intention(self, step: Step) -> None:
        values, cells = await self._by_condition(step, _intention)
        # The paper's effect: the injection makes the forced word look intended, so this is negative.
        for stem in ("p_accident", "accident_log_odds"):
            cells.update(paired_shift(values, stem, stem))
        self._write(step, values, cells)

    # ------------------------------------------------------------ think / don't think
    async def think_about(self, step: Step) -> None:
        values, per_control, cells = think_summary(await self._think_record(step))
        name, coords = self.run.point_of[step.id]
        per_control["control_word"] = (("control",), step.params["controls"])
        self.cubes[name].fill(coords, per_control, {})
        self._write(step, values, cells)

    async def _think_record(self, step: Step) -> dict[str, Any]:
        """The cosines of a think_about step, computed once: the step's hash covers all they depend on."""
        key = think_key(step)
        record = self.run.cache.get(key)
        if record is not None:
            self.run.executor.counters.cached += 2 * len(step.params["sentences"])
            return record  # type: ignore[no-any-return]
        from intro.runtime.backends.activations import load_vector

        p = step.params
        loaded = self.run.pool.loaded(p["model"])  # on the event loop: two threads loading would race
        vector = load_vector(self.run.cache.artifact_dir(self.plan.step(p["vector"]).hash) / VECTOR_FILE)
        async with self.run.executor.compute:
            record = await asyncio.to_thread(think_cosines, loaded, self.plan.prompts, p, vector)
        self.run.cache.put(key, record)
        self.run.executor.counters.calls += 2 * len(p["sentences"])
        return record


def paired_shift(values: Trials, stem: str, trial: str) -> Rates:
    """Injected minus control over the same sentences, with a 95% paired bootstrap interval."""
    injected = np.asarray(values[f"injected_{trial}"], dtype=float)
    control = np.asarray(values[f"control_{trial}"], dtype=float)
    low, high = metrics.paired_bootstrap_diff_ci(injected, control, seed=0)
    return {
        f"{stem}_shift": float((injected - control).mean()),
        f"{stem}_shift_low": low,
        f"{stem}_shift_high": high,
    }


def think_summary(record: Mapping[str, Any]) -> tuple[Trials, dict[str, Any], Rates]:
    """Per-trial cosines, per-(trial, control) cosines and the point's means of a think_about record."""
    think, dont = np.asarray(record["think"]), np.asarray(record["dont"])
    think_controls, dont_controls = np.asarray(record["think_controls"]), np.asarray(record["dont_controls"])
    low, high = metrics.paired_bootstrap_diff_ci(think, dont, seed=0)
    values = {
        "cosine_think": think,
        "cosine_dont": dont,
        "control_think": think_controls.mean(axis=1),
        "control_dont": dont_controls.mean(axis=1),
    }
    per_control = {
        "control_cosine_think": (("trial", "control"), think_controls),
        "control_cosine_dont": (("trial", "control"), dont_controls),
    }
    cells = {
        "think": float(think.mean()),
        "dont": float(dont.mean()),
        "controls": float(np.concatenate([think_controls, dont_controls]).mean()),
        "think_minus_dont": float((think - dont).mean()),
        "think_minus_dont_low": low,
        "think_minus_dont_high": high,
        "n": float(think.size),
    }
    return values, per_control, cells


async def _identify_and_repeat(
    calls: ModelCalls, p: Mapping[str, Any], injections: list[Injection]
) -> tuple[Trials, Rates]:
    """Which candidate the model names for each line, and whether it repeats the line."""
    scores = await calls.scores(p["identify_prompts"], injections, p["choices"])
    replies = await calls.replies(p["repeat_prompts"], injections, p["sampling"])
    picks = [_pick(s, p["choices"], p["candidates"]) for s in scores]
    word_choice = p["choices"][p["candidates"].index(p["word"])]
    p_word = [float(np.exp(s[word_choice])) for s in scores]
    identified = [pick == p["word"] for pick in picks]
    # The paper's grade: the line itself, character for character, somewhere in the reply.
    repeated = [
        graders.substring(r, s, normalised=False) for r, s in zip(replies, p["sentences"], strict=True)
    ]
    both = [i and r for i, r in zip(identified, repeated, strict=True)]
    trials = {
        "choice": picks,
        "p_word": p_word,
        "identified": np.asarray(identified, dtype=float),
        "repeat": replies,
        "repeated": np.asarray(repeated, dtype=float),
    }
    rates = {
        "identification": _rate(identified),
        "repeat": _rate(repeated),
        "both": _rate(both),
        "p_word": float(np.mean(p_word)),
    }
    return trials, rates


async def _intention(
    calls: ModelCalls, p: Mapping[str, Any], injections: list[Injection]
) -> tuple[Trials, Rates]:
    """Whether the model disowns the forced word (its reply), and P(accident) after "It was"."""
    replies = await calls.replies(p["reply_prompts"], injections, p["sampling"])
    scores = await calls.scores(p["readout_prompts"], injections, p["choices"])
    disowned = [graders.disowns(r) for r in replies]
    accident, intended = p["choices"]
    p_accident = [float(np.exp(s[accident])) for s in scores]
    # Log-odds stay readable where a small model puts P(accident) at 0.9999 with and without the injection.
    log_odds = [s[accident] - s[intended] for s in scores]
    trials = {
        "reply": replies,
        "disowned": np.asarray(disowned, dtype=float),
        "p_accident": p_accident,
        "accident_log_odds": log_odds,
    }
    rates = {
        "disown": _rate(disowned),
        "p_accident": float(np.mean(p_accident)),
        "accident_log_odds": float(np.mean(log_odds)),
    }
    return trials, rates


def _id(injection: Injection) -> list[Any] | None:
    return None if injection is None else injection[1]


def _steering(injection: Injection) -> Steering | None:
    return None if injection is None else injection[0]


def _pick(scores: Mapping[str, float], choices: Sequence[str], candidates: Sequence[str]) -> str:
    best = max(choices, key=lambda c: scores[c])
    return candidates[list(choices).index(best)]


def think_cosines(
    loaded: Any, prompts: Mapping[str, Prompt], p: Mapping[str, Any], vector: Any
) -> dict[str, Any]:
    """Cosines of each written sentence's mean residual with the concept vector and the control words' vectors."""
    from intro.runtime.backends.activations import concept_vectors, cosines_with_concepts
    from intro.runtime.backends.local_model import activate_adapter

    with loaded.lock:
        activate_adapter(loaded.model, None)  # the declared model's own weights, whatever ran before
        controls = concept_vectors(loaded, p["controls"], p["baseline"], p["layer"], p["template"])
        record: dict[str, Any] = {}
        for which in ("think", "dont"):
            concept, others = [], []
            for prompt_key, sentence in zip(p[f"{which}_prompts"], p["sentences"], strict=True):
                prompt = prompts[prompt_key]
                messages = tuple(Message(role, content) for role, content in prompt.messages)
                vectors = {p["word"]: vector, **controls}
                cosines = cosines_with_concepts(
                    loaded, messages, sentence, vectors, p["layer"], prompt.prefill
                )
                concept.append(cosines[p["word"]])
                others.append([cosines[w] for w in p["controls"]])
            record[which], record[f"{which}_controls"] = concept, others
    return record


# ---------------------------------------------------------------- intro show
def _rows(dataset: xr.Dataset, columns: Sequence[tuple[str, str, str]]) -> tuple[list[str], list[list[str]]]:
    axes = [str(d) for d in dataset["n"].dims]
    frame = dataset[[v for _, v, _ in columns] + ["n"]].to_dataframe().reset_index()
    rows = [
        [*(str(r[a]) for a in axes), *(format(r[v], f) for _, v, f in columns), str(int(r["n"]))]
        for _, r in frame.iterrows()
        if r["n"] == r["n"]
    ]
    return [*axes, *(h for h, _, _ in columns), "n"], rows


TABLES: dict[str, list[tuple[str, str, str]]] = {
    "thoughts_vs_text": [
        ("identified inj", "identification_injected", ".2f"),
        ("identified ctl", "identification_control", ".2f"),
        ("repeated inj", "repeat_injected", ".2f"),
        ("repeated ctl", "repeat_control", ".2f"),
        ("both inj", "both_injected", ".2f"),
        ("P(word) inj", "p_word_injected", ".3f"),
        ("P(word) ctl", "p_word_control", ".3f"),
        ("shift", "p_word_shift", "+.3f"),
        ("low", "p_word_shift_low", "+.3f"),
        ("high", "p_word_shift_high", "+.3f"),
    ],
    "prefill_intention": [
        ("disowned inj", "disown_injected", ".2f"),
        ("disowned ctl", "disown_control", ".2f"),
        ("P(accident) inj", "p_accident_injected", ".3f"),
        ("P(accident) ctl", "p_accident_control", ".3f"),
        ("log-odds inj", "accident_log_odds_injected", "+.2f"),
        ("log-odds ctl", "accident_log_odds_control", "+.2f"),
        ("log-odds shift", "accident_log_odds_shift", "+.2f"),
        ("low", "accident_log_odds_shift_low", "+.2f"),
        ("high", "accident_log_odds_shift_high", "+.2f"),
    ],
    "think_about": [
        ("cos think", "think", "+.4f"),
        ("cos don't", "dont", "+.4f"),
        ("cos controls", "controls", "+.4f"),
        ("think - don't", "think_minus_dont", "+.4f"),
        ("low", "think_minus_dont_low", "+.4f"),
        ("high", "think_minus_dont_high", "+.4f"),
    ],
}


def table_rows(dataset: xr.Dataset, kind: str) -> tuple[list[str], list[list[str]]]:
    """`intro show`'s table of one of these measures: one line per point."""
    return _rows(dataset, TABLES[kind])


def handlers(run: Any) -> dict[str, Any]:
    return ExperimentSteps(run).handlers()
