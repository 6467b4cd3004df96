"""OpenAI's chat completion JSON, read into intro's boundary types and written back from them.

Everything a client sends is checked here, before it reaches a backend: an unsupported or malformed field
is an `InvalidRequestError` (HTTP 400) whose message says what to send instead, and a body is read only
after its declared `Content-Length` passes (`request_body_length`). The replies (`chat_completion_body`,
`models_body`, `error_body`) are the shapes OpenAI's clients parse. Kept apart from the HTTP server so that
the test servers (tests/servers.py) speak exactly the same dialect.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any, Protocol, overload

from attrs import frozen

from intro.runtime.backends.requests import Generation, GenerationRequest, Message, TokenLogprob

# OpenAI's documented bounds; clients written against it never send more.
MAX_TOP_LOGPROBS = 20
DEFAULT_MAX_TOKENS = 256
MAX_BODY_BYTES = 8 * 1024 * 1024


class RequestHeaders(Protocol):
    """A request's headers as `http.server` hands them over: an `email.message.Message`, whose lookups
    ignore case (a plain `Mapping[str, str]` fits too, but is case-sensitive)."""

    @overload
    def get(self, name: str, /) -> str | None: ...
    @overload
    def get(self, name: str, default: str, /) -> str: ...


class InvalidRequestError(Exception):
    """The client's request cannot be served as written (HTTP 400, or `status` where another fits)."""

    status = HTTPStatus.BAD_REQUEST


class BodyTooLargeError(InvalidRequestError):
    """The request declares a body over the server's limit (HTTP 413)."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class ModelNotFoundError(LookupError):
    """A request named a model this server does not serve (HTTP 404, OpenAI's `model_not_found`)."""


@frozen
class ChatRequest:
    """A parsed chat completion request: what to generate, and what the reply must include."""

    generation: GenerationRequest
    want_logprobs: bool
    top_logprobs: int


def parse_chat_request(body: Any, key: str) -> ChatRequest:
    """Read an OpenAI chat completion request body; raise `InvalidRequestError` on anything unsupported."""
    if not isinstance(body, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    if body.get("stream"):
        raise InvalidRequestError("stream=true is not supported by intro serve")
    if body.get("n", 1) != 1:
        raise InvalidRequestError("only n=1 is supported; send one request per sample")
    messages, prefill = _split_prefill(_parse_messages(body.get("messages")))
    want_logprobs = bool(body.get("logprobs", False))
    top = _bounded_int(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS)
    generation = GenerationRequest(
        key=key,
        messages=messages,
        prefill=prefill,
        temperature=_number(body, "temperature", 1.0),  # OpenAI's default
        max_tokens=_max_tokens(body),
        seed=_bounded_int(body, "seed", 0, -(2**63), 2**63 - 1),
        stop=_parse_stop(body.get("stop")),
        # The backend reports chosen-token logprobs only alongside a top list, so ask for at least one.
        top_logprobs=max(top, 1) if want_logprobs else 0,
    )
    return ChatRequest(generation=generation, want_logprobs=want_logprobs, top_logprobs=top)


def _parse_messages(raw: Any) -> tuple[Message, ...]:
    if not isinstance(raw, list) or not raw:
        raise InvalidRequestError("'messages' must be a non-empty list")
    return tuple(_parse_message(item, index) for index, item in enumerate(raw))


def _parse_message(item: Any, index: int) -> Message:
    if not isinstance(item, dict) or item.get("role") not in ("system", "user", "assistant", "developer"):
        raise InvalidRequestError(f"messages[{index}] needs a role of system, user or assistant")
    role = "system" if item["role"] == "developer" else item["role"]
    return Message(role=role, content=_message_text(item.get("content"), index))


def _message_text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    # The newer OpenAI shape: a list of typed parts. Only text parts can reach a text model.
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(part.get("text", "")) for part in content)
    raise InvalidRequestError(f"messages[{index}].content must be a string or a list of text parts")


def _split_prefill(messages: tuple[Message, ...]) -> tuple[tuple[Message, ...], str]:
    # A conversation that ends with the assistant's words asks for their continuation.
    if len(messages) > 1 and messages[-1].role == "assistant":
        return messages[:-1], messages[-1].content
    return messages, ""


def _parse_stop(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        return (raw,)
    if isinstance(raw, list) and all(isinstance(s, str) for s in raw):
        return tuple(raw)
    raise InvalidRequestError("'stop' must be a string or a list of strings")


def _number(body: Mapping[str, Any], name: str, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise InvalidRequestError(f"'{name}' must be a non-negative number")
    return float(value)


def _bounded_int(body: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequestError(f"'{name}' must be an integer between {low} and {high}")
    return value


def _max_tokens(body: Mapping[str, Any]) -> int:
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    return _bounded_int(body, name, DEFAULT_MAX_TOKENS, 1, 1_000_000)


def chat_completion_body(chat: ChatRequest, generation: Generation, model: str) -> dict[str, Any]:
    """The OpenAI chat completion response for one generation."""
    chosen = generation.logprobs if chat.want_logprobs else None
    logprobs = _logprobs_body(chosen, chat.top_logprobs) if chosen is not None else None
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": generation.text},
                "finish_reason": generation.finish_reason,
                "logprobs": logprobs,
            }
        ],
        "usage": {
            "prompt_tokens": generation.prompt_tokens,
            "completion_tokens": generation.completion_tokens,
            "total_tokens": generation.prompt_tokens + generation.completion_tokens,
        },
    }


def _logprobs_body(logprobs: Sequence[TokenLogprob], top: int) -> dict[str, Any]:
    entries = []
    for item in logprobs:
        entry = _token_entry(item.token, item.logprob)
        entry["top_logprobs"] = [_token_entry(token, value) for token, value in item.top[:top]]
        entries.append(entry)
    return {"content": entries}


def _token_entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def model_object(model: str, created: int = 0, owned_by: str = "intro") -> dict[str, Any]:
    return {"id": model, "object": "model", "created": created, "owned_by": owned_by}


def models_body(model: str) -> dict[str, Any]:
    return {"object": "list", "data": [model_object(model)]}


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def model_not_found_body(model: str) -> dict[str, Any]:
    """OpenAI's answer to a request naming a model it does not have."""
    message = f"The model `{model}` does not exist or you do not have access to it."
    return error_body(message, "invalid_request_error", code="model_not_found", param="model")


def request_body_length(headers: RequestHeaders, limit: int) -> int:
    """The body length a request declares: 400 unless a plain non-negative integer, 413 over `limit`."""
    if headers.get("Transfer-Encoding"):
        raise InvalidRequestError("chunked request bodies are not supported; send a Content-Length")
    raw = (headers.get("Content-Length") or "0").strip()
    if not (raw.isascii() and raw.isdigit()):
        raise InvalidRequestError(f"Content-Length must be a non-negative integer, not {raw[:40]!r}")
    if int(raw) > limit:
        raise BodyTooLargeError(f"the request body is over this server's limit of {limit} bytes")
    return int(raw)
