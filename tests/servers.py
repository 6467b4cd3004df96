"""Loopback HTTP servers for tests and benches: an OpenAI-compatible echo server that misbehaves on cue.

`EchoServer` answers every chat completion with a text computed from the request ("echo: " plus the
last user message, cut to `max_tokens` words), so a client's results can be checked exactly. A script
maps a message's text to the faults its first calls get (429 with Retry-After, 500, a hang past the
client's timeout, truncated JSON, malformed JSON, a connection reset, 401), after which that message is
answered normally; a per-message call counter shows how many tries each took. `latency` delays every
answer by a fixed time, for throughput benches.

The server binds 127.0.0.1 only and stops itself after `lifetime` seconds even if a test forgets to.
`echo_server_process` runs one in a child process, so that a benchmarked client does not share its
interpreter (and GIL) with the server's threads.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from attrs import frozen

from intro.runtime.backends.requests import Generation, TokenLogprob
from intro.runtime.serve.protocol import (
    ChatRequest,
    chat_completion_body,
    error_body,
    models_body,
    parse_chat_request,
)

FAULT_KINDS = ("429", "500", "hang", "truncated", "malformed", "reset", "401")


@frozen
class Fault:
    """One scripted misbehaviour. `retry_after` (seconds) is sent as a Retry-After header with a 429."""

    kind: str
    retry_after: float | None = None

    def __attrs_post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {self.kind!r}; expected one of {FAULT_KINDS}")


def echo_text(content: str, max_tokens: int, stop: Sequence[str] = (), prefill: str = "") -> tuple[str, str]:
    """The echo server's answer to `content` (and the prefill it continues, if any), and its finish
    reason. One word is one token."""
    words = f"echo: {content}{f' after {prefill}' if prefill else ''}".split(" ")
    text, finish = " ".join(words[:max_tokens]), "length" if len(words) > max_tokens else "stop"
    for marker in stop:
        if marker in text:
            text, finish = text[: text.index(marker)], "stop"
    return text, finish


def echo_logprobs(text: str, top: int) -> tuple[TokenLogprob, ...]:
    """Deterministic per-word logprobs: word i gets -(i+1)/10, and `top` alternatives below it."""
    words = text.split(" ")
    tokens = [words[0], *(" " + word for word in words[1:])]
    return tuple(
        TokenLogprob(
            token=token,
            logprob=-(i + 1) / 10,
            top=((token, -(i + 1) / 10), *((f"alt{j}", -(i + 1) / 10 - j) for j in range(1, top))),
        )
        for i, token in enumerate(tokens)
    )


class EchoServer(ThreadingHTTPServer):
    """A scriptable OpenAI-compatible loopback server; use as a context manager.

    `faults` maps the text of a request's last user message to the faults its first calls receive.
    `api_key`, when set, is required as the bearer token; a wrong one gets a 401 that quotes it back,
    as careless providers do, so tests can check that clients keep keys out of their errors.
    `answer`, when set, gives the reply to a request's last user message instead of the echo (a scripted
    judge, say).
    `logprobs=False` plays a provider that ignores logprob requests. `peak_in_flight` is the most
    requests it was handling at once.
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(
        self,
        faults: Mapping[str, Sequence[Fault | str]] | None = None,
        *,
        latency: float = 0.0,
        hang_seconds: float = 10.0,
        lifetime: float = 120.0,
        api_key: str | None = None,
        model: str = "echo",
        logprobs: bool = True,
        answer: Callable[[str], str] | None = None,
    ):
        super().__init__(("127.0.0.1", 0), EchoHandler)
        self.faults = {text: [_as_fault(f) for f in script] for text, script in (faults or {}).items()}
        self.latency = latency
        self.hang_seconds = hang_seconds
        self.lifetime = lifetime
        self.api_key = api_key
        self.model = model
        self.gives_logprobs = logprobs
        self.answer = answer
        self.in_flight = 0
        self.peak_in_flight = 0
        self.stopping = threading.Event()
        self.requests_received = 0
        self.call_counts: Counter[str] = Counter()
        self.call_times: defaultdict[str, list[float]] = defaultdict(list)
        self.answered: Counter[str] = Counter()
        self.bearer_tokens: list[str] = []
        self._lock = threading.Lock()
        self._helpers: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def calls(self, content: str) -> int:
        """How many requests whose last user message was `content` reached the server."""
        with self._lock:
            return self.call_counts[content]

    def record_call(self, content: str, bearer: str) -> Fault | None:
        """Count a request and return the fault scripted for this call of this content, if any."""
        with self._lock:
            self.requests_received += 1
            self.call_counts[content] += 1
            self.call_times[content].append(time.monotonic())
            self.bearer_tokens.append(bearer)
            script = self.faults.get(content, [])
            index = self.call_counts[content] - 1
            return script[index] if index < len(script) else None

    def record_answer(self, content: str) -> None:
        with self._lock:
            self.answered[content] += 1

    def enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def start(self) -> EchoServer:
        serving = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, name="echo-server", daemon=True
        )
        watchdog = threading.Thread(target=self._stop_after_lifetime, name="echo-watchdog", daemon=True)
        self._helpers = [serving, watchdog]
        for thread in self._helpers:
            thread.start()
        return self

    def _stop_after_lifetime(self) -> None:
        if not self.stopping.wait(self.lifetime):
            self.shutdown()

    def wait(self) -> None:
        """Block until the server stops (closed, or its lifetime is over)."""
        self._helpers[0].join()

    def close(self) -> None:
        self.stopping.set()  # also releases handlers that are hanging on purpose
        if self._helpers:
            self.shutdown()
            for thread in self._helpers:
                thread.join(timeout=5)
        self.server_close()

    def __enter__(self) -> EchoServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _as_fault(fault: Fault | str) -> Fault:
    return fault if isinstance(fault, Fault) else Fault(fault)


class EchoHandler(BaseHTTPRequestHandler):
    server: EchoServer
    protocol_version = "HTTP/1.1"
    # Headers and body leave in one segment, at once: with Nagle's algorithm on, a keep-alive client's
    # delayed ACK would hold each body back for up to 40 ms.
    disable_nagle_algorithm = True
    wbufsize = -1

    def do_GET(self) -> None:
        self._send_json(HTTPStatus.OK, models_body(self.server.model))

    def do_POST(self) -> None:
        self.server.enter()
        try:
            self._answer()
        finally:
            self.server.leave()

    def _answer(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        chat = parse_chat_request(body, key="echo")
        content = _last_user_text(chat)
        bearer = self.headers.get("Authorization", "").removeprefix("Bearer ")
        fault = self.server.record_call(content, bearer)
        if self.server.api_key is not None and bearer != self.server.api_key:
            fault = Fault("401")
        if self.server.latency:
            self.server.stopping.wait(self.server.latency)
        if fault is not None:
            self._misbehave(fault, bearer)
            return
        generation = _echo(chat, self.server.gives_logprobs, self.server.answer)
        self._send_json(HTTPStatus.OK, chat_completion_body(chat, generation, self.server.model))
        self.server.record_answer(content)

    def _misbehave(self, fault: Fault, bearer: str) -> None:
        if fault.kind == "429":
            headers = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
            self._send_json(HTTPStatus.TOO_MANY_REQUESTS, error_body("slow down", "rate_limit"), headers)
        elif fault.kind == "500":
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, error_body("internal error", "server_error"))
        elif fault.kind == "401":
            message = f"Incorrect API key provided: {bearer}"
            self._send_json(HTTPStatus.UNAUTHORIZED, error_body(message, "invalid_request_error"))
        elif fault.kind == "hang":
            self.server.stopping.wait(self.server.hang_seconds)
            self._reset()
        elif fault.kind == "truncated":
            self._send_raw(b'{"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"index": 0, "mes')
        elif fault.kind == "malformed":
            self._send_raw(b'{"id": "chatcmpl-1", "choices": [}, <html>502 Bad Gateway</html>')
        elif fault.kind == "reset":
            self._reset()

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN: a reset connection.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def _send_json(self, status: HTTPStatus, body: Mapping[str, Any], headers: Mapping[str, str] = {}):
        self._send_raw(json.dumps(body).encode("utf-8"), status, headers)

    def _send_raw(self, payload: bytes, status: HTTPStatus = HTTPStatus.OK, headers: Mapping[str, str] = {}):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read counters, not access logs


def _last_user_text(chat: ChatRequest) -> str:
    users = [m.content for m in chat.generation.messages if m.role == "user"]
    return users[-1] if users else ""


def _echo(chat: ChatRequest, gives_logprobs: bool, answer: Callable[[str], str] | None = None) -> Generation:
    request = chat.generation
    text, finish = echo_text(_last_user_text(chat), request.max_tokens, request.stop, request.prefill)
    if answer is not None:
        text, finish = answer(_last_user_text(chat)), "stop"
    wanted = chat.want_logprobs and gives_logprobs
    logprobs = echo_logprobs(text, max(chat.top_logprobs, 1)) if wanted else None
    prompt_words = sum(len(m.content.split()) for m in request.messages)
    return Generation(
        key=request.key,
        text=text,
        prompt_tokens=prompt_words,
        completion_tokens=len(text.split(" ")),
        finish_reason=finish,
        logprobs=logprobs,
    )


@frozen
class ServerProcess:
    """An echo server running in a child process: its base URL and process id."""

    url: str
    pid: int

    def cpu_seconds(self) -> float:
        """CPU time the child has used so far (user + system), read from /proc (Linux)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def echo_server_process(latency: float = 0.0, lifetime: float = 600.0) -> Iterator[ServerProcess]:
    """Run a fault-free `EchoServer` in a child process. The child stops when the block exits (its
    stdin closes) or after `lifetime` seconds."""
    command = [sys.executable, "-m", "tests.servers", "--latency", str(latency), "--lifetime", str(lifetime)]
    root = Path(__file__).resolve().parents[1]
    child = subprocess.Popen(command, cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        url = child.stdout.readline().strip()
        if not url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the echo server process did not start (printed {url!r})")
        yield ServerProcess(url=url, pid=child.pid)
    finally:
        child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a fault-free EchoServer until stdin closes.")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--lifetime", type=float, default=600.0)
    options = parser.parse_args(argv)
    with EchoServer(latency=options.latency, lifetime=options.lifetime) as server:
        print(server.url, flush=True)
        threading.Thread(target=lambda: (sys.stdin.read(), server.close()), daemon=True).start()
        server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
