"""The injected-thought measurement (Lindsey 2025): its builtin and its lowering.

`injected_thought(model, concept, word, layer, strength, prompt, ...)` asks the trial question `trials` times
with `strength * concept` added to the residual stream after `layer` (from the token before `start` on) and
`trials` times without it (the controls). It lowers to: the vector step, one sample step for the steered
model, one for the plain model (shared by every point that asks the same question), and a measure step that
grades both sets of replies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from . import ir
from .diagnostics import Span
from .plan import Prompt
from .types import Function, Param

if TYPE_CHECKING:
    from .evaluate import Context
    from .lower import Lowering

TRIAL_SAMPLING = ir.Sampling(temperature=1.0, samples=1, max_tokens=100)
START = "Trial 1"
ROLES = ("system", "user", "assistant")
# What the logit readout scores as the first word of the reply.
YES_NO = ("Yes", "No")


# ---------------------------------------------------------------- the builtin
def _conversation(ctx: Context, turns: tuple[Any, ...], span: Span) -> tuple[tuple[str, str], ...]:
    """A list of one-field records, `{ user: "..." }`, as (role, content) pairs."""
    messages = []
    for turn in turns:
        if not isinstance(turn, Mapping) or len(turn) != 1:
            ctx.fail(
                "E320",
                "each turn of a conversation is a record with one field: user, assistant or system",
                span,
            )
        (role, content), *_ = turn.items()
        if role not in ROLES or not isinstance(content, str):
            ctx.fail("E320", f"a turn must be {{ user | assistant | system: \"text\" }}, not '{role}'", span)
        messages.append((role, content))
    if not messages or messages[-1][0] != "user":
        ctx.fail("E321", "the conversation must end with a user turn (the trial question)", span)
    return tuple(messages)


def _injected_thought(ctx: Context, spans: Mapping[str, Span], at: Span, **a: Any) -> ir.InjectedThought:
    from .builtins import _layer
    from .builtins import require_capability as _require

    _require(ctx, a["model"], "activations", spans["model"], "be steered")
    prompt = _conversation(ctx, a["prompt"], spans["prompt"])
    if not any(a["start"] in content for _, content in prompt):
        ctx.fail(
            "E322", f"the injection start '{a['start']}' does not occur in the conversation", spans["start"]
        )
    if a["trials"] < 1:
        ctx.fail("E323", "trials must be at least 1", spans["trials"])
    sampling: ir.Sampling = a["sampling"]
    if a["trials"] > 1 and sampling.temperature == 0:
        ctx.fail(
            "E304",
            "several trials at temperature 0 from an in-process model are identical",
            spans["sampling"],
        )
    grader: ir.Grader = a["grader"]
    if grader.kind == "logit":
        _require(ctx, a["model"], "activations", spans["grader"], "be read by logits")
    layer = _layer(ctx, a["model"], a["layer"], spans["layer"])
    return ir.InjectedThought(
        a["model"],
        a["vector"],
        a["word"],
        layer,
        float(a["strength"]),
        a["trials"],
        prompt,
        a["start"],
        sampling,
        grader,
    )


INJECTED_THOUGHT = Function(
    "injected_thought",
    (
        Param("model", "model"),
        Param("concept", "vector"),
        Param("word", "string"),
        Param("layer", "number"),
        Param("strength", "number"),
        Param("prompt", "list"),
        Param("trials", "int", 50),
        Param("grader", "grader", ir.Grader("logit")),
        Param("sampling", "sampling", TRIAL_SAMPLING),
        Param("start", "string", START),
    ),
    lambda ctx, spans, at, **a: _injected_thought(ctx, spans, at, vector=a.pop("concept"), **a),
    "trials asking `model` whether it detects a thought (`strength * concept` at `layer`), and controls without it",
    returns="measurement",
    example='injected_thought(qwen, dog, "dog", 16, 4, intro.trial, trials: 8, grader: logit_readout())',
)


# ---------------------------------------------------------------- lowering
def lower_injected_thought(lowering: Lowering, step_id: str, m: ir.InjectedThought) -> str:
    steered = ir.SteeredModel(m.model, m.vector, m.layer, m.strength, m.start, label="injected")
    prompt = lowering.prompt(Prompt(m.prompt))
    injected = trial_samples(lowering, steered, prompt, m)
    control = trial_samples(lowering, m.model, prompt, m)
    model = lowering.model(m.model)
    grader = _grader(lowering, m.grader)
    params: dict[str, Any] = {
        "model": model,
        "steered": lowering.model(steered),
        "word": m.word,
        "layer": m.layer,
        "strength": m.strength,
        "trials": m.trials,
        "prompt": prompt,
        "question": m.prompt[-1][1],
        "choices": list(YES_NO),
        "grader": grader,
        "injected_step": injected,
        "control_step": control,
    }
    # What the result depends on: model identities, never the plan's keys or step ids.
    hidden = ("model", "steered", "injected_step", "control_step", "grader")
    content = {k: v for k, v in params.items() if k not in hidden}
    content["model"] = lowering.models[model].identity
    content["grader"] = {k: v for k, v in grader.items() if k != "judge"}
    return lowering.add_step(step_id, "injected_thought", [injected, control], params, content)


def trial_samples(lowering: Lowering, model: ir.Model, prompt: str, m: ir.InjectedThought) -> str:
    """`trials` samples of the trial conversation (one prompt, sample index = trial)."""
    key = lowering.model(model)
    s = m.sampling
    params = {
        "model": key,
        "temperature": s.temperature,
        "max_tokens": s.max_tokens,
        "stop": list(s.stop),
        "seed": s.seed,
        "samples": m.trials,
        "prompts": [prompt],
    }
    content = [lowering.models[key].identity, {k: v for k, v in params.items() if k != "model"}]
    entry = lowering.models[key]
    deps = [entry.params["vector"]] if entry.kind == "steered" else []
    where = f"injected[{m.word},{m.layer},{m.strength:g}]" if entry.kind == "steered" else "control"
    step_id = f"sample.{lowering.study.name}.{where}[{lowering.label(model)}]"
    return lowering.add_step(step_id, "sample", deps, params, content)


def _grader(lowering: Lowering, grader: ir.Grader) -> dict[str, Any]:
    judge = lowering.model(grader.judge) if grader.judge is not None else None
    identity = lowering.models[judge].identity if judge else None
    return {"kind": grader.kind, "judge": judge, "judge_identity": identity}
