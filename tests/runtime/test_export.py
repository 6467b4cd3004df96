"""`intro.open_run` and `intro export`: a real run's cubes as one DataTree and as tidy parquet / csv tables.

Every variable of every cube group must land in exactly one table of its group, with one row per cell of
the table's dims and the cube's values cell for cell; bad input is one line and exit 2.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import xarray as xr

from intro.cli import main
from intro.compiler.plan import Plan
from intro.runtime.store import training_cube
from intro.runtime.store.export import table_layout
from tests.tinyrun import tiny_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("export"))


def plan_of(run: Path) -> Plan:
    return Plan.loads((run / "plan.json").read_text())


def cube_groups(run: Path) -> dict[str, xr.Dataset]:
    store = run / "cube.zarr"
    return {m.name: xr.open_zarr(store, group=m.name).load() for m in plan_of(run).measures}


def test_open_run_is_a_datatree_of_the_cube_groups_and_import_intro_stays_light(run):
    light = "import sys, intro, intro.cli; intro.cli._build_parser(); print('xarray' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", light], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr  # open_run's imports wait for its first use

    import intro

    tree = intro.open_run(run)
    assert isinstance(tree, xr.DataTree)
    fields = ["accuracy", "mode_baseline", "by_task", "baseline_by_task", "behaviour", "predictions"]
    measured = [f"{measure}.{field}" for measure in ("untrained", "self", "cross") for field in fields]
    assert list(tree.children) == [*measured, "advantage", "calibration"]  # the plan's measure order
    for name, expected in cube_groups(run).items():
        node = tree[name].to_dataset().load()
        assert node.identical(expected), name
    assert not tree.to_dataset().data_vars
    assert tree.attrs["plan_hash"] == plan_of(run).hash
    assert tree["untrained.accuracy"].attrs["plan_hash"] == plan_of(run).hash


def read_tables(folder: Path, suffix: str) -> dict[str, pd.DataFrame]:
    if suffix == "parquet":
        return {p.name[: -len(".parquet")]: pd.read_parquet(p) for p in folder.glob("*.parquet")}
    return {p.name[: -len(".csv")]: pd.read_csv(p) for p in folder.glob("*.csv")}


def assert_same_values(frame: pd.DataFrame, variable: xr.DataArray, name: str) -> None:
    dims = [str(d) for d in variable.dims]
    # The cube keeps axis values as strings, the tables numeric axes as numbers: match them as text.
    exported = frame.drop_duplicates(dims).astype({d: str for d in dims}).set_index(dims)[name]
    expected = variable.to_series()
    expected.index = expected.index.map(
        lambda key: tuple(map(str, key)) if isinstance(key, tuple) else str(key)
    )
    exported = exported.reindex(expected.index)
    assert len(exported) == variable.size
    if variable.dtype.kind in "fiu":
        assert np.allclose(exported.to_numpy(float), expected.to_numpy(float), equal_nan=True), name
    else:  # csv reads "" back as NaN
        assert exported.fillna("").astype(str).tolist() == expected.astype(str).tolist(), name


def check_export(run: Path, folder: Path, suffix: str) -> None:
    tables = read_tables(folder, suffix)
    plan_hash = plan_of(run).hash
    for group, cube in cube_groups(run).items():
        mine = {name: frame for name, frame in tables.items() if _of_group(name, group)}
        holders = {v: [t for t, f in mine.items() if v in f.columns] for v in cube.data_vars}
        assert all(len(h) == 1 for h in holders.values()), holders  # each variable in exactly one table
        for name, frame in mine.items():
            held = [cube[v] for v in cube.data_vars if holders[v] == [name]]
            widest = max(held, key=lambda v: v.ndim)
            assert len(frame) == math.prod(widest.shape), name  # one row per cell
            assert set(map(str, widest.dims)) <= set(frame.columns)  # every axis a column
            assert set(frame["plan_hash"]) == ({plan_hash} if len(frame) else set())
            for variable in held:
                assert_same_values(frame, variable, str(variable.name))
    items = tables["untrained.accuracy"]
    assert set(items["subject"]) == set(items["predictor"]) == {"a", "b"}  # model keys, not positions
    assert len(items) == math.prod(cube_groups(run)["untrained.accuracy"]["score"].shape)


def _of_group(name: str, group: str) -> bool:
    """A group's tables are `<group>` and `<group>.by_<dims>` (group names hold dots: `self.accuracy`)."""
    return name == group or name.startswith(f"{group}.by_")


def test_export_parquet_has_one_row_per_cell_and_the_plan_hash(run, tmp_path, capsys):
    out = tmp_path / "tables"
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert "untrained.accuracy.parquet (24 rows)" in capsys.readouterr().out
    check_export(run, out, "parquet")
    metadata = json.loads(pq.read_schema(out / "untrained.accuracy.parquet").metadata[b"intro"])
    assert metadata["plan_hash"] == plan_of(run).hash
    assert metadata["dims"] == ["subject", "predictor", "property", "item"]
    assert json.loads(metadata["models"]) == {"a": "litellm:openai/echo", "b": "litellm:openai/echo-two"}
    cells = pd.read_parquet(out / "calibration.by_task.parquet")
    assert cells["copy"].tolist() == [1, 2] and cells["copy"].dtype.kind == "i"  # a numeric sweep: numbers
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["tables"]["untrained.accuracy.by_point"]["rows"] == 8  # 2 subjects x 2 predictors x 2
    assert manifest["tables"]["untrained.by_task.by_task"]["dims"][-1] == "task"
    assert set(manifest["provenance"]) == {m.name for m in plan_of(run).measures}


def test_the_advantage_table_pairs_the_self_and_cross_accuracy_tables(run, tmp_path):
    out = tmp_path / "tables"
    assert main(["export", str(run), "--out", str(out)]) == 0
    keys = ["subject", "property"]
    advantage = pd.read_parquet(out / "advantage.by_point.parquet").set_index(keys)
    own = pd.read_parquet(out / "self.accuracy.by_point.parquet").set_index(keys)["estimate"]
    crossed = pd.read_parquet(out / "cross.accuracy.by_point.parquet").set_index(keys)["estimate"]
    assert len(advantage) == 4  # 2 ordered pairs x 2 properties
    assert np.allclose(advantage["a"], own.reindex(advantage.index))
    assert np.allclose(advantage["b"], crossed.reindex(advantage.index))
    assert np.allclose(advantage["estimate"], advantage["a"] - advantage["b"])
    assert sorted(own.groupby("property").mean().items()) == [("first_character", 0.0), ("first_word", 1.0)]


def test_export_csv_defaults_to_the_run_folder(run, capsys):
    assert main(["export", str(run), "--format", "csv"]) == 0
    check_export(run, run / "export", "csv")
    assert {p.name for p in (run / "export").glob("calibration*.csv")} == {
        "calibration.csv",  # per item: li.calibration_of's MAD has no per-item scores, so no rows
        "calibration.by_task.csv",
        "calibration.by_task_bin.csv",  # the curve itself: per task and bin
    }


def test_training_losses_split_into_per_step_and_per_model_tables(run):
    plan = plan_of(run)
    records = {"a": {"losses": [2.0, 1.5, 1.2], "examples": 12, "target_tokens": 40, "seconds": 0.5}}
    dataset = training_cube.training_dataset(plan, records)
    layout = {t.name: (t.dims, t.variables) for t in table_layout("training", dataset, [])}
    assert layout == {
        "training": (("model", "step"), ("loss",)),
        "training.by_model": (("model",), ("examples", "target_tokens", "seconds")),
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{missing}"], "is not a run directory (no plan.json)"),
        (["{empty}"], "has no results yet (no cube.zarr)"),
        (["{run}", "--format", "xlsx"], "unknown export format 'xlsx' (choose parquet or csv)"),
        (["{run}", "--out", "{plan}"], "cannot write to"),
        (["{garbled}"], "cannot read"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(run, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "plan.json").write_text((run / "plan.json").read_text())
    (tmp_path / "garbled").mkdir()
    (tmp_path / "garbled" / "plan.json").write_text("[1, 2")
    paths = {
        "missing": tmp_path / "nowhere",
        "empty": tmp_path / "empty",
        "garbled": tmp_path / "garbled",
        "run": run,
        "plan": run / "plan.json",
    }
    assert main(["export", *(a.format(**paths) for a in args)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert err.startswith("intro: ")


def test_a_damaged_cube_is_named_with_the_command_that_rebuilds_it(run, tmp_path, capsys):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(run, damaged)
    group = plan_of(run).measures[0].name
    chunk = next(p for p in sorted((damaged / "cube.zarr" / group).rglob("*")) if p.name[0].isdigit())
    chunk.write_bytes(bytes(b ^ 0xFF for b in chunk.read_bytes()))
    assert main(["export", str(damaged)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert f"cube.zarr/{group} is damaged" in err and "`intro run " in err, err
