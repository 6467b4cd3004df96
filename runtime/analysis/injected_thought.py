"""The injected-thought measurement (Lindsey 2025): an `injected_thought` step grades the cached trial
replies and fills its cube (its vectors are `vector` steps, runtime/dataflow/vectors.py):

- per trial (dims: the measure's axes, `trial`): `injected_response`, `control_response` (strings),
  `injected_detected`, `injected_identified`, `injected_coherent`, `control_detected` (1.0 / 0.0);
- per point: `detection`, `identification`, `false_positive`, `net`, each with `_low` / `_high` (95%
  bootstrap), `n_injected`, `n_control`; with the logit grader also `p_yes_injected`, `p_yes_control`
  (P("Yes") against "No" as the first word of the reply) and `p_yes_shift` (their difference).

Rule grades (logit grader): a reply detects when its first word is "yes"; it identifies when it detects
and names the word; it is coherent when it is not empty and not mostly one repeated word. With the judge
grader, the paper's rubrics (stdlib.graders) are asked of the judge model at temperature 0.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr
from attrs import frozen

from intro.compiler.plan import Measure, Plan, Step, digest
from intro.runtime.analysis import metrics
from intro.runtime.backends.requests import GenerationRequest, Message, ScoreRequest
from intro.runtime.engine.experiment_calls import score_key
from intro.runtime.store import cube
from intro.stdlib import graders
from intro.stdlib.extractors import normalise

RATES = ("detection", "identification", "false_positive", "net")
TRIAL_GRADES = ("injected_detected", "injected_identified", "injected_coherent", "control_detected")
JUDGE_RUBRICS = ("coherent", "affirmative_detection", "affirmative_correct_identification")


# ---------------------------------------------------------------- grading
@frozen
class TrialGrade:
    detected: bool
    identified: bool
    coherent: bool


def coherent(reply: str) -> bool:
    """Not empty and not a loop: at least a third of its words are distinct (a cheap stand-in for a judge)."""
    words = normalise(reply).split()
    return bool(words) and len(set(words)) * 3 >= len(words)


def affirmative(reply: str) -> bool:
    words = normalise(reply).split()
    return bool(words) and words[0] == "yes"


def rule_grade(reply: str, word: str) -> TrialGrade:
    detected = affirmative(reply)
    return TrialGrade(detected, detected and graders.mentions(reply, word), coherent(reply))


def judge_grade(verdicts: Mapping[str, bool | None]) -> TrialGrade:
    """A trial's grade from the judge's verdicts; a verdict the judge did not commit to counts as no."""
    return TrialGrade(
        bool(verdicts["affirmative_detection"]),
        bool(verdicts["affirmative_correct_identification"]),
        bool(verdicts["coherent"]),
    )


# ---------------------------------------------------------------- the cube
class InjectionCube:
    """The cube of one injected-thought measure, filled point by point."""

    def __init__(self, plan: Plan, measure: Measure):
        self.plan = plan
        self.measure = measure
        self.axes = [name for name, _ in measure.axes]
        self.axis_values = [list(values) for _, values in measure.axes]
        shape = tuple(len(v) for v in self.axis_values)
        self.trials = max((int(plan.step(s).params["trials"]) for _, s in measure.points), default=0)
        trial_shape = (*shape, self.trials)
        self.responses = {
            n: np.full(trial_shape, "", dtype=object) for n in ("injected_response", "control_response")
        }
        self.grades = {n: np.full(trial_shape, np.nan) for n in TRIAL_GRADES}
        names = [*(f"{r}{s}" for r in RATES for s in ("", "_low", "_high")), "n_injected", "n_control"]
        names += ["p_yes_injected", "p_yes_control", "p_yes_shift"]
        self.cells = {n: np.full(shape, np.nan) for n in names}

    def fill(self, coords: Sequence[Any], trials: Mapping[str, Any], cells: Mapping[str, float]) -> None:
        at = tuple(values.index(c) for values, c in zip(self.axis_values, coords, strict=True))
        for name, values in trials.items():
            target = self.responses.get(name, self.grades.get(name))
            assert target is not None, name
            where: tuple[int | slice, ...] = (*at, slice(0, len(values)))
            target[where] = values
        for name, value in cells.items():
            self.cells[name][at] = value

    def dataset(self) -> xr.Dataset:
        trial_dims = (*self.axes, "trial")
        data: dict[str, Any] = {n: (trial_dims, v.astype(str)) for n, v in self.responses.items()}
        data.update({n: (trial_dims, v) for n, v in self.grades.items()})
        data.update({n: (tuple(self.axes), v) for n, v in self.cells.items()})
        coords: dict[str, Any] = {
            n: [str(v) for v in vs] for n, vs in zip(self.axes, self.axis_values, strict=True)
        }
        coords["trial"] = np.arange(self.trials)
        return xr.Dataset(data, coords=coords, attrs=cube.provenance(self.plan, self.measure))


def rate_cells(rates: metrics.DetectionRates) -> dict[str, float]:
    cells: dict[str, float] = {}
    for name in RATES:
        rate: metrics.Rate = getattr(rates, name)
        cells.update({name: rate.estimate, f"{name}_low": rate.low, f"{name}_high": rate.high})
    return cells


def injection_rows(dataset: xr.Dataset) -> tuple[list[str], list[list[str]]]:
    """`intro show`'s table: one line per point."""
    axes = [str(d) for d in dataset["detection"].dims]
    header = [*axes, "detected", "identified", "false pos.", "net [95% CI]", "P(yes) inj", "P(yes) ctl", "n"]
    frame = dataset.drop_dims("trial").to_dataframe().reset_index()
    rows = []
    for _, r in frame.iterrows():
        if r["n_injected"] != r["n_injected"]:
            continue
        rows.append(
            [
                *(str(r[a]) for a in axes),
                f"{r['detection']:.2f}",
                f"{r['identification']:.2f}",
                f"{r['false_positive']:.2f}",
                f"{r['net']:+.2f} [{r['net_low']:+.2f}, {r['net_high']:+.2f}]",
                f"{r['p_yes_injected']:.3f}",
                f"{r['p_yes_control']:.3f}",
                str(int(r["n_injected"])),
            ]
        )
    return header, rows


# ---------------------------------------------------------------- handlers
class ConceptSteps:
    """The handlers of one study run (`run` is runtime/engine/run.py's `_StudyRun`: plan, cache, pool,
    executor)."""

    def __init__(self, run: Any):
        self.run = run
        self.plan: Plan = run.plan
        self.cache = run.cache
        self.cubes = {
            m.name: InjectionCube(self.plan, m) for m in self.plan.measures if m.kind == "injected_thought"
        }
        # Points run concurrently and share the plain model's readout: one lock per key, so it runs once.
        self._scoring: dict[str, asyncio.Lock] = {}

    def handlers(self) -> dict[str, Any]:
        return {"injected_thought": self.injected_thought}

    # ------------------------------------------------------------ the measurement
    async def injected_thought(self, step: Step) -> None:
        p = step.params
        injected = self.run.executor.texts(p["injected_step"])[p["prompt"]]
        control = self.run.executor.texts(p["control_step"])[p["prompt"]]
        if p["grader"]["kind"] == "judge":
            injected_grades = await self._judged(p, injected)
            control_grades = await self._judged(p, control)
        else:
            injected_grades = [rule_grade(r, p["word"]) for r in injected]
            control_grades = [rule_grade(r, p["word"]) for r in control]
        cells = rate_cells(
            metrics.detection_rates(
                [g.detected for g in injected_grades],
                [g.identified for g in injected_grades],
                [g.coherent for g in injected_grades],
                [g.detected for g in control_grades],
            )
        )
        cells.update(n_injected=len(injected), n_control=len(control))
        if p["grader"]["kind"] == "logit":
            cells.update(await self._yes_readout(p))
        trials = {
            "injected_response": injected,
            "control_response": control,
            "injected_detected": [float(g.detected) for g in injected_grades],
            "injected_identified": [float(g.identified) for g in injected_grades],
            "injected_coherent": [float(g.coherent) for g in injected_grades],
            "control_detected": [float(g.detected) for g in control_grades],
        }
        name, coords = self.run.point_of[step.id]
        self.cubes[name].fill(coords, trials, cells)
        cube.write(self.cubes[name].dataset(), self.run.directory / "cube.zarr", name)

    def _messages(self, prompt_key: str) -> tuple[Message, ...]:
        return tuple(Message(role, content) for role, content in self.plan.prompts[prompt_key].messages)

    async def _yes_readout(self, p: Mapping[str, Any]) -> dict[str, float]:
        injected = await self._p_yes(p, p["steered"])
        control = await self._p_yes(p, p["model"])
        return {"p_yes_injected": injected, "p_yes_control": control, "p_yes_shift": injected - control}

    async def _p_yes(self, p: Mapping[str, Any], model_key: str) -> float:
        """P(first choice) against the others as the first word of the reply, cached by content."""
        identity = self.plan.models[model_key].identity
        key = score_key(identity, p["prompt"], p["choices"], None)
        async with self._scoring.setdefault(key, asyncio.Lock()):
            record = self.cache.get(key)
            if record is None:
                steering = self.run.executor.steering(model_key)
                messages = self._messages(p["prompt"])
                request = ScoreRequest(key, messages, tuple(p["choices"]), steering=steering)
                async with self.run.executor.compute:
                    (score,) = await self.run.pool.backend(model_key).score([request])
                record = {"logprobs": score.logprobs, "raw_logprobs": score.raw_logprobs}
                self.cache.put(key, record)
                self.run.executor.counters.calls += 1
            else:
                self.run.executor.counters.cached += 1
        return float(np.exp(record["logprobs"][p["choices"][0]]))

    async def _judged(self, p: Mapping[str, Any], replies: Sequence[str]) -> list[TrialGrade]:
        judge = p["grader"]["judge"]
        keyed = []
        for reply in replies:
            for rubric in JUDGE_RUBRICS:
                text = graders.render_rubric(rubric, question=p["question"], response=reply, word=p["word"])
                keyed.append((reply, rubric, digest(["judge", p["grader"]["judge_identity"], text]), text))
        missing = [
            GenerationRequest(key, (Message("user", text),), temperature=0.0, max_tokens=8)
            for _, _, key, text in keyed
            if not self.cache.has(key)
        ]
        if missing:
            backend = self.run.pool.backend(judge)
            if self.run.pool.in_process(judge):
                async with self.run.executor.compute:
                    answers = await backend.generate(missing)
            else:
                answers = await backend.generate(missing)
            for answer in answers:
                self.cache.put(answer.key, {"text": answer.text})
            self.run.executor.counters.calls += len(answers)
        verdicts: dict[str, dict[str, bool | None]] = {}
        for reply, rubric, key, _ in keyed:
            verdicts.setdefault(reply, {})[rubric] = graders.parse_yes_no(self.cache.get(key)["text"])
        return [judge_grade(verdicts[reply]) for reply in replies]


def handlers(run: Any) -> dict[str, Any]:
    return ConceptSteps(run).handlers()
