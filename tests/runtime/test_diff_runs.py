"""Reuse across studies and the comparison of two runs.

Study A runs; B is A with one task's template edited. `intro plan B` must predict exactly the calls that
B's run then makes at the server (only the edited task's prompts), and `intro diff runA runB` compares
the two cubes point by point.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from intro.compiler import compile_spec
from intro.runtime.analysis.resultdiff import _estimate_line, compare_estimate_cubes, runs_differ
from intro.runtime.backends.local import LocalBackend
from intro.runtime.backends.local_model import load_local_model
from intro.runtime.dataflow.tables import CALLING, Tables
from intro.runtime.serve.server import make_server
from intro.runtime.store.cache import Cache
from tests.studydata import write_ab_rows, write_sequence_rows
from tests.tinymodels import cached_tiny_model

SPEC = """
use stdlib.looking_inward as li
model a = local "{model}"
task seq {{ data: "seq.jsonl" prompt: "{seq_prompt}" }}
task ab {{ data: "ab.jsonl" prompt: "{{{{ question }}}} A) {{{{ option_a }}}} B) {{{{ option_b }}}}" answer: "choice" choices: ["A", "B"] }}
split s {{ test: [seq, ab] items: 8 seed: 1 }}
study {name} {{
  for property in [li.first_character, li.ethical_stance] {{
    measure self = li.predict_property(a, a, s.test, property)
  }}
}}
"""


def write(directory: Path, name: str, seq_prompt: str) -> Path:
    write_sequence_rows(directory / "seq.jsonl", 20)
    write_ab_rows(directory / "ab.jsonl", 20)
    spec = directory / f"{name}.intro"
    spec.write_text(SPEC.format(model=cached_tiny_model("qwen2"), name=name, seq_prompt=seq_prompt))
    return spec


def intro(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "intro.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def server():
    srv = make_server(LocalBackend(load_local_model(str(cached_tiny_model("qwen2")))))
    srv.start_in_thread()
    yield srv
    srv.close()


def test_b_samples_only_the_edited_task_and_plan_predicts_the_calls(tmp_path, server):
    spec_a = write(tmp_path, "study_a", "Next animals after {{ sequence }}?")
    spec_b = write(tmp_path, "study_b", "Which animals come after {{ sequence }}?")
    cache = str(tmp_path / "cache")
    run_a = intro("run", str(spec_a), "--cache", cache, "--serve", f"a={server.url}", "--quiet", cwd=tmp_path)
    assert run_a.returncode == 0, run_a.stderr

    plan = json.loads(intro("plan", str(spec_b), "--cache", cache, "--json", cwd=tmp_path).stdout)
    missing = missing_calls(spec_b, Path(cache))
    # Only the edited task's prompts (its own and the hypothetical questions quoting it) are new to B.
    assert missing and all("Which animals come after" in prompt for prompt in missing.values())
    assert any(
        "Which animals come after" not in prompt for prompt in every_call(spec_b, Path(cache)).values()
    )
    assert plan["totals"]["calls_to_make"] == len(missing)
    assert any(s["status"] == "from another study" for s in plan["steps"])

    before = server.requests_served
    run_b = intro("run", str(spec_b), "--cache", cache, "--serve", f"a={server.url}", "--quiet", cwd=tmp_path)
    assert run_b.returncode == 0, run_b.stderr
    assert server.requests_served - before == len(missing)

    diff = intro("diff", "runs/study_a", "runs/study_b", cwd=tmp_path)
    assert diff.returncode in (0, 2), diff.stderr
    assert "measure self.by_task (estimate):" in diff.stdout and "paired on item ids" in diff.stdout
    assert "measure self.behaviour (values):" in diff.stdout


def every_call(spec: Path, cache: Path) -> dict[str, str]:
    """Cache key -> the prompt's user turn, for every call of the study."""
    plan = compile_spec(spec)[0]
    tables = Tables(plan, Cache(cache))
    return {
        call.key: tables.prompt(call.prompt).messages[-1][1]
        for step in plan.steps
        if step.kind in CALLING
        for call in tables.calls(step)
    }


def missing_calls(spec: Path, cache: Path) -> dict[str, str]:
    """The calls of the study that are not in the cache."""
    return {key: prompt for key, prompt in every_call(spec, cache).items() if not Cache(cache).has(key)}


def estimate_cube(items: list[str], scores: list[float]) -> xr.Dataset:
    """An estimate cube of one point: its item scores and their mean."""
    score = xr.DataArray(np.array(scores), coords={"item": items}, dims=["item"])
    return xr.Dataset({"score": score, "estimate": score.mean(), "ci_low": 0.0, "ci_high": 1.0})


def test_runs_without_a_shared_item_get_an_unpaired_interval():
    # Two runs that drew other items (the same study on a regenerated data file): B - A is still bounded.
    a = estimate_cube([f"a{i}" for i in range(12)], [1.0] * 3 + [0.0] * 9)
    b = estimate_cube([f"b{i}" for i in range(12)], [1.0] * 9 + [0.0] * 3)
    (cell,) = compare_estimate_cubes(a, b)["cells"]
    assert (cell["paired"], cell["n"], cell["items_a"], cell["items_b"]) == (False, 0, 12, 12)
    assert cell["difference"] == pytest.approx(0.5)
    assert 0.0 < cell["ci_low"] < 0.5 < cell["ci_high"] <= 1.0
    line = _estimate_line(cell)
    assert line[-1].endswith("(unpaired, 12 vs 12 items)") and line[-1].startswith("[+")
    # Shared items are still paired: the same scores on the same items differ by nothing.
    (same,) = compare_estimate_cubes(a, a)["cells"]
    assert same["paired"] and same["n"] == 12 and same["ci_low"] == same["ci_high"] == 0.0


def test_runs_sharing_few_items_compare_all_their_items_unpaired():
    # One item of twelve in common: a pairing on it alone would hide the other eleven of each run.
    a = estimate_cube(["shared", *(f"a{i}" for i in range(11))], [1.0] + [0.0] * 11)
    b = estimate_cube(["shared", *(f"b{i}" for i in range(11))], [1.0] * 12)
    (cell,) = compare_estimate_cubes(a, b)["cells"]
    assert not cell["paired"] and (cell["a"], cell["b"]) == (pytest.approx(1 / 12), 1.0)
    assert cell["ci_low"] > 0.5


def test_a_point_without_a_value_in_either_run_is_no_difference():
    # A property no item of a task could be scored on has NaN in both runs: the runs are still the same.
    empty = estimate_cube(["a0", "a1"], [np.nan, np.nan])
    report = {"only_in_a": [], "only_in_b": [], "measures": {"m": compare_estimate_cubes(empty, empty)}}
    assert not runs_differ(report)
    scored = estimate_cube(["a0", "a1"], [1.0, 0.0])
    report["measures"]["m"] = compare_estimate_cubes(empty, scored)
    assert runs_differ(report)  # a value in one run only is a difference
