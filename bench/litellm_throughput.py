"""Throughput of LiteLLMBackend against a loopback OpenAI-compatible server with a fixed 100 ms latency.

With 64 requests in flight and every answer taking 100 ms, a client with no overhead of its own
completes 640 requests per second; the target is at least 80% of that. The server (tests/servers.py)
runs in a child process so it does not share this interpreter's GIL.

To show where time goes, the same load is also sent by lighter clients (the openai SDK that litellm
calls underneath, and bare aiohttp, the transport litellm uses), and for each one the CPU spent per
request is measured on both sides: this process (the client) and the server's process. When the sum
times 640 exceeds the cores the machine has, the target is out of reach whatever the client does.

Run from the repository root:  .venv/bin/python bench/litellm_throughput.py [--rounds 10] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from attrs import frozen

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.servers

from intro.runtime.backends.litellm_backend import LiteLLMBackend, import_litellm  # noqa: E402
from intro.runtime.backends.requests import GenerationRequest, Message  # noqa: E402
from tests.servers import ServerProcess, echo_server_process  # noqa: E402

CONCURRENCY = 64
LATENCY = 0.1
IDEAL = CONCURRENCY / LATENCY
TARGET = 0.8

Call = Callable[[str], Awaitable[object]]


@frozen
class Measurement:
    label: str
    rate: float  # requests per second, wall clock
    client_ms: float  # this process's CPU per request
    server_ms: float  # the server process's CPU per request

    def row(self) -> str:
        return (
            f"{self.label:<40} {self.rate:7.1f} req/s {self.rate / IDEAL:6.1%}   "
            f"client {self.client_ms:5.2f} ms/req   server {self.server_ms:5.2f} ms/req"
        )


def litellm_call(url: str, model: str) -> Call:
    backend = LiteLLMBackend(model, api_base=url, concurrency=CONCURRENCY, timeout=30)

    async def call(content: str) -> object:
        (generation,) = await backend.generate(
            [GenerationRequest(key=content, messages=(Message("user", content),))]
        )
        return generation

    return call


def openai_call(url: str) -> Call:
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0)

    async def call(content: str) -> object:
        return await client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": content}], max_tokens=16, temperature=0
        )

    return call


def aiohttp_call(url: str) -> Call:
    import aiohttp

    session: list[aiohttp.ClientSession] = []  # created on first use, inside the running loop

    async def call(content: str) -> object:
        if not session:
            session.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)))
        body = {"model": "echo", "messages": [{"role": "user", "content": content}], "max_tokens": 16}
        async with session[0].post(f"{url}/chat/completions", json=body) as response:
            return await response.json()

    async def close() -> None:
        if session:
            await session[0].close()

    call.close = close  # type: ignore[attr-defined]
    return call


async def rounds_of(call: Call, rounds: int, first: int = 0) -> None:
    """`rounds` times: 64 concurrent calls, all answered before the next 64 start."""
    for round_number in range(first, first + rounds):
        await asyncio.gather(*(call(f"item {round_number} {i}") for i in range(CONCURRENCY)))


async def measure(label: str, call: Call, server: ServerProcess, rounds: int, profile: bool) -> Measurement:
    await rounds_of(call, 1, first=10_000)  # warm up: lazy imports, connection pools
    profiler = cProfile.Profile(time.process_time) if profile else None
    wall, cpu, server_cpu = time.perf_counter(), time.process_time(), server.cpu_seconds()
    if profiler:
        profiler.enable()
    await rounds_of(call, rounds)
    if profiler:
        profiler.disable()
    count = rounds * CONCURRENCY
    measurement = Measurement(
        label=label,
        rate=count / (time.perf_counter() - wall),
        client_ms=(time.process_time() - cpu) * 1000 / count,
        server_ms=(server.cpu_seconds() - server_cpu) * 1000 / count,
    )
    print(measurement.row(), flush=True)
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
    return measurement


async def run_all(rounds: int, profile: bool) -> list[Measurement]:
    with echo_server_process(latency=LATENCY) as server:
        results = [
            await measure(
                "LiteLLMBackend, openai/echo",
                litellm_call(server.url, "openai/echo"),
                server,
                rounds,
                profile,
            ),
            # A model in litellm's price table takes a shorter path through its cost bookkeeping.
            await measure(
                "LiteLLMBackend, openai/gpt-4o-mini",
                litellm_call(server.url, "openai/gpt-4o-mini"),
                server,
                rounds,
                False,
            ),
            await measure("openai SDK alone", openai_call(server.url), server, rounds, False),
        ]
        bare = aiohttp_call(server.url)
        results.append(await measure("aiohttp alone", bare, server, rounds, False))
        await bare.close()  # type: ignore[attr-defined]
        return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="batches of 64 concurrent requests")
    parser.add_argument("--profile", action="store_true", help="profile litellm's CPU time per function")
    options = parser.parse_args()
    started = time.perf_counter()
    import_litellm()
    print(f"import litellm: {time.perf_counter() - started:.1f} s; load average {os.getloadavg()[0]:.1f}")
    print(
        f"{options.rounds} rounds of {CONCURRENCY} concurrent requests, {LATENCY * 1000:.0f} ms server latency"
    )
    # One event loop for everything: litellm caches its HTTP clients per loop.
    results = asyncio.run(run_all(options.rounds, options.profile))
    headline = results[0]
    for result in results:
        needed = IDEAL * (result.client_ms + result.server_ms) / 1000
        print(
            f"{result.label}: 640 req/s would need {needed:.1f} CPU cores; this machine has {os.cpu_count()}"
        )
    print(f"load average now {os.getloadavg()[0]:.1f}")
    print(f"achieved {headline.rate:.0f} req/s = {headline.rate / IDEAL:.2f} of ideal (target >= {TARGET})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
