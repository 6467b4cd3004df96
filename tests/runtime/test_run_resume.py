"""`intro run` end to end through the real CLI: re-runs are free, kill -9 loses nothing, locks hold.

The model is a tiny random transformers model served by `intro serve`'s server on 127.0.0.1, so calls
can be counted where they land. The runner is a real subprocess killed with SIGKILL mid-study.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from intro.compiler import compile_spec
from intro.compiler.plan import requests
from intro.runtime.backends.local import LocalBackend
from intro.runtime.backends.local_model import load_local_model
from intro.runtime.serve.server import make_server
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
  measure self = prediction(a, a, s.test, [li.first_character, li.ethical_stance], object: warm, hypothetical: warm)
}}
"""


def write_study(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "seq.jsonl").open("w") as f:
        for i in range(40):
            f.write(json.dumps({"id": f"s{i}", "split": "val", "sequence": f"cat, dog, item{i}"}) + "\n")
    with (directory / "ab.jsonl").open("w") as f:
        for i in range(40):
            row = {
                "id": f"q{i}",
                "split": "val",
                "question": f"Pick {i}?",
                "option_a": "yes",
                "option_b": "no",
                "matching": "AB"[i % 2],
            }
            f.write(json.dumps(row) + "\n")
    spec = directory / "resume.intro"
    spec.write_text(SPEC.format(model=cached_tiny_model("qwen2")))
    return spec


@pytest.fixture(scope="module")
def server():
    backend = LocalBackend(load_local_model(str(cached_tiny_model("qwen2"))))
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


def unique_requests(spec: Path) -> set[str]:
    plan = compile_spec(spec)[0]
    return {key for step in plan.steps if step.kind == "sample" for key, _, _ in requests(plan, step)}


def cached_keys(cache: Path) -> set[str]:
    # Temporary files a killed writer left behind are not results (writes are atomic renames).
    return {p.stem for p in (cache / "requests").rglob("*.json") if not p.name.startswith(".tmp-")}


def cube(workdir: Path) -> xr.Dataset:
    return xr.open_zarr(workdir / "runs" / "resume" / "cube.zarr", group="self").load()


def test_kill_at_several_points_then_resume_equals_uninterrupted_run(tmp_path, server):
    spec = write_study(tmp_path / "study")
    unique = unique_requests(spec)

    reference = tmp_path / "reference"
    reference.mkdir()
    done = run(spec, reference, tmp_path / "ref-cache", server.url)
    assert done.wait(timeout=300) == 0, done.stdout.read()
    expected = cube(reference)

    work, cache = tmp_path / "work", tmp_path / "cache"
    work.mkdir()
    # Kill points are fractions of the whole study; the last leaves more than one batch of requests
    # (results land a batch at a time), so the runner cannot finish between the check and the kill.
    for fraction in (0.2, 0.4, 0.6):
        before = len(cached_keys(cache)) if (cache / "requests").exists() else 0
        target = max(before + 1, int(fraction * len(unique)))
        process = run(spec, work, cache, server.url)
        deadline = time.monotonic() + 120
        while (
            len(cached_keys(cache) if (cache / "requests").exists() else ()) < target
            and process.poll() is None
        ):
            assert time.monotonic() < deadline
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()
    finished_before_resume = cached_keys(cache)
    assert finished_before_resume < unique  # killed before the end

    resumed = run(spec, work, cache, server.url)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    calls = int(output.split(" model calls")[0].rsplit(":", 1)[1])
    # Nothing that finished before a kill is asked for again.
    assert calls == len(unique - finished_before_resume)
    assert cached_keys(cache) == unique

    result = cube(work)
    for name in ("object_response", "hypothetical_response", "target", "prediction"):
        np.testing.assert_array_equal(result[name].values, expected[name].values)
    np.testing.assert_array_equal(result["correct"].values, expected["correct"].values)
    np.testing.assert_allclose(result["accuracy"].values, expected["accuracy"].values, equal_nan=True)


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
from intro.runtime.run import study_lock
with study_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(60)
"""
