"""`intro serve` under bad or greedy input: real servers on 127.0.0.1 over a tiny model, real HTTP (raw
sockets where a client must misbehave), and the real CLI for flags that must fail before any model loads."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from intro.runtime.backends.local import LocalBackend
from intro.runtime.backends.local_model import load_local_model
from intro.runtime.backends.requests import GenerationRequest, Message
from intro.runtime.serve.finetune import enable_finetuning
from intro.runtime.serve.server import InsecureBindError, make_server
from tests.tinymodels import make_tiny_model

INTRO = str(Path(sys.executable).with_name("intro"))


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> LocalBackend:
    return LocalBackend(load_local_model(str(make_tiny_model(tmp_path_factory.mktemp("tiny"))), device="cpu"))


@pytest.fixture
def server(local, tmp_path):
    server = make_server(local, model_name="tiny", known_models_only=True).start_in_thread()
    enable_finetuning(server, local.loaded, tmp_path / "state")
    yield server
    server.close()


def post(url: str, body: dict, *, key: str | None = None, timeout: float = 30) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def get(url: str, *, key: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def chat(content: str, **options) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], "temperature": 0, **options}


def raw_request(server, head: str, body: bytes = b"", *, timeout: float = 10) -> tuple[int, bytes]:
    """Send bytes as written (headers the http clients would refuse to send) and read the reply."""
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=timeout) as connection:
        connection.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < _length(reply):
            chunk = connection.recv(65536)
            if not chunk:
                break
            reply += chunk
    return int(reply.split(b" ", 2)[1]), reply.split(b"\r\n\r\n", 1)[1]


def _length(reply: bytes) -> int:
    for line in reply.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


# ------------------------------------------------------------------ greedy requests


def test_max_tokens_beyond_the_models_context_is_refused_at_once(server):
    started = time.monotonic()
    status, body = post(f"{server.url}/chat/completions", chat("The dog", max_tokens=1_000_000), timeout=20)
    assert status == 400 and "context" in body["error"]["message"]
    assert "1024" in body["error"]["message"]  # the tiny model's context
    assert time.monotonic() - started < 5


def test_a_short_request_finishes_while_a_long_one_is_running(local):
    server = make_server(local, turn_tokens=4).start_in_thread()
    finished: dict[str, float] = {}
    long_reply: dict = {}

    def ask_long() -> None:
        long_reply.update(post(f"{server.url}/chat/completions", chat("The dog", max_tokens=120))[1])
        finished["long"] = time.monotonic()

    with server:
        worker = threading.Thread(target=ask_long)
        worker.start()
        _wait_for(lambda: server.runner.batch_sizes, "the long request to start")
        status, short = post(f"{server.url}/chat/completions", chat("a cat", max_tokens=2))
        finished["short"] = time.monotonic()
        short_done_while_long_ran = worker.is_alive()
        worker.join(timeout=60)
    assert status == 200 and short["usage"]["completion_tokens"] == 2
    assert short_done_while_long_ran and finished["short"] < finished["long"]
    assert long_reply["usage"]["completion_tokens"] == 120  # the tiny model never says eos here
    assert long_reply["choices"][0]["finish_reason"] == "length"
    assert max(server.runner.batch_sizes) == 2  # the short one shared a turn with the long one


@pytest.mark.parametrize("turn_tokens", [None, 40])
def test_a_reply_within_one_turn_is_exactly_the_models(local, turn_tokens):
    # Longer replies are continued from their re-tokenized text, which may change them: not these.
    server = make_server(local, turn_tokens=turn_tokens).start_in_thread()
    request = GenerationRequest(key="direct", messages=(Message("user", "The dog"),), max_tokens=40)
    direct = local.generate_now([request])[0]
    with server:
        status, body = post(f"{server.url}/chat/completions", chat("The dog", max_tokens=40))
    assert status == 200 and body["choices"][0]["message"]["content"] == direct.text
    assert body["usage"]["completion_tokens"] == direct.completion_tokens == 40
    assert server.runner.batch_sizes == [1]  # one turn


def test_a_request_whose_client_hangs_up_is_dropped(local):
    server = make_server(local, turn_tokens=8).start_in_thread()
    with server:
        body = json.dumps(chat("The dog", max_tokens=900)).encode()
        host, port = server.server_address[:2]
        connection = socket.create_connection((host, port), timeout=10)
        head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
        connection.sendall(head.encode() + body)
        _wait_for(lambda: server.runner.batch_sizes, "the request to start")
        connection.close()
        _wait_for(lambda: server.runner.cancelled == 1, "the runner to drop the request")
        turns = len(server.runner.batch_sizes)
        assert turns < 900 // 8 and server.runner.active == 0
        assert get(f"{server.url.removesuffix('/v1')}/health") == (
            200,
            {"status": "ok", "requests_waiting": 0},
        )
        status, _ = post(f"{server.url}/chat/completions", chat("a cat", max_tokens=2))
        assert status == 200 and server.runner.cancelled == 1


def _wait_for(condition, what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# ------------------------------------------------------------------ malformed requests


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/files", "/v1/fine_tuning/jobs"])
@pytest.mark.parametrize(
    ("length", "status"), [("abc", 400), ("-1", 400), ("1e3", 400), ("99999999999999", 413)]
)
def test_a_bad_content_length_is_refused_and_the_connection_closed(server, path, length, status):
    head = f"POST {path} HTTP/1.1\nHost: x\nContent-Type: application/json\nContent-Length: {length}\n"
    got, body = raw_request(server, head, b'{"model": "tiny"}')
    assert got == status
    assert "Content-Length" in json.loads(body)["error"]["message"] or status == 413


def test_a_chunked_body_is_refused_not_misread(server):
    head = "POST /v1/chat/completions HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n"
    status, body = raw_request(server, head, b"5\r\nhello\r\n0\r\n\r\n")
    assert status == 400 and "Content-Length" in json.loads(body)["error"]["message"]


def test_an_unknown_model_gets_openais_404(server, local):
    status, body = post(f"{server.url}/chat/completions", chat("hi", max_tokens=2) | {"model": "gpt-nope"})
    assert status == 404
    assert body["error"]["code"] == "model_not_found" and body["error"]["type"] == "invalid_request_error"
    assert "gpt-nope" in body["error"]["message"]
    assert get(f"{server.url}/models/gpt-nope")[0] == 404
    for name in ("tiny", local.name):  # the listed name, and the weights' own id
        assert post(f"{server.url}/chat/completions", chat("hi", max_tokens=2) | {"model": name})[0] == 200
    assert get(f"{server.url}/models/tiny") == (
        200,
        {"id": "tiny", "object": "model", "created": 0, "owned_by": "intro"},
    )


# ------------------------------------------------------------------ API key


def test_an_api_key_guards_every_endpoint_but_health(local, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    server = make_server(local, model_name="tiny", api_key="s3cret-key").start_in_thread()
    enable_finetuning(server, local.loaded, tmp_path / "state")
    with server:
        body = chat("hi", max_tokens=2)
        assert post(f"{server.url}/chat/completions", body)[0] == 401
        status, refused = post(f"{server.url}/chat/completions", body, key="wrong")
        assert status == 401 and refused["error"]["code"] == "invalid_api_key"
        assert get(f"{server.url}/models")[0] == 401
        assert get(f"{server.url}/fine_tuning/jobs")[0] == 401
        assert get(f"{server.url}/files", key="s3cret-keyX")[0] == 401
        assert get(f"{server.url.removesuffix('/v1')}/health")[0] == 200
        assert post(f"{server.url}/chat/completions", body, key="s3cret-key")[0] == 200
        assert get(f"{server.url}/models", key="s3cret-key")[0] == 200
    assert caplog.records and "s3cret-key" not in caplog.text


def test_serving_beyond_loopback_needs_an_api_key(local):
    with pytest.raises(InsecureBindError, match="API key"):
        make_server(local, host="0.0.0.0")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([INTRO, "serve", *args], capture_output=True, text=True, timeout=60)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("intro: error: "), result.stderr
    return lines[0]


def test_cli_refuses_a_public_bind_without_a_key_before_loading_anything(tmp_path):
    result = run_cli(str(tmp_path / "no-model-here"), "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 2 and "--api-key" in one_line_error(result)


def test_cli_reports_a_port_out_of_range_in_one_line(tmp_path):
    result = run_cli(str(tmp_path / "no-model-here"), "--port", "99999")
    assert result.returncode == 2 and "65535" in one_line_error(result)


def test_cli_reports_a_negative_turn_size_in_one_line(tmp_path):
    result = run_cli(str(tmp_path / "no-model-here"), "--turn-tokens", "-1")
    assert result.returncode == 2 and "--turn-tokens" in one_line_error(result)


def test_cli_reports_a_port_in_use_in_one_line(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_cli(str(tmp_path / "no-model-here"), "--port", str(port))
    assert result.returncode == 1 and f"127.0.0.1:{port}" in one_line_error(result)


@pytest.mark.slow  # a fresh interpreter importing torch and loading the model: about 10 s here
def test_cli_serves_under_its_names_and_never_prints_the_key(tmp_path):
    model = make_tiny_model(tmp_path / "tiny")
    process = subprocess.Popen(
        [INTRO, "serve", str(model), "--port", "0", "--name", "tiny"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "INTRO_SERVE_API_KEY": "env-s3cret"},
    )
    try:
        banner = process.stdout.readline()
        while banner and not banner.startswith("serving "):
            banner = process.stdout.readline()
        assert banner.startswith(f"serving {model}, tiny at "), banner
        url = banner.split(" at ")[1].split()[0]
        assert get(f"{url}/models")[0] == 401
        status, models = get(f"{url}/models", key="env-s3cret")
        assert status == 200 and [m["id"] for m in models["data"]] == [str(model), "tiny"]
    finally:
        process.send_signal(2)
        out, err = process.communicate(timeout=20)
    assert "env-s3cret" not in banner + out + err
