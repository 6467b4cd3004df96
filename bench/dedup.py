"""Calls made / unique requests for a study full of duplicates (target: 1.00).

The study measures the same thing several ways (stdlib/looking_inward.intro): a prediction twice under two
names, self-prediction inside a sweep that repeats the subject, and a calibration whose samples overlap.
Every duplicate request must run once. The model is an OpenAI-compatible echo server on 127.0.0.1 that counts what reaches it.

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
from intro.compiler.plan import Plan, Step  # noqa: E402
from intro.compiler.step_params import GenerateParams  # noqa: E402
from intro.runtime.dataflow.tables import CALLING, Tables  # noqa: E402
from intro.runtime.store.cache import Cache  # noqa: E402
from tests.servers import EchoServer  # noqa: E402

SPEC = """
use stdlib.looking_inward as li
model api  = litellm "openai/echo" {{ api_base: "{url}" }}
model api2 = litellm "openai/echo" {{ api_base: "{url}", concurrency: 8 }}   # the same model, served differently
task seq {{ data: "seq.jsonl" prompt: "Next animals after {{{{ sequence }}}}?" }}
split s {{ test: [seq] items: 30 seed: 3 }}
sampling t1 {{ temperature: 1 samples: 4 max_tokens: 6 }}
study dedup {{
  for property in [li.first_character, li.first_word] {{
    measure first = li.predict_property(api, api, s.test, property)
  }}
  for property in [li.first_word, li.first_character] {{
    measure again = li.predict_property(api, api, s.test, property)
  }}
  for model in [api, api2] {{
    measure swept = li.predict_property(model, model, s.test, li.second_character)
  }}
  measure calibrated = li.calibration_of(api, api, s.test, li.first_character, sampling: t1)
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
        calling = [s for s in plan.steps if s.kind in CALLING]
        listed = sum(calls_of(s) for s in calling)
        tables = Tables(plan, Cache(root / "scratch"))
        unique = {call.key for s in calling for call in tables.calls(s)}
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
    print(f"requests the measurements ask for (with duplicates): {asked(plan)}")
    print(f"requests in the plan's calling steps:                  {listed}")
    print(f"unique requests:                                       {len(unique)}")
    print(f"calls that reached the server:                         {calls}  ({elapsed:.1f} s)")
    print(f"calls made / unique requests: {calls / len(unique):.2f} (target 1.00)")


def calls_of(step: Step) -> int:
    """The calls a generate step lists (its prompts are all known before the run here)."""
    params = step.params_as(GenerateParams)
    return len(params.rows or ()) * params.samples


def asked(plan: Plan) -> int:
    """The calls each measurement asks for on its own: a call two measurements share counts twice.

    A measurement is one function call at one point of the study's axes (its fields, such as `first.accuracy`
    and `first.behaviour`, are one measurement)."""
    uses: dict[tuple[str, tuple[object, ...]], set[str]] = {}
    for measure in plan.measures:
        for coords, step_id in measure.points:
            uses.setdefault((measure.name.split(".")[0], tuple(coords)), set()).update(calling(plan, step_id))
    return sum(calls_of(plan.step(s)) for used in uses.values() for s in used)


def calling(plan: Plan, step_id: str) -> set[str]:
    """The calling steps `step_id` reads, itself included."""
    step = plan.step(step_id)
    found = {step.id} if step.kind in CALLING else set()
    for dep in step.deps:
        found |= calling(plan, dep)
    return found


if __name__ == "__main__":
    main()
