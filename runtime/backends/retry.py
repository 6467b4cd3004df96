"""Retries with exponential backoff, and a per-backend limit on calls in flight.

API providers fail transiently (429 rate limits, 5xx, timeouts, cut connections). A call that raises
`RetryableError` is tried again after a delay that grows exponentially with jitter, so that many
clients that failed together do not come back together; a server's own `Retry-After` hint wins over
the computed delay because the server knows when it will have capacity. Attempts are bounded, and so
is the total time spent waiting, so a dead endpoint fails the step instead of hanging the study.

`sleep`, `clock` and `rng` are parameters so tests can run the policy without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import TypeVar

from attrs import frozen

from intro.runtime.backends.requests import RetryableError

log = logging.getLogger(__name__)

T = TypeVar("T")
# One generator for all jitter: seeding a new Random reads 2.5 kB from the OS, which costs milliseconds
# per request in sandboxes where system calls are slow.
_JITTER = random.Random()
Sleep = Callable[[float], Awaitable[None]]


@frozen
class RetryPolicy:
    """How often and how patiently to retry a transient failure.

    `max_attempts` counts the first try. The n-th retry waits `base_delay * multiplier**(n-1)` capped at
    `max_delay`, of which the upper half is random ("equal jitter": never shorter than half the
    nominal delay, so backoff still grows). A server's `retry_after` replaces the computed delay, capped
    at `max_retry_after` so a hostile or buggy header cannot park a study for hours. `max_elapsed`
    bounds the whole sequence; a retry that would start after it is not attempted.
    """

    max_attempts: int = 6
    base_delay: float = 0.5
    multiplier: float = 2.0
    max_delay: float = 30.0
    max_retry_after: float = 120.0
    max_elapsed: float | None = 600.0

    def delay(self, retry_number: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait before retry number `retry_number` (1 for the first retry)."""
        if retry_after is not None and retry_after >= 0:
            return min(retry_after, self.max_retry_after)
        nominal = min(self.max_delay, self.base_delay * self.multiplier ** (retry_number - 1))
        return nominal / 2 + rng.uniform(0, nominal / 2)


async def call_with_retries(
    operation: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    describe: str = "call",
    sleep: Sleep = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
) -> T:
    """Await `operation()` until it succeeds, retrying `RetryableError` as `policy` allows.

    Any other exception propagates at once. When attempts or time run out, the last `RetryableError`
    propagates, with the attempt count added to its message.
    """
    rng = rng or _JITTER
    started = clock()
    for attempt in range(1, policy.max_attempts + 1):
        try:
            return await operation()
        except RetryableError as error:
            wait = policy.delay(attempt, error.retry_after, rng)
            if not _may_retry(policy, attempt, clock() - started + wait):
                raise _exhausted(error, attempt) from None
            log.info("%s failed (%s); retry %d in %.2fs", describe, error, attempt, wait)
            await sleep(wait)
    raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover


def _may_retry(policy: RetryPolicy, attempt: int, elapsed_after_wait: float) -> bool:
    if attempt >= policy.max_attempts:
        return False
    return policy.max_elapsed is None or elapsed_after_wait <= policy.max_elapsed


def _exhausted(error: RetryableError, attempts: int) -> RetryableError:
    noun = "attempt" if attempts == 1 else "attempts"
    return RetryableError(f"{error} (gave up after {attempts} {noun})", retry_after=error.retry_after)


class ConcurrencyLimiter:
    """At most `limit` calls in flight for one backend, whichever event loop they run on.

    An `asyncio.Semaphore` belongs to the loop that first waits on it, and a backend object may outlive
    a loop (each `asyncio.run` makes a new one), so the limiter keeps one semaphore per running loop.
    `in_flight` and `peak` let tests and progress displays see what the limit did.
    """

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"concurrency limit must be at least 1, got {limit}")
        self.limit = limit
        self.in_flight = 0
        self.peak = 0
        self._semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        semaphore = self._semaphores.get(loop)
        if semaphore is None:
            semaphore = self._semaphores[loop] = asyncio.Semaphore(self.limit)
        return semaphore

    async def __aenter__(self) -> ConcurrencyLimiter:
        await self._semaphore().acquire()
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.in_flight -= 1
        self._semaphore().release()

    def __repr__(self) -> str:
        return f"ConcurrencyLimiter(limit={self.limit}, in_flight={self.in_flight})"
