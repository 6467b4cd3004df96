"""LiteLLMBackend end to end over loopback HTTP: against `intro serve` on a real tiny model (answers must
equal the local backend's), and against the scriptable echo server (every fault kind retried, 401 fast,
keys never leaked). Also the pure pieces: retry policy, limiter, API scoring from top logprobs, cost."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
import subprocess
import sys
import time
import uuid

import pytest

from intro.runtime.backends.litellm_backend import (
    LiteLLMBackend,
    check_single_token_choices,
    estimate_cost,
    redact,
    retry_after_seconds,
    score_from_top_logprobs,
    stop_litellm_background_work,
)
from intro.runtime.backends.local import LocalBackend
from intro.runtime.backends.local_model import load_local_model
from intro.runtime.backends.requests import (
    BackendError,
    GenerationRequest,
    Message,
    RetryableError,
    ScoreRequest,
    Steering,
)
from intro.runtime.backends.retry import ConcurrencyLimiter, RetryPolicy, call_with_retries
from intro.runtime.serve.server import make_server
from tests.servers import EchoServer, Fault, echo_text
from tests.tinymodels import make_tiny_model

FAST_RETRIES = RetryPolicy(max_attempts=8, base_delay=0.01, max_delay=0.05)
PROMPTS = ("What is the capital of Japan?", "Is the sky blue?", "The dog", "Count: 1 2 3")


def user(text: str) -> tuple[Message, ...]:
    return (Message("user", text),)


def run(coroutine):
    """Run on a fresh event loop and, as the executor does when it finishes, stop litellm's work on it."""

    async def then_stop():
        try:
            return await coroutine
        finally:
            await stop_litellm_background_work()

    return asyncio.run(then_stop())


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> LocalBackend:
    directory = make_tiny_model(tmp_path_factory.mktemp("tiny"), "qwen2")
    return LocalBackend(load_local_model(str(directory), device="cpu"))


@pytest.fixture(scope="module")
def served(local):
    server = make_server(local, model_name="tiny").start_in_thread()
    yield server
    server.close()


@pytest.fixture
def api(served) -> LiteLLMBackend:
    return LiteLLMBackend("openai/tiny", api_base=served.url, timeout=30, retry_policy=FAST_RETRIES)


# --- against `intro serve` over a real tiny model ---------------------------------------------------------


def test_greedy_generations_through_the_api_equal_the_local_backend(local, api):
    requests = [
        GenerationRequest(key=f"g{i}", messages=user(p), max_tokens=8, top_logprobs=3)
        for i, p in enumerate(PROMPTS)
    ]
    direct = run(local.generate(requests))
    remote = run(api.generate(requests))
    assert [g.key for g in remote] == [r.key for r in requests]
    for mine, theirs in zip(remote, direct, strict=True):
        assert (mine.text, mine.finish_reason) == (theirs.text, theirs.finish_reason)
        assert (mine.prompt_tokens, mine.completion_tokens) == (
            theirs.prompt_tokens,
            theirs.completion_tokens,
        )
        assert [t.token for t in mine.logprobs] == [t.token for t in theirs.logprobs]
        for got, want in zip(mine.logprobs, theirs.logprobs, strict=True):
            assert got.logprob == pytest.approx(want.logprob, abs=1e-4)
            assert [tok for tok, _ in got.top] == [tok for tok, _ in want.top]
            assert len(got.top) == 3
    assert any(g.text for g in remote), "a tiny model that says nothing proves nothing"


def test_sampling_seed_stop_and_prefill_reach_the_model(local, api):
    requests = [
        GenerationRequest(key="t1", messages=user("The dog"), temperature=1.0, seed=3, max_tokens=10),
        GenerationRequest(key="t1b", messages=user("The dog"), temperature=1.0, seed=4, max_tokens=10),
        GenerationRequest(key="pre", messages=user("Is fire cold?"), prefill="No,", max_tokens=6),
    ]
    direct = run(local.generate(requests))
    remote = run(api.generate(requests))
    assert [g.text for g in remote] == [g.text for g in direct]
    stop = direct[0].text[3:5]
    assert stop, f"need a longer sample to cut: {direct[0].text!r}"
    cut = GenerationRequest(
        key="cut", messages=user("The dog"), temperature=1.0, seed=3, max_tokens=10, stop=(stop,)
    )
    (remote_cut,) = run(api.generate([cut]))
    assert remote_cut.text == direct[0].text[: direct[0].text.index(stop)]


def test_api_scores_equal_local_scores_for_single_token_choices(local, api):
    probe = GenerationRequest(key="probe", messages=user("Is the sky blue?"), max_tokens=1, top_logprobs=20)
    (generation,) = run(local.generate([probe]))
    listed = [token for token, _ in generation.logprobs[0].top]
    choices = tuple(
        token
        for token in listed
        if token
        and token == token.strip()
        and len(local.loaded.encode_reply(token)) == 1
        and sum(t.strip() == token for t in listed) == 1
    )[:3]
    assert len(choices) == 3, listed
    request = ScoreRequest(key="s", messages=user("Is the sky blue?"), choices=choices)
    (direct,) = run(local.score([request]))
    (remote,) = run(api.score([request]))
    for choice in choices:
        assert remote.raw_logprobs[choice] == pytest.approx(direct.raw_logprobs[choice], abs=1e-4)
        assert remote.logprobs[choice] == pytest.approx(direct.logprobs[choice], abs=1e-4)


def test_api_models_refuse_steering(api):
    steered = GenerationRequest(
        key="x", messages=user("hi"), steering=Steering(vector="v.safetensors", layer=1, strength=2)
    )
    with pytest.raises(BackendError, match="steering"):
        run(api.generate([steered]))
    assert api.attempts == 0


# --- faults, against the echo server ----------------------------------------------------------------------


def echo_backend(server: EchoServer, **options) -> LiteLLMBackend:
    options = {"timeout": 0.5, "retry_policy": FAST_RETRIES, **options}
    return LiteLLMBackend("openai/echo", api_base=server.url, **options)


def test_every_fault_kind_is_retried_until_each_request_has_exactly_one_result():
    scripts = {
        "rate limited": [Fault("429", retry_after=0.05)],
        "server error": ["500", "500"],
        "hangs": ["hang"],
        "truncated": ["truncated"],
        "malformed": ["malformed"],
        "reset": ["reset"],
        "everything": ["429", "500", "truncated", "malformed", "reset", "hang"],
    }
    contents = [*scripts, "fine", "also fine"]
    requests = [
        GenerationRequest(key=f"k{i}", messages=user(c), max_tokens=20) for i, c in enumerate(contents)
    ]
    with EchoServer(scripts, hang_seconds=3) as server:
        generations = run(echo_backend(server).generate(requests))
        for content in contents:
            assert server.calls(content) == len(scripts.get(content, [])) + 1, content
            assert server.answered[content] == 1, content
    assert [g.key for g in generations] == [r.key for r in requests]
    assert [g.text for g in generations] == [echo_text(c, 20)[0] for c in contents]


def test_retry_after_from_the_server_sets_the_wait():
    waits: list[float] = []

    async def recording_sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(seconds)

    with EchoServer({"busy": [Fault("429", retry_after=0.3)]}) as server:
        backend = echo_backend(server, sleep=recording_sleep)
        run(backend.generate([GenerationRequest(key="b", messages=user("busy"))]))
        first, second = server.call_times["busy"]
    assert waits == [0.3]
    assert second - first >= 0.3


def test_retries_are_bounded_and_the_last_error_says_so():
    with EchoServer({"down": ["500"] * 10}) as server:
        backend = echo_backend(server, retry_policy=RetryPolicy(max_attempts=3, base_delay=0.01))
        with pytest.raises(RetryableError, match=r"HTTP 500.*gave up after 3 attempts"):
            run(backend.generate([GenerationRequest(key="d", messages=user("down"))]))
        assert server.calls("down") == 3


def test_a_rejected_key_fails_fast_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("INTRO_TEST_KEY", "wrong-key-123")
    with EchoServer(api_key="right-key-456") as server:
        backend = echo_backend(server, api_key_env="INTRO_TEST_KEY")
        started = time.monotonic()
        with pytest.raises(BackendError) as caught:
            run(backend.generate([GenerationRequest(key="a", messages=user("hello"))]))
        assert time.monotonic() - started < 2
        assert server.requests_received == 1
    assert not isinstance(caught.value, RetryableError)
    assert "rejected the credentials (HTTP 401)" in str(caught.value)
    assert "wrong-key-123" not in str(caught.value)


@pytest.fixture
def debug_logs():
    """The client libraries' loggers at DEBUG for one test, then back to their levels (a quiet exit)."""
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


LIBRARY_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "httpx", "httpcore", "openai")


def test_a_planted_key_never_appears_in_errors_logs_or_reprs(monkeypatch, caplog, capfd, debug_logs):
    secret = f"sk-planted-{uuid.uuid4().hex}"
    monkeypatch.setenv("INTRO_PLANTED_KEY", secret)
    caplog.set_level(logging.DEBUG)
    scripts = {"flaky": ["429", "500", "malformed"], "reject": ["401"]}
    with EchoServer(scripts) as server:
        backend = echo_backend(server, api_key_env="INTRO_PLANTED_KEY")
        run(backend.generate([GenerationRequest(key="f", messages=user("flaky"))]))
        with pytest.raises(BackendError) as caught:
            run(backend.generate([GenerationRequest(key="r", messages=user("reject"))]))
        assert secret in server.bearer_tokens, "the key must really have been sent"
        assert f"Incorrect API key provided: {secret}" not in str(caught.value)
    error = caught.value
    captured = capfd.readouterr()
    exposed = [
        str(error),
        repr(error),
        repr(error.args),
        repr(error.__context__),
        repr(error.__cause__),
        repr(backend),
        repr(vars(backend)),
        captured.out,
        captured.err,
        caplog.text,
        *(repr(record.args) for record in caplog.records),
    ]
    assert caplog.records, "the retries should have been logged"
    assert not [text for text in exposed if secret in text]
    assert "[REDACTED]" in str(error)


def test_a_missing_key_variable_is_reported_before_any_call(monkeypatch):
    monkeypatch.delenv("INTRO_ABSENT_KEY", raising=False)
    with EchoServer() as server:
        backend = echo_backend(server, api_key_env="INTRO_ABSENT_KEY")
        with pytest.raises(BackendError, match="INTRO_ABSENT_KEY is not set"):
            run(backend.generate([GenerationRequest(key="a", messages=user("hello"))]))
        assert server.requests_received == 0


def test_logprobs_are_required_when_a_request_needs_them():
    with EchoServer(logprobs=False) as server:
        silent = echo_backend(server)
        score = ScoreRequest(key="s", messages=user("hi"), choices=("A", "B"))
        with pytest.raises(BackendError, match="needs logprobs and model openai/echo gives none"):
            run(silent.score([score]))
        with pytest.raises(BackendError, match="needs logprobs"):
            run(silent.generate([GenerationRequest(key="g", messages=user("hi"), top_logprobs=2)]))
        known_silent = echo_backend(server, supports_logprobs=False)
        with pytest.raises(BackendError, match="needs logprobs"):
            run(known_silent.score([score]))
        assert known_silent.attempts == 0


def test_echo_scores_come_from_the_first_tokens_top_logprobs():
    with EchoServer() as server:
        (score,) = run(
            echo_backend(server).score([ScoreRequest(key="s", messages=user("x"), choices=("echo:", "alt1"))])
        )
    # The echo server lists "echo:" at -0.1 and "alt1" at -1.1 for the first token.
    assert score.raw_logprobs == {"echo:": pytest.approx(-0.1), "alt1": pytest.approx(-1.1)}
    assert math.exp(score.logprobs["echo:"]) == pytest.approx(1 / (1 + math.exp(-1.0)))


def test_concurrency_is_limited_per_backend():
    with EchoServer(latency=0.05) as server:
        backend = echo_backend(server, concurrency=4)
        requests = [GenerationRequest(key=f"c{i}", messages=user(f"n{i}")) for i in range(16)]
        run(backend.generate(requests))
        assert backend.limiter.peak == 4
        assert server.peak_in_flight == 4


# --- pure pieces -------------------------------------------------------------------------------------------


def test_scoring_merges_whitespace_variants_and_bounds_absent_choices():
    top = [("A", math.log(0.5)), (" A", math.log(0.2)), ("B", math.log(0.25)), ("C", math.log(0.04))]
    score = score_from_top_logprobs("k", ("A", "B", "D"), top)
    assert score.raw_logprobs["A"] == pytest.approx(math.log(0.7))
    assert score.raw_logprobs["B"] == pytest.approx(math.log(0.25))
    # D is unlisted: at most the 1% of mass left over, which is below the least listed token (4%).
    assert score.raw_logprobs["D"] == pytest.approx(math.log(0.01))
    assert sum(math.exp(v) for v in score.logprobs.values()) == pytest.approx(1.0)


def test_scoring_refuses_choices_that_span_several_tokens():
    with pytest.raises(BackendError, match="'Tokyo' spans several tokens"):
        score_from_top_logprobs("k", ("Tokyo", "Paris"), [("Tok", -0.1), ("Paris", -2.0)])
    with pytest.raises(BackendError, match="must be a single token; 'New York'"):
        check_single_token_choices(("New York", "Paris"))


def test_redact_masks_secrets_and_bearer_tokens():
    text = "key sk-abcdef rejected; header Authorization: Bearer xyz.123"
    assert redact(text, ["sk-abcdef"]) == "key [REDACTED] rejected; header Authorization: Bearer [REDACTED]"


class _HeaderError(Exception):
    def __init__(self, headers):
        super().__init__("rate limited")
        self.litellm_response_headers = headers


def test_retry_after_header_forms():
    assert retry_after_seconds(_HeaderError({"Retry-After": "2.5"})) == 2.5
    assert retry_after_seconds(_HeaderError({"retry-after-ms": "1500", "retry-after": "9"})) == 1.5
    now = 1_800_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)  # an HTTP date 30 s from `now`
    assert retry_after_seconds(_HeaderError({"retry-after": date}), now=now) == 30
    assert retry_after_seconds(_HeaderError({"retry-after": "soon"})) is None
    assert retry_after_seconds(_HeaderError({})) is None


def test_cost_comes_from_the_bundled_price_table_without_importing_litellm():
    code = (
        "import sys; from intro.runtime.backends.litellm_backend import estimate_cost; "
        "print(estimate_cost('openai/gpt-4o-2024-08-06', 1000, 100)); "
        "print('litellm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    cost, imported = out.split()
    # gpt-4o-2024-08-06 in litellm's table: $2.50 per million input tokens, $10 per million output.
    assert float(cost) == pytest.approx(1000 * 2.5e-6 + 100 * 1e-5)
    assert imported == "False"
    assert estimate_cost("gpt-4o-2024-08-06", 1000, 100) == pytest.approx(0.0035)
    assert estimate_cost("openai/no-such-model", 1000, 100) is None
    assert (
        estimate_cost("hosted_vllm/gpt-4o-2024-08-06", 1000, 100) is None
    )  # self-hosted: not OpenAI's price


def test_backoff_grows_with_jitter_and_respects_caps():
    policy = RetryPolicy(base_delay=1.0, multiplier=2.0, max_delay=5.0, max_retry_after=60)
    rng = random.Random(0)
    for retry, nominal in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0)]:
        delays = [policy.delay(retry, None, rng) for _ in range(50)]
        assert all(nominal / 2 <= d <= nominal for d in delays)
        assert len(set(delays)) > 1
    assert policy.delay(1, 7.0, rng) == 7.0
    assert policy.delay(1, 3600.0, rng) == 60


def test_call_with_retries_stops_at_the_first_permanent_error_and_at_the_time_budget():
    attempts = []

    async def permanent():
        attempts.append(1)
        raise BackendError("bad request")

    async def no_wait(_seconds):
        return None

    with pytest.raises(BackendError, match="bad request"):
        run(call_with_retries(permanent, RetryPolicy(), sleep=no_wait))
    assert len(attempts) == 1

    clock = [0.0]

    async def advancing_sleep(seconds):
        clock[0] += seconds

    async def transient():
        raise RetryableError("busy", retry_after=4.0)

    policy = RetryPolicy(max_attempts=100, max_elapsed=10.0)
    with pytest.raises(RetryableError, match="gave up after 3 attempts"):
        run(call_with_retries(transient, policy, sleep=advancing_sleep, clock=lambda: clock[0]))
    assert clock[0] == 8.0  # two 4 s waits; a third would end past the 10 s budget


def test_limiter_caps_in_flight_calls_across_event_loops():
    limiter = ConcurrencyLimiter(3)

    async def burst():
        async def one():
            async with limiter:
                await asyncio.sleep(0.01)

        await asyncio.gather(*(one() for _ in range(12)))

    run(burst())
    run(burst())  # a second loop: a semaphore bound to the first would raise here
    assert limiter.peak == 3
    assert limiter.in_flight == 0


def test_a_model_litellm_cannot_place_or_without_its_key_fails_clearly(monkeypatch):
    with pytest.raises(BackendError, match="cannot tell which provider serves 'no-provider-here'"):
        run(LiteLLMBackend("no-provider-here").generate([GenerationRequest(key="a", messages=user("hi"))]))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(BackendError, match="needs the environment variable\\(s\\) OPENAI_API_KEY"):
        run(LiteLLMBackend("openai/gpt-4o-mini").generate([GenerationRequest(key="a", messages=user("hi"))]))


class BusyOnceBackend:
    """The tiny model behind a gate that reports itself rate limited on its first call."""

    def __init__(self, inner: LocalBackend):
        self.inner, self.name, self.calls = inner, "busy-once", 0

    async def generate(self, requests):
        self.calls += 1
        if self.calls == 1:
            raise RetryableError("upstream rate limited", retry_after=0.05)
        return await self.inner.generate(requests)

    async def score(self, requests):
        return await self.inner.score(requests)

    async def aclose(self):
        return None


def test_a_served_backends_transient_failure_reaches_the_client_as_a_retryable_503(local):
    gate = BusyOnceBackend(local)
    request = GenerationRequest(key="r", messages=user("The dog"), max_tokens=4)
    with make_server(gate, model_name="gate").start_in_thread() as server:
        client = LiteLLMBackend("openai/gate", api_base=server.url, retry_policy=FAST_RETRIES)
        (generation,) = run(client.generate([request]))
    assert (client.attempts, gate.calls) == (2, 2)  # a 503 with Retry-After, then the answer
    assert generation.text == run(local.generate([request]))[0].text


def test_a_provider_known_to_lack_logprobs_is_refused_before_any_call(monkeypatch):
    monkeypatch.setenv("INTRO_ANTHROPIC_KEY", "unused-key")
    claude = LiteLLMBackend("anthropic/claude-3-5-sonnet-20240620", api_key_env="INTRO_ANTHROPIC_KEY")
    score = ScoreRequest(key="s", messages=user("hi"), choices=("A", "B"))
    with pytest.raises(BackendError, match="needs logprobs and model anthropic/claude-3-5-sonnet-20240620"):
        run(claude.score([score]))
    assert claude.attempts == 0
