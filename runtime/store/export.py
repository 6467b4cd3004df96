"""Results where pandas users expect them: a run's cubes as one `xarray.DataTree`, and as tidy tables.

`open_run("runs/<study>")` gathers every group of `cube.zarr` (one per measure, plus `training` when the
study finetunes) under one tree; `export_run` flattens each group into tidy tables, one row per cell and
every dimension a column (models by their key in the spec; a sweep over numbers, such as `layer` or
`strength`, as numbers), written as parquet or csv for `pandas.read_parquet` / `read_csv`.

How a group becomes tables: its variables are grouped by their dims. The variables over a per-unit dim
(`item` for a measure's rows and scores, `step` for training losses) make the main table `<measure>`, with
labels over fewer of those dims repeated onto its rows. Every other set of dims makes a table
`<measure>.by_<dims beyond the loop axes>` (`accuracy.by_task`: an estimate per task).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import xarray as xr
from attrs import frozen

from intro.compiler.plan import Plan
from intro.runtime.store.cube import DamagedCubeError, check_group, rebuild_advice

FORMATS = ("parquet", "csv")
UNIT_DIMS = frozenset({"item", "trial", "step"})
DEFAULT_FOLDER = "export"
MANIFEST = "export.json"


class RunError(Exception):
    """A path that is not a readable run, or an export that cannot be written; the message is one line."""


# ---------------------------------------------------------------------------------------------------------
# open_run


def open_run(run: str | os.PathLike[str]) -> xr.DataTree:
    """A run's result cubes as one `xarray.DataTree`: one child node per zarr group of `cube.zarr`.

    `run` is a run directory (`runs/<study>`, holding `plan.json` and `cube.zarr`). Each node is exactly
    `xr.open_zarr("runs/<study>/cube.zarr", group=<name>)` (lazy: values load when used). Nodes come in the
    plan's measure order, then `training` (loss curves) when the study finetunes. The root holds no data;
    its attrs are the run's `study`, `plan_hash` and `source` (the spec file), from `plan.json`.

    Dims of each kind of node (the measure's loop axes first, e.g. `subject`, `predictor`, `layer`; axis
    values are strings, models by their key in the spec):
    - estimate (`rate`, `mean`, `accuracy`, `mode_baseline`, `calibration_curve`): `estimate`, `ci_low`,
      `ci_high` (95% bootstrap), `n`, `compliance` per point (then `task` for a statistic `by: "task"`),
      and `score` per (axes, `item`).
    - comparison (`difference`, `correlation`): `estimate`, `ci_low`, `ci_high`, `n`, `a`, `b` per point.
    - texts and values: per (axes, `item`, `sample`) the answers or the values read from them.
    - training: `loss` per (`model`, `step`); `examples`, `target_tokens`, `seconds`, `label` per `model`.

    Provenance, in every node's attrs: `study`, `measure`, `kind`, `plan_hash`, `source`, `intro_version`,
    `versions` (JSON: torch, transformers, litellm, xarray, zarr, numpy), `models` (JSON: model key ->
    identity, the weights' hash or the API model name) and `created` (UTC, when the node was last written;
    a node's `plan_hash` differs from the root's when a later plan has not rewritten it yet).

    Raises `RunError` (one line) when `run` is not a run directory or has no results yet.
    """
    directory = Path(run)
    plan = read_plan(directory)
    store = directory / "cube.zarr"
    nodes = {name: _open_group(store, name) for name in cube_groups(store, plan)}
    root = xr.Dataset(attrs={"study": plan.study, "plan_hash": plan.hash, "source": plan.source})
    return xr.DataTree.from_dict({"/": root, **nodes})


def read_plan(directory: Path) -> Plan:
    plan_path = directory / "plan.json"
    if not plan_path.is_file():
        raise RunError(f"{directory} is not a run directory (no plan.json)")
    try:
        return Plan.loads(plan_path.read_text(encoding="utf-8"))
    except Exception as error:  # a damaged plan.json can fail anywhere in parsing: one line, no traceback
        raise RunError(f"cannot read {plan_path}: {error}") from None


def cube_groups(store: Path, plan: Plan) -> list[str]:
    """The zarr groups of a run's cube: the plan's measures in order, then any other (training) by name."""
    if not store.is_dir():
        raise RunError(f"{store.parent} has no results yet (no cube.zarr)")
    found = {p.name for p in store.iterdir() if (p / ".zgroup").is_file() or (p / "zarr.json").is_file()}
    if not found:
        raise RunError(f"{store.parent} has no results yet ({store.name} holds no measure)")
    ordered = [m.name for m in plan.measures if m.name in found]
    return ordered + sorted(found - set(ordered))


def _open_group(store: Path, name: str) -> xr.Dataset:
    try:
        check_group(store, name)
    except DamagedCubeError as error:
        raise RunError(rebuild_advice(store.parent, error).removeprefix("intro: ")) from None
    try:
        return xr.open_zarr(store, group=name)
    except Exception as error:  # whatever zarr raises about a damaged store, the user gets one line
        raise RunError(f"cannot read group {name!r} of {store}: {error}") from None


# ---------------------------------------------------------------------------------------------------------
# Tidy tables


@frozen
class Table:
    """One tidy table of a cube group: the variables sharing `dims` (plus labels broadcast onto them)."""

    name: str
    group: str
    dims: tuple[str, ...]
    variables: tuple[str, ...]


def table_layout(group: str, dataset: xr.Dataset, axes: Sequence[str]) -> list[Table]:
    """How one cube group splits into tables (see the module docstring)."""
    by_dims: dict[tuple[str, ...], list[str]] = {}
    for name, variable in dataset.data_vars.items():
        by_dims.setdefault(tuple(map(str, variable.dims)), []).append(str(name))
    per_unit = [dims for dims in by_dims if UNIT_DIMS & set(dims)]
    main = max(per_unit, key=lambda dims: (len(by_dims[dims]), len(dims)), default=None)
    labels = [dims for dims in per_unit if main and dims != main and set(dims) < set(main)]
    tables = []
    if main is not None:
        variables = [*(name for dims in labels for name in by_dims[dims]), *by_dims[main]]
        tables.append(Table(group, group, main, tuple(variables)))
    for dims, names in by_dims.items():
        if dims != main and dims not in labels:
            tables.append(Table(_aggregate_name(group, dims, axes, tables), group, dims, tuple(names)))
    return tables


def _aggregate_name(group: str, dims: tuple[str, ...], axes: Sequence[str], taken: Sequence[Table]) -> str:
    inner = [d for d in dims if d not in axes]
    name = f"{group}.by_{'_'.join(inner) or 'point'}"
    if any(t.name == name for t in taken):  # same inner dims over other axes: spell every dim out
        name = f"{group}.by_{'_'.join(dims)}"
    return name


def table_frame(dataset: xr.Dataset, table: Table, numeric_axes: Sequence[str] = ()) -> Any:
    """The table as a pandas DataFrame: one row per cell of `table.dims`, each dim a column, then values.

    The cube keeps every axis value as a string; `numeric_axes` (a sweep over numbers, such as `layer` or
    `strength`) become numbers again, so that a table sorts and filters by them.
    """
    import pandas as pd

    if table.dims:
        frame = dataset[list(table.variables)].to_dataframe(dim_order=list(table.dims)).reset_index()
    else:  # a study without loops: its statistics are one point, so one row
        frame = pd.DataFrame([{name: dataset[name].values.item() for name in table.variables}])
    for axis in numeric_axes:
        if axis in frame.columns:
            frame[axis] = pd.to_numeric(frame[axis])
    frame["plan_hash"] = str(dataset.attrs.get("plan_hash", ""))
    return frame


# ---------------------------------------------------------------------------------------------------------
# export_run


def export_run(
    run: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, format: str = "parquet"
) -> dict[Path, int]:
    """Write every table of a run (see the module docstring) to `out` (default `<run>/export`).

    `format` is "parquet" (`<table>.parquet`, provenance also in the schema metadata under b"intro") or
    "csv" (`<table>.csv`). Every table has a `plan_hash` column; `export.json` lists the tables (group, dims,
    rows, columns) and each group's provenance attrs. Returns each written file with its row count.
    Raises `RunError` (one line) for an unknown format, a path that is not a run, or an unwritable `out`.
    """
    if format not in FORMATS:
        raise RunError(f"unknown export format {format!r} (choose {' or '.join(FORMATS)})")
    tree = open_run(run)
    folder = Path(out) if out is not None else Path(run) / DEFAULT_FOLDER
    measures = read_plan(Path(run)).measures
    axes = {m.name: [a for a, _ in m.axes] for m in measures}
    numeric = {m.name: [a for a, values in m.axes if all(map(_is_number, values))] for m in measures}
    written: dict[Path, int] = {}
    manifest: dict[str, Any] = {"format": format, "tables": {}, "provenance": {}}
    for group, node in tree.children.items():
        dataset = node.to_dataset()
        manifest["provenance"][group] = dict(dataset.attrs)
        for table in table_layout(group, dataset, axes.get(group, [])):
            frame = table_frame(dataset, table, numeric.get(group, []))
            path = folder / f"{table.name}.{format}"
            _write(frame, path, format, {"group": group, "dims": list(table.dims), **dataset.attrs})
            written[path] = len(frame)
            manifest["tables"][table.name] = _describe(table, path, frame)
    _write_text(folder / MANIFEST, json.dumps(manifest, indent=1))
    return written


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _describe(table: Table, path: Path, frame: Any) -> dict[str, Any]:
    return {
        "file": path.name,
        "group": table.group,
        "dims": list(table.dims),
        "rows": len(frame),
        "columns": [str(c) for c in frame.columns],
    }


def _write(frame: Any, path: Path, format: str, metadata: Mapping[str, Any]) -> None:
    """Write through a temporary file, so a reader never sees half a table."""
    temporary = _prepare(path)
    if format == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(frame, preserve_index=False)
        schema_metadata = {**(table.schema.metadata or {}), b"intro": json.dumps(metadata).encode()}
        pq.write_table(table.replace_schema_metadata(schema_metadata), temporary)
    else:
        frame.to_csv(temporary, index=False)
    os.replace(temporary, path)


def _write_text(path: Path, text: str) -> None:
    temporary = _prepare(path)
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def _prepare(path: Path) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunError(f"cannot write to {path.parent}: {error.strerror or error}") from None
    if path.is_dir():
        raise RunError(f"cannot write {path}: it is a directory")
    return path.with_name(f".{path.name}.tmp")
