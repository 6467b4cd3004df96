"""`intro serve` over a real tiny model, spoken to with plain HTTP (urllib), as any OpenAI client would."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from intro.runtime.backends.local import LocalBackend
from intro.runtime.backends.local_model import load_local_model
from intro.runtime.backends.requests import BackendError, GenerationRequest, Message
from intro.runtime.serve.protocol import InvalidRequestError, parse_chat_request
from intro.runtime.serve.server import make_server
from tests.tinymodels import make_tiny_model

PROMPTS = ("What is the capital of Japan?", "Is the sky blue?", "The dog", "Count: 1 2 3", "a cat", "Paris")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny"), "qwen2")


@pytest.fixture(scope="module")
def local(model_dir) -> LocalBackend:
    return LocalBackend(load_local_model(str(model_dir), device="cpu"))


@pytest.fixture
def server(local):
    server = make_server(local, model_name="tiny", batch_window=0.05).start_in_thread()
    yield server
    server.close()


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{url}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def chat(content: str, **options) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], "temperature": 0, **options}


def local_generation(local: LocalBackend, content: str, **options):
    request = GenerationRequest(key="direct", messages=(Message("user", content),), **options)
    return local.generate_now([request])[0]


def test_models_lists_the_served_model(server):
    with urllib.request.urlopen(f"{server.url}/models", timeout=10) as response:
        body = json.load(response)
    assert [m["id"] for m in body["data"]] == ["tiny"]


def test_chat_completion_has_the_openai_shape_and_the_models_answer(server, local):
    status, body = post(server.url, chat("Is the sky blue?", max_tokens=6, logprobs=True, top_logprobs=4))
    assert status == 200
    direct = local_generation(local, "Is the sky blue?", max_tokens=6, top_logprobs=4)
    (choice,) = body["choices"]
    assert body["object"] == "chat.completion" and body["model"] == "tiny"
    assert choice["message"] == {"role": "assistant", "content": direct.text}
    assert choice["finish_reason"] == direct.finish_reason
    usage = body["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (
        direct.prompt_tokens,
        direct.completion_tokens,
    )
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    entries = choice["logprobs"]["content"]
    assert [e["token"] for e in entries] == [t.token for t in direct.logprobs]
    assert all(len(e["top_logprobs"]) == 4 for e in entries)
    assert all(bytes(e["bytes"]).decode() == e["token"] for e in entries)
    assert entries[0]["logprob"] == pytest.approx(direct.logprobs[0].logprob, abs=1e-4)


def test_logprobs_without_top_logprobs_gives_chosen_tokens_only(server):
    status, body = post(server.url, chat("The dog", max_tokens=3, logprobs=True))
    assert status == 200
    entries = body["choices"][0]["logprobs"]["content"]
    assert entries and all(e["top_logprobs"] == [] for e in entries)
    _, plain = post(server.url, chat("The dog", max_tokens=3))
    assert plain["choices"][0]["logprobs"] is None


def test_trailing_assistant_message_is_a_prefill(server, local):
    messages = [{"role": "user", "content": "Is fire cold?"}, {"role": "assistant", "content": "No,"}]
    _, body = post(server.url, {"messages": messages, "temperature": 0, "max_tokens": 5})
    direct = local_generation(local, "Is fire cold?", prefill="No,", max_tokens=5)
    assert body["choices"][0]["message"]["content"] == direct.text


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(local):
    # A wide window, so that a loaded machine starting the client threads slowly still batches them.
    server = make_server(local, batch_window=0.3).start_in_thread()
    with server, ThreadPoolExecutor(len(PROMPTS)) as pool:
        answers = list(pool.map(lambda p: post(server.url, chat(p, max_tokens=6)), PROMPTS))
    expected = [local_generation(local, p, max_tokens=6).text for p in PROMPTS]
    assert [body["choices"][0]["message"]["content"] for _, body in answers] == expected
    assert server.requests_served == len(PROMPTS)
    assert sum(server.runner.batch_sizes) == len(PROMPTS)
    assert max(server.runner.batch_sizes) > 1, server.runner.batch_sizes


def test_unsupported_or_broken_requests_get_400(server):
    assert post(server.url, chat("hi", n=2))[0] == 400
    assert post(server.url, chat("hi", stream=True))[0] == 400
    status, body = post(server.url, {"messages": []})
    assert status == 400 and "messages" in body["error"]["message"]
    raw = urllib.request.Request(f"{server.url}/chat/completions", data=b"{not json", method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(raw, timeout=10)
    assert caught.value.code == 400
    assert server.requests_served == 0


class RefusingBackend:
    """The tiny model, except that it refuses any batch holding the prompt "refuse me"."""

    def __init__(self, inner: LocalBackend):
        self.inner = inner
        self.name = "refusing"

    async def generate(self, requests):
        if any(r.messages[-1].content == "refuse me" for r in requests):
            raise BackendError("refused on purpose")
        return await self.inner.generate(requests)

    async def score(self, requests):
        return await self.inner.score(requests)

    async def aclose(self):
        return None


def test_a_failing_request_does_not_sink_its_batch_neighbours(local):
    server = make_server(RefusingBackend(local), batch_window=0.5).start_in_thread()
    with server, ThreadPoolExecutor(3) as pool:
        results = list(
            pool.map(lambda p: post(server.url, chat(p, max_tokens=3)), ["a cat", "refuse me", "The dog"])
        )
    assert [status for status, _ in results] == [200, 500, 200]
    assert "refused on purpose" in results[1][1]["error"]["message"]
    assert server.runner.batch_sizes[0] == 3  # they did share a batch


def test_parse_chat_request_reads_the_openai_fields():
    body = {
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}],
            },
        ],
        "max_completion_tokens": 7,
        "stop": "\n",
        "seed": 11,
        "logprobs": True,
        "top_logprobs": 5,
    }
    parsed = parse_chat_request(body, key="k")
    request = parsed.generation
    assert request.messages == (Message("system", "Be brief."), Message("user", "Hello there"))
    assert (request.max_tokens, request.stop, request.seed, request.temperature) == (7, ("\n",), 11, 1.0)
    assert (parsed.want_logprobs, parsed.top_logprobs, request.top_logprobs) == (True, 5, 5)
    for broken in (
        {"messages": "hi"},
        {**body, "top_logprobs": 21},
        {**body, "temperature": -1},
        {**body, "stop": 3},
    ):
        with pytest.raises(InvalidRequestError):
            parse_chat_request(broken, key="k")


@pytest.mark.slow  # a fresh interpreter importing torch and transformers: about 10 s here
def test_main_serve_serves_a_model_directory_until_interrupted(model_dir):
    code = "import sys; from intro.runtime.serve.command import main_serve; sys.exit(main_serve(sys.argv[1], '127.0.0.1', 0))"
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(model_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    try:
        # The first lines say where fine-tuning state lives, then which model is served at which URL.
        banner = process.stdout.readline()
        while banner and not banner.startswith("serving "):
            banner = process.stdout.readline()
        assert banner.startswith(f"serving {model_dir} at "), banner  # the name it was served under
        url = banner.split(" at ")[1].split()[0]
        status, body = post(url, {**chat("The dog", max_tokens=2), "model": str(model_dir)})
        assert status == 200 and body["choices"][0]["message"]["content"] is not None
        assert post(url, chat("The dog", max_tokens=2))[0] == 404  # "tiny" is no name it serves
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0


def test_main_serve_reports_a_bad_source(tmp_path):
    from intro.runtime.serve.command import main_serve

    assert main_serve(str(tmp_path / "missing"), "127.0.0.1", 0) == 1


def test_the_server_runs_inside_an_event_loop_app_too(local):
    # An async caller (the executor) may start the server from inside its own running loop.
    async def start_and_ask():
        with make_server(local).start_in_thread() as server:
            return await asyncio.to_thread(post, server.url, chat("a cat", max_tokens=2))

    status, _ = asyncio.run(start_and_ask())
    assert status == 200
