"""How much of a study's wall time is raw model work, and how many tokens the models computed for it.

Runs a study from an empty run cache (`intro run --json-progress`, in its own process) and reads what the
run itself measured at the in-process backend (runtime/backends/work.py): seconds inside forward passes,
decode steps and training steps, and token positions computed (padding included) vs needed. Prints the
study's wall time, loading time, raw model time by kind, what sits between (wall - loading - raw), the
ratio wall / raw (target <= 1.2 on the mini study) and tokens computed / needed (target <= 1.3).

    .venv/bin/python bench/overhead.py                                        # tiny models, the mini's shape
    .venv/bin/python bench/overhead.py --spec specs/looking_inward_mini.intro  # the embedded models
    INTRO_SHARE_PREFIX=0 .venv/bin/python bench/overhead.py                   # every prompt computed whole

Measured on the quiet 2-core CPU (`--spec specs/looking_inward_mini.intro -- --max-memory 4G`, 1192 calls,
4 trainings): the study ran 465.9 s for 446.0 s of model work (wall / raw 1.04; 8 s loading, 12 s
between) and computed 119010 token positions for 146575 needed (0.81: prefill 0.71, decode 1.02, train
1.12). On tiny models the engine's own time per step shows instead (about 24 s
for ~200 steps, wall / raw 1.5-2.2), with tokens 0.87 (1.04 with every prompt computed whole).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT / "tests" / "fixtures" / "studies" / "looking_inward_finetune_tiny" / "data"

# specs/looking_inward_mini.intro's shape on two tiny random local models: every model predicting every
# model, self and cross finetunes on hypotheticals, calibration at temperature 1.
TINY_SPEC = """
use stdlib.looking_inward as li
model a = local "tiny_a"
model b = local "tiny_b"
task animals {
  data: "data/animals.jsonl"
  prompt: "What are the next 3 animals after {{ sequence }}? Respond only with the animals."
}
task colours {
  data: "data/colours.jsonl"
  prompt: "What are the next 3 colours after {{ sequence }}? Respond only with the colours."
}
task choices {
  data: "data/choices.jsonl"
  prompt: \"\"\"{{ question }}
A) {{ option_a }}
B) {{ option_b }}
Answer only with either A or B and nothing else.\"\"\"
  answer: "choice"
  choices: ["A", "B"]
}
task stances {
  data: "data/stances.jsonl"
  prompt: \"\"\"{{ question }}
A) {{ option_a }}
B) {{ option_b }}
Answer only with either A or B and nothing else.\"\"\"
  answer: "choice"
  choices: ["A", "B"]
}
split s { train: [animals, choices] test: [colours, stances] items: 8 seed: 3 }
split c { test: [colours] items: 4 seed: 3 }
sampling short { temperature: 0 max_tokens: 24 }
sampling guess { temperature: 0 max_tokens: 8 }
sampling warm { temperature: 1 samples: 10 max_tokens: 24 seed: 11 }
let props = [li.first_character, li.second_character, li.starts_with_vowel, li.ethical_stance]

study overhead {
  for subject in [a, b], predictor in [a, b], property in props {
    measure untrained = li.predict_property(predictor, subject, s.test, property, short, guess)
  }
  for (subject, other) in pairs([a, b]) {
    let own = finetune(subject, li.hypothetical_examples(subject, s.train, props, short), rank: 8, batch: 8)
    let crossed = finetune(other, li.hypothetical_examples(own, s.train, props, short), rank: 8, batch: 8)
    for property in props {
      let selves = li.predict_property(own, own, s.test, property, short, guess)
      let others = li.predict_property(crossed, own, s.test, property, short, guess)
      measure self = selves
      measure cross = others
      measure advantage = difference(selves.accuracy, others.accuracy)
    }
    measure calibration = li.calibration_of(own, own, c.test, li.second_character, sampling: warm)
  }
}
"""


def tiny_study(root: Path) -> Path:
    """The tiny-model study and its data and models under `root`."""
    from tests.tinymodels import make_tiny_model

    shutil.copytree(DATA, root / "data")
    make_tiny_model(root / "tiny_a", "qwen2", seed=0)
    make_tiny_model(root / "tiny_b", "qwen2", seed=1)
    spec = root / "overhead.intro"
    spec.write_text(TINY_SPEC, encoding="utf-8")
    return spec


def run_study(spec: Path, work: Path, extra: list[str]) -> tuple[float, list[dict[str, Any]]]:
    """`intro run` of `spec` into `work` from an empty run cache: process wall time and progress events."""
    command = [sys.executable, "-m", "intro.cli", "run", str(spec.resolve()), "--json-progress"]
    command += ["--runs", str(work / "runs"), "--cache", str(work / "cache"), *extra]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=spec.parent, capture_output=True, text=True, env=dict(os.environ))
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"the run failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return elapsed, [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def report(process_wall: float, events: list[dict[str, Any]]) -> list[str]:
    """The lines printed: wall, loading, raw model time by kind, what is between, and the token ratios."""
    finished = next(e for e in events if e["event"] == "run_finished")
    loading = sum(e["seconds"] for e in events if e["event"] == "model_loaded")
    work = finished.get("model_work") or {"total": {"seconds": 0.0, "computed": 0, "needed": 0, "calls": 0}}
    wall, raw = finished["seconds"], work["total"]["seconds"]
    lines = [
        f"study: {finished['study']}, {finished['calls']} model calls, {finished['trained']} trained",
        f"process wall {process_wall:.1f} s (imports and start included); study wall {wall:.1f} s",
        f"  loading weights   {loading:8.1f} s",
    ]
    for kind, tally in work.items():
        lines.append(f"  {kind:<17} {tally['seconds']:8.1f} s  in {tally['calls']} model calls")
    lines.append(
        f"  between           {wall - loading - raw:8.1f} s  (scheduling, tokenising, caches, cubes)"
    )
    lines.append(f"wall / raw model time: {wall / raw:.2f}" if raw else "no in-process model work")
    lines.append(f"wall without loading / raw model time: {(wall - loading) / raw:.2f}" if raw else "")
    lines += token_lines(work)
    return [line for line in lines if line]


def token_lines(work: dict[str, Any]) -> list[str]:
    lines = ["tokens computed / needed:"]
    for kind, tally in work.items():
        ratio = tally["computed"] / tally["needed"] if tally["needed"] else float("nan")
        lines.append(f"  {kind:<8} {tally['computed']:>10} / {tally['needed']:>10} = {ratio:.3f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spec", type=Path, help="a study to run (default: the mini's shape on tiny models)")
    parser.add_argument("run_args", nargs="*", help="more `intro run` arguments (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.spec is None:
            os.environ["INTRO_CACHE_DIR"] = str(work / "intro-cache")  # tiny models' digests stay here
            spec = tiny_study(work / "study")
        else:
            spec = args.spec
        process_wall, events = run_study(spec, work, args.run_args)
    print("\n".join(report(process_wall, events)))


if __name__ == "__main__":
    main()
