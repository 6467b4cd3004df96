"""The finetuning group of a run's cube: the loss curves of every finetuned model of the plan.

It is an xarray Dataset written as a group of `cube.zarr` (provenance in attrs, see `cube.py`): `loss` per
(model, step), with `label`, `examples`, `target_tokens` and `seconds` per model; the group is `training`
(`training_losses` when a measure already has that name).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from intro.compiler.plan import Measure, Plan
from intro.runtime.store.cube import provenance

TRAINING_GROUP = "training"


# ---------------------------------------------------------------------------------------------------------
# Training losses


def training_group(plan: Plan) -> str:
    """Where the loss curves go: `training`, unless a measure already has that name."""
    return (
        TRAINING_GROUP if all(m.name != TRAINING_GROUP for m in plan.measures) else f"{TRAINING_GROUP}_losses"
    )


def training_dataset(plan: Plan, records: Mapping[str, Mapping[str, Any]]) -> xr.Dataset:
    """Loss per optimizer step of each finetuned model; `records` maps model keys to their DONE info."""
    keys = list(records)
    steps = max((len(r["losses"]) for r in records.values()), default=0)
    loss = np.full((len(keys), steps), np.nan)
    for row, key in enumerate(keys):
        losses = records[key]["losses"]
        loss[row, : len(losses)] = losses
    per_model = {
        name: (("model",), np.array([float(records[k].get(name, np.nan)) for k in keys]))
        for name in ("examples", "target_tokens", "seconds")
    }
    labels = [str(plan.models[k].params.get("label", k)) for k in keys]
    attrs = provenance(plan, Measure(TRAINING_GROUP, "training", (), ()))
    return xr.Dataset(
        {"loss": (("model", "step"), loss), **per_model},
        coords={"model": keys, "label": ("model", labels), "step": np.arange(steps)},
        attrs=attrs,
    )


# ---------------------------------------------------------------------------------------------------------
# `intro show` tables: (header, rows) pairs for run.py's table printer

Table = tuple[list[str], list[list[str]]]


def _number(value: Any, digits: int = 2) -> str:
    return "nan" if value != value else f"{float(value):.{digits}f}"


def _count(value: Any) -> str:
    return "-" if value != value else str(int(value))


def training_rows(dataset: xr.Dataset) -> Table:
    header = ["model", "examples", "steps", "first loss", "last loss", "seconds"]
    rows = []
    for key in dataset["model"].values:
        model = dataset.sel(model=key)
        losses = model["loss"].values[~np.isnan(model["loss"].values)]
        first, last = (losses[0], losses[-1]) if losses.size else (np.nan, np.nan)
        rows.append(
            [str(model["label"].values), _count(model["examples"].values), str(losses.size),
             _number(first, 3), _number(last, 3), _number(model["seconds"].values, 1)]
        )  # fmt: skip
    return header, rows
