"""Cache keys of the model calls that the concept experiments' measure steps make themselves.

Thoughts vs text and prefill intention inject on each sentence's tokens, so their calls are made by the
measure step rather than by sample steps; think / don't think reads activations. The keys are pure
functions of the plan (this module imports nothing heavy), shared by the step handlers
(runtime/analysis/sentence_trials.py) and by `intro plan`, which counts the calls still to make.

An unsteered reply has the key a sample step would give the same prompt and sampling, and an unsteered
score the key the injected-thought readout gives it, so those results are shared with other steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from intro.compiler.plan import Plan, Step, digest, request_key

SPAN_KINDS = ("thoughts_vs_text", "prefill_intention")
# Measure steps that make model calls of their own, besides the sample steps they depend on.
CALLING_KINDS = ("calibration", "injected_thought", "think_about", *SPAN_KINDS)


def injection_ids(plan: Plan, p: Mapping[str, Any]) -> list[list[Any]]:
    """What identifies each sentence's injection: the vector's content, layer, strength and the span."""
    vector = plan.step(p["vector"]).hash
    return [[vector, p["layer"], p["strength"], sentence] for sentence in p["sentences"]]


def score_key(identity: str, prompt: str, choices: Sequence[str], injection: list[Any] | None) -> str:
    extra = [] if injection is None else [injection]
    return digest(["score", identity, prompt, list(choices), *extra])


def reply_key(identity: str, prompt: str, sampling: Mapping[str, Any], injection: list[Any] | None) -> str:
    if injection is not None:
        identity = digest(["span", identity, injection])
    return request_key(identity, prompt, dict(sampling), 0)


def think_key(step: Step) -> str:
    # One record holds every cosine of the step, and the step's hash covers all they depend on.
    return digest(["think_about", step.hash])


def planned_calls(plan: Plan, step: Step) -> list[tuple[str, str, int]]:
    """(cache key, prompt key, new tokens at most) of each call a concept-experiment step makes."""
    p = step.params
    if step.kind == "calibration":
        # An in-process predictor's hypothetical answers are also read from logprobs: a score per row at
        # most (rows whose subject showed no behaviour are skipped), all in one record keyed by the step.
        if not _in_process(plan, p["predictor"]):
            return []
        key = digest(["calibration_readout", step.hash])
        return [(key, row[4], 0) for row in p["rows"]]
    if step.kind == "injected_thought":
        # The logit readout scores the trial prompt once steered and once plain (shared by every point);
        # a judge's calls depend on the replies, so they cannot be listed before the run.
        if p["grader"]["kind"] != "logit":
            return []
        models = (p["steered"], p["model"])
        return [
            (score_key(plan.models[m].identity, p["prompt"], p["choices"], None), p["prompt"], 0)
            for m in models
        ]
    if step.kind == "think_about":
        return [(think_key(step), k, 0) for k in (*p["think_prompts"], *p["dont_prompts"])]
    identity = plan.models[p["model"]].identity
    scored, replied = {
        "thoughts_vs_text": ("identify_prompts", "repeat_prompts"),
        "prefill_intention": ("readout_prompts", "reply_prompts"),
    }[step.kind]
    calls = []
    for index, injection in enumerate(injection_ids(plan, p)):
        score, reply = p[scored][index], p[replied][index]
        for steered in (injection, None):
            calls.append((score_key(identity, score, p["choices"], steered), score, 0))
            calls.append(
                (reply_key(identity, reply, p["sampling"], steered), reply, p["sampling"]["max_tokens"])
            )
    return calls


def _in_process(plan: Plan, model_key: str) -> bool:
    entry = plan.models[model_key]
    while entry.kind in ("steered", "finetuned"):
        entry = plan.models[entry.params["base"]]
    return entry.kind in ("embedded", "local")
