"""What `intro run` prints: only intro's own lines, a per-kind ETA, `--quiet` and `--json-progress`.

The study is small but has every source of library noise a real run has: a local model's weights are
loaded (transformers), a LoRA adapter is trained and loaded back (peft), and a second model answers over
HTTP through litellm from a loopback echo server.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from intro.cli import main
from intro.compiler import compile_spec
from intro.runtime.engine.planview import plan_summary
from intro.runtime.engine.progress import Eta, format_duration
from tests.servers import EchoServer
from tests.tinymodels import make_tiny_model

DATA = Path(__file__).resolve().parents[1] / "fixtures" / "studies" / "looking_inward_finetune_tiny" / "data"
STUDY = "console"
SPEC = """
use stdlib.looking_inward as li

model a = local "tiny_a"
model e = local "tiny_a"

task animals {
  data: "data/animals.jsonl"
  prompt: "What are the next 3 animals after {{ sequence }}? Respond only with the animals."
}

task colours {
  data: "data/colours.jsonl"
  prompt: "What are the next 3 colours after {{ sequence }}? Respond only with the colours."
}

split s {
  train: [animals]
  test: [colours]
  items: 3
  seed: 3
}

sampling short {
  temperature: 0
  max_tokens: 4
}

study console {
  let trained = finetune(a, li.hypothetical_examples(a, s.train, [li.first_character], short),
                         rank: 2, epochs: 1, batch: 4, seed: 1)
  for predictor in [trained, e] {
    measure p = li.predict_property(predictor, predictor, s.test, li.first_character, object: short,
                                    hypothetical: short)
  }
}
"""
# Variables a user's shell does not set, and which would hide the noise this test looks for.
QUIETING = ("TRANSFORMERS_VERBOSITY", "TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "LITELLM_LOG")


@pytest.fixture(scope="module")
def echo():
    with EchoServer(lifetime=300) as server:
        yield server


def project(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(DATA, root / "data", dirs_exist_ok=True)
    make_tiny_model(root / "tiny_a", "qwen2", seed=0)
    (root / "console.intro").write_text(SPEC)
    return root


def fresh_environment(cache_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in QUIETING and not k.startswith(("TQDM_", "PYTEST"))}
    env["INTRO_CACHE_DIR"] = str(cache_home)
    return env


def intro_process(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "intro.cli", *args]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)


def intro_inprocess(root: Path, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(root), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def fresh_run(tmp_path_factory, echo):  # a child process pays the imports: about 15 s of CPU
    """One run from an empty cache in a child process, as a user starts it, plus `intro show` of it."""
    root = project(tmp_path_factory.mktemp("console"))
    env = fresh_environment(root / "intro-cache")
    args = ("--runs", "runs", "--cache", "cache", "--serve", f"e={echo.url}")
    ran = intro_process(root, env, "run", "console.intro", *args)
    shown = intro_inprocess(root, "show", f"runs/{STUDY}")[1]
    plan = compile_spec(root / "console.intro")[0]
    return {"root": root, "ran": ran, "shown": shown, "plan": plan}


def our_line_patterns(plan) -> list[re.Pattern[str]]:
    """Every form of line intro's progress writes (runtime/engine/progress.py), with this plan's step ids."""
    steps = "|".join(re.escape(s.id) for s in plan.steps)
    return [
        re.compile(rf"^{STUDY}: \d+ steps, \d+ model calls to make(, \d+ trainings?)?, plan [0-9a-f]{{12}}$"),
        re.compile(r"^  loading model \w+ \(.+\)$"),
        re.compile(r"^  converting .+ to float32 safetensors in the user cache \(once per model\)$"),
        re.compile(rf"^  ({steps}): \d+/\d+ calls(, ~\d+(\.\d)? (s|min|h) left)?$"),
        re.compile(rf"^  ({steps}): \S.*$"),  # a step's own note: examples, training losses
        re.compile(rf"^\[\d+/\d+\] ({steps}) done(, ~\d+(\.\d)? (s|min|h) left)?$"),
    ]


@pytest.mark.slow
def test_a_fresh_run_prints_only_its_own_lines(fresh_run):
    ran, shown, plan = fresh_run["ran"], fresh_run["shown"], fresh_run["plan"]
    assert ran.returncode == 0, ran.stderr
    patterns = our_line_patterns(plan)
    foreign = [line for line in ran.stderr.splitlines() if not any(p.match(line) for p in patterns)]
    assert foreign == [], "lines on stderr that intro did not write:\n" + "\n".join(foreign)
    # stdout: the summary line, then exactly what `intro show` prints for the run.
    summary = re.compile(rf"^{STUDY}: \d+ model calls, 0 from cache, 1 trained, [\d.]+ s  \(results: .+\)$")
    first, _, tables = ran.stdout.lstrip("\n").partition("\n")
    assert summary.match(first), ran.stdout
    assert tables == shown
    # The noisy parts did happen: a model load, a LoRA training, the API model's calls.
    assert "  loading model a (" in ran.stderr
    assert "training LoRA on" in ran.stderr
    assert any(line.startswith("  generate.console[e]") for line in ran.stderr.splitlines())


def test_the_run_log_keeps_what_the_console_leaves_out(json_run):
    log = (json_run["root"] / "runs" / STUDY / "run.log").read_text()
    assert "  model a loaded in " in log
    assert "  finetune.console.trained(a): started" in log


@pytest.fixture(scope="module")
def json_run(tmp_path_factory, echo):
    """A fresh run in this process with --json-progress; stderr must stay empty, stdout all JSON."""
    root = project(tmp_path_factory.mktemp("console-json"))
    plan = compile_spec(root / "console.intro")[0]
    expected = plan_summary(plan, cache_dir=root / "cache")["totals"]
    args = ("--runs", "runs", "--cache", "cache", "--serve", f"e={echo.url}")
    code, out, err = intro_inprocess(root, "run", "console.intro", *args, "--json-progress")
    return {"root": root, "plan": plan, "expected": expected, "args": args, "ran": (code, out, err)}


def test_json_progress_is_one_event_per_line_and_counts_match_the_plan(json_run):
    plan, expected = json_run["plan"], json_run["expected"]
    code, out, err = json_run["ran"]
    assert code == 0, err
    assert err == ""  # no library wrote to the console either
    events = [json.loads(line) for line in out.splitlines()]
    names = [e["event"] for e in events]
    assert names[0] == "run_started" and names[-1] == "run_finished"
    started, finished = events[0], events[-1]
    assert started["steps"] == len(plan.steps)
    assert started["calls_to_make"] == expected["calls_to_make"] == finished["calls"] > 0
    assert started["trainings"] == finished["trained"] == 1
    step_ids = [s.id for s in plan.steps]
    assert sorted(e["step"] for e in events if e["event"] == "step_started") == sorted(step_ids)
    done = [e for e in events if e["event"] == "step_finished"]
    assert sorted(e["step"] for e in done) == sorted(step_ids)
    assert [e["done"] for e in done] == list(range(1, len(step_ids) + 1))
    for step in step_ids:  # each step starts before it finishes
        assert names.index("step_started", _first(events, "step_started", step)) < _first(
            events, "step_finished", step
        )
    assert names.index("model_loading") < names.index("model_loaded")
    assert [e["t"] for e in events] == sorted(e["t"] for e in events)
    last_calls = {}
    for e in events:
        if e["event"] == "calls":
            last_calls[e["step"]] = e["finished"]
    assert sum(last_calls.values()) == expected["calls_to_make"]
    assert done[-1]["calls"] == finished["calls"]


def _first(events: list[dict], name: str, step: str) -> int:
    return next(i for i, e in enumerate(events) if e["event"] == name and e.get("step") == step)


def test_quiet_prints_only_the_summary_line(json_run):
    root, args = json_run["root"], json_run["args"]
    code, out, err = intro_inprocess(root, "run", "console.intro", *args, "--quiet")  # all cached now
    assert code == 0, err
    assert err == ""
    assert out.strip().count("\n") == 0, out
    assert out.strip().startswith(f"{STUDY}: 0 model calls, ") and ", 0 trained, " in out
    log = (root / "runs" / STUDY / "run.log").read_text()
    assert "adapter reused from the cache" in log  # quiet on the console, the whole story in the log


def test_quiet_and_json_progress_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "x.intro", "--quiet", "--json-progress"])
    assert exit_.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


# ---------------------------------------------------------------- the estimate
class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_eta_waits_for_a_rate_of_every_kind_left_then_sums_kinds():
    clock = Clock()
    eta = Eta({"sample": 100, "finetune": 2}, clock=clock)
    clock.now = 10.0
    eta.finished("sample", 20)  # 0.5 s per call
    assert eta.seconds_left() is None  # no finetune has finished: no honest estimate yet
    clock.now = 70.0
    eta.finished("finetune", 1)  # 60 s per training
    assert eta.seconds_left() == pytest.approx(80 * 0.5 + 1 * 60)
    clock.now = 100.0
    eta.finished("sample", 80)  # 30 s for 80 calls: the rate becomes (10 + 30) / 100
    assert eta.seconds_left() == pytest.approx(60)


def test_eta_leaves_model_loading_out_of_every_rate():
    clock = Clock()
    eta = Eta({"sample": 10}, clock=clock)
    clock.now = 300.0  # loading and converting weights
    eta.pause()
    clock.now = 302.0
    eta.finished("sample", 2)
    assert eta.seconds_left() == pytest.approx(8 * 1.0)


def test_eta_ignores_kinds_with_nothing_left():
    clock = Clock()
    eta = Eta({"sample": 4, "prediction": 0}, clock=clock)
    clock.now = 4.0
    eta.finished("sample", 2)
    assert eta.seconds_left() == pytest.approx(4.0)


def test_durations_read_like_a_person_would_say_them():
    assert [format_duration(s) for s in (42, 780, 20813)] == ["42 s", "13 min", "5.8 h"]
