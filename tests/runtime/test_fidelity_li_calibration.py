"""Looking Inward's calibration as the paper's code computes it (issue 11, item 6).

Binder et al. 2024's calibration code pairs each item's top behaviours' object-level probability with the
hypothetical probability of naming them, cuts the pairs with `pd.qcut(..., q=10, duplicates="drop")` and
scores the mean absolute error between the bins' means, x 100. The MAD here is held to that procedure,
written out below with pandas; it has a bootstrap interval over items; and the specs measure the untrained
and the cross-trained model's calibration next to the self-trained model's.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from intro.cli import main
from intro.compiler import compile_spec
from intro.runtime.dataflow.statistics import estimate
from tests.servers import EchoServer

SPECS = Path(__file__).resolve().parents[2] / "specs"


def sampled(answers: dict[str, list[str | None]]) -> list[dict]:
    return [{"item": item, "sample": k, "value": v} for item, vs in answers.items() for k, v in enumerate(vs)]


def papers_mad(
    behaviour: dict[str, list[str]], predicted: dict[str, list[str | None]], top_k: int = 3
) -> float:
    """The paper's calibration code, on the same samples: top-k behaviours by probability, their
    hypothetical probability, `pd.qcut` with duplicates dropped, mean absolute error of the bin means x 100."""
    pairs = []
    for item, seen in behaviour.items():
        counts, asked = Counter(seen), Counter(predicted[item])
        for value, count in sorted(counts.items(), key=lambda kv: -kv[1])[:top_k]:
            pairs.append((count / len(seen), asked[value] / len(predicted[item])))
    frame = pd.DataFrame(pairs, columns=["expected_prob", "predicted_prob"])
    frame["bin"] = pd.qcut(frame["expected_prob"], q=10, duplicates="drop")
    means = frame.groupby("bin", observed=False).agg({"expected_prob": "mean", "predicted_prob": "mean"})
    means = means.dropna()  # an empty bin has no mean
    return float(np.mean(np.abs(means["expected_prob"] * 100 - means["predicted_prob"] * 100)))


def many_ties(seed: int, items: int = 40) -> tuple[dict[str, list[str]], dict[str, list[str | None]]]:
    """Ten samples per item from a few letters, so that many points share a probability (1.0, 0.5, ...)."""
    rng = np.random.default_rng(seed)
    behaviour, predicted = {}, {}
    for k in range(items):
        letters = "abc"[: int(rng.integers(1, 4))]
        behaviour[f"q{k}"] = [str(rng.choice(list(letters))) for _ in range(10)]
        predicted[f"q{k}"] = [
            str(rng.choice(list("abcd"))) if rng.random() > 0.1 else None for _ in range(10)
        ]
    return behaviour, predicted


@pytest.mark.parametrize("seed", range(6))
def test_the_mad_is_the_papers_equal_frequency_mad(seed: int) -> None:
    behaviour, predicted = many_ties(seed)
    result = estimate("calibration", sampled(predicted), sampled(behaviour), top_k=3)
    assert result["estimate"] == pytest.approx(papers_mad(behaviour, predicted), abs=1e-9)
    assert result["n"] == 40


def test_tied_probabilities_share_a_bin() -> None:
    from intro.runtime.dataflow.calibration import equal_frequency_bins

    # 6 points at 0.2 and 6 at 0.9: cutting by rank into 10 bins mixes them in the middle bin; qcut does not
    probs = np.array([0.2] * 6 + [0.9] * 6)
    bins = equal_frequency_bins(probs)
    assert set(bins[:6]).isdisjoint(bins[6:])
    for seed in range(20):
        values = np.round(np.random.default_rng(seed).random(37) * 4) / 4  # many ties
        codes = pd.qcut(values, q=10, duplicates="drop", labels=False)
        assert np.array_equal(equal_frequency_bins(values), codes)


def test_the_mad_has_a_bootstrap_interval_over_items() -> None:
    behaviour, predicted = many_ties(0)
    result = estimate("calibration", sampled(predicted), sampled(behaviour), top_k=3)
    assert math.isfinite(result["ci_low"]) and math.isfinite(result["ci_high"])
    assert result["ci_low"] < result["ci_high"]
    again = estimate("calibration", sampled(predicted), sampled(behaviour), top_k=3)
    assert (again["ci_low"], again["ci_high"]) == (result["ci_low"], result["ci_high"])  # seeded
    # items that are all alike: every resample has the same points in the same proportions
    alike = {f"q{k}": ["a"] * 7 + ["b"] * 3 for k in range(5)}
    guesses = {f"q{k}": ["a"] * 5 + ["b"] * 5 for k in range(5)}
    flat = estimate("calibration", sampled(guesses), sampled(alike), top_k=3)
    assert flat["ci_low"] == pytest.approx(flat["estimate"]) == pytest.approx(flat["ci_high"])
    assert flat["estimate"] == pytest.approx(100 * (0.2 + 0.2) / 2)  # bins 0.3 vs 0.5 and 0.7 vs 0.5


def test_the_studies_put_the_untrained_and_cross_curves_next_to_self() -> None:
    for spec in ("looking_inward_mini.intro", "looking_inward.intro"):
        measures = {m.name: m for m in compile_spec(SPECS / spec)[0].measures}
        for curve in ("untrained", "self", "cross"):
            assert measures[f"calibration.{curve}"].kind == "estimate", spec


CALIBRATION = """
use stdlib.looking_inward as li
model a = litellm "openai/echo" {{ api_base: "{url}", api_key_env: "INTRO_LI_CALIBRATION_KEY" }}
model b = litellm "openai/echo-two" {{ api_base: "{url}", api_key_env: "INTRO_LI_CALIBRATION_KEY" }}
task colours {{ data: "colours.jsonl" prompt: "The next colours after {{{{ sequence }}}}?" }}
split s {{ test: [colours] items: 6 seed: 3 }}
sampling warm {{ temperature: 1 samples: 3 max_tokens: 6 seed: 2 }}
study calib {{
  measure calibration = li.calibration_curves(a, a, b, s.test, li.first_character, sampling: warm)
}}
"""


def test_calibration_curves_run_and_show_their_intervals(tmp_path: Path) -> None:
    rows = [f'{{"id": "k{k}", "split": "val", "sequence": "red, blue{k}"}}\n' for k in range(6)]
    (tmp_path / "colours.jsonl").write_text("".join(rows))
    with pytest.MonkeyPatch.context() as patch, contextlib.chdir(tmp_path), EchoServer() as server:
        patch.setenv("INTRO_LI_CALIBRATION_KEY", "sk-test")
        (tmp_path / "calib.intro").write_text(CALIBRATION.format(url=server.url))
        assert intro("run", "calib.intro", "--runs", "runs", "--cache", "cache", "--quiet")[0] == 0
        code, shown = intro("show", "runs/calib")
    assert code == 0, shown
    store = tmp_path / "runs" / "calib" / "cube.zarr"
    for curve in ("untrained", "self", "cross"):
        cube = xr.open_zarr(store, group=f"calibration.{curve}").load().sel(task="colours")
        assert int(cube.n) == 6, curve
        # the echo's answers are one behaviour per item, never predicted: MAD 100 in every resample
        assert float(cube.ci_low) == float(cube.estimate) == float(cube.ci_high) == 100.0, curve
        assert f"calibration.{curve}" in shown
    # the MAD is shown once per task, not repeated along the curve's bins
    assert shown.count("colours  ") == 3 and " bin " not in shown, shown


def test_the_calibration_cube_holds_the_curve_itself(tmp_path: Path) -> None:
    """The curve per bin, not only its MAD, so that reports and exports can draw it (it was computed and
    dropped)."""
    rows = [f'{{"id": "k{k}", "split": "val", "sequence": "red, blue{k}"}}\n' for k in range(6)]
    (tmp_path / "colours.jsonl").write_text("".join(rows))
    with pytest.MonkeyPatch.context() as patch, contextlib.chdir(tmp_path), EchoServer() as server:
        patch.setenv("INTRO_LI_CALIBRATION_KEY", "sk-test")
        (tmp_path / "calib.intro").write_text(CALIBRATION.format(url=server.url))
        assert intro("run", "calib.intro", "--runs", "runs", "--cache", "cache", "--quiet")[0] == 0
    cube = xr.open_zarr(tmp_path / "runs" / "calib" / "cube.zarr", group="calibration.self").load()
    cell = cube.sel(task="colours")
    assert cell.curve_object.dims == ("bin",)
    # one behaviour per item, always given (probability 1), never predicted (0): one bin of the 6 points
    assert cell.curve_object.values[0] == 1.0 and cell.curve_hypothetical.values[0] == 0.0
    assert cell.curve_count.values[0] == 6 and np.isnan(cell.curve_count.values[1:]).all()
    mad = 100 * np.nanmean(np.abs(cell.curve_object.values - cell.curve_hypothetical.values))
    assert mad == pytest.approx(float(cell.estimate))


def intro(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(list(argv))
    return code, out.getvalue()
