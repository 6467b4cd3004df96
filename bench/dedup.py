"""Calls made / unique requests for a study full of duplicates (target: 1.00).

The study measures the same thing several ways: a prediction twice under two names, self-prediction
inside a sweep that repeats the subject, and a calibration whose samples overlap. Every duplicate request
must run once. The model is an OpenAI-compatible echo server on 127.0.0.1 that counts what reaches it.

    .venv/bin/python bench/dedup.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from intro.compiler import compile_spec  # noqa: E402
from intro.compiler.plan import requests  # noqa: E402
from tests.servers import EchoServer  # noqa: E402

SPEC = """
use stdlib.looking_inward as li
model api  = litellm "openai/echo" {{ api_base: "{url}" }}
model api2 = litellm "openai/echo" {{ api_base: "{url}", concurrency: 8 }}   # the same model, served differently
task seq {{ data: "seq.jsonl" prompt: "Next animals after {{{{ sequence }}}}?" }}
split s {{ test: [seq] items: 30 seed: 3 }}
sampling t1 {{ temperature: 1 samples: 4 max_tokens: 6 }}
study dedup {{
  measure first  = prediction(api, api, s.test, [li.first_character, li.first_word])
  measure again  = prediction(api, api, s.test, [li.first_word, li.first_character])
  for model in [api, api2] {{
    measure swept = prediction(model, model, s.test, [li.second_character])
  }}
  measure calibrated = calibration(api, api, s.test, [li.first_character], sampling: t1)
}}
"""


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, EchoServer(lifetime=600) as server:
        root = Path(tmp)
        with (root / "seq.jsonl").open("w") as f:
            for i in range(30):
                f.write(json.dumps({"id": f"s{i}", "split": "val", "sequence": f"cat, dog, bird{i}"}) + "\n")
        spec = root / "dedup.intro"
        spec.write_text(SPEC.format(url=server.url))
        plan = compile_spec(spec)[0]
        listed = sum(len(s.params["prompts"]) * s.params["samples"] for s in plan.steps if s.kind == "sample")
        unique = {k for s in plan.steps if s.kind == "sample" for k, _, _ in requests(plan, s)}
        start = time.perf_counter()
        command = [
            sys.executable,
            "-m",
            "intro.cli",
            "run",
            str(spec),
            "--runs",
            str(root / "runs"),
            "--cache",
            str(root / "cache"),
            "--quiet",
        ]
        result = subprocess.run(command, cwd=root, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if result.returncode not in (0,):
            print(result.stdout, result.stderr)
        calls = server.requests_received
    measure_requests = 0
    for measure in plan.measures:
        for _, step_id in measure.points:
            params = plan.step(step_id).params
            measure_requests += len(params["rows"]) * 2
    print(f"requests the measurements ask for (with duplicates): {measure_requests}")
    print(f"requests in the plan's sample steps:                   {listed}")
    print(f"unique requests:                                       {len(unique)}")
    print(f"calls that reached the server:                         {calls}  ({elapsed:.1f} s)")
    print(f"calls made / unique requests: {calls / len(unique):.2f} (target 1.00)")


if __name__ == "__main__":
    main()
