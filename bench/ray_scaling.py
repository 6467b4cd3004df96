"""Scaling of `intro run --executor ray` with worker processes: the same CPU-bound study on 1 and 2 actors.

A tiny random model (tests/tinymodels.py) answers a prediction study (stdlib `li.predict_property`) of
several generate steps; every actor is one process limited to one torch thread (one CPU each), on a local
Ray cluster of `--cpus` CPUs.
Each round runs the study with a fresh cache once per worker count (alternating, so drift in the machine's
load hits both alike) and times the calls: from the moment every actor has its weights loaded (the
`model_loaded` progress event) to the end of the run. Starting actors and loading weights is reported
apart: it does not shrink with more workers.

    python bench/ray_scaling.py                       # 1 and 2 workers, 3 rounds
    python bench/ray_scaling.py --workers 1 2 4 --cpus 4 --items 96

The default study is CPU-bound: 1536 calls of up to 96 tokens, about 10 s of calls on one worker. Measured
here (quiet 2-core CPU, 3 rounds): 1 worker 9.87 / 10.26 / 10.06 s, 2 workers 5.61 / 5.81 / 5.66 s, speed-up
1.78. A study whose calls take about a second (`--items 24 --samples 4 --tokens 24`: 384 calls, 0.99 s on
one worker) reached 1.29: there the driver's work per step (cache writes, the steps between the calls),
which does not shrink with workers, is a third of the time.

Prints one JSON object: per worker count the median seconds of the calls and of the start, the speed-up
of each count over one worker (target >= 1.6 at 2 workers), the machine's load average, and the settings.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from intro.cli import main  # noqa: E402
from tests.studydata import write_ab_rows, write_sequence_rows  # noqa: E402
from tests.tinymodels import cached_tiny_model  # noqa: E402

SPEC = """
use stdlib.looking_inward as li
model a = local "{model}"
task seq {{ data: "seq.jsonl" prompt: "Next animals after {{{{ sequence }}}}?" }}
task ab {{ data: "ab.jsonl" prompt: "{{{{ question }}}} A) {{{{ option_a }}}} B) {{{{ option_b }}}}" answer: "choice" choices: ["A", "B"] }}
split s {{ test: [seq, ab] items: {items} seed: 1 }}
sampling warm {{ temperature: 1 samples: {samples} max_tokens: {tokens} seed: 4 }}
study scaling {{
  for property in [li.first_character, li.ethical_stance] {{
    measure self = li.predict_property(a, a, s.test, property, object: warm, hypothetical: warm)
  }}
}}
"""


def write_study(directory: Path, arguments: argparse.Namespace) -> Path:
    write_sequence_rows(directory / "seq.jsonl", 2 * arguments.items)
    write_ab_rows(directory / "ab.jsonl", 2 * arguments.items)
    spec = directory / "scaling.intro"
    model = cached_tiny_model(arguments.arch)
    spec.write_text(
        SPEC.format(model=model, items=arguments.items, samples=arguments.samples, tokens=arguments.tokens)
    )
    return spec


def timed_run(spec: Path, workers: int, scratch: Path) -> dict[str, float]:
    """One run on `workers` actors with a fresh cache: seconds to start the actors and to make the calls."""
    directory = Path(tempfile.mkdtemp(dir=scratch))
    argv = ["run", str(spec), "--runs", str(directory / "runs"), "--cache", str(directory / "cache")]
    argv += ["--executor", "ray", "--workers", str(workers), "--json-progress"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(argv)
    if status != 0:
        raise SystemExit(f"the run on {workers} worker(s) failed with status {status}")
    events = [json.loads(line) for line in printed.getvalue().splitlines() if line.startswith("{")]
    loaded = next(e["t"] for e in events if e["event"] == "model_loaded")
    finished = next(e for e in events if e["event"] == "run_finished")
    return {"start_s": loaded, "calls_s": finished["t"] - loaded, "calls": finished["calls"]}


def bench(arguments: argparse.Namespace) -> dict[str, object]:
    import ray

    scratch = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    spec = write_study(scratch, arguments)
    ray.init(
        num_cpus=arguments.cpus,
        include_dashboard=False,
        _temp_dir=str(scratch / "ray"),
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        rounds: dict[int, list[dict[str, float]]] = {w: [] for w in arguments.workers}
        for _ in range(arguments.rounds):
            for workers in arguments.workers:
                rounds[workers].append(timed_run(spec, workers, scratch))
    finally:
        ray.shutdown()
    return summary(rounds, arguments)


def summary(rounds: dict[int, list[dict[str, float]]], arguments: argparse.Namespace) -> dict[str, object]:
    calls_s = {w: statistics.median(r["calls_s"] for r in runs) for w, runs in rounds.items()}
    start_s = {w: statistics.median(r["start_s"] for r in runs) for w, runs in rounds.items()}
    base = calls_s[min(calls_s)]
    return {
        "calls_per_run": rounds[min(rounds)][0]["calls"],
        "calls_s_median": {w: round(s, 2) for w, s in calls_s.items()},
        "calls_s_each_round": {w: [round(r["calls_s"], 2) for r in runs] for w, runs in rounds.items()},
        "start_s_median": {w: round(s, 2) for w, s in start_s.items()},
        "speedup": {w: round(base / s, 2) for w, s in calls_s.items()},
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpus_on_machine": os.cpu_count(),
        "settings": {k: v for k, v in vars(arguments).items()},
    }


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to compare")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--items", type=int, default=48, help="items per task (two tasks)")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=96, help="max_tokens of each sample")
    parser.add_argument("--arch", default="llama", help="tiny model architecture (tests/tinymodels.py)")
    print(json.dumps(bench(parser.parse_args()), indent=1))


if __name__ == "__main__":
    main_cli()
