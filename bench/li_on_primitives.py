"""The main job's shape written on the stdlib functions vs on the built-in experiments: wall time ratio.

Both studies have the shape of specs/looking_inward_mini.intro (every model predicting every model, self
and cross finetunes on hypotheticals, calibration at temperature 1) on two tiny random local models, so
model compute is small and what the language adds around it (more, smaller steps: extract, estimate,
comparison) shows. Each runs from an empty cache in its own process, alternately, ROUNDS times; the
median wall times and their ratio are printed (target: new / old <= 1.1), with the calls each made.

    .venv/bin/python bench/li_on_primitives.py
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.tinymodels import make_tiny_model  # noqa: E402

ROUNDS = 3
DATA = ROOT / "tests" / "fixtures" / "studies" / "looking_inward_finetune_tiny" / "data"

HEAD = """
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
sampling short { temperature: 0 max_tokens: 6 }
sampling warm { temperature: 1 samples: 5 max_tokens: 6 seed: 11 }
let props = [li.first_character, li.second_character, li.starts_with_vowel, li.ethical_stance]
"""

BUILTIN = """
study old {
  for subject in [a, b], predictor in [a, b] {
    measure untrained = prediction(predictor, subject, s.test, props, object: short, hypothetical: short)
  }
  for (subject, other) in pairs([a, b]) {
    let own = finetune(subject, hypotheticals(subject, s.train, props, sampling: short), rank: 4, batch: 4)
    let crossed = finetune(other, hypotheticals(own, s.train, props, sampling: short), rank: 4, batch: 4)
    measure self = prediction(own, own, s.test, props, object: short, hypothetical: short)
    measure cross = prediction(crossed, own, s.test, props, object: short, hypothetical: short)
    measure calibration = calibration(own, own, c.test, [li.second_character], sampling: warm)
  }
}
"""

STDLIB = """
study new {
  for subject in [a, b], predictor in [a, b], property in props {
    measure untrained = li.predict_property(predictor, subject, s.test, property, short, short)
  }
  for (subject, other) in pairs([a, b]) {
    let own = finetune(subject, li.hypothetical_examples(subject, s.train, props, short), rank: 4, batch: 4)
    let crossed = finetune(other, li.hypothetical_examples(own, s.train, props, short), rank: 4, batch: 4)
    for property in props {
      let selves = li.predict_property(own, own, s.test, property, short, short)
      let others = li.predict_property(crossed, own, s.test, property, short, short)
      measure self = selves
      measure cross = others
      measure advantage = difference(selves.accuracy, others.accuracy)
    }
    measure calibration = li.calibration_of(own, own, c.test, li.second_character, sampling: warm)
  }
}
"""


def run(root: Path, name: str) -> tuple[float, str]:
    """One run of `name` from an empty cache: its wall time and its summary line."""
    for folder in ("cache", "runs", "intro-cache"):
        shutil.rmtree(root / folder, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "intro.cli",
        "run",
        f"{name}.intro",
        "--runs",
        "runs",
        "--cache",
        "cache",
    ]
    environment = {"INTRO_CACHE_DIR": str(root / "intro-cache"), "PATH": "/usr/bin:/bin"}
    start = time.perf_counter()
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, env=environment)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stdout}\n{result.stderr}")
    summary = next(line for line in result.stdout.splitlines() if "model calls" in line)
    return elapsed, summary.strip()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copytree(DATA, root / "data")
        make_tiny_model(root / "tiny_a", "qwen2", seed=0)
        make_tiny_model(root / "tiny_b", "qwen2", seed=1)
        (root / "old.intro").write_text(HEAD + BUILTIN)
        (root / "new.intro").write_text(HEAD + STDLIB)
        walls: dict[str, list[float]] = {"old": [], "new": []}
        for _ in range(ROUNDS):
            for name in ("old", "new"):
                elapsed, summary = run(root, name)
                walls[name].append(elapsed)
                print(f"{name}: {elapsed:6.1f} s  {summary}")
    old, new = statistics.median(walls["old"]), statistics.median(walls["new"])
    print(f"median wall: built-in {old:.1f} s, stdlib on primitives {new:.1f} s")
    print(f"new / old: {new / old:.2f} (target <= 1.10)")


if __name__ == "__main__":
    main()
