"""`intro run` end to end through the real CLI: re-runs are free, kill -9 loses nothing, locks hold.

The model is a tiny random transformers model served by `intro serve`'s server on 127.0.0.1, so calls
can be counted where they land. The runner is a real subprocess killed with SIGKILL mid-study: a gate in
front of the real backend holds replies once the runner has had its share, so each kill lands while the
runner waits on the server, however loaded the machine is.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from intro.compiler import compile_spec
from intro.runtime.backends.local import LocalBackend
from intro.runtime.backends.local_model import load_local_model
from intro.runtime.backends.requests import Generation, GenerationRequest, Score, ScoreRequest
from intro.runtime.dataflow.tables import CALLING, Tables
from intro.runtime.serve.server import make_server
from intro.runtime.store.cache import Cache
from tests.studydata import write_ab_rows, write_sequence_rows
from tests.tinymodels import cached_tiny_model

INTRO = [sys.executable, "-m", "intro.cli"]

SPEC = """
use stdlib.looking_inward as li
model a = local "{model}"
task seq {{ data: "seq.jsonl" prompt: "Next animals after {{{{ sequence }}}}?" }}
task ab {{ data: "ab.jsonl" prompt: "{{{{ question }}}} A) {{{{ option_a }}}} B) {{{{ option_b }}}}" answer: "choice" choices: ["A", "B"] }}
split s {{ test: [seq, ab] items: 12 seed: 1 }}
sampling warm {{ temperature: 1 samples: 3 max_tokens: 6 seed: 4 }}
study resume {{
  for property in [li.first_character, li.ethical_stance] {{
    measure self = li.predict_property(a, a, s.test, property, object: warm, hypothetical: warm, agree: li.every_sample)
  }}
}}
"""


def write_study(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    write_sequence_rows(directory / "seq.jsonl", 40)
    write_ab_rows(directory / "ab.jsonl", 40)
    spec = directory / "resume.intro"
    spec.write_text(SPEC.format(model=cached_tiny_model("qwen2")))
    return spec


class GatedBackend:
    """The real backend behind a gate: after `allow(n)` it answers until n requests have passed, then
    holds every later batch (`holding` is set) until `release()`. The test kills the runner meanwhile."""

    def __init__(self, backend: LocalBackend):
        self.backend, self.name, self.loaded = backend, backend.name, backend.loaded
        self.passed = 0
        self.holding = threading.Event()
        self._allowance: int | None = None  # None: no gate
        self._open = threading.Event()
        self._lock = threading.Lock()

    def allow(self, allowance: int) -> None:
        with self._lock:
            self.passed, self._allowance = 0, allowance
            self.holding.clear()
            self._open.clear()

    def release(self) -> None:
        with self._lock:
            self._allowance = None
            self._open.set()

    async def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        if not self._may_pass(len(requests)):
            self.holding.set()
            await asyncio.to_thread(self._open.wait)
        return await self.backend.generate(requests)

    def _may_pass(self, count: int) -> bool:
        with self._lock:
            if self._allowance is not None and self.passed >= self._allowance:
                return False
            self.passed += count
            return True

    async def score(self, requests: list[ScoreRequest]) -> list[Score]:
        return await self.backend.score(requests)

    async def aclose(self) -> None:
        await self.backend.aclose()


@pytest.fixture(scope="module")
def backend() -> LocalBackend:
    return LocalBackend(load_local_model(str(cached_tiny_model("qwen2"))))


@pytest.fixture(scope="module")
def server(backend):
    # Small batches: results reach the cache a few at a time, so a kill can land between any two.
    srv = make_server(backend, max_batch=2)
    srv.start_in_thread()
    yield srv
    srv.close()


def run(spec: Path, workdir: Path, cache: Path, url: str, **kw) -> subprocess.Popen:
    command = [
        *INTRO,
        "run",
        str(spec),
        "--runs",
        str(workdir / "runs"),
        "--cache",
        str(cache),
        "--serve",
        f"a={url}",
        "--quiet",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, **kw
    )


def unique_requests(spec: Path, scratch: Path) -> set[str]:
    """The cache keys of every call the study makes (its prompts are all known before the run)."""
    plan = compile_spec(spec)[0]
    tables = Tables(plan, Cache(scratch))
    return {call.key for step in plan.steps if step.kind in CALLING for call in tables.calls(step)}


def cached_keys(cache: Path) -> set[str]:
    # Temporary files a killed writer left behind are not results (writes are atomic renames).
    if not (cache / "requests").exists():
        return set()
    return {p.stem for p in (cache / "requests").rglob("*.json") if not p.name.startswith(".tmp-")}


def cube(workdir: Path, group: str) -> xr.Dataset:
    return xr.open_zarr(workdir / "runs" / "resume" / "cube.zarr", group=f"self.{group}").load()


def kill_when_held(spec: Path, work: Path, cache: Path, backend: LocalBackend, allowance: int) -> None:
    """Run `intro run` against a fresh gated server; once `allowance` requests have passed and the runner
    waits on a held batch, SIGKILL it (replies it had not yet written to the cache are lost, as in a crash). A fresh server per run: nothing a
    killed runner left in flight can reach the next run's gate."""
    gate = GatedBackend(backend)
    gate.allow(allowance)
    srv = make_server(gate, max_batch=2).start_in_thread()
    try:
        process = run(spec, work, cache, srv.url)
        deadline = time.monotonic() + 120
        while not gate.holding.is_set():
            assert process.poll() is None, (
                f"the runner ended before the gate held it: {process.stdout.read()}"
            )
            assert time.monotonic() < deadline, "the runner never reached the gate"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        gate.release()
        srv.close()


def test_kill_at_several_points_then_resume_equals_uninterrupted_run(tmp_path, server, backend):
    spec = write_study(tmp_path / "study")
    unique = unique_requests(spec, tmp_path / "scratch")

    reference = tmp_path / "reference"
    reference.mkdir()
    done = run(spec, reference, tmp_path / "ref-cache", server.url)
    assert done.wait(timeout=300) == 0, done.stdout.read()

    work, cache = tmp_path / "work", tmp_path / "cache"
    work.mkdir()
    # Kill points are fractions of the whole study: each run may finish requests up to its fraction
    # (a batch of two may pass the gate whole, one past it), then waits on the gate until it is killed.
    finished_counts = []
    for fraction in (0.2, 0.4, 0.6):
        before = len(cached_keys(cache))
        kill_when_held(spec, work, cache, backend, max(1, int(fraction * len(unique)) - before))
        finished_counts.append(len(cached_keys(cache)))
        assert before <= finished_counts[-1] <= int(fraction * len(unique)) + 1
    finished_before_resume = cached_keys(cache)
    assert finished_before_resume < unique  # killed before the end
    assert finished_counts[-1] > 0  # and after some of it

    resumed = run(spec, work, cache, server.url)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    calls = int(output.split(" model calls")[0].rsplit(":", 1)[1])
    # Nothing that finished before a kill is asked for again.
    assert calls == len(unique - finished_before_resume)
    assert cached_keys(cache) == unique

    for name in ("behaviour", "predictions"):  # every reply and the value read from it
        result, expected = cube(work, name), cube(reference, name)
        for variable in ("text", "value", "compliant"):
            np.testing.assert_array_equal(result[variable].values, expected[variable].values)
    for name in ("by_task", "accuracy"):
        result, expected = cube(work, name), cube(reference, name)
        np.testing.assert_array_equal(result["score"].values, expected["score"].values)
        np.testing.assert_allclose(result["estimate"].values, expected["estimate"].values, equal_nan=True)


def test_rerun_makes_no_calls_and_second_runner_is_locked_out(tmp_path, server):
    spec = write_study(tmp_path / "study")
    first = run(spec, tmp_path, tmp_path / "cache", server.url)
    assert first.wait(timeout=300) == 0
    served = server.requests_served

    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(tmp_path / "runs" / "resume")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    blocked = run(spec, tmp_path, tmp_path / "cache", server.url)
    out, _ = blocked.communicate(timeout=120)
    assert blocked.returncode == 4
    assert "another intro run" in out
    holder.kill()
    holder.wait()

    again = run(spec, tmp_path, tmp_path / "cache", server.url)
    out, _ = again.communicate(timeout=120)
    assert again.returncode == 0, out
    assert " 0 model calls" in out
    assert server.requests_served == served


LOCK_HOLDER = """
import sys, time
from pathlib import Path
from intro.runtime.engine.run import study_lock
with study_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(60)
"""
