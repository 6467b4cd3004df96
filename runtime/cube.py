"""Result cubes: one xarray Dataset per measure, stored as a group of `cube.zarr`.

Layout of a prediction measure (`xr.open_zarr("runs/<study>/cube.zarr", group="<measure>")`):
- dims: the study's loop axes in spec order (e.g. `subject`, `predictor`), then `task`, `property`, `item`;
- per item: `item_id`, `object_response`, `target`, `hypothetical_response`, `prediction` (strings; "" when
  absent), `correct` (1.0 / 0.0, NaN where the item was dropped or the cell has not run yet);
- per (axes, task, property): `accuracy`, `ci_low`, `ci_high` (95% bootstrap), `n` (items kept),
  `mode_baseline`, `compliance`;
- attrs: plan hash, study, measure kind, intro and library versions, model identities, date.

The group is rewritten after each finished point, so a running study's partial results are readable;
points not yet run hold NaN. Everything here is derived from the request cache, so a torn write is
repaired by the next run.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from intro.compiler.plan import Measure, Plan

from .measures import Aggregate, PredictionRow

ITEM_VARIABLES = ("object_response", "target", "hypothetical_response", "prediction")
AGGREGATES = ("accuracy", "ci_low", "ci_high", "n", "mode_baseline", "compliance")


class PredictionCube:
    """The cube of one prediction-style measure, filled point by point as steps finish."""

    def __init__(self, plan: Plan, measure: Measure):
        self.plan = plan
        self.measure = measure
        self.axes = [name for name, _ in measure.axes]
        self.axis_values = [list(values) for _, values in measure.axes]
        rows = [row for _, step_id in measure.points for row in plan.step(step_id).params["rows"]]
        self.tasks = list(dict.fromkeys(r[0] for r in rows))
        self.properties = list(dict.fromkeys(r[2] for r in rows))
        items_per_task: dict[str, list[str]] = {t: [] for t in self.tasks}
        for r in rows:
            if r[1] not in items_per_task[r[0]]:
                items_per_task[r[0]].append(r[1])
        self.items = items_per_task
        size = max((len(v) for v in items_per_task.values()), default=0)
        shape = [len(v) for v in self.axis_values]
        self.item_shape = (*shape, len(self.tasks), len(self.properties), size)
        self.cell_shape = (*shape, len(self.tasks), len(self.properties))
        self.strings = {name: np.full(self.item_shape, "", dtype=object) for name in ITEM_VARIABLES}
        self.correct = np.full(self.item_shape, np.nan)
        self.aggregates = {name: np.full(self.cell_shape, np.nan) for name in AGGREGATES}

    def _index(self, coords: Sequence[Any]) -> tuple[int, ...]:
        return tuple(values.index(c) for values, c in zip(self.axis_values, coords, strict=True))

    def fill(
        self, coords: Sequence[Any], rows: Sequence[PredictionRow], cells: Mapping[tuple[str, str], Aggregate]
    ) -> None:
        at = self._index(coords)
        for row in rows:
            t, p = self.tasks.index(row.task), self.properties.index(row.property)
            i = self.items[row.task].index(row.item)
            where = (*at, t, p, i)
            self.strings["object_response"][where] = row.object_response
            self.strings["target"][where] = row.target or ""
            self.strings["hypothetical_response"][where] = row.hypothetical_response
            self.strings["prediction"][where] = row.predicted or ""
            self.correct[where] = np.nan if row.correct is None else float(row.correct)
        for (task, prop), agg in cells.items():
            where = (*at, self.tasks.index(task), self.properties.index(prop))
            for name in AGGREGATES:
                self.aggregates[name][where] = getattr(agg, name)

    def dataset(self) -> xr.Dataset:
        item_dims = (*self.axes, "task", "property", "item")
        cell_dims = (*self.axes, "task", "property")
        size = self.item_shape[-1]
        item_ids = np.array(
            [[*self.items[t], *[""] * (size - len(self.items[t]))] for t in self.tasks], dtype=object
        ).reshape(len(self.tasks), size)
        data: dict[str, Any] = {
            name: (item_dims, values.astype(str)) for name, values in self.strings.items()
        }
        data["correct"] = (item_dims, self.correct)
        data["item_id"] = (("task", "item"), item_ids.astype(str))
        data.update({name: (cell_dims, values) for name, values in self.aggregates.items()})
        coords: dict[str, Any] = {
            name: [str(v) for v in values] for name, values in zip(self.axes, self.axis_values, strict=True)
        }
        coords.update({"task": self.tasks, "property": self.properties, "item": np.arange(size)})
        return xr.Dataset(data, coords=coords, attrs=provenance(self.plan, self.measure))


def provenance(plan: Plan, measure: Measure) -> dict[str, Any]:
    from importlib.metadata import version

    import intro

    versions = {}
    for package in ("torch", "transformers", "litellm", "xarray", "zarr", "numpy"):
        try:
            versions[package] = version(package)
        except Exception:  # a package that is not installed is simply not recorded
            continue
    return {
        "study": plan.study,
        "measure": measure.name,
        "kind": measure.kind,
        "plan_hash": plan.hash,
        "source": plan.source,
        "intro_version": intro.__version__,
        "versions": json.dumps(versions),
        "models": json.dumps({k: m.identity for k, m in plan.models.items()}),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def write(dataset: xr.Dataset, store: Path, group: str) -> None:
    store.mkdir(parents=True, exist_ok=True)
    # Zarr format 2: its string encoding is specified and read by every zarr library (v3 has none yet).
    dataset.to_zarr(store, group=group, mode="w", zarr_format=2, consolidated=True)


def axis_points(measure: Measure) -> list[tuple[Any, ...]]:
    return list(itertools.product(*(values for _, values in measure.axes)))
