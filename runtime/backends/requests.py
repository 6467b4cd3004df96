"""The values that cross the boundary between the executor and a model backend.

Every backend (in-process transformers, litellm, the OpenAI-compatible server) speaks these types and
nothing else, so the executor never knows which one it is talking to. A request carries its cache key
(the content hash computed by the compiler or the executor); backends echo it back so results can be
matched without relying on order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from attrs import field, frozen


@frozen
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str


@frozen
class Steering:
    """Add `strength * vector` to the residual stream after decoder layer `layer`.

    `start` is the first prompt token position (0-based, in the rendered prompt's tokens) that receives
    the vector; every later position, generated tokens included, receives it too. `end` (exclusive),
    when set, stops injection after that prompt position and nothing generated is steered. `start_text`,
    when set, overrides `start`: the injection begins at the token just before the first occurrence of
    that text in the rendered prompt. `span_text`, when set, overrides all three: exactly the prompt
    tokens that overlap the first occurrence of that text are steered (start *and* end), and nothing
    generated is; this is how "inject only on a sentence's tokens" is expressed.
    `vector` is a path to a safetensors file holding one tensor named "vector".
    """

    vector: str
    layer: int
    strength: float
    start: int = 0
    end: int | None = None
    start_text: str | None = None
    span_text: str | None = None


@frozen
class GenerationRequest:
    key: str
    messages: tuple[Message, ...]
    temperature: float = 0.0
    max_tokens: int = 16
    seed: int = 0
    stop: tuple[str, ...] = ()
    # Text the assistant turn is forced to begin with; the completion continues it.
    prefill: str = ""
    top_logprobs: int = 0
    steering: Steering | None = None


@frozen
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@frozen
class Generation:
    key: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"
    logprobs: tuple[TokenLogprob, ...] | None = None


@frozen
class ScoreRequest:
    """Ask for the probability of each of a closed set of answers as the assistant's reply.

    Answers are scored as whole continuations after the prompt (and `prefill`), so multi-token answers
    ("true", "B") are handled exactly; probabilities are renormalised over `choices`.
    """

    key: str
    messages: tuple[Message, ...]
    choices: tuple[str, ...]
    prefill: str = ""
    steering: Steering | None = None


@frozen
class Score:
    key: str
    # log-probability of each choice, renormalised over the choices (log-softmax of the raw sums)
    logprobs: dict[str, float] = field(eq=False)
    # raw (unnormalised) total log-probability of each choice's tokens
    raw_logprobs: dict[str, float] = field(eq=False)
    prompt_tokens: int = 0


class Backend(Protocol):
    """One model, ready to answer. Batching and concurrency are the backend's business."""

    name: str

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]: ...

    async def score(self, requests: Sequence[ScoreRequest]) -> list[Score]: ...

    async def aclose(self) -> None: ...


class BackendError(Exception):
    """A model backend failed in a way the user must act on (missing package, bad answer, no network)."""


class RetryableError(BackendError):
    """A transient failure (429, 5xx, timeout); `retry_after` seconds is the server's hint, if any."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after
