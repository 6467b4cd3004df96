"""`intro serve`: an OpenAI-compatible HTTP server over any `Backend`.

It lets anything that speaks the OpenAI chat API (litellm, the openai client, curl, another machine's
intro) use a model that runs in this process, e.g. an embedded open-weights model on a GPU box. Endpoints:
`POST /v1/chat/completions` (text only, n=1, logprobs and top_logprobs in OpenAI's shape, usage counts;
a trailing assistant message is a prefill that the answer continues), `GET /v1/models`,
`GET /v1/models/{id}` and `GET /health`. With `serve_finetune.enable_finetuning` (as `intro serve` does)
also OpenAI's files and fine-tuning endpoints: LoRA jobs on the served model, whose fine-tuned models then
answer chat completions addressed to them.

The HTTP side is the standard library's `ThreadingHTTPServer`: one thread per connection, each waiting
on a future, and cancelling it when its client hangs up. The backend side is one asyncio loop in its
own thread that gathers requests arriving together into one `backend.generate` call, because in-process
models answer a batch of 32 prompts in little more time than one.

Sharing: a request is generated in turns of at most `turn_tokens` tokens. A request that needs more goes
back to the end of the queue after each turn and continues from its text so far (as a prefill, which
every in-process backend continues), so one request asking for a long reply holds the model for one turn
at a time and requests arriving meanwhile join the next batch. A reply no longer than one turn is exactly
the backend's answer; a longer one is re-tokenized at each turn boundary, as any prefill is, so it may
differ from the reply the model gives in one piece (a tiny random model's reply did so right after the
first boundary; a real model's text mostly re-tokenizes as it was generated). `turn_tokens=None` runs
every request whole: exact replies, but a long one holds the model until it is done.

Trust: `max_tokens` is bounded by the model's context; bodies must declare a sane `Content-Length`; with
an API key every endpoint but `/health` wants `Authorization: Bearer <key>`, and binding anything but
loopback requires one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hmac
import ipaddress
import json
import logging
import select
import socket
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from attrs import define, evolve, field, frozen

from intro.runtime.requests import (
    Backend,
    BackendError,
    Generation,
    GenerationRequest,
    Message,
    RetryableError,
    TokenLogprob,
)

log = logging.getLogger(__name__)

# OpenAI's documented bounds; clients written against it never send more.
MAX_TOP_LOGPROBS = 20
DEFAULT_MAX_TOKENS = 256
MAX_BODY_BYTES = 8 * 1024 * 1024
# The most tokens one request generates before others get their turn (see the module docstring): as
# many as a request without max_tokens asks for, so that such replies are always generated whole.
DEFAULT_TURN_TOKENS = DEFAULT_MAX_TOKENS
# How often a waiting HTTP thread looks whether its client is still there.
DISCONNECT_POLL_SECONDS = 0.2


class InvalidRequestError(Exception):
    """The client's request cannot be served as written (HTTP 400, or `status` where another fits)."""

    status = HTTPStatus.BAD_REQUEST


class BodyTooLargeError(InvalidRequestError):
    """The request declares a body over the server's limit (HTTP 413)."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class ModelNotFoundError(LookupError):
    """A request named a model this server does not serve (HTTP 404, OpenAI's `model_not_found`)."""


class InsecureBindError(ValueError):
    """Serving on an address other machines can reach, without an API key."""


# ---------------------------------------------------------------------------------------------------
# OpenAI JSON <-> boundary types
# ---------------------------------------------------------------------------------------------------


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
    wanted = chat.want_logprobs and generation.logprobs is not None
    logprobs = _logprobs_body(generation.logprobs, chat.top_logprobs) if wanted else None
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


def request_body_length(headers: Mapping[str, str], limit: int) -> int:
    """The body length a request declares: 400 unless a plain non-negative integer, 413 over `limit`."""
    if headers.get("Transfer-Encoding"):
        raise InvalidRequestError("chunked request bodies are not supported; send a Content-Length")
    raw = (headers.get("Content-Length") or "0").strip()
    if not (raw.isascii() and raw.isdigit()):
        raise InvalidRequestError(f"Content-Length must be a non-negative integer, not {raw[:40]!r}")
    if int(raw) > limit:
        raise BodyTooLargeError(f"the request body is over this server's limit of {limit} bytes")
    return int(raw)


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach an address bound to `host`."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name, or "" (every interface): others may reach it
        return False


# ---------------------------------------------------------------------------------------------------
# Batching requests from many HTTP threads into one backend
# ---------------------------------------------------------------------------------------------------


@define
class _Job:
    """One request's progress through its turns, and the future its HTTP thread waits on."""

    request: GenerationRequest
    future: concurrent.futures.Future[Generation]
    text: str = ""
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] = field(factory=list)
    turns: int = 0
    first_prompt_tokens: int = 0
    last: Generation | None = None
    finish_reason: str | None = None

    def turn_request(self, turn_tokens: int | None, context: int | None) -> GenerationRequest:
        """What to generate this turn: the request itself first, then its continuation."""
        budget = self.request.max_tokens - self.completion_tokens
        budget = budget if turn_tokens is None else min(turn_tokens, budget)
        if self.last is None:
            return evolve(self.request, max_tokens=budget)
        if context is not None:
            budget = min(budget, context - self.last.prompt_tokens - self.last.completion_tokens)
        # A fresh seed per turn, or a sampled reply would repeat its first turn's draws.
        seed = (self.request.seed + self.turns + 2**63) % 2**64 - 2**63
        return evolve(self.request, prefill=self.request.prefill + self.text, max_tokens=budget, seed=seed)

    def absorb(self, generation: Generation, context: int | None) -> None:
        """Add one turn's generation; sets `finish_reason` when the request is done."""
        if self.last is None and context is not None and generation.prompt_tokens >= context:
            raise InvalidRequestError(
                f"the prompt is {generation.prompt_tokens} tokens; this model's context is {context} tokens"
            )
        if self.last is None:
            self.first_prompt_tokens = generation.prompt_tokens
        self.turns += 1
        self.last = generation
        self.completion_tokens += generation.completion_tokens
        self.logprobs.extend(generation.logprobs or ())
        text = generation.text
        self.finish_reason = self._finish(generation, context)
        if self.finish_reason is None:
            # A turn may end inside a multi-byte character; its next turn writes the character whole.
            text = text.rstrip("\ufffd")
        self.text += text
        self._cut_at_stop()

    def _finish(self, generation: Generation, context: int | None) -> str | None:
        if generation.finish_reason != "length":
            return generation.finish_reason
        used = generation.prompt_tokens + generation.completion_tokens
        out_of_room = context is not None and used >= context
        # A turn that added no text cannot be continued faithfully: its continuation would start over.
        if self.completion_tokens >= self.request.max_tokens or out_of_room or not generation.text:
            return "length"
        return None

    def _cut_at_stop(self) -> None:
        # A stop string may straddle two turns, where neither turn's backend call saw it whole.
        found = [self.text.find(stop) for stop in self.request.stop if stop and stop in self.text]
        if found and self.turns > 1:
            self.text, self.finish_reason = self.text[: min(found)], "stop"

    def generation(self) -> Generation:
        assert self.last is not None and self.finish_reason is not None
        if self.turns == 1:
            return self.last
        logprobs = tuple(self.logprobs) if self.request.top_logprobs > 0 else None
        return Generation(
            key=self.request.key,
            text=self.text,
            prompt_tokens=self.first_prompt_tokens,
            completion_tokens=self.completion_tokens,
            finish_reason=self.finish_reason,
            logprobs=logprobs,
        )


class BatchingRunner:
    """Runs a backend on a private event loop and merges requests that arrive together into batches.

    At most `batches_in_flight` batches run at once; while they do, new requests queue up, so the next
    batch takes everything that arrived meanwhile (up to `max_batch`). An idle runner waits
    `batch_window` seconds after the first request for company before starting a batch. Each batch is
    one turn of at most `turn_tokens` tokens per request; unfinished requests queue again behind those
    that arrived meanwhile. `context_tokens`, when known, bounds prompt plus reply. A request whose
    future is cancelled (its client went away) is dropped before its next turn; `cancelled` counts them.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        max_batch: int,
        batch_window: float,
        batches_in_flight: int,
        turn_tokens: int | None = DEFAULT_TURN_TOKENS,
        context_tokens: int | None = None,
    ):
        if turn_tokens is not None and turn_tokens < 1:
            raise ValueError("turn_tokens must be at least 1, or None for no turns")
        self.backend = backend
        self.max_batch = max_batch
        self.batch_window = batch_window
        self.turn_tokens = turn_tokens
        self.context_tokens = context_tokens
        self.batch_sizes: list[int] = []
        self.cancelled = 0
        self.active = 0  # submitted requests not yet answered or dropped
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="intro-serve-loop", daemon=True)
        self._thread.start()
        # Created here, not on the loop, so `submit` works at once; a Queue binds to a loop on first wait.
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._collector = asyncio.run_coroutine_threadsafe(
            self._spawn(batches_in_flight), self._loop
        ).result()

    async def _spawn(self, batches_in_flight: int) -> asyncio.Task[None]:
        return asyncio.create_task(self._start(batches_in_flight))

    async def _stop_collector(self) -> None:
        # Let the cancellation finish on the loop, so no task is left pending when the loop stops.
        self._collector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._collector

    async def _start(self, batches_in_flight: int) -> None:
        slots = asyncio.Semaphore(batches_in_flight)
        tasks: set[asyncio.Task[None]] = set()
        while True:
            await slots.acquire()
            batch = await self._next_batch()
            task = asyncio.create_task(self._run(batch, slots))
            tasks.add(task)  # keep a reference until done, or the loop may drop the task
            task.add_done_callback(tasks.discard)

    def submit(self, request: GenerationRequest) -> concurrent.futures.Future[Generation]:
        """Queue one request from any thread; the future completes with its generation. Cancel the
        future to drop the request."""
        future: concurrent.futures.Future[Generation] = concurrent.futures.Future()
        self._loop.call_soon_threadsafe(self._enqueue, _Job(request, future))
        return future

    def _enqueue(self, job: _Job) -> None:
        self.active += 1
        self._queue.put_nowait(job)

    async def _next_batch(self) -> list[_Job]:
        batch = [await self._queue.get()]
        deadline = self._loop.time() + self.batch_window
        while len(batch) < self.max_batch:
            if self._queue.empty():
                remaining = deadline - self._loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            else:
                batch.append(self._queue.get_nowait())
        return batch

    async def _run(self, batch: list[_Job], slots: asyncio.Semaphore) -> None:
        try:
            live = [job for job in batch if not self._dropped(job)]
            if live:
                self.batch_sizes.append(len(live))
                await self._answer(live)
        finally:
            slots.release()

    def _dropped(self, job: _Job) -> bool:
        if not job.future.done():
            return False
        self.cancelled += 1
        self.active -= 1
        return True

    async def _answer(self, batch: list[_Job]) -> None:
        requests = [job.turn_request(self.turn_tokens, self.context_tokens) for job in batch]
        try:
            generations = await self.backend.generate(requests)
        except Exception as error:
            if len(batch) == 1:
                self._finish(batch[0], error=error)
                return
            # One bad request must not fail its neighbours: answer them one by one.
            for job in batch:
                await self._answer([job])
            return
        by_key = {generation.key: generation for generation in generations}
        for job in batch:
            self._take_turn(job, by_key.get(job.request.key))

    def _take_turn(self, job: _Job, generation: Generation | None) -> None:
        if generation is None:
            missing = BackendError(f"the backend returned no generation for request {job.request.key}")
            self._finish(job, error=missing)
            return
        try:
            job.absorb(generation, self.context_tokens)
        except InvalidRequestError as error:
            self._finish(job, error=error)
            return
        if job.finish_reason is not None:
            self._finish(job, result=job.generation())
        else:
            self._queue.put_nowait(job)  # behind everything that arrived during this turn

    def _finish(self, job: _Job, *, result: Generation | None = None, error: BaseException | None = None):
        self.active -= 1
        _settle(job.future, result=result, error=error)

    def close(self, *, close_backend: bool = False) -> None:
        """Stop the loop; with `close_backend`, first close the backend on it, the loop it ran on."""
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._stop_collector(), self._loop).result(timeout=30)
        if close_backend and self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.backend.aclose(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()


def _settle(future: concurrent.futures.Future, *, result: Any = None, error: BaseException | None = None):
    # The HTTP thread may have given up (cancelled the future) at any moment, even between these lines.
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def context_tokens_of(backend: Backend) -> int | None:
    """The context length of an in-process backend's model (prompt plus reply), or None if unknown."""
    config = getattr(getattr(getattr(backend, "loaded", None), "model", None), "config", None)
    config = getattr(config, "text_config", None) or config
    value = getattr(config, "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None


# ---------------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------------


class ChatServer(ThreadingHTTPServer):
    """The HTTP server. `url` is the OpenAI base URL (ending in /v1); `requests_served` counts answered
    chat completions, `runner.batch_sizes` the batches they were grouped into.

    `model_name` is the id `/v1/models` lists first, `aliases` more names for the same model. With
    `known_models_only` a request naming any other model (not a fine-tuned one of this server either)
    gets OpenAI's 404; without it any name reaches the served model. With `api_key` every endpoint but
    `/health` wants it as a bearer token."""

    daemon_threads = True
    allow_reuse_address = True
    # The default backlog of 5 drops connections when a client opens dozens at once.
    request_queue_size = 256

    def __init__(
        self,
        backend: Backend,
        host: str,
        port: int,
        runner: BatchingRunner,
        *,
        request_timeout: float,
        model_name: str | None = None,
        aliases: Sequence[str] = (),
        known_models_only: bool = False,
        api_key: str | None = None,
    ):
        if not api_key and not is_loopback(host):
            raise InsecureBindError(
                f"serving on {host or 'every interface'} lets other machines use the model, upload files "
                "and train: give an API key (--api-key) or bind 127.0.0.1"
            )
        super().__init__((host, port), ChatHandler)
        self.backend = backend
        self.model_name = model_name or backend.name
        self.served_names = tuple(dict.fromkeys([self.model_name, *aliases]))
        self.known_models_only = known_models_only
        self.api_key = api_key
        self.runner = runner
        self.request_timeout = request_timeout
        self.requests_served = 0
        self._count_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # The files and fine-tuning endpoints (runtime/serve_finetune.py), when enabled.
        self.finetuning: Any = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def runner_for(self, model: Any) -> tuple[BatchingRunner, str]:
        """The runner that answers a request naming `model`, and the model name the reply gives: a
        fine-tuned model's own runner, else the served model's. Raises `LookupError` for a model this
        server does not have (any name reaches the served model unless `known_models_only`)."""
        tuned = self.finetuning.runner_for(model) if self.finetuning and isinstance(model, str) else None
        if tuned:
            return tuned, model
        if self.known_models_only and model is not None and not self.serves(model):
            raise ModelNotFoundError(model)
        return self.runner, self.model_name

    def serves(self, model: str) -> bool:
        """Whether `model` names the served model (its listed names or the backend's own name)."""
        return model in self.served_names or model == self.backend.name

    def models(self) -> list[dict[str, Any]]:
        """`/v1/models`: the served names, then the fine-tuned models made here."""
        tuned = self.finetuning.models() if self.finetuning else []
        return [model_object(name) for name in self.served_names] + tuned

    def model(self, model: str) -> dict[str, Any] | None:
        return next((entry for entry in self.models() if entry["id"] == model), None)

    def authorized(self, header: str | None) -> bool:
        if not self.api_key:
            return True
        scheme, _, token = (header or "").partition(" ")
        # A constant-time comparison: response times must not reveal how much of a guess was right.
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self.api_key.encode()
        )

    def count_served(self) -> None:
        with self._count_lock:
            self.requests_served += 1

    def start_in_thread(self) -> ChatServer:
        # A short poll interval makes close() quick; the cost is a few idle wakeups a second.
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, name="intro-serve-http", daemon=True
        )
        self._thread.start()
        return self

    def close(self, *, close_backend: bool = False) -> None:
        """Stop serving and release the port and the backend's loop. The backend stays open unless
        `close_backend`: whoever made it may still use it."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
        self.server_close()
        if self.finetuning is not None:
            self.finetuning.close()
        self.runner.close(close_backend=close_backend)

    def __enter__(self) -> ChatServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ClientGoneError(Exception):
    """The client closed its connection while its request waited."""


class ChatHandler(BaseHTTPRequestHandler):
    server: ChatServer
    # HTTP/1.1 keeps connections alive between a client's requests.
    protocol_version = "HTTP/1.1"
    # Headers and body leave in one segment, at once: with Nagle's algorithm on, a keep-alive client's
    # delayed ACK would hold each body back for up to 40 ms.
    disable_nagle_algorithm = True
    wbufsize = -1
    # A client that stops sending mid-request (or idles on a kept-alive connection) frees its thread.
    timeout = 300

    def do_GET(self) -> None:
        route = self.path.split("?", 1)[0].rstrip("/")
        if route == "/health":
            self._send_json(HTTPStatus.OK, {"status": "ok", "requests_waiting": self.server.runner.active})
        elif not self._authorized():
            return
        elif route in ("/v1/models", "/models"):
            self._send_json(HTTPStatus.OK, {"object": "list", "data": self.server.models()})
        elif route.startswith(("/v1/models/", "/models/")):
            self._send_model(urllib.parse.unquote(route.split("/models/", 1)[1]))
        elif not self._finetuning_route("GET"):
            self._send_json(HTTPStatus.NOT_FOUND, error_body(f"no route {self.path}", "not_found_error"))

    def do_POST(self) -> None:
        if not self._authorized():
            return
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            if not self._finetuning_route("POST"):
                self._reject(HTTPStatus.NOT_FOUND, error_body(f"no route {self.path}", "not_found_error"))
            return
        try:
            self._chat()
        except ClientGoneError:
            self.close_connection = True  # nobody to answer
        except InvalidRequestError as error:
            self._reject(error.status, error_body(str(error), "invalid_request_error"))
        except ModelNotFoundError as error:  # also a fine-tuned model this server never made
            self._send_json(HTTPStatus.NOT_FOUND, model_not_found_body(str(error.args[0])))
        except concurrent.futures.TimeoutError:
            self._send_json(HTTPStatus.GATEWAY_TIMEOUT, error_body("the model took too long", "timeout"))
        except RetryableError as error:
            # The served backend is itself rate limited or flaky: pass the hint on so clients retry.
            headers = {} if error.retry_after is None else {"Retry-After": f"{error.retry_after:g}"}
            self._send_json(HTTPStatus.SERVICE_UNAVAILABLE, error_body(str(error), "server_error"), headers)
        except Exception as error:
            log.exception("generation failed")
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, error_body(str(error), "server_error"))

    def _chat(self) -> None:
        body = self._read_json()
        chat = parse_chat_request(body, key=uuid.uuid4().hex)
        runner, model = self.server.runner_for(body.get("model"))
        context = runner.context_tokens
        if context is not None and chat.generation.max_tokens > context:
            raise InvalidRequestError(
                f"max_tokens is too large: {chat.generation.max_tokens}. This model's context is "
                f"{context} tokens, prompt and reply together."
            )
        generation = self._wait(runner.submit(chat.generation))
        self._send_json(HTTPStatus.OK, chat_completion_body(chat, generation, model))
        self.server.count_served()

    def _wait(self, future: concurrent.futures.Future[Generation]) -> Generation:
        """The future's result; cancels it (so the runner drops the request) if the client hangs up or
        the server's request timeout passes."""
        deadline = time.monotonic() + self.server.request_timeout
        while True:
            try:
                return future.result(
                    timeout=max(0.0, min(DISCONNECT_POLL_SECONDS, deadline - time.monotonic()))
                )
            except concurrent.futures.TimeoutError:
                if self._client_gone():
                    future.cancel()
                    raise ClientGoneError() from None
                if time.monotonic() >= deadline:
                    future.cancel()
                    raise

    def _client_gone(self) -> bool:
        # A closed connection reads as ready with nothing to read; a pipelined next request is data.
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _authorized(self) -> bool:
        if self.server.authorized(self.headers.get("Authorization")):
            return True
        body = error_body(
            "Incorrect API key provided. Send it as 'Authorization: Bearer <key>'.",
            "invalid_request_error",
            code="invalid_api_key",
        )
        self._reject(HTTPStatus.UNAUTHORIZED, body)
        return False

    def _send_model(self, model: str) -> None:
        found = self.server.model(model)
        if found is None:
            self._send_json(HTTPStatus.NOT_FOUND, model_not_found_body(model))
        else:
            self._send_json(HTTPStatus.OK, found)

    def _finetuning_route(self, method: str) -> bool:
        """Answer a files or fine-tuning request if this is one and the server has those endpoints."""
        service = self.server.finetuning
        reply = service.handle(method, self.path, self.headers, self.rfile) if service else None
        if reply is None:
            return False
        status, body = reply
        if isinstance(body, bytes):
            self._send(status, body, "application/octet-stream")
        elif status >= 400:
            self._reject(status, body)
        else:
            self._send_json(status, body)
        return True

    def _read_json(self) -> Any:
        length = request_body_length(self.headers, MAX_BODY_BYTES)
        try:
            return json.loads(self.rfile.read(length) or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InvalidRequestError("the request body is not valid JSON") from None

    def _reject(self, status: HTTPStatus, body: Mapping[str, Any]) -> None:
        """An error reply after which the connection closes: the request's body may be left unread,
        and its bytes must not be taken for the next request."""
        self.close_connection = True
        self._send_json(status, body, {"Connection": "close"})

    def _send_json(
        self, status: HTTPStatus, body: Mapping[str, Any], headers: Mapping[str, str] = {}
    ) -> None:
        self._send(status, json.dumps(body).encode("utf-8"), "application/json", headers)

    def _send(
        self, status: HTTPStatus, payload: bytes, content_type: str, headers: Mapping[str, str] = {}
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        # The request line only: headers (the API key among them) are never logged.
        log.debug("%s %s", self.address_string(), format % args)


def make_server(
    backend: Backend,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    max_batch: int = 32,
    batch_window: float = 0.005,
    batches_in_flight: int = 1,
    request_timeout: float = 600.0,
    model_name: str | None = None,
    aliases: Sequence[str] = (),
    known_models_only: bool = False,
    api_key: str | None = None,
    turn_tokens: int | None = DEFAULT_TURN_TOKENS,
    context_tokens: int | None = None,
) -> ChatServer:
    """Bind an OpenAI-compatible server for `backend` (port 0 picks a free port); call
    `.start_in_thread()` or `.serve_forever()`, and `.close()` when done. `model_name` is the id that
    `/v1/models` lists (the backend's name by default); see `ChatServer` for the other names, the API
    key and `known_models_only`. `context_tokens` defaults to the in-process model's context.

    One batch in flight suits an in-process model, which has one device to compute on; raise
    `batches_in_flight` for backends that wait on something else. Raises `InsecureBindError` for a
    non-loopback `host` without `api_key`, `OSError` when the address cannot be bound.
    """
    runner = BatchingRunner(
        backend,
        max_batch=max_batch,
        batch_window=batch_window,
        batches_in_flight=batches_in_flight,
        turn_tokens=turn_tokens,
        context_tokens=context_tokens or context_tokens_of(backend),
    )
    try:
        return ChatServer(
            backend,
            host,
            port,
            runner,
            request_timeout=request_timeout,
            model_name=model_name,
            aliases=aliases,
            known_models_only=known_models_only,
            api_key=api_key,
        )
    except BaseException:
        runner.close()
        raise


def serve_forever(
    backend: Backend, host: str = "127.0.0.1", port: int = 8000, *, close_backend: bool = False
):
    """Serve `backend` until interrupted (Ctrl-C); then close the server (and the backend, if asked)."""
    _serve_until_interrupted(make_server(backend, host, port), close_backend=close_backend)


def _serve_until_interrupted(server: ChatServer, *, close_backend: bool) -> None:
    names = ", ".join(server.served_names)
    print(f"serving {names} at {server.url}  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        server.close(close_backend=close_backend)


def main_serve(
    source: str,
    host: str,
    port: int,
    state: str | None = None,
    *,
    api_key: str | None = None,
    names: Sequence[str] = (),
    turn_tokens: int | None = DEFAULT_TURN_TOKENS,
) -> int:
    """`intro serve MODEL --host H --port N [--state DIR] [--api-key KEY] [--name NAME]... [--turn-tokens
    N]`: load a local model (`embedded:<name>` or a directory) and serve it under `MODEL` as given and each
    `NAME`, with the files and fine-tuning endpoints keeping their state in `state` (a fresh temporary
    directory by default). Errors are one line on standard error. Returns the process exit code: 2 for a bad address
    or a non-loopback bind without a key, 1 when the model cannot be loaded or the port cannot be bound."""
    problem = _address_problem(host, port, api_key)
    if problem is not None:
        print(f"intro: error: {problem[1]}", file=sys.stderr)
        return problem[0]
    # Imported only now: torch takes seconds to load, and a wrong flag must not wait for it.
    from intro.runtime.backends.local import LocalBackend, load_local_model
    from intro.runtime.serve_finetune import enable_finetuning

    try:
        backend = LocalBackend(load_local_model(source))
    except BackendError as error:
        print(f"intro: error: {error}", file=sys.stderr)
        return 1
    options = {"model_name": source, "aliases": tuple(names), "api_key": api_key, "turn_tokens": turn_tokens}
    server = _bind(lambda: make_server(backend, host, port, known_models_only=True, **options), host, port)
    if server is None:
        return 1
    service = enable_finetuning(server, backend.loaded, state)
    print(f"fine-tuning state in {service.state.root}", flush=True)
    _serve_until_interrupted(server, close_backend=True)
    return 0


def _address_problem(host: str, port: int, api_key: str | None) -> tuple[int, str] | None:
    """Checked before the model loads, which may take minutes: (exit code, message) or None."""
    if not 0 <= port <= 65535:
        return 2, f"--port must be between 0 and 65535, not {port}"
    if not api_key and not is_loopback(host):
        return 2, (
            f"--host {host or repr(host)} lets other machines use the model, upload files and train; "
            "give --api-key KEY (clients send it as a bearer token) or bind 127.0.0.1"
        )
    try:  # a port already taken is found now, not after loading the weights
        with socket.create_server((host, port)):
            pass
    except OSError as error:
        return 1, f"cannot listen on {host}:{port}: {error.strerror or error}"
    return None


def _bind(make: Callable[[], ChatServer], host: str, port: int) -> ChatServer | None:
    try:
        return make()
    except OSError as error:  # taken meanwhile
        print(f"intro: error: cannot listen on {host}:{port}: {error.strerror or error}", file=sys.stderr)
        return None
