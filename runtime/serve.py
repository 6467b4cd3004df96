"""`intro serve`: an OpenAI-compatible HTTP server over any `Backend`.

It lets anything that speaks the OpenAI chat API (litellm, the openai client, curl, another machine's
intro) use a model that runs in this process, e.g. an embedded open-weights model on a GPU box. Endpoints:
`POST /v1/chat/completions` (text only, n=1, logprobs and top_logprobs in OpenAI's shape, usage counts;
a trailing assistant message is a prefill that the answer continues) and `GET /v1/models`. With
`serve_finetune.enable_finetuning` (as `intro serve` does) also OpenAI's files and fine-tuning endpoints:
LoRA jobs on the served model, whose fine-tuned models then answer chat completions addressed to them.

The HTTP side is the standard library's `ThreadingHTTPServer`: one thread per connection, each blocking
on a future. The backend side is one asyncio loop in its own thread that gathers requests arriving
together into one `backend.generate` call, because in-process models answer a batch of 32 prompts in
little more time than one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from attrs import frozen

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


class InvalidRequestError(Exception):
    """The client's request cannot be served as written (HTTP 400)."""


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


def models_body(model: str) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": model, "object": "model", "created": 0, "owned_by": "intro"}]}


def error_body(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


# ---------------------------------------------------------------------------------------------------
# Batching requests from many HTTP threads into one backend
# ---------------------------------------------------------------------------------------------------


# A queued request and the future its HTTP thread waits on.
_Pending = tuple[GenerationRequest, concurrent.futures.Future[Generation]]


class BatchingRunner:
    """Runs a backend on a private event loop and merges requests that arrive together into batches.

    At most `batches_in_flight` batches run at once; while they do, new requests queue up, so the next
    batch takes everything that arrived meanwhile (up to `max_batch`). An idle runner waits
    `batch_window` seconds after the first request for company before starting a batch.
    """

    def __init__(self, backend: Backend, *, max_batch: int, batch_window: float, batches_in_flight: int):
        self.backend = backend
        self.max_batch = max_batch
        self.batch_window = batch_window
        self.batch_sizes: list[int] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="intro-serve-loop", daemon=True)
        self._thread.start()
        # Created here, not on the loop, so `submit` works at once; a Queue binds to a loop on first wait.
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
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
        """Queue one request from any thread; the future completes with its generation."""
        future: concurrent.futures.Future[Generation] = concurrent.futures.Future()
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (request, future))
        return future

    async def _next_batch(self) -> list[_Pending]:
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

    async def _run(self, batch: list[_Pending], slots: asyncio.Semaphore) -> None:
        try:
            self.batch_sizes.append(len(batch))
            await self._answer(batch)
        finally:
            slots.release()

    async def _answer(self, batch: list[_Pending]) -> None:
        requests = [request for request, _ in batch]
        try:
            generations = await self.backend.generate(requests)
        except Exception as error:
            if len(batch) == 1:
                _settle(batch[0][1], error=error)
                return
            # One bad request must not fail its neighbours: answer them one by one.
            for item in batch:
                await self._answer([item])
            return
        by_key = {generation.key: generation for generation in generations}
        for request, future in batch:
            found = by_key.get(request.key)
            missing = BackendError(f"the backend returned no generation for request {request.key}")
            _settle(future, result=found, error=None if found else missing)

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
    if future.done():  # the HTTP thread gave up waiting
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


# ---------------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------------


class ChatServer(ThreadingHTTPServer):
    """The HTTP server. `url` is the OpenAI base URL (ending in /v1); `requests_served` counts answered
    chat completions, `runner.batch_sizes` the batches they were grouped into."""

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
    ):
        super().__init__((host, port), ChatHandler)
        self.backend = backend
        self.model_name = model_name or backend.name
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
        fine-tuned model's own runner, else the served model's (requests may name any model)."""
        tuned = self.finetuning.runner_for(model) if self.finetuning and isinstance(model, str) else None
        return (tuned, model) if tuned else (self.runner, self.model_name)

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


class ChatHandler(BaseHTTPRequestHandler):
    server: ChatServer
    # HTTP/1.1 keeps connections alive between a client's requests.
    protocol_version = "HTTP/1.1"
    # Headers and body leave in one segment, at once: with Nagle's algorithm on, a keep-alive client's
    # delayed ACK would hold each body back for up to 40 ms.
    disable_nagle_algorithm = True
    wbufsize = -1

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self._send_json(HTTPStatus.OK, models_body(self.server.model_name))
        elif self.path.rstrip("/") == "/health":
            self._send_json(HTTPStatus.OK, {"status": "ok"})
        elif not self._finetuning_route("GET"):
            self._send_json(HTTPStatus.NOT_FOUND, error_body(f"no route {self.path}", "not_found_error"))

    def do_POST(self) -> None:
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            if not self._finetuning_route("POST"):
                self._send_json(HTTPStatus.NOT_FOUND, error_body(f"no route {self.path}", "not_found_error"))
            return
        try:
            body = self._read_json()
            chat = parse_chat_request(body, key=uuid.uuid4().hex)
            runner, model = self.server.runner_for(body.get("model"))
            generation = runner.submit(chat.generation).result(self.server.request_timeout)
        except InvalidRequestError as error:
            self._send_json(HTTPStatus.BAD_REQUEST, error_body(str(error), "invalid_request_error"))
        except LookupError as error:  # a fine-tuned model this server never made
            self._send_json(HTTPStatus.NOT_FOUND, error_body(str(error), "model_not_found"))
        except concurrent.futures.TimeoutError:
            self._send_json(HTTPStatus.GATEWAY_TIMEOUT, error_body("the model took too long", "timeout"))
        except RetryableError as error:
            # The served backend is itself rate limited or flaky: pass the hint on so clients retry.
            headers = {} if error.retry_after is None else {"Retry-After": f"{error.retry_after:g}"}
            self._send_json(HTTPStatus.SERVICE_UNAVAILABLE, error_body(str(error), "server_error"), headers)
        except Exception as error:
            log.exception("generation failed")
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, error_body(str(error), "server_error"))
        else:
            self._send_json(HTTPStatus.OK, chat_completion_body(chat, generation, model))
            self.server.count_served()

    def _finetuning_route(self, method: str) -> bool:
        """Answer a files or fine-tuning request if this is one and the server has those endpoints."""
        service = self.server.finetuning
        reply = service.handle(method, self.path, self.headers, self.rfile) if service else None
        if reply is not None:
            self._send_json(*reply)
        return reply is not None

    def _read_json(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise InvalidRequestError("the request body is too large")
        try:
            return json.loads(self.rfile.read(length) or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InvalidRequestError("the request body is not valid JSON") from None

    def _send_json(
        self, status: HTTPStatus, body: Mapping[str, Any], headers: Mapping[str, str] = {}
    ) -> None:
        payload = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
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
) -> ChatServer:
    """Bind an OpenAI-compatible server for `backend` (port 0 picks a free port); call
    `.start_in_thread()` or `.serve_forever()`, and `.close()` when done. `model_name` is the id that
    `/v1/models` lists (the backend's name by default); requests may name any model.

    One batch in flight suits an in-process model, which has one device to compute on; raise
    `batches_in_flight` for backends that wait on something else.
    """
    runner = BatchingRunner(
        backend, max_batch=max_batch, batch_window=batch_window, batches_in_flight=batches_in_flight
    )
    try:
        return ChatServer(backend, host, port, runner, request_timeout=request_timeout, model_name=model_name)
    except BaseException:
        runner.close()
        raise


def serve_forever(
    backend: Backend, host: str = "127.0.0.1", port: int = 8000, *, close_backend: bool = False
):
    """Serve `backend` until interrupted (Ctrl-C); then close the server (and the backend, if asked)."""
    _serve_until_interrupted(make_server(backend, host, port), close_backend=close_backend)


def _serve_until_interrupted(server: ChatServer, *, close_backend: bool) -> None:
    print(f"serving {server.backend.name} at {server.url}  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        server.close(close_backend=close_backend)


def main_serve(source: str, host: str, port: int, state: str | None = None) -> int:
    """`intro serve MODEL --host H --port N [--state DIR]`: load a local model (`embedded:<name>` or a
    directory) and serve it, with the files and fine-tuning endpoints keeping their state in `state` (a
    fresh temporary directory by default). Returns the process exit code."""
    from intro.runtime.backends.local import LocalBackend, load_local_model
    from intro.runtime.serve_finetune import enable_finetuning

    try:
        backend = LocalBackend(load_local_model(source))
    except BackendError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    server = make_server(backend, host, port)
    service = enable_finetuning(server, backend.loaded, state)
    print(f"fine-tuning state in {service.state.root}", flush=True)
    _serve_until_interrupted(server, close_backend=True)
    return 0
