"""Concept injection's trials graded by an LLM judge, written in .intro on the primitives (stdlib
`intro.injected_thought_judged`: generate, judge with the paper's rubrics, all_of per trial, rates over
trials), against the rates the former built-in `injected_thought(..., grader: judged_by(judge))` gave.

The subject is a tiny random model (tests/tinymodels.py); the judge is a real OpenAI-compatible server on
127.0.0.1 (tests/servers.py) whose verdict is a fixed function of the request text: "YES", "NO", "Yes.",
"no" or an answer that commits to neither (the built-in counted that as no, and so must the function).

The built-in's rates and the function's judge requests (their number and a digest of them), recorded while
it existed from a study run beside the function's on one cache, are kept in a golden file next to this test.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

import pytest
import xarray as xr

from intro.cli import main
from tests.servers import EchoServer
from tests.tinymodels import cached_tiny_model

GOLDEN = Path(__file__).with_suffix(".json")
RATES = ("detection", "identification", "false_positive", "net")
STRENGTHS = (4, 8)
HEAD = """
use stdlib.introspection as intro
model a = local "{model}"
model grader = litellm "openai/grader"
sampling short {{ temperature: 1 max_tokens: 8 }}
"""
POINTS = """  for strength in [4, 8], word in ["dog"] {
    let vector = concept(a, word, 1, take(intro.baseline, 6))
"""
NEW = f"""
study new {{
{POINTS}    measure trials = intro.injected_thought_judged(a, vector, word, 1, strength, grader, trials: 6,
                                                   sampling: short)
  }}
}}
"""
VERDICTS = ("YES", "NO", "Yes.", "no", "Not sure")  # what the scripted judge answers


def verdict(request: str) -> str:
    """The scripted judge: a verdict fixed by the request's text (so by the reply and the rubric)."""
    return VERDICTS[hashlib.sha256(request.encode()).digest()[0] % len(VERDICTS)]


def intro(*argv: str | Path) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main([str(a) for a in argv])
    assert code == 0, out.getvalue()
    return out.getvalue()


def run_study(root: Path, study: str) -> tuple[Path, list[str]]:
    """Run one study of the spec with a judge server: its run folder and the judge's requests."""
    with EchoServer(answer=verdict) as judge:
        intro("run", root / "judged.intro", "--study", study, "--runs", root / "runs", "--cache", root / "cache",
              "--serve", f"grader={judge.url}", "--quiet")  # fmt: skip
        return root / "runs" / study, sorted(judge.call_counts)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[str]]]:
    root = tmp_path_factory.mktemp("judged-injection")
    (root / "judged.intro").write_text(HEAD.format(model=cached_tiny_model("qwen2")) + NEW)
    return {"new": run_study(root, "new")}


def new_rates(run: Path) -> dict[str, dict[str, float]]:
    cubes = {rate: xr.open_zarr(run / "cube.zarr", group=f"trials.{rate}").load() for rate in RATES}
    return {
        str(s): {rate: float(cubes[rate].estimate.sel(strength=str(s), word="dog")) for rate in RATES}
        for s in STRENGTHS
    }


def digest(texts: list[str]) -> str:
    return hashlib.sha256(json.dumps(sorted(texts)).encode()).hexdigest()


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


# ---------------------------------------------------------------- against the golden file
@pytest.mark.parametrize("rate", RATES)
def test_each_rate_is_the_builtins_recorded_one(runs, golden, rate: str) -> None:
    asked = runs["new"][1]
    # If this fails, the tiny model's replies changed (another torch?), not the function: check the rates
    # by hand.
    assert (len(asked), digest(asked)) == (golden["judge_requests"], golden["digest"]), (
        "the judge was asked other texts"
    )
    got = new_rates(runs["new"][0])
    for strength in map(str, STRENGTHS):
        assert got[strength][rate] == pytest.approx(golden["rates"][strength][rate], abs=1e-12), strength


def test_the_recorded_rates_are_not_trivial(golden) -> None:
    """The scripted judge gives a mix: a rate of 0 or 1 everywhere would not tell a per-item all_of (or a
    none counted as left out) from a per-trial one."""
    values = [golden["rates"][str(s)][rate] for s in STRENGTHS for rate in RATES[:3]]
    assert any(0 < v < 1 for v in values), values


# ---------------------------------------------------------------- all_of, per trial
PER_SAMPLE = """
model grader = litellm "openai/grader"
sampling six { temperature: 1 samples: 6 max_tokens: 4 }
study per_sample {
  let said = generate(grader, prompts(["Say something."]), six)
  let first = judge(grader, said, "first {{ sample }}")
  let second = judge(grader, said, "second {{ sample }}")
  let always = extract(generate(grader, prompts(["Say something."])), matches(".*"))
  measure both = rate(all_of(first, second), over: "samples")
  measure first_alone = rate(all_of(first), over: "samples")
  measure first_rate = rate(first, over: "samples")
  measure with_always = rate(all_of(first, always), over: "samples")
}
"""
FIRST = {0: "yes", 1: "yes", 2: "yes", 3: "no", 4: "no"}  # sample 5: neither
SECOND = {0: "no", 1: "no", 2: "yes", 3: "yes", 4: "yes"}


def by_sample(request: str) -> str:
    """The judge's verdict on trial `sample` ("first 3"); to anything else it says something."""
    rubric, _, sample = request.partition(" ")
    grades = {"first": FIRST, "second": SECOND}.get(rubric)
    return "Something." if grades is None else grades.get(int(sample), "Not sure")


def test_all_of_combines_each_trial_and_counts_a_none_as_no(tmp_path: Path) -> None:
    """Trial 2 alone passes both grades (each item's most common verdicts, yes and yes, would pass the
    item); trial 5's verdicts commit to neither, so it fails all_of but is left out of a plain rate; a
    grade with one value per item stands for each of its trials."""
    (tmp_path / "s.intro").write_text(PER_SAMPLE)
    with EchoServer(answer=by_sample) as judge:
        intro("run", tmp_path / "s.intro", "--runs", tmp_path / "runs", "--cache", tmp_path / "cache",
              "--serve", f"grader={judge.url}", "--quiet")  # fmt: skip
    run = tmp_path / "runs" / "per_sample"

    def estimate(name: str) -> tuple[float, int]:
        cube = xr.open_zarr(run / "cube.zarr", group=name).load()
        return float(cube.estimate), int(cube.n)

    assert estimate("both") == (pytest.approx(1 / 6), 6)
    assert estimate("first_alone") == (pytest.approx(3 / 6), 6)
    assert estimate("first_rate") == (pytest.approx(3 / 5), 5)
    assert estimate("with_always") == (pytest.approx(3 / 6), 6)
