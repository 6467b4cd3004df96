"""A study run against a misbehaving OpenAI-compatible server: every fault kind is retried, the cube is
complete, and no cell is missing or counted twice. Also: an API key never reaches anything under runs/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import xarray as xr

from intro.compiler import compile_spec
from intro.runtime.dataflow.tables import CALLING, Tables
from intro.runtime.store.cache import Cache
from tests.servers import EchoServer, echo_text

SPEC = """
use stdlib.looking_inward as li
model api = litellm "openai/echo" {{ api_base: "{url}", api_key_env: "INTRO_TEST_KEY", timeout: 1.5 }}
task seq {{ data: "seq.jsonl" prompt: "Next animals after {{{{ sequence }}}}?" }}
split s {{ test: [seq] items: 8 seed: 3 }}
sampling few {{ temperature: 1 samples: 2 max_tokens: 5 }}
study faults {{
  for property in [li.first_character, li.first_word] {{
    measure self = li.predict_property(api, api, s.test, property, object: few, hypothetical: few)
  }}
}}
"""
FAULTS = ("429", "500", "hang", "truncated", "malformed", "reset")
KEY = "sk-planted-4c1d7e0b9a"


def write(directory: Path, url: str) -> Path:
    with (directory / "seq.jsonl").open("w") as f:
        for i in range(8):
            f.write(json.dumps({"id": f"s{i}", "split": "val", "sequence": f"cat, dog, bird{i}"}) + "\n")
    spec = directory / "faults.intro"
    spec.write_text(SPEC.format(url=url))
    return spec


def calls(plan, scratch: Path) -> list[tuple[str, str, int]]:
    """(cache key, the prompt's last message, max tokens) of every call the study makes."""
    tables = Tables(plan, Cache(scratch))
    return [
        (call.key, tables.prompt(call.prompt).messages[-1][1], step.params.max_tokens)
        for step in plan.steps
        if step.kind in CALLING
        for call in tables.calls(step)
    ]


def test_every_fault_kind_is_retried_and_the_cube_is_complete(tmp_path):
    probe = write(tmp_path, "http://127.0.0.1:1/v1")
    contents = sorted({content for _, content, _ in calls(compile_spec(probe)[0], tmp_path / "scratch")})
    # A different fault (with a 429 carrying Retry-After first) for the first calls of several prompts.
    script = {
        content: [kind] if kind != "429" else ["429"]
        for content, kind in zip(contents, FAULTS * 3, strict=False)
    }
    with EchoServer(script, hang_seconds=4.0, api_key=KEY) as server:
        spec = write(tmp_path, server.url)
        plan = compile_spec(spec)[0]
        unique = {key for key, _, _ in calls(plan, tmp_path / "scratch")}
        env = {**os.environ, "INTRO_TEST_KEY": KEY}
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "intro.cli",
                "run",
                str(spec),
                "--runs",
                str(tmp_path / "runs"),
                "--cache",
                str(tmp_path / "cache"),
                "--quiet",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        faulted = [c for c in script]
        assert all(server.calls(c) >= 2 for c in faulted)  # each faulted prompt was retried

    cache = Cache(tmp_path / "cache")
    assert all(cache.has(k) for k in unique)
    assert f"{len(unique)} model calls" in result.stdout  # one result per request: none lost, none twice
    store = tmp_path / "runs" / "faults" / "cube.zarr"
    for name in ("behaviour", "predictions"):  # every sample of every prompt has its reply
        rows = xr.open_zarr(store, group=f"self.{name}").load()
        assert np.isfinite(rows.compliant.values).all() and not (rows.text.values == "").any()
    accuracy = xr.open_zarr(store, group="self.accuracy").load()
    assert int(accuracy.n.sum()) == int(np.isfinite(accuracy.score.values).sum())
    for key, content, max_tokens in calls(plan, tmp_path / "scratch"):
        assert cache.get(key)["text"] == echo_text(content, max_tokens)[0]

    # The key was used (the server demanded it) yet appears in no file of the run or the cache.
    for root in (tmp_path / "runs", tmp_path / "cache"):
        for path in root.rglob("*"):
            if path.is_file():
                assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in result.stdout + result.stderr
