"""Statistical honesty of the open language's estimates and comparisons (issue 11, item 5): Wilson intervals
for small cells, bootstrap by item where an item appears under several properties, a p-value on every
comparison, a pooled paired test of self vs cross over all properties (the paper's headline comparison) and
Holm's adjustment where a cube shows many p-values.

The numbers are worked out on paper from rows built by hand; the cube, `intro show`, `intro report` and
`intro export` are checked on the tiny real run of tests/tinyrun.py (the main job's shape, on an echo server).
"""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from intro.cli import main
from intro.runtime.dataflow.statistics import comparison, estimate, holm, item_of, pooled_difference
from tests.tinyrun import tiny_run


def rows(values: dict[str, str]) -> list[dict]:
    return [{"item": item, "sample": 0, "value": value} for item, value in values.items()]


def scored(scores: dict[str, float]) -> dict:
    return estimate("mean", rows({item: str(score) for item, score in scores.items()}), None)


def numbered(values: np.ndarray) -> dict:
    return scored({f"q{k}": float(v) for k, v in enumerate(values)})


# ---------------------------------------------------------------- Wilson intervals
def test_a_small_cell_of_all_successes_has_a_wilson_interval_where_the_bootstrap_collapses() -> None:
    result = estimate("rate", rows({f"q{k}": "true" for k in range(8)}), None)
    assert (result["ci_low"], result["ci_high"]) == (1.0, 1.0)  # every resample is 8/8
    # Wilson at 8/8, z = 1.96: low = n / (n + z^2) = 8 / 11.8415 = 0.6756
    assert result["wilson_low"] == pytest.approx(8 / (8 + 1.959964**2), abs=1e-6)
    assert result["wilson_high"] == 1.0


def test_wilson_counts_items_not_units_and_is_left_out_for_means() -> None:
    # 4 items, each under 3 properties, 2 of the items right everywhere: a share of 1/2 over 4 items
    units = {f"q{k}#p{j}": "true" if k < 2 else "false" for k in range(4) for j in range(3)}
    result = estimate("rate", rows(units), None)
    assert (result["n"], result["items"]) == (12, 4)
    low, high = result["wilson_low"], result["wilson_high"]
    assert (low, high) == pytest.approx((0.1500, 0.8500), abs=1e-4)  # Wilson for 2 of 4, not 6 of 12
    assert math.isnan(scored({"a": 1.0, "b": 2.0})["wilson_low"])


# ---------------------------------------------------------------- bootstrap by item
def test_units_of_one_item_under_several_properties_are_resampled_together() -> None:
    assert item_of("animals/3#first_character") == "animals/3"
    assert item_of("animals/3#first_character@2") == "animals/3@2"
    assert item_of("animals/3") == "animals/3"
    # 10 items, each the same under 5 properties: 50 units, but only 10 independent draws
    units = {f"q{k}#p{j}": "true" if k % 2 else "false" for k in range(10) for j in range(5)}
    pooled = estimate("rate", rows(units), None)
    distinct = estimate("rate", rows({f"u{k}": v for k, v in enumerate(units.values())}), None)
    assert pooled["estimate"] == distinct["estimate"] == 0.5
    assert (pooled["n"], pooled["items"], distinct["items"]) == (50, 10, 50)
    width = pooled["ci_high"] - pooled["ci_low"]
    # As wide as the bootstrap of 10 items (about 2 x 1.96 x 0.158 = 0.62), not of 50 units (about 0.28)
    assert width > 0.5 > 0.35 > distinct["ci_high"] - distinct["ci_low"]


# ---------------------------------------------------------------- p-values
def test_a_paired_difference_has_an_exact_sign_flip_p_value() -> None:
    a = scored({f"q{k}": 1.0 for k in range(8)})
    b = scored({f"q{k}": 0.0 for k in range(8)})
    result = comparison("difference", a, b)
    # all 8 items favour a: 2 of the 2^8 sign patterns are as extreme (all + or all -)
    assert result["p_value"] == pytest.approx(2 / 256)
    same = comparison("difference", a, a)
    assert same["p_value"] == 1.0 and same["estimate"] == 0.0


def test_unpaired_differences_and_correlations_report_permutation_p_values() -> None:
    low = scored({f"a{k}": 0.0 for k in range(12)})
    high = scored({f"b{k}": 1.0 for k in range(12)})
    unpaired = comparison("difference", high, low)
    assert unpaired["paired"] is False and unpaired["p_value"] < 0.001
    rng = np.random.default_rng(5)
    x = rng.normal(size=30)
    related = comparison("correlation", numbered(x), numbered(x + rng.normal(scale=0.3, size=30)))
    unrelated = comparison("correlation", numbered(x), numbered(rng.normal(size=30)))
    assert related["p_value"] < 0.001 < 0.05 < unrelated["p_value"] <= 1


def test_the_pooled_test_over_properties_flips_items_not_rows() -> None:
    # Self beats cross on the same 5 items under each of 4 properties: 20 pairs, 5 independent items.
    cells = [
        comparison("difference", scored({f"q{k}": 1.0 for k in range(5)}), scored({f"q{k}": 0.0 for k in range(5)}))
        for _ in range(4)
    ]  # fmt: skip
    pooled = pooled_difference(cells)
    assert (pooled["n"], pooled["items"], pooled["estimate"]) == (20, 5, 1.0)
    assert (pooled["a"], pooled["b"]) == (1.0, 0.0)
    # 2 of 2^5 patterns, not 2 of 2^20 (which treating the 20 rows as independent would claim)
    assert pooled["p_value"] == pytest.approx(2 / 32)
    right = scored({f"q{k}": 1.0 for k in range(5)})
    mixed = pooled_difference([cells[0], comparison("difference", right, right)])  # + 1 and 0 on each item
    assert (mixed["estimate"], mixed["items"], mixed["p_value"]) == (0.5, 5, pytest.approx(2 / 32))
    assert math.isnan(pooled_difference([])["estimate"])


def test_holm_multiplies_the_ith_smallest_of_m_by_m_minus_i_and_keeps_the_order() -> None:
    adjusted = holm([0.01, 0.04, 0.03, float("nan"), 0.5])
    assert adjusted[:3] == pytest.approx([0.04, 0.09, 0.09])  # 4 x .01; 3 x .03; max(2 x .04, .09)
    assert math.isnan(adjusted[3]) and adjusted[4] == 0.5


# ---------------------------------------------------------------- cubes, show, report, export
@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("fidelity"))


def test_the_comparison_cube_adds_p_values_holm_and_the_pooled_test_over_properties(run: Path) -> None:
    advantage = xr.open_zarr(run / "cube.zarr", group="advantage").load()
    assert advantage.attrs["pooled_over"] == "property"
    assert advantage["p_value"].dims == advantage["p_holm"].dims == ("subject", "property")
    assert (advantage["p_value"].values == 1.0).all()  # the echo server: self and cross alike
    assert advantage["pooled_estimate"].dims == ("subject",)
    # 3 items under 2 properties: 6 pairs, 3 items resampled
    assert advantage["pooled_n"].values.tolist() == [6, 6]
    assert advantage["pooled_items"].values.tolist() == [3, 3]
    accuracy = xr.open_zarr(run / "cube.zarr", group="self.accuracy").load()
    assert np.isfinite(accuracy["wilson_low"].values).all()
    assert (accuracy["items"] == accuracy["n"]).all()


def test_show_prints_p_holm_and_a_pooled_line_per_subject(run: Path) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["show", str(run)]) == 0
    text = out.getvalue()
    section = text[text.index("advantage (comparison)") :].split("\n\n")[0].splitlines()
    assert "p (Holm, 4 tests)" in section[1] and "Wilson 95%" in text
    pooled = [line.split() for line in section if "(all)" in line]
    assert [line[:2] for line in pooled] == [["a", "(all)"], ["b", "(all)"]]
    assert pooled[0][5:8] == ["6", "(3", "items)"]  # n 6 over 3 items


def test_export_keeps_the_comparison_table_and_adds_the_pooled_one(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "tables"
    assert main(["export", str(run), "--out", str(out)]) == 0
    cells = pd.read_parquet(out / "advantage.by_point.parquet")
    assert {"estimate", "ci_low", "ci_high", "n", "a", "b", "p_value", "p_holm"} <= set(cells.columns)
    pooled = pd.read_parquet(out / "advantage.by_subject.parquet")
    assert pooled["pooled_items"].tolist() == [3, 3] and len(pooled) == 2


def test_the_report_captions_the_pooled_test(run: Path, tmp_path: Path) -> None:
    from intro.runtime.analysis.report import _pooled_captions

    advantage = xr.open_zarr(run / "cube.zarr", group="advantage").load()
    assert _pooled_captions(advantage) == [
        "a: all property +0.000 [0.000, 0.000], p = 1 (Holm 1; 3 items)",
        "b: all property +0.000 [0.000, 0.000], p = 1 (Holm 1; 3 items)",
    ]
    assert main(["report", str(run), "--output", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "advantage.png").stat().st_size > 0
