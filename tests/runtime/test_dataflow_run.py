"""The open language end to end through the real CLI (`intro plan`, `run`, `show`, `diff`, `export`,
`report`) on a tiny local transformers model (tests/tinymodels.py), with a cache in a temporary folder.

One study is planned and run once per module: generate -> filter -> prompts built from the answers ->
generate again, a judge, choose and score on the model and on a steered copy of it, statistics and a
comparison. The tests read its plan summaries, its progress events and its cubes; the training and
crash tests run their own small studies.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from intro.cli import main
from intro.compiler.plan import Plan
from intro.runtime.backends.local import LocalBackend
from intro.runtime.backends.local_model import load_local_model
from intro.runtime.serve.server import make_server
from intro.runtime.store.cache import Cache
from intro.runtime.training.training import read_examples
from intro.stdlib.rules import apply, passes
from tests.tinymodels import cached_tiny_model, make_tiny_model

QUESTIONS = [
    {"id": "q1", "question": "Count to five."},
    {"id": "q2", "question": "Name a colour."},
    {"id": "q3", "question": "Is the sky blue?"},
]
KEEP = ".*[a-z].*"  # the filter's pattern: keeps an answer with a lowercase letter (about half of them)
OPTIONS = ["yes", "no", "maybe"]  # not in sorted order: the cube keeps the spec's order

FLOW = """
model m = local "tiny"
sampling two {{ temperature: 1 samples: 2 max_tokens: 6 seed: 3 }}

study flow {{
  let asked = prompts(rows("qs.jsonl"), "{{{{ question }}}}")
  let first = generate(m, asked, two)
  let kept = filter(first, matches("{keep}"))
  let loud = steer(m, concept(m, "dog", 1, ["cat", "bird"]), 1, 8)
  for model in [m, loud] {{
    measure picks = choose(model, asked, {options})
    measure yes = score(model, asked, "Yes.")
  }}
  measure answers = first
  measure again = generate(m, prompts(kept, "{again}"))
  measure graded = judge(m, first, "Is this a good answer? {{{{ text }}}}")
  measure share = {share}
  measure kept_by_question = rate(extract(first, matches("{keep}")), by: "question")
  measure shift = difference(mean(score(loud, asked, "Yes.")), mean(score(m, asked, "Yes.")))
  let none = filter(first, matches("never matched"))
  measure nothing = none
  measure nothing_again = generate(m, prompts(none, "{{{{ text }}}}"))
  measure nothing_rate = rate(extract(none, contains("owl")))
}}
"""
AGAIN = "You said: {{ text }}. Say more."
SHARE = 'rate(extract(first, nth_word(1)), "the")'


def flow_spec(again: str = AGAIN, share: str = SHARE) -> str:
    return FLOW.format(keep=KEEP, options=json.dumps(OPTIONS), again=again, share=share)


def write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def intro(*args: str | Path) -> tuple[int, str, str]:
    """`intro ARGS...` in this process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def events(stdout: str) -> dict[str, dict]:
    """The last event of each kind in `--json-progress` output."""
    return {e["event"]: e for e in map(json.loads, stdout.splitlines())}


def open_cube(run: Path, group: str) -> xr.Dataset:
    return xr.open_zarr(run / "cube.zarr", group=group).load()


class FlowRun:
    """The module's study: its folder, and what planning, running and re-running it printed."""

    def __init__(self, root: Path):
        self.root, self.cache, self.run = root, root / "cache", root / "runs" / "flow"
        self.spec = root / "flow.intro"
        self.spec.write_text(flow_spec(), encoding="utf-8")
        self.before = self.plan()
        code, out, err = intro(*self.run_args(), "--json-progress")
        assert code == 0, err
        self.first = events(out)
        self.after = self.plan()
        code, out, err = intro(*self.run_args(), "--json-progress")
        assert code == 0, err
        self.second = events(out)
        self.plan_json = Plan.loads((self.run / "plan.json").read_text(encoding="utf-8"))

    def run_args(self, spec: Path | None = None, runs: str = "runs") -> list[str | Path]:
        return ["run", spec or self.spec, "--cache", self.cache, "--runs", self.root / runs]

    def plan(self) -> dict:
        code, out, err = intro("plan", self.spec, "--cache", self.cache, "--json")
        assert code == 0, err
        return json.loads(out)

    def step_id(self, measure: str) -> str:
        (m,) = [m for m in self.plan_json.measures if m.name == measure]
        return m.points[0][1]


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> FlowRun:
    root = tmp_path_factory.mktemp("flow")
    make_tiny_model(root / "tiny")
    write_rows(root / "qs.jsonl", QUESTIONS)
    return FlowRun(root)


def calls_by_step(summary: dict) -> dict[str, dict]:
    return {s["id"]: s for s in summary["steps"] if "calls" in s}


# ---------------------------------------------------------------- (a) planned calls are the calls made
def test_planned_calls_are_the_calls_made_and_a_rerun_makes_none(flow: FlowRun) -> None:
    answers = open_cube(flow.run, "answers")["text"].values
    kept = sum(passes(apply("matches", {"pattern": KEEP}, str(t), {})) for t in answers.ravel())
    assert 0 < kept < answers.size, "the filter should keep some answers and drop others"
    before, after = calls_by_step(flow.before), calls_by_step(flow.after)
    again, nothing = flow.step_id("again"), flow.step_id("nothing_again")
    # before the run: exact counts, except after a filter (at most one call per answer)
    assert {s for s, planned in before.items() if planned.get("exact") is False} == {again, nothing}
    for step in (again, nothing):
        assert before[step]["calls"] == answers.size
    for step, planned in before.items():
        if step not in (again, nothing):
            assert after[step]["calls"] == planned["calls"], step
    assert (after[again]["calls"], after[nothing]["calls"]) == (kept, 0)
    assert flow.first["run_started"]["calls_to_make"] == flow.before["totals"]["calls_to_make"]
    made = flow.first["run_finished"]["calls"]
    assert made == flow.before["totals"]["calls_to_make"] - (answers.size - kept) - answers.size
    # after the run, `intro plan` counts from the cache the calls the run made, and none to make
    assert flow.after["totals"]["calls"] == made
    assert flow.after["totals"]["calls_to_make"] == 0
    assert flow.second["run_finished"]["calls"] == 0
    assert flow.second["run_finished"]["cached"] == made


def test_prompts_built_from_answers_are_the_kept_answers_rendered(flow: FlowRun) -> None:
    answers, again = open_cube(flow.run, "answers"), open_cube(flow.run, "again")
    for item in again["item"].values:
        for sample in again["sample"].values:
            prompt = str(again["prompt"].sel(item=item, sample=sample).values)
            if prompt:
                said = str(answers["text"].sel(item=item, sample=sample).values)
                assert prompt == AGAIN.replace("{{ text }}", said)
                assert passes(apply("matches", {"pattern": KEEP}, said, {}))


def test_a_judge_keeps_the_judged_text_and_the_grader_reply(flow: FlowRun) -> None:
    answers, graded = open_cube(flow.run, "answers"), open_cube(flow.run, "graded")
    np.testing.assert_array_equal(graded["text"].values, answers["text"].values)
    assert (graded["reply"].values != graded["text"].values).all()
    assert set(np.unique(graded["value"].values)) <= {"", "yes", "no"}


# ---------------------------------------------------------------- (c) choose and score, steered
def test_choose_gives_a_distribution_over_the_options_and_steering_moves_it(flow: FlowRun) -> None:
    picks = open_cube(flow.run, "picks")
    assert list(picks["option"].values) == OPTIONS
    probs = picks["probs"].values  # (model, item, sample, option)
    assert probs.shape == (2, 3, 1, 3)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-6)
    assert ((probs > 0) & (probs < 1)).all()
    best = np.array(OPTIONS)[probs.argmax(axis=-1)]
    np.testing.assert_array_equal(picks["value"].values, best)
    plain, steered = probs[0], probs[1]
    assert np.abs(plain - steered).max() > 1e-3


def test_score_gives_finite_log_probabilities_that_steering_changes(flow: FlowRun) -> None:
    yes = open_cube(flow.run, "yes")
    logprobs = yes["value"].values.astype(float)  # (model, item, sample)
    assert np.isfinite(logprobs).all() and (logprobs < 0).all()
    assert np.abs(logprobs[0] - logprobs[1]).max() > 1e-3
    shift = open_cube(flow.run, "shift")
    assert float(shift["a"]) == pytest.approx(logprobs[1].mean())
    assert float(shift["b"]) == pytest.approx(logprobs[0].mean())
    assert float(shift["estimate"]) == pytest.approx(logprobs[1].mean() - logprobs[0].mean())


# ---------------------------------------------------------------- (d) the cube layout
LAYOUT = {  # group -> {variable: dims}, as runtime/dataflow/cubes.py documents them
    "answers": {"text": ("item", "sample"), "prompt": ("item", "sample")},
    "again": {"text": ("item", "sample"), "prompt": ("item", "sample")},
    "graded": {x: ("item", "sample") for x in ("value", "compliant", "text", "reply")},
    "picks": {
        "value": ("model", "item", "sample"),
        "compliant": ("model", "item", "sample"),
        "probs": ("model", "item", "sample", "option"),
    },
    "yes": {"value": ("model", "item", "sample"), "compliant": ("model", "item", "sample")},
    "share": {**{x: () for x in ("estimate", "ci_low", "ci_high", "n", "compliance")}, "score": ("item",)},
    "shift": {x: () for x in ("estimate", "ci_low", "ci_high", "n", "a", "b")},
    "kept_by_question": {"estimate": ("question",), "n": ("question",), "score": ("item",)},
    "nothing": {"text": ("item", "sample")},
    "nothing_again": {"text": ("item", "sample")},
}


@pytest.mark.parametrize("group", sorted(LAYOUT))
def test_each_cube_group_has_the_documented_variables_and_dims(flow: FlowRun, group: str) -> None:
    data = xr.open_zarr(flow.run / "cube.zarr", group=group)
    layout = {name: tuple(map(str, data[name].dims)) for name in data.data_vars}
    for name, dims in LAYOUT[group].items():
        assert layout.get(name) == dims, f"{group}.{name}: {layout}"
    assert data.attrs["measure"] == group and data.attrs["plan_hash"] == flow.plan_json.hash
    if "model" in data.dims:
        assert list(data["model"].values) == ["m", "loud"]


def test_estimates_of_the_cube_match_their_per_item_scores(flow: FlowRun) -> None:
    share = open_cube(flow.run, "share")
    assert list(share["item"].values) == ["qs/q1", "qs/q2", "qs/q3"]
    assert float(share["estimate"]) == pytest.approx(float(share["score"].mean()))
    assert int(share["n"]) == 3 and float(share["compliance"]) == 1.0
    assert float(share["ci_low"]) <= float(share["estimate"]) <= float(share["ci_high"])
    empty = open_cube(flow.run, "nothing_rate")
    assert int(empty["n"]) == 0 and math.isnan(float(empty["estimate"]))
    assert open_cube(flow.run, "nothing").sizes["item"] == 0


# ---------------------------------------------------------------- show, export, report, diff
def test_show_prints_every_measure_including_empty_ones(flow: FlowRun) -> None:
    code, out, err = intro("show", flow.run)
    assert code == 0, err
    for measure in flow.plan_json.measures:
        assert f"{measure.name} ({measure.kind})" in out
    lines = out.splitlines()
    at = lines.index("nothing (texts)")
    assert lines[at + 3].split() == ["0", "0"]  # no items, no rows (under the header and its rule)


def test_export_writes_one_row_for_a_statistic_of_a_study_without_loops(
    flow: FlowRun, tmp_path: Path
) -> None:
    code, out, err = intro("export", flow.run, "--format", "csv", "--out", tmp_path)
    assert code == 0, err
    import pandas as pd

    share = pd.read_csv(tmp_path / "share.by_point.csv")
    assert len(share) == 1
    assert share["estimate"][0] == pytest.approx(float(open_cube(flow.run, "share")["estimate"]))
    shift = pd.read_csv(tmp_path / "shift.by_point.csv")
    assert set(shift.columns) >= {"estimate", "ci_low", "ci_high", "n", "a", "b"}
    picks = pd.read_csv(tmp_path / "picks.csv")
    assert len(picks) == 2 * 3 and set(picks["model"]) == {"m", "loud"}


def test_report_has_a_section_for_every_measure(flow: FlowRun) -> None:
    code, out, err = intro("report", flow.run)
    assert code == 0, err
    page = (flow.run / "report" / "report.html").read_text(encoding="utf-8")
    for measure in flow.plan_json.measures:
        assert f"<h2>{measure.name} ({measure.kind})</h2>" in page
    assert (flow.run / "report" / "share.png").is_file() and (flow.run / "report" / "shift.png").is_file()


def test_diff_of_two_runs_compares_texts_values_estimates_and_comparisons(flow: FlowRun) -> None:
    # B: the follow-up template and the share's rule changed; everything else is read from the cache
    spec_b = flow.root / "flow_b.intro"
    spec_b.write_text(flow_spec("Why did you say {{ text }}?", f'rate(extract(first, matches("{KEEP}")))'))
    code, _, err = intro(*flow.run_args(spec_b, runs="runs_b"), "--quiet")
    assert code == 0, err
    code, out, err = intro("diff", flow.run, flow.root / "runs_b" / "flow", "--json")
    assert code == 2, err
    measures = json.loads(out)["measures"]
    assert measures["answers"]["cells"] == [
        {"n": 6, "changed": 0, "difference": 0.0, "only_a": 0, "only_b": 0}
    ]
    (again,) = measures["again"]["cells"]
    assert again["n"] == again["changed"] > 0
    assert [c["model"] for c in measures["picks"]["cells"]] == ["m", "loud"]
    assert all(c["changed"] == 0 for c in measures["picks"]["cells"])
    (share,) = measures["share"]["cells"]
    b = open_cube(flow.root / "runs_b" / "flow", "share")
    assert share["paired"] and share["n"] == 3
    assert share["a"] == 0.0 and share["b"] == pytest.approx(float(b["estimate"]))
    assert share["ci_low"] <= share["difference"] <= share["ci_high"]
    grouped = measures["kept_by_question"]["cells"]  # one per question; its items are not told apart
    assert [c["question"] for c in grouped] == [q["question"] for q in QUESTIONS]
    assert all(not c["paired"] and c["difference"] == 0.0 for c in grouped)
    (shift,) = measures["shift"]["cells"]
    assert shift["difference"] == 0.0 and shift["a_ci"] == shift["b_ci"]
    code, text, _ = intro("diff", flow.run, flow.root / "runs_b" / "flow")
    assert "measure again (texts): 1 shared points" in text and "measure share (estimate)" in text


# ---------------------------------------------------------------- (b) training data from results
TRAIN = """
model m = local "tiny"

study train {
  let asked = prompts(rows("qs.jsonl"), "{{ question }}")
  let first = generate(m, asked)
  let on_answers = finetune(m, examples(asked, first), batch: 3)
  let on_follow_up = finetune(m, examples(prompts(first, "You said {{ text }}"), "I said {{ text }}"), batch: 3)
  let on_file = finetune(m, examples("chats.jsonl"), batch: 2)
  measure answers = first
  measure after = generate(on_answers, asked)
  measure after_follow_up = generate(on_follow_up, asked)
  measure after_file = generate(on_file, prompts(["Hi"]))
}
"""
CHATS = [
    {"id": "c1", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]},
    {"id": "c2", "prompt": "Name a colour.", "completion": "Blue."},
]


def test_examples_from_answers_train_a_model_that_then_generates(flow: FlowRun, tmp_path: Path) -> None:
    shutil.copytree(flow.root / "tiny", tmp_path / "tiny")
    write_rows(tmp_path / "qs.jsonl", QUESTIONS)
    write_rows(tmp_path / "chats.jsonl", CHATS)
    (tmp_path / "train.intro").write_text(TRAIN)
    code, out, err = intro(
        "run",
        tmp_path / "train.intro",
        "--cache",
        tmp_path / "cache",
        "--runs",
        tmp_path / "runs",
        "--json-progress",
    )
    assert code == 0, err
    finished = events(out)["run_finished"]
    assert finished["trained"] == 3
    assert finished["calls"] == 3 + 3 + 3 + 1
    run = tmp_path / "runs" / "train"
    plan = Plan.loads((run / "plan.json").read_text(encoding="utf-8"))
    cache = Cache(tmp_path / "cache")
    examples = [read_examples(cache.artifact_dir(s.hash)) for s in plan.steps if s.kind == "examples"]
    answers = {str(t) for t in open_cube(run, "answers")["text"].values.ravel()}
    by_first_turn = {e[0].messages[-1][1]: e for e in examples}
    on_answers = by_first_turn["Count to five."]
    assert [e.messages for e in on_answers] == [(("user", q["question"]),) for q in QUESTIONS]
    assert {e.target for e in on_answers} == answers
    follow_up = next(e for e in examples if e[0].target.startswith("I said "))
    assert {e.target.removeprefix("I said ") for e in follow_up} == answers
    assert all(e.messages[-1][1] == "You said " + e.target.removeprefix("I said ") for e in follow_up)
    on_file = by_first_turn["Hi"]
    assert [(e.messages, e.target) for e in on_file] == [
        ((("user", "Hi"),), "Hello."),
        ((("user", "Name a colour."),), "Blue."),
    ]
    for group in ("after", "after_follow_up", "after_file"):
        assert open_cube(run, group)["text"].size > 0
    code, out, _ = intro("show", run)
    assert code == 0 and "on_answers(m)" in out and "on_file(m)" in out


# ---------------------------------------------------------------- (e) a crash loses nothing
RESUME = """
model a = local "{model}"
sampling greedy {{ temperature: 0 max_tokens: 5 }}
study resume {{
  let first = generate(a, prompts(rows("qs.jsonl"), "{{{{ question }}}}"), greedy)
  measure first = first
  measure again = generate(a, prompts(first, "Asked {{{{ question }}}} you said {{{{ text }}}}. Why?"), greedy)
}}
"""


def serve_args(spec: Path, work: Path, url: str) -> list[str | Path]:
    return ["run", spec, "--runs", work / "runs", "--cache", work / "cache", "--serve", f"a={url}", "--quiet"]


def cached_keys(cache: Path) -> set[str]:
    if not (cache / "requests").exists():
        return set()
    return {p.stem for p in (cache / "requests").rglob("*.json") if not p.name.startswith(".tmp-")}


@pytest.mark.slow  # about 30 s: a runner in a subprocess, killed, and 68 calls through a local server
def test_a_run_killed_in_its_run_time_prompts_resumes_without_redoing_cached_calls(tmp_path: Path) -> None:
    """34 answers, then 34 follow-ups built from them: the runner sends calls in chunks of 32 and writes a
    chunk's answers as it lands, so a kill while the gate holds the second chunk of follow-ups leaves 66
    calls in the cache. The resumed run renders the follow-ups from the cached answers again and makes
    only the 2 missing calls."""
    from tests.runtime.test_run_resume import GatedBackend

    write_rows(tmp_path / "qs.jsonl", [{"id": f"r{i}", "question": f"Tell me about {i}."} for i in range(34)])
    spec = tmp_path / "resume.intro"
    spec.write_text(RESUME.format(model=cached_tiny_model("qwen2")))
    backend = LocalBackend(load_local_model(str(cached_tiny_model("qwen2"))))
    gate = GatedBackend(backend)
    gate.allow(34 + 32 + 1)
    held = make_server(gate, max_batch=1).start_in_thread()  # the gate counts single requests
    try:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "intro.cli", *serve_args(spec, tmp_path, held.url)]
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        deadline = time.monotonic() + 120
        while not gate.holding.is_set():
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "the runner never reached the gate"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        gate.release()
        held.close()
    finished = cached_keys(tmp_path / "cache")
    assert len(finished) == 66, "killed with the first chunk of follow-ups written and the second in flight"

    served = make_server(backend, max_batch=8).start_in_thread()
    try:
        code, out, err = intro(*serve_args(spec, tmp_path, served.url))
        assert code == 0, err
        assert "resume: 2 model calls, 66 from cache" in out
        assert len(cached_keys(tmp_path / "cache")) == 68
        code, out, err = intro(*serve_args(spec, tmp_path, served.url))
        assert "resume: 0 model calls, 68 from cache" in out
    finally:
        served.close()
    answers, again = (
        open_cube(tmp_path / "runs" / "resume", "first"),
        open_cube(tmp_path / "runs" / "resume", "again"),
    )
    for i in range(34):
        said = str(answers["text"].sel(item=f"qs/r{i}", sample=0).values)
        prompt = str(again["prompt"].sel(item=f"qs/r{i}", sample=0).values)
        assert prompt == f"Asked Tell me about {i}. you said {said}. Why?"
    assert (again["text"].values != "").all()
