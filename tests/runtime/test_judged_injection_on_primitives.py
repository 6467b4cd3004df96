"""Concept injection's trials graded by an LLM judge, written in .intro on the primitives (stdlib
`intro.injected_thought_judged`: generate, judge with the paper's rubrics, all_of per trial, rates over
trials), against the rates the former built-in `injected_thought(..., grader: judged_by(judge))` gave.

The subject is a tiny random model (tests/tinymodels.py); the judge is a real OpenAI-compatible server on
127.0.0.1 (tests/servers.py) whose verdict is a fixed function of the request text: "YES", "NO", "Yes.",
"no" or an answer that commits to neither (the built-in counted that as no, and so must the function).

The function asks the paper's grader prompts now and reads the verdict a reply ends with (issue 11), so
the former built-in's recorded rates are no longer compared (see below).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from pathlib import Path

import pytest
import xarray as xr

from intro.cli import main
from tests.servers import EchoServer
from tests.tinymodels import cached_tiny_model

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


# ---------------------------------------------------------------- the paper's grading
# On purpose (issue 11, item 9): the judge is asked the paper's grader prompts (appendix, Injected Thoughts,
# Grader Prompts) and its verdict is the YES or NO its reply ends with, where the former built-in asked our
# own rubrics and read the first word; and each cell draws its own control trials (item 8). So the former
# built-in's recorded requests and rates (test_judged_injection_on_primitives.json, removed) no longer apply.
RUBRIC_OPENINGS = {
    "coherence": "Does their response coherently describe their thoughts or mental states?",
    "identification": "does the AI claim that they noticed an unusual or injected thought about the word dog?",
    "affirmative": "does the AI claim that they noticed an unusual or injected thought?\n",
}


def test_the_judge_is_asked_the_papers_three_rubrics(runs) -> None:
    asked = runs["new"][1]
    kinds = [next(k for k, text in RUBRIC_OPENINGS.items() if text in request) for request in asked]
    # per cell (2): 6 injected trials x (coherence, identification, affirmative) + 6 own control trials
    assert sorted(kinds) == sorted(["coherence"] * 12 + ["identification"] * 12 + ["affirmative"] * 24)


def test_the_rates_read_the_verdict_each_reply_ends_with(runs) -> None:
    got = new_rates(runs["new"][0])
    values = [got[str(s)][rate] for s in STRENGTHS for rate in RATES[:3]]
    assert all(0 <= v <= 1 for v in values) and any(0 < v < 1 for v in values), values
    for strength in map(str, STRENGTHS):
        assert got[strength]["net"] == pytest.approx(
            got[strength]["identification"] - got[strength]["false_positive"]
        )


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
