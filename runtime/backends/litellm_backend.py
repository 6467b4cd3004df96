"""API models through litellm: any provider litellm knows, or any OpenAI-compatible `api_base`.

Each request is one `litellm.acompletion` call, run concurrently up to the backend's limit and retried
by `intro.runtime.backends.retry` on transient failures. litellm's and the openai client's own retries are
turned off so that exactly one layer decides, and so that a server's Retry-After hint reaches it.

Secrets: the API key is read from the named environment variable at call time, passed to litellm and
nowhere else. Errors from providers sometimes quote the key back, so every message that leaves this
module is redacted, and original exceptions are not chained (a traceback would print them).

`import litellm` costs seconds, so it happens on the first call, never at import of this module;
`estimate_cost` reads litellm's bundled price table without importing litellm at all.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import importlib.util
import json
import math
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from intro.runtime.backends.requests import (
    BackendError,
    Generation,
    GenerationRequest,
    Message,
    RetryableError,
    Score,
    ScoreRequest,
    TokenLogprob,
)
from intro.runtime.backends.retry import ConcurrencyLimiter, RetryPolicy, call_with_retries

# The most top logprobs OpenAI-style APIs give per token; API scoring reads this many first tokens.
SCORE_TOP_LOGPROBS = 20
# Local OpenAI-compatible servers ignore the key, but the openai client refuses to send a request without one.
PLACEHOLDER_KEY = "no-key-needed"
REDACTED = "[REDACTED]"
# Environment variables whose values are treated as secrets in error messages, whatever the backend uses.
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)
_BEARER = re.compile(r"(Bearer\s+)\S+", re.IGNORECASE)
_MIN_SECRET_LENGTH = 6


def import_litellm() -> Any:
    """Import litellm configured for offline, quiet use (done once; later calls are a dict lookup)."""
    # Without this, importing litellm fetches the model price map over the network.
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    import litellm

    litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banners on stdout
    return litellm


class LiteLLMBackend:
    """One API model. `model` is litellm's name for it (`"openai/gpt-4o-2024-08-06"`, or
    `"openai/<served name>"` with `api_base` for an OpenAI-compatible server such as `intro serve`).

    `api_key_env` names the environment variable holding the key; without it litellm's provider default
    (e.g. OPENAI_API_KEY) is used, and a keyless local `api_base` gets a placeholder. `supports_logprobs`
    None means "believe litellm's table of provider parameters, then check the answer"; False makes
    requests that need logprobs fail before any call is made.

    A prefill is sent as a trailing assistant message. Providers with prefill support (Anthropic,
    `intro serve`) continue it; others may answer it as a new turn, which the spec's author must know.
    """

    def __init__(
        self,
        model: str,
        *,
        api_base: str | None = None,
        api_key_env: str | None = None,
        concurrency: int = 16,
        timeout: float = 120.0,
        max_retries: int = 6,
        supports_logprobs: bool | None = None,
        retry_policy: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        self.name = model
        self.model = model
        self.api_base = api_base
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.supports_logprobs = supports_logprobs
        self.limiter = ConcurrencyLimiter(concurrency)
        self.retry_policy = retry_policy or RetryPolicy(max_attempts=max_retries + 1)
        self.attempts = 0  # calls sent to the provider, retries included
        self._sleep = sleep

    def __repr__(self) -> str:
        # Names where the key lives, never the key.
        return (
            f"LiteLLMBackend(model={self.model!r}, api_base={self.api_base!r}, "
            f"api_key_env={self.api_key_env!r}, concurrency={self.limiter.limit})"
        )

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        return await _all_or_nothing([self._generate_one(request) for request in requests])

    async def score(self, requests: Sequence[ScoreRequest]) -> list[Score]:
        return await _all_or_nothing([self._score_one(request) for request in requests])

    async def aclose(self) -> None:
        await stop_litellm_background_work()

    # --- one request -------------------------------------------------------------------------------

    async def _generate_one(self, request: GenerationRequest) -> Generation:
        self._refuse_steering(request.steering)
        if request.top_logprobs:
            self._require_logprobs()
        response = await self._complete(
            _chat_messages(request.messages, request.prefill),
            temperature=request.temperature,
            max_tokens=request.max_tokens,
            seed=request.seed,
            stop=list(request.stop) or None,
            top_logprobs=request.top_logprobs,
            describe=f"generation {request.key[:16]}",
        )
        generation = generation_from_response(request.key, response)
        if request.top_logprobs and generation.logprobs is None:
            raise self._no_logprobs_error()
        return generation

    async def _score_one(self, request: ScoreRequest) -> Score:
        self._refuse_steering(request.steering)
        self._require_logprobs()
        check_single_token_choices(request.choices)
        response = await self._complete(
            _chat_messages(request.messages, request.prefill),
            temperature=0.0,
            max_tokens=1,
            seed=0,
            stop=None,
            top_logprobs=SCORE_TOP_LOGPROBS,
            describe=f"score {request.key[:16]}",
        )
        top = first_token_top_logprobs(response)
        if top is None:
            raise self._no_logprobs_error()
        return score_from_top_logprobs(request.key, request.choices, top, _usage(response)[0])

    def _refuse_steering(self, steering: object) -> None:
        if steering is not None:
            raise BackendError(
                f"{self.model} is an API model: steering (activation injection) needs an in-process model"
            )

    def _require_logprobs(self) -> None:
        # Unless told, believe litellm's table of what each provider accepts; asking a provider that
        # does not take the parameter would only earn an opaque 400.
        known = self.supports_logprobs
        if known is False or (known is None and "logprobs" not in self._supported_params()):
            raise self._no_logprobs_error()

    def _no_logprobs_error(self) -> BackendError:
        return BackendError(
            f"the spec needs logprobs and model {self.model} gives none; use a model or provider "
            "that returns logprobs, or a measurement that reads sampled answers"
        )

    # --- the call ----------------------------------------------------------------------------------

    async def _complete(self, messages: list[dict[str, str]], *, describe: str, **sampling: Any) -> Any:
        arguments = self._arguments(messages, **sampling)

        async def attempt() -> Any:
            async with self.limiter:
                return await self._call_once(arguments)

        return await call_with_retries(
            attempt, self.retry_policy, describe=f"{self.model} {describe}", sleep=self._sleep
        )

    def _arguments(
        self,
        messages: list[dict[str, str]],
        *,
        temperature: float,
        max_tokens: int,
        seed: int,
        stop: list[str] | None,
        top_logprobs: int,
    ) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "timeout": self.timeout,
            # Retries belong to intro.runtime.backends.retry alone: no hidden extra attempts, Retry-After
            # honoured.
            "num_retries": 0,
            "max_retries": 0,
        }
        if self.api_base:
            arguments["api_base"] = self.api_base
        if stop:
            arguments["stop"] = stop
        if "seed" in self._supported_params():
            arguments["seed"] = seed
        if top_logprobs:
            arguments.update(logprobs=True, top_logprobs=top_logprobs)
        return arguments

    async def _call_once(self, arguments: dict[str, Any]) -> Any:
        litellm = import_litellm()
        key = self._api_key()
        self.attempts += 1
        try:
            response = await litellm.acompletion(**arguments, api_key=key)
        except Exception as error:
            failure = classify_error(error, self._where(), self._secrets(key))
        else:
            _check_shape(response, self._where())
            return response
        # Raised outside the except block so the provider's exception, which may quote the key, is not
        # even kept as __context__.
        raise failure

    def _api_key(self) -> str | None:
        if not self.api_key_env:
            return self._provider_default_key()
        key = os.environ.get(self.api_key_env)
        if not key:
            raise BackendError(
                f"environment variable {self.api_key_env} is not set; it must hold the API key for {self.model}"
            )
        return key

    def _provider_default_key(self) -> str | None:
        _, provider = self._provider  # a model litellm cannot place fails here, clearly
        missing = import_litellm().validate_environment(model=self.model).get("missing_keys") or []
        if not missing:
            return None  # litellm reads the provider's own variable
        if self.api_base:
            return PLACEHOLDER_KEY
        raise BackendError(
            f"{self.model} (provider {provider}) needs the environment variable(s) {', '.join(missing)}; "
            "set it, or name another variable with api_key_env"
        )

    @functools.cached_property
    def _provider(self) -> tuple[str, str]:
        try:
            model, provider, _, _ = import_litellm().get_llm_provider(self.model, api_base=self.api_base)
        except Exception as error:
            message = redact(str(error), environment_secrets())
            raise BackendError(
                f"litellm cannot tell which provider serves {self.model!r}: {message}"
            ) from None
        return model, provider

    def _supported_params(self) -> frozenset[str]:
        model, provider = self._provider
        params = import_litellm().get_supported_openai_params(model=model, custom_llm_provider=provider)
        return frozenset(params or ())

    def _where(self) -> str:
        return f"{self.model} at {self.api_base}" if self.api_base else self.model

    def _secrets(self, key: str | None) -> list[str]:
        return [s for s in (key, *environment_secrets()) if s and s != PLACEHOLDER_KEY]


async def stop_litellm_background_work() -> None:
    """Finish and stop litellm's background logging task on the running event loop, so that it does not
    outlive the loop (each `asyncio.run` makes a new one); litellm restarts it on its next call."""
    if "litellm" not in sys.modules:
        return
    try:
        from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER
    except ImportError:  # a litellm without the worker has nothing to stop
        return
    await GLOBAL_LOGGING_WORKER.flush()
    await GLOBAL_LOGGING_WORKER.stop()


async def _all_or_nothing(calls: list[Coroutine[Any, Any, Any]]) -> list[Any]:
    """Run calls concurrently; on the first failure cancel the rest and raise that failure alone."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(call) for call in calls]
    except BaseExceptionGroup as group_error:
        raise _first_leaf(group_error) from None
    return [task.result() for task in tasks]


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _chat_messages(messages: Iterable[Message], prefill: str) -> list[dict[str, str]]:
    chat = [{"role": m.role, "content": m.content} for m in messages]
    if prefill:
        # A trailing assistant message: providers that support prefill continue it.
        chat.append({"role": "assistant", "content": prefill})
    return chat


# ---------------------------------------------------------------------------------------------------
# Errors: transient or not, and never carrying a secret
# ---------------------------------------------------------------------------------------------------


def environment_secrets() -> list[str]:
    """Values of environment variables whose names say they hold credentials."""
    return [
        value
        for name, value in os.environ.items()
        if _SECRET_NAME.search(name) and len(value) >= _MIN_SECRET_LENGTH
    ]


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret (longest first, so overlapping secrets vanish whole) and bearer token masked."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return _BEARER.sub(rf"\g<1>{REDACTED}", text)


def classify_error(error: Exception, where: str, secrets: Iterable[str]) -> BackendError:
    """Map an exception from litellm to RetryableError (worth another try) or BackendError (not)."""
    if isinstance(error, RetryableError):
        return RetryableError(redact(str(error), secrets), error.retry_after)
    if isinstance(error, BackendError):
        return BackendError(redact(str(error), secrets))
    detail = redact(_provider_message(error), secrets)
    status = getattr(error, "status_code", None)
    if status in (401, 403):
        return BackendError(
            f"{where}: the provider rejected the credentials (HTTP {status}); check the API key's "
            f"environment variable: {detail}"
        )
    if status == 429:
        return RetryableError(f"{where}: rate limited (HTTP 429): {detail}", retry_after_seconds(error))
    if status in (408, 409) or (isinstance(status, int) and status >= 500):
        return RetryableError(
            f"{where}: transient failure (HTTP {status}): {detail}", retry_after_seconds(error)
        )
    if isinstance(error, json.JSONDecodeError | asyncio.TimeoutError | ConnectionError):
        return RetryableError(f"{where}: transient failure ({type(error).__name__}): {detail}")
    if isinstance(status, int):
        return BackendError(f"{where}: the provider refused the request (HTTP {status}): {detail}")
    return BackendError(f"{where}: {type(error).__name__}: {detail}")


def _provider_message(error: Exception) -> str:
    # litellm prefixes messages with its class names twice ("litellm.RateLimitError: RateLimitError: ...").
    return re.sub(r"^(litellm\.\w+: )?(\w+: )?(OpenAIException - )?", "", str(error)).strip()


def retry_after_seconds(error: Exception, now: float | None = None) -> float | None:
    """The server's Retry-After hint in seconds (from `retry-after-ms`, or `retry-after` as seconds or
    an HTTP date), or None."""
    headers = _response_headers(error)
    if "retry-after-ms" in headers:
        return _non_negative(headers["retry-after-ms"], scale=1e-3)
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _non_negative(value)
    if seconds is not None:
        return seconds
    try:
        moment = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, moment - (time.time() if now is None else now))


def _response_headers(error: Exception) -> dict[str, str]:
    headers: Mapping[str, str] | None = getattr(error, "litellm_response_headers", None)
    if not headers:
        response = getattr(error, "response", None)
        headers = getattr(response, "headers", None)
    return {str(k).lower(): str(v) for k, v in (headers or {}).items()}


def _non_negative(value: str, scale: float = 1.0) -> float | None:
    try:
        seconds = float(value) * scale
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _check_shape(response: Any, where: str) -> None:
    # A 200 whose body is not a chat completion is a provider or proxy hiccup: worth another try.
    if not _get(response, "choices"):
        raise RetryableError(f"{where}: the response has no choices")


# ---------------------------------------------------------------------------------------------------
# Responses -> boundary types
# ---------------------------------------------------------------------------------------------------


def _get(obj: Any, name: str) -> Any:
    """A field of a litellm response object, which may be a pydantic model or a plain dict."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _usage(response: Any) -> tuple[int, int]:
    usage = _get(response, "usage")
    return int(_get(usage, "prompt_tokens") or 0), int(_get(usage, "completion_tokens") or 0)


def generation_from_response(key: str, response: Any) -> Generation:
    choice = _get(response, "choices")[0]
    prompt_tokens, completion_tokens = _usage(response)
    return Generation(
        key=key,
        text=_get(_get(choice, "message"), "content") or "",
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        finish_reason=_get(choice, "finish_reason") or "stop",
        logprobs=_token_logprobs(_get(choice, "logprobs")),
    )


def _token_logprobs(logprobs: Any) -> tuple[TokenLogprob, ...] | None:
    content = _get(logprobs, "content")
    if not content:
        return None
    return tuple(
        TokenLogprob(
            token=_get(item, "token"),
            logprob=float(_get(item, "logprob")),
            top=tuple(
                (_get(t, "token"), float(_get(t, "logprob"))) for t in _get(item, "top_logprobs") or ()
            ),
        )
        for item in content
    )


def first_token_top_logprobs(response: Any) -> tuple[tuple[str, float], ...] | None:
    """The first generated token's top alternatives with their logprobs, or None if the provider gave none."""
    logprobs = _token_logprobs(_get(_get(response, "choices")[0], "logprobs"))
    if not logprobs or not logprobs[0].top:
        return None
    return logprobs[0].top


def check_single_token_choices(choices: Sequence[str]) -> None:
    """Refuse choices that cannot be read from one token's alternatives (empty, or several words)."""
    for choice in choices:
        if not choice.strip() or len(choice.strip().split()) > 1:
            raise BackendError(
                f"API models are scored from the first answer token's top logprobs, so each choice must be "
                f"a single token; {choice!r} is not"
            )


def score_from_top_logprobs(
    key: str, choices: Sequence[str], top: Sequence[tuple[str, float]], prompt_tokens: int = 0
) -> Score:
    """Read each choice's probability from the first answer token's top logprobs.

    Tokens that differ only by surrounding whitespace (" A", "A") are the same answer, so their
    probabilities add. A choice absent from the list gets the highest log-probability the list allows
    for it: no more than the least likely listed token, nor than the mass left unlisted. A choice that
    is absent while a proper prefix of it is listed ("Tok" for "Tokyo") evidently spans several tokens,
    which this method cannot score, so it is refused.
    """
    listed = _logprobs_by_text(top)
    bound = _unlisted_bound([value for _, value in top])
    raw: dict[str, float] = {}
    for choice in choices:
        text = choice.strip()
        if text in listed:
            raw[choice] = listed[text]
            continue
        prefixes = sorted(t for t in listed if t and text.startswith(t))
        if prefixes:
            raise BackendError(
                f"choice {choice!r} spans several tokens (the model's first token can be {prefixes[0]!r}); "
                "API models can score single-token choices only"
            )
        raw[choice] = bound
    total = _logsumexp(raw.values())
    return Score(
        key=key,
        logprobs={choice: value - total for choice, value in raw.items()},
        raw_logprobs=raw,
        prompt_tokens=prompt_tokens,
    )


def _logprobs_by_text(top: Sequence[tuple[str, float]]) -> dict[str, float]:
    grouped: dict[str, list[float]] = {}
    for token, value in top:
        grouped.setdefault(token.strip(), []).append(value)
    return {text: _logsumexp(values) for text, values in grouped.items()}


def _unlisted_bound(values: Sequence[float]) -> float:
    listed_mass = min(1.0, sum(math.exp(v) for v in values))
    unlisted = math.log(max(1.0 - listed_mass, 1e-12))
    return min(unlisted, min(values)) if values else unlisted


def _logsumexp(values: Iterable[float]) -> float:
    values = list(values)
    peak = max(values)
    return peak + math.log(sum(math.exp(v - peak) for v in values))


# ---------------------------------------------------------------------------------------------------
# Cost
# ---------------------------------------------------------------------------------------------------


def estimate_cost(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """US dollars for a call, from litellm's bundled price table; None when the model is not in it."""
    prices = _price_entry(model)
    if prices is None:
        return None
    input_price, output_price = prices.get("input_cost_per_token"), prices.get("output_cost_per_token")
    if input_price is None or output_price is None:
        return None
    return prompt_tokens * float(input_price) + completion_tokens * float(output_price)


def _price_entry(model: str) -> Mapping[str, Any] | None:
    table = _price_table()
    if model in table:
        return table[model]
    provider, _, bare = model.partition("/")
    entry = table.get(bare)
    # "openai/gpt-4o" is priced as "gpt-4o" only if that entry is the same provider's model.
    if entry is not None and entry.get("litellm_provider") == provider:
        return entry
    return None


@functools.cache
def _price_table() -> Mapping[str, Mapping[str, Any]]:
    # Read the JSON litellm ships, found without importing litellm (which takes seconds).
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(next(iter(spec.submodule_search_locations))) / "model_prices_and_context_window_backup.json"
    if not path.is_file():
        return {}
    table = json.loads(path.read_text(encoding="utf-8"))
    return {name: entry for name, entry in table.items() if isinstance(entry, dict)}
