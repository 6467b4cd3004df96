"""The other three concept-injection experiments (Lindsey 2025): their builtins and their lowering.

- `thoughts_vs_text`: the concept is injected on a sentence's tokens only; the model is asked which word it
  thinks about when it reads the line (scored over the word and `ways - 1` other candidates, the paper's
  10-way choice by default) and, separately, to repeat the line.
- `prefill_intention`: the assistant's earlier reply is forced to the concept word; asked whether it meant
  it, does injecting the word's vector on the earlier sentence make it disown the word less often?
- `think_about`: the model writes a sentence while told to think (or not) about a word; the residual
  stream on the written sentence is compared with the word's concept vector and with control words'.

Each lowers to the vector step(s) it needs and one measure step holding every rendered prompt. The model
calls are made by the measure step itself (with the steering window set per sentence), each cached by its
content, so a sentence's control calls are shared by every point that asks them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from . import ir
from .diagnostics import Span
from .plan import Prompt
from .types import Function, Param

if TYPE_CHECKING:
    from .evaluate import Context
    from .lower import Lowering

Spans = Mapping[str, Span]

# Greedy replies: each sentence is one trial, and a repeated line or an answer to "did you mean it" is
# read best from the model's most likely reply.
REPEAT_SAMPLING = ir.Sampling(max_tokens=40)
REPLY_SAMPLING = ir.Sampling(max_tokens=30)
# The intention readout: how the reply to "did you mean it?" continues "It was".
INTENTION_PREFILL = "It was"
INTENTION_CHOICES = (" an accident", " intentional")


def fill(template: str, sentence: str, word: str = "") -> str:
    # Plain replacement, not str.format or jinja: a sentence may hold braces, and nothing else is filled.
    return template.replace("{sentence}", sentence).replace("{word}", word)


# ---------------------------------------------------------------- checks
def _check_model(ctx: Context, model: ir.Model, span: Span) -> None:
    from .builtins import require_capability as _require

    _require(ctx, model, "activations", span, "be steered")
    if isinstance(model, ir.SteeredModel):
        ctx.fail("E329", "this experiment sets its own injection: give it a model that is not steered", span)


def _check_template(ctx: Context, template: str, span: Span, *fields: str) -> None:
    for name in fields:
        if "{" + name + "}" not in template:
            ctx.fail("E324", f"the template must contain {{{name}}}", span)


def _check_sentences(ctx: Context, sentences: tuple[str, ...], span: Span) -> None:
    if not sentences:
        ctx.fail("E326", "no sentences given: each sentence is one trial", span)
    if any(not s.strip() for s in sentences):
        ctx.fail("E326", "a sentence is empty", span)


def _check_replies(ctx: Context, sampling: ir.Sampling, span: Span) -> None:
    if sampling.samples != 1:
        ctx.fail("E328", "each sentence is one trial: use more sentences, not more samples", span)


# ---------------------------------------------------------------- builtins
def _thoughts_vs_text(ctx: Context, spans: Spans, at: Span, **a: Any) -> ir.ThoughtsVsText:
    from .builtins import _layer

    _check_model(ctx, a["model"], spans["model"])
    _check_sentences(ctx, a["sentences"], spans["sentences"])
    if a["ways"] < 2:
        ctx.fail("E326", "identification needs at least a 2-way choice", spans["ways"])
    # The word and the first others of the pool, in the pool's order: the same distractors every run.
    others = [w for w in dict.fromkeys(a["candidates"]) if w != a["word"]]
    if len(others) < a["ways"] - 1:
        ctx.fail(
            "E325",
            f"a {a['ways']}-way choice needs {a['ways'] - 1} candidates besides '{a['word']}', "
            f"the list gives {len(others)}",
            spans["candidates"],
        )
    candidates = (a["word"], *others[: a["ways"] - 1])
    _check_template(ctx, a["identify"], spans["identify"], "sentence")
    _check_template(ctx, a["repeat"], spans["repeat"], "sentence")
    _check_replies(ctx, a["sampling"], spans["sampling"])
    layer = _layer(ctx, a["model"], a["layer"], spans["layer"])
    return ir.ThoughtsVsText(
        a["model"],
        a["concept"],
        a["word"],
        layer,
        float(a["strength"]),
        a["sentences"],
        candidates,
        a["identify"],
        a["repeat"],
        a["sampling"],
    )


def _prefill_intention(ctx: Context, spans: Spans, at: Span, **a: Any) -> ir.PrefillIntention:
    from .builtins import _layer

    _check_model(ctx, a["model"], spans["model"])
    _check_sentences(ctx, a["sentences"], spans["sentences"])
    _check_template(ctx, a["ask"], spans["ask"], "sentence")
    if not a["question"].strip():
        ctx.fail("E324", "the follow-up question is empty", spans["question"])
    _check_replies(ctx, a["sampling"], spans["sampling"])
    layer = _layer(ctx, a["model"], a["layer"], spans["layer"])
    return ir.PrefillIntention(
        a["model"],
        a["concept"],
        a["word"],
        layer,
        float(a["strength"]),
        a["sentences"],
        a["ask"],
        a["question"],
        a["sampling"],
    )


def _think_about(ctx: Context, spans: Spans, at: Span, **a: Any) -> ir.ThinkAbout:
    from .builtins import _layer
    from .builtins import require_capability as _require

    _require(ctx, a["model"], "activations", spans["model"], "give activations")
    if not isinstance(a["model"], ir.BaseModel):
        ctx.fail(
            "E329", "think_about reads a declared model's own weights, not a derived model", spans["model"]
        )
    vector = a["concept"]
    if not isinstance(vector, ir.ConceptVector):
        ctx.fail(
            "E329",
            "think_about compares with control words' concept vectors: give it a concept(...) vector",
            spans["concept"],
        )
    if vector.model != a["model"]:
        ctx.fail(
            "E327", "the concept vector is read from another model than the activations", spans["concept"]
        )
    layer = _layer(ctx, a["model"], a["layer"], spans["layer"])
    if vector.layer != layer:
        ctx.fail(
            "E327",
            f"the concept vector is read at layer {vector.layer}, the activations at layer {layer}",
            spans["layer"],
        )
    _check_sentences(ctx, a["sentences"], spans["sentences"])
    controls = tuple(w for w in dict.fromkeys(a["controls"]) if w != a["word"])
    if not controls:
        ctx.fail(
            "E326",
            "no control words: the concept's cosine needs something to be compared with",
            spans["controls"],
        )
    _check_template(ctx, a["think"], spans["think"], "sentence", "word")
    _check_template(ctx, a["dont"], spans["dont"], "sentence", "word")
    return ir.ThinkAbout(
        a["model"], vector, a["word"], layer, a["sentences"], controls, a["think"], a["dont"]
    )


_INJECTION = (
    Param("model", "model"),
    Param("concept", "vector"),
    Param("word", "string"),
    Param("layer", "number"),
    Param("strength", "number"),
    Param("sentences", "strings"),
)

THOUGHTS_VS_TEXT = Function(
    "thoughts_vs_text",
    (
        *_INJECTION,
        Param("candidates", "strings"),
        Param("identify", "string"),
        Param("repeat", "string"),
        Param("ways", "int", 10),
        Param("sampling", "sampling", REPEAT_SAMPLING),
    ),
    _thoughts_vs_text,
    "per sentence, with `strength * concept` on its tokens and without: which of `word` and the first "
    "`ways - 1` other candidates the model names, and whether it repeats the line",
    returns="measurement",
    example='thoughts_vs_text(qwen, dog, "dog", 16, 4, take(intro.sentences, 3), intro.candidates, '
    "intro.identify_line, intro.repeat_line)",
)

PREFILL_INTENTION = Function(
    "prefill_intention",
    (
        *_INJECTION,
        Param("ask", "string"),
        Param("question", "string"),
        Param("sampling", "sampling", REPLY_SAMPLING),
    ),
    _prefill_intention,
    "per sentence, the reply forced to `word`: does the model disown it, with `word`'s vector injected on "
    "the sentence and without",
    returns="measurement",
    example='prefill_intention(qwen, dog, "dog", 16, 4, take(intro.sentences, 3), intro.ask_word, '
    "intro.intention_question)",
)

THINK_ABOUT = Function(
    "think_about",
    (
        Param("model", "model"),
        Param("concept", "vector"),
        Param("word", "string"),
        Param("layer", "number"),
        Param("sentences", "strings"),
        Param("controls", "strings"),
        Param("think", "string"),
        Param("dont", "string"),
    ),
    _think_about,
    "cosine of the activations on a written sentence with `word`'s concept vector, told to think about it "
    "or not, against control words",
    returns="measurement",
    example='think_about(qwen, dog, "dog", 16, take(intro.sentences, 3), take(intro.control_words, 10), '
    "intro.think_line, intro.dont_think_line)",
)

FUNCTIONS = {f.name: f for f in (THOUGHTS_VS_TEXT, PREFILL_INTENTION, THINK_ABOUT)}


# ---------------------------------------------------------------- lowering
def _user(lowering: Lowering, text: str, prefill: str = "") -> str:
    return lowering.prompt(Prompt((("user", text),), prefill))


def _sampling(s: ir.Sampling) -> dict[str, Any]:
    return {"temperature": s.temperature, "max_tokens": s.max_tokens, "stop": list(s.stop), "seed": s.seed}


def _model_deps(lowering: Lowering, key: str) -> list[str]:
    entry = lowering.models[key]
    return [entry.params["step"]] if entry.kind == "finetuned" else []


def _add(lowering: Lowering, step_id: str, kind: str, deps: list[str], params: dict[str, Any]) -> str:
    # What the result depends on: the model's identity and the vector's hash (a dependency), never keys or ids.
    content = {k: v for k, v in params.items() if k not in ("model", "vector")}
    content["model"] = lowering.models[params["model"]].identity
    return lowering.add_step(step_id, kind, [*deps, *_model_deps(lowering, params["model"])], params, content)


def _injection(lowering: Lowering, m: ir.ThoughtsVsText | ir.PrefillIntention) -> dict[str, Any]:
    return {
        "model": lowering.model(m.model),
        "vector": lowering.vector(m.vector),
        "word": m.word,
        "layer": m.layer,
        "strength": m.strength,
        "sentences": list(m.sentences),
        "sampling": _sampling(m.sampling),
    }


def lower_thoughts_vs_text(lowering: Lowering, step_id: str, m: ir.ThoughtsVsText) -> str:
    params = _injection(lowering, m)
    params.update(
        candidates=list(m.candidates),
        # The answer's first word, as "Answer immediately" makes the model write it.
        choices=[c[:1].upper() + c[1:] for c in m.candidates],
        identify_prompts=[_user(lowering, fill(m.identify, s)) for s in m.sentences],
        repeat_prompts=[_user(lowering, fill(m.repeat, s)) for s in m.sentences],
    )
    return _add(lowering, step_id, "thoughts_vs_text", [params["vector"]], params)


def _intention_prompt(m: ir.PrefillIntention, sentence: str, prefill: str = "") -> Prompt:
    turns = (("user", fill(m.ask, sentence)), ("assistant", m.word), ("user", m.question))
    return Prompt(turns, prefill)


def lower_prefill_intention(lowering: Lowering, step_id: str, m: ir.PrefillIntention) -> str:
    params = _injection(lowering, m)
    params.update(
        reply_prompts=[lowering.prompt(_intention_prompt(m, s)) for s in m.sentences],
        readout_prompts=[lowering.prompt(_intention_prompt(m, s, INTENTION_PREFILL)) for s in m.sentences],
        choices=list(INTENTION_CHOICES),
    )
    return _add(lowering, step_id, "prefill_intention", [params["vector"]], params)


def lower_think_about(lowering: Lowering, step_id: str, m: ir.ThinkAbout) -> str:
    params: dict[str, Any] = {
        "model": lowering.model(m.model),
        "vector": lowering.vector(m.vector),
        "word": m.word,
        "layer": m.layer,
        "sentences": list(m.sentences),
        "controls": list(m.controls),
        "baseline": list(m.vector.baseline),
        "template": m.vector.template,
        # The sentence is the assistant's reply (a prefill): read as if the model had written it.
        "think_prompts": [_user(lowering, fill(m.think, s, m.word), s) for s in m.sentences],
        "dont_prompts": [_user(lowering, fill(m.dont, s, m.word), s) for s in m.sentences],
    }
    return _add(lowering, step_id, "think_about", [params["vector"]], params)


LOWER: dict[type, tuple[str, Callable[[Lowering, str, Any], str]]] = {
    ir.ThoughtsVsText: ("thoughts_vs_text", lower_thoughts_vs_text),
    ir.PrefillIntention: ("prefill_intention", lower_prefill_intention),
    ir.ThinkAbout: ("think_about", lower_think_about),
}
