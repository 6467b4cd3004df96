"""Self vs cross prediction across two measures: which measures pair up, and the pooled z-test per point."""

import numpy as np
import pytest
import xarray as xr
from scipy import stats

from intro.compiler.plan import Measure, Plan, Step
from intro.runtime.store import cubes_extra

AXES = (("subject", ("qwen", "gemma")), ("other", ("gemma", "qwen")))


def measure(name: str, roles: list[tuple[str, str]], axes=AXES) -> tuple[Measure, list[Step]]:
    points, steps = [], []
    for index, ((subject, predictor), coords) in enumerate(
        zip(roles, [("qwen", "gemma"), ("gemma", "qwen")], strict=True)
    ):
        step_id = f"{name}.{index}"
        points.append((coords, step_id))
        steps.append(
            Step(step_id, "prediction", f"h{name}{index}", (), {"subject": subject, "predictor": predictor})
        )
    return Measure(name, "prediction", axes, tuple(points)), steps


def plan_of(*measures: tuple[Measure, list[Step]]) -> Plan:
    steps = tuple(step for _, group in measures for step in group)
    return Plan("s", "", {}, {}, {}, steps, tuple(m for m, _ in measures))


def test_a_self_measure_pairs_with_the_measure_whose_predictors_differ_on_the_same_subjects():
    own = measure("self", [("st_q", "st_q"), ("st_g", "st_g")])
    cross = measure("cross", [("st_q", "ct_g"), ("st_g", "ct_q")])
    untrained_subject = measure("other_subjects", [("q", "ct_g"), ("g", "ct_q")])
    assert cubes_extra.self_cross_pairs(plan_of(own, cross, untrained_subject)) == [
        cubes_extra.SelfCrossPair("self", "cross")
    ]


def test_measures_over_other_axes_or_with_a_foreign_predictor_as_self_do_not_pair():
    own = measure("self", [("st_q", "st_q"), ("st_g", "st_g")])
    other_axes = measure("cross", [("st_q", "ct_g"), ("st_g", "ct_q")], axes=(("pair", ("a", "b")),))
    not_self = measure("half", [("st_q", "st_q"), ("st_g", "x")])
    assert cubes_extra.self_cross_pairs(plan_of(own, other_axes, not_self)) == []


def cube(correct: np.ndarray) -> xr.Dataset:
    return xr.Dataset(
        {"correct": (("subject", "task", "property", "item"), correct)},
        coords={"subject": ["qwen", "gemma"], "task": ["t1", "t2"], "property": ["p"], "item": [0, 1, 2]},
    )


def test_rows_pool_the_items_of_every_task_and_match_a_hand_computed_z_test():
    nan = np.nan
    own = np.array([[[[1, 1, 0]], [[1, nan, 1]]], [[[0, 0, 0]], [[1, 0, nan]]]])
    cross = np.array([[[[0, 1, 0]], [[0, 0, 0]]], [[[1, 1, 1]], [[1, 1, 1]]]])
    header, rows = cubes_extra.self_cross_rows(cube(own), cube(cross))
    assert header == ["subject", "property", "self", "cross", "z", "p", "n self", "n cross"]
    # qwen: self 4 of 5, cross 1 of 6. Pooled two-proportion z by hand, p from the normal distribution.
    pooled = 5 / 11
    z = (4 / 5 - 1 / 6) / np.sqrt(pooled * (1 - pooled) * (1 / 5 + 1 / 6))
    assert rows[0][:4] == ["qwen", "p", "0.80", "0.17"]
    assert float(rows[0][4]) == pytest.approx(z, abs=0.005)
    assert float(rows[0][5]) == pytest.approx(2 * stats.norm.sf(abs(z)), abs=5e-5)
    assert rows[0][6:] == ["5", "6"]
    assert rows[1][:4] == ["gemma", "p", "0.20", "1.00"] and float(rows[1][4]) < 0


def point_cube(correct: np.ndarray) -> xr.Dataset:
    dims = ("subject", "other", "task", "property", "item")
    cells = ("subject", "other", "task", "property")
    shape = correct.shape[:-1]
    return xr.Dataset(
        {
            "correct": (dims, correct),
            "n": (cells, np.full(shape, correct.shape[-1], dtype=float)),
            "mode_baseline": (cells, np.full(shape, 0.5)),
        },
        coords={"subject": ["qwen", "gemma"], "other": ["gemma", "qwen"], "task": ["t"], "property": ["p"]},
    )


def test_show_and_report_put_self_and_cross_side_by_side(tmp_path):
    from intro.runtime.analysis import report
    from intro.runtime.engine import run
    from intro.runtime.store import cube

    own = measure("self", [("st_q", "st_q"), ("st_g", "st_g")])
    cross = measure("cross", [("st_q", "ct_g"), ("st_g", "ct_q")])
    plan = plan_of(own, cross)
    (tmp_path / "plan.json").write_text(plan.dumps(), encoding="utf-8")
    rng = np.random.default_rng(0)
    for name, rate in (("self", 0.8), ("cross", 0.3)):
        correct = (rng.random((2, 2, 1, 1, 20)) < rate).astype(float)
        cube.write(point_cube(correct), tmp_path / "cube.zarr", name)
    table = run.self_cross_table(tmp_path, cubes_extra.SelfCrossPair("self", "cross"))
    assert "'self' vs 'cross'" in table and "qwen" in table and "gemma" in table
    page = report.write_report(tmp_path)
    assert (tmp_path / "report" / "self_vs_cross.png").stat().st_size > 5000
    assert "self vs cross: self vs cross" in page.read_text(encoding="utf-8")
