"""A small real run for tests that read results: `intro run` of a tiny study against the echo server.

Two API models (`a`, `b`: litellm against tests.servers.EchoServer on 127.0.0.1) in a subject x predictor
sweep of a prediction measure, plus a calibration measure over a numeric axis, so the cube has loop axes,
per-item, per-cell, pooled and per-bin variables. About forty model calls; built once per test process
and copied from there.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

from intro.cli import main
from tests.servers import EchoServer

SPEC = """
use stdlib.looking_inward as li
model a = litellm "openai/echo" {{ api_base: "{url}", api_key_env: "INTRO_TINYRUN_KEY" }}
model b = litellm "openai/echo-two" {{ api_base: "{url}", api_key_env: "INTRO_TINYRUN_KEY" }}
task seq {{ data: "seq.jsonl" prompt: "Next animals after {{{{ sequence }}}}?" }}
split s {{ test: [seq] items: 3 seed: 3 }}
sampling warm {{ temperature: 1 samples: 2 max_tokens: 5 }}
study {study} {{
  for subject in [a, b], predictor in [a, b] {{
    measure untrained = prediction(predictor, subject, s.test, [li.first_character, li.first_word])
  }}
  # A numeric axis for exports to keep as numbers: the same measurement twice, so its steps run once.
  for copy in [1, 2] {{
    measure calibration = calibration(a, a, s.test, [li.first_character], sampling: warm)
  }}
}}
"""


STUDY = "looking_inward_mini"  # the run the README's and the notebook's examples read by default


def tiny_run(destination: Path) -> Path:
    """A fresh copy of the tiny study's run at `destination/runs/<STUDY>`, for a test to read and write."""
    target = destination / "runs" / STUDY
    shutil.copytree(_built_run(), target)
    return target


@functools.cache
def _built_run() -> Path:
    root = Path(tempfile.mkdtemp(prefix="intro-tinyrun-"))
    atexit.register(shutil.rmtree, root, True)
    return build_tiny_run(root)


def build_tiny_run(root: Path, study: str = STUDY) -> Path:
    """Run the tiny study under `root` (spec, data, cache and `runs/`); returns `root/runs/<study>`."""
    with (root / "seq.jsonl").open("w") as f:
        for i in range(6):
            f.write(json.dumps({"id": f"s{i}", "split": "val", "sequence": f"cat, dog, bird{i}"}) + "\n")
    os.environ["INTRO_TINYRUN_KEY"] = "sk-tinyrun"  # litellm's OpenAI client wants some key
    with EchoServer() as server:
        spec = root / f"{study}.intro"
        spec.write_text(SPEC.format(url=server.url, study=study))
        argv = ["run", str(spec), "--runs", str(root / "runs"), "--cache", str(root / "cache"), "--quiet"]
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            status = main(argv)
    assert status == 0, printed.getvalue()
    return root / "runs" / study
