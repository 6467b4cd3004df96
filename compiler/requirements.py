"""What a function asks of its arguments, said in the language: `require(condition, message)`.

A function states its preconditions in its body (`let warm = require(sampling.temperature > 0, "...")`)
and a call that breaks one is an error at the caller: at the one argument the condition depends on, or at
the call where it depends on several or none (call_sites.py), with a note naming where in the function
the requirement is written. `length` and `mentions` are what the standard library's conditions read
besides comparisons and fields: how many items a list has, and whether a text occurs in a set of prompts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from . import dataflow as df
from . import ir
from .diagnostics import Span
from .template_sandbox import TemplateProblem, render
from .types import Function, Param, entry

if TYPE_CHECKING:
    from .evaluate import Context

Spans = Mapping[str, Span]
UNMET = "E250"  # a function's requirement that its call does not meet: told at the call (call_sites.py)


def _require(ctx: Context, spans: Spans, at: Span, **a: Any) -> bool:
    if not a["condition"]:
        ctx.fail(UNMET, a["message"], spans["condition"])
    return True


def _length(ctx: Context, spans: Spans, at: Span, **a: Any) -> int:
    return len(a["items"])


def _mentions(ctx: Context, spans: Spans, at: Span, **a: Any) -> bool:
    """Whether `text` occurs in the prompts, rendered with their first row (or in any of their texts, where
    that row cannot render them: the template's own check tells why)."""
    prompts, text = a["prompts"], a["text"]
    if df.is_run_time(prompts):
        ctx.fail(
            "E333", "mentions() reads prompts known before the run (not built from results)", spans["prompts"]
        )
    return any(text in part for part in _texts(prompts))


def _texts(prompts: df.PromptSet) -> list[str]:
    """The texts of a prompt set's first prompt: its turns, template, system message and prefill."""
    from .prompt_sets import sample_rows

    texts = [content for _, content in prompts.turns]
    texts += [t for t in (prompts.template, prompts.system, prompts.prefill) if t]
    if isinstance(prompts.source, ir.Selection) and prompts.template is None:
        texts += [task.prompt for task in prompts.source.tasks]
    rows = sample_rows(prompts.source, prompts).rows
    if not rows:
        return texts
    values = prompts.fields(rows[0])
    try:
        return [render(t, values) for t in texts]
    except TemplateProblem:
        return texts


_fn = entry


REQUIREMENTS: dict[str, Function] = dict(
    [
        _fn(
            "require",
            _require,
            Param("condition", "bool"),
            Param("message", "string"),
            doc="`true`, or an error with `message` where `condition` is false: a function's requirement of "
            "its arguments, told at the caller's argument the condition depends on (or at the call)",
            returns="bool",
            example='require(length(["dog", "ocean"]) >= 2, "two words at least")',
        ),
        _fn(
            "length",
            _length,
            Param("items", "list"),
            doc="how many items a list has",
            returns="number",
            example='length(["dog", "ocean"])',
        ),
        _fn(
            "mentions",
            _mentions,
            Param("prompts", "prompts"),
            Param("text", "string"),
            doc="whether `text` occurs in the prompts (their turns, template, system message and prefill, "
            "rendered with the first row): a steering `start` must, say",
            returns="bool",
            example='mentions(prompts(["I love dogs."], "{{ text }}"), "dogs")',
        ),
    ]
)
