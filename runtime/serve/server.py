"""The HTTP side of `intro serve`: `ChatServer` and its routes, and `make_server` that binds one.

The server is the standard library's `ThreadingHTTPServer`: one thread per connection, each waiting on the
future its request was given by the `BatchingRunner` (batching.py), and cancelling it when its client hangs
up. Requests are read and answered through `protocol`; the files and fine-tuning routes are handed to the
`FineTuningService` (finetune.py) when one is enabled. With an API key every route but `/health` wants it,
and binding anything but loopback requires one (`InsecureBindError`).
"""

from __future__ import annotations

import concurrent.futures
import hmac
import ipaddress
import json
import logging
import select
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from intro.runtime.backends.requests import Backend, Generation, RetryableError
from intro.runtime.serve.batching import DEFAULT_TURN_TOKENS, BatchingRunner, context_tokens_of
from intro.runtime.serve.protocol import (
    MAX_BODY_BYTES,
    InvalidRequestError,
    ModelNotFoundError,
    chat_completion_body,
    error_body,
    model_not_found_body,
    model_object,
    parse_chat_request,
    request_body_length,
)

log = logging.getLogger(__name__)

# How often a waiting HTTP thread looks whether its client is still there.
DISCONNECT_POLL_SECONDS = 0.2


class InsecureBindError(ValueError):
    """Serving on an address other machines can reach, without an API key."""


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach an address bound to `host`."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name, or "" (every interface): others may reach it
        return False


class ChatServer(ThreadingHTTPServer):
    """The HTTP server. `url` is the OpenAI base URL (ending in /v1); `requests_served` counts answered
    chat completions, `runner.batch_sizes` the batches they were grouped into.

    `model_name` is the id `/v1/models` lists first, `aliases` more names for the same model. With
    `known_models_only` a request naming any other model (not a fine-tuned one of this server either)
    gets OpenAI's 404; without it any name reaches the served model. With `api_key` every endpoint but
    `/health` wants it as a bearer token (or, as Azure OpenAI's clients send it, an `api-key` header).

    Azure OpenAI's paths are answered too (`/openai/deployments/<model>/chat/completions`, `/openai/files`,
    `/openai/fine_tuning/...`, with an `api-version` query), so that litellm's `azure/` route, fine-tuning
    included, can be tested against this server."""

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
        # The files and fine-tuning endpoints (finetune.py), when enabled.
        self.finetuning: Any = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/v1"

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

    def authorized(self, header: str | None, azure_key: str | None = None) -> bool:
        if not self.api_key:
            return True
        scheme, _, token = (header or "").partition(" ")
        if azure_key is not None and not header:  # Azure OpenAI's clients send the key bare, as `api-key`
            scheme, token = "bearer", azure_key
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
        if not _is_chat_route(self.path):
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
        if self.server.authorized(self.headers.get("Authorization"), self.headers.get("api-key")):
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


def _is_chat_route(path: str) -> bool:
    """OpenAI's chat completions path, or Azure OpenAI's (`/openai/deployments/<model>/chat/completions`,
    whose body names the model too); a query (Azure's `api-version`) is ignored."""
    route = path.split("?", 1)[0].rstrip("/")
    parts = route.strip("/").split("/")
    azure = (
        len(parts) == 5 and parts[:2] == ["openai", "deployments"] and parts[3:] == ["chat", "completions"]
    )
    return route in ("/v1/chat/completions", "/chat/completions") or azure
