"""A small real run for tests that read results: `intro run` of a tiny study against the echo server.

It mirrors the main job (specs/looking_inward_mini.intro) on the stdlib's functions, without training:
two API models (`a`, `b`: litellm against tests.servers.EchoServer on 127.0.0.1) in a subject x predictor
x property sweep of `li.predict_property`; for each ordered pair, each model predicting itself (`self`)
and the other predicting it (`cross`), with their paired `difference` (`advantage`); and
`li.calibration_of` over a numeric axis. So the run has estimate cubes per field (`untrained.accuracy`,
`self.by_task`, ...) with per-item scores, a comparison cube and per-task groups. The echo server answers
both models alike with "echo: " and the prompt, and one word of that is the hypothetical answer: every
first word is predicted and no first character, for self and cross alike (an advantage of zero). Thirty
model calls; built once per test process and copied from there.
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
sampling one_word {{ max_tokens: 1 }}
sampling warm {{ temperature: 1 samples: 2 max_tokens: 5 }}
let props = [li.first_character, li.first_word]
study {study} {{
  for subject in [a, b], predictor in [a, b], property in props {{
    measure untrained = li.predict_property(predictor, subject, s.test, property, hypothetical: one_word)
  }}
  for (subject, other) in pairs([a, b]) {{
    for property in props {{
      let own = li.predict_property(subject, subject, s.test, property, hypothetical: one_word)
      let crossed = li.predict_property(other, subject, s.test, property, hypothetical: one_word)
      measure self = own
      measure cross = crossed
      measure advantage = difference(own.accuracy, crossed.accuracy)
    }}
  }}
  # A numeric axis for exports to keep as numbers: the same measurement twice, so its steps run once.
  for copy in [1, 2] {{
    measure calibration = li.calibration_of(a, a, s.test, li.first_character, sampling: warm)
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
