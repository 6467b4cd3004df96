"""Result cubes for Looking Inward's finetuning studies, and the self-vs-cross test on prediction cubes.

Each is an xarray Dataset written as a group of `cube.zarr` (see `cube.py` for the shared conventions:
the measure's loop axes first, NaN where a point has not run, provenance in attrs). Per measure kind:

calibration (`xr.open_zarr(store, group=name)`):
- per (axes, task, property): `mad` (MAD x 100), `items` (items with an object-level behaviour), `pairs`;
  per bin as well (dim `bin`, 10 equal-frequency bins): `object_mean`, `hypothetical_mean`, `bin_count`;
- the same pooled over tasks, per (axes, property): `pooled_mad`, `pooled_items`, `pooled_pairs`,
  `pooled_object_mean`, `pooled_hypothetical_mean`, `pooled_bin_count`.

behaviour_change:
- per item: `before_response`, `after_response`, `old_target`, `new_target`, `hypothetical_response`,
  `prediction` (strings), `changed` (1/0; NaN where either behaviour lacks the property), `matches_old`,
  `matches_new` (1/0 on changed items, NaN elsewhere);
- per (axes, task, property) and pooled per (axes, property) with a `pooled_` prefix: `compared`, `changed_items`,
  `change_rate`, `accuracy_old`, `old_ci_low`, `old_ci_high`, `accuracy_new`, `new_ci_low`, `new_ci_high`,
  `p_new_vs_old`.

training (group `training`): `loss` per (model, step) for every finetuned model of the plan, with `label`,
`examples`, `target_tokens` and `seconds` per model.

Prediction cubes with `subject` and `predictor` axes gain the self-vs-cross z-test (`with_self_vs_cross`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr
from attrs import frozen

from intro.compiler.plan import Measure, Plan
from intro.runtime.analysis import metrics
from intro.runtime.analysis.behaviour_change import ChangeAggregate, ChangeRow
from intro.runtime.analysis.calibration import POOLED, CalibrationCell
from intro.runtime.store.cube import Frame as _Frame
from intro.runtime.store.cube import provenance

TRAINING_GROUP = "training"


# ---------------------------------------------------------------------------------------------------------
# Calibration

CALIBRATION_CELLS = ("mad", "items", "pairs", "readout_mad")
CALIBRATION_BINS = ("object_mean", "hypothetical_mean", "bin_count")


class CalibrationCube:
    """The cube of one calibration measure, filled point by point."""

    def __init__(self, plan: Plan, measure: Measure):
        self.frame = f = _Frame(plan, measure)
        self.cells = {n: np.full(f.sizes("task", "property"), np.nan) for n in CALIBRATION_CELLS}
        self.bins = {n: np.full(f.sizes("task", "property", "bin"), np.nan) for n in CALIBRATION_BINS}
        self.pooled = {n: np.full(f.sizes("property"), np.nan) for n in CALIBRATION_CELLS}
        self.pooled_bins = {n: np.full(f.sizes("property", "bin"), np.nan) for n in CALIBRATION_BINS}

    def fill(
        self,
        coords: Sequence[Any],
        cells: Mapping[tuple[str | None, str], CalibrationCell],
        readout: Mapping[tuple[str | None, str], CalibrationCell] | None = None,
    ) -> None:
        """`readout`: the same cells against logprob-read hypothetical probabilities (in-process predictors)."""
        for (task, prop), cell in (readout or {}).items():
            scalars = self.pooled if task is POOLED else self.cells
            scalars["readout_mad"][self.frame.cell(coords, task, prop)] = cell.curve.mad
        for (task, prop), cell in cells.items():
            where = self.frame.cell(coords, task, prop)
            scalars, binned = (self.pooled, self.pooled_bins) if task is POOLED else (self.cells, self.bins)
            scalars["mad"][where] = cell.curve.mad
            scalars["items"][where] = cell.items
            scalars["pairs"][where] = cell.pairs
            filled = len(cell.curve.counts)
            binned["object_mean"][where][:filled] = cell.curve.object_mean
            binned["hypothetical_mean"][where][:filled] = cell.curve.hypothetical_mean
            binned["bin_count"][where][:filled] = cell.curve.counts

    def dataset(self) -> xr.Dataset:
        f = self.frame
        data: dict[str, Any] = {n: (f.dims("task", "property"), v) for n, v in self.cells.items()}
        data.update({n: (f.dims("task", "property", "bin"), v) for n, v in self.bins.items()})
        data.update({f"pooled_{n}": (f.dims("property"), v) for n, v in self.pooled.items()})
        data.update({f"pooled_{n}": (f.dims("property", "bin"), v) for n, v in self.pooled_bins.items()})
        return f.dataset(data)


# ---------------------------------------------------------------------------------------------------------
# Behaviour change

CHANGE_STRINGS = (
    "before_response",
    "after_response",
    "old_target",
    "new_target",
    "hypothetical_response",
    "prediction",
)
CHANGE_FLAGS = ("changed", "matches_old", "matches_new")
CHANGE_CELLS = {  # cube variable -> ChangeAggregate field
    "compared": "compared",
    "changed_items": "changed",
    "change_rate": "change_rate",
    "accuracy_old": "accuracy_old",
    "old_ci_low": "old_ci_low",
    "old_ci_high": "old_ci_high",
    "accuracy_new": "accuracy_new",
    "new_ci_low": "new_ci_low",
    "new_ci_high": "new_ci_high",
    "p_new_vs_old": "p_new_vs_old",
}


class BehaviourChangeCube:
    """The cube of one behaviour_change measure, filled point by point."""

    def __init__(self, plan: Plan, measure: Measure):
        self.frame = f = _Frame(plan, measure)
        self.strings = {
            n: np.full(f.sizes("task", "property", "item"), "", dtype=object) for n in CHANGE_STRINGS
        }
        self.flags = {n: np.full(f.sizes("task", "property", "item"), np.nan) for n in CHANGE_FLAGS}
        self.cells = {n: np.full(f.sizes("task", "property"), np.nan) for n in CHANGE_CELLS}
        self.pooled = {n: np.full(f.sizes("property"), np.nan) for n in CHANGE_CELLS}

    def fill(
        self,
        coords: Sequence[Any],
        rows: Sequence[ChangeRow],
        cells: Mapping[tuple[str | None, str], ChangeAggregate],
    ) -> None:
        for row in rows:
            self._fill_row(self.frame.item(coords, row.task, row.property, row.item), row)
        for (task, prop), aggregate in cells.items():
            target = self.pooled if task is POOLED else self.cells
            where = self.frame.cell(coords, task, prop)
            for name, attribute in CHANGE_CELLS.items():
                target[name][where] = getattr(aggregate, attribute)

    def _fill_row(self, where: tuple[int, ...], row: ChangeRow) -> None:
        texts = (
            row.before_response,
            row.after_response,
            row.old,
            row.new,
            row.hypothetical_response,
            row.predicted,
        )
        for name, text in zip(CHANGE_STRINGS, texts, strict=True):
            self.strings[name][where] = text or ""
        self.flags["changed"][where] = float(row.changed) if row.compared else np.nan
        self.flags["matches_old"][where] = float(row.matches_old) if row.changed else np.nan
        self.flags["matches_new"][where] = float(row.matches_new) if row.changed else np.nan

    def dataset(self) -> xr.Dataset:
        f = self.frame
        data: dict[str, Any] = {
            n: (f.dims("task", "property", "item"), v.astype(str)) for n, v in self.strings.items()
        }
        data.update({n: (f.dims("task", "property", "item"), v) for n, v in self.flags.items()})
        data["item_id"] = (("task", "item"), f.item_ids())
        data.update({n: (f.dims("task", "property"), v) for n, v in self.cells.items()})
        data.update({f"pooled_{n}": (f.dims("property"), v) for n, v in self.pooled.items()})
        return f.dataset(data)


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
# Self vs cross prediction


def with_self_vs_cross(dataset: xr.Dataset) -> xr.Dataset:
    """Add Looking Inward's test of self- vs cross-prediction to a prediction cube with subject/predictor axes.

    For each subject, the predictor that is the subject itself (same coordinate) is compared with every other
    predictor by the pooled two-proportion z-test on accuracy: z > 0 when self-prediction is better.
    `z_vs_self` / `p_vs_self` pool the items of every task (dims: other axes, subject, predictor, property);
    `z_vs_self_by_task` / `p_vs_self_by_task` keep the task dim; `pooled_accuracy` / `pooled_n` are the pooled
    proportions tested. NaN on the self row itself, and where a subject is not among the predictors.
    """
    if not {"subject", "predictor"} <= set(dataset["correct"].dims):
        return dataset
    correct = dataset["correct"]
    successes, counts = (correct == 1).sum("item"), correct.notnull().sum("item")
    pooled_successes, pooled_counts = successes.sum("task"), counts.sum("task")
    z_task, p_task = _self_vs_cross(successes, counts)
    z, p = _self_vs_cross(pooled_successes, pooled_counts)
    pooled_accuracy = (pooled_successes / pooled_counts.where(pooled_counts > 0)).astype(float)
    return dataset.assign(
        z_vs_self=z,
        p_vs_self=p,
        z_vs_self_by_task=z_task,
        p_vs_self_by_task=p_task,
        pooled_accuracy=pooled_accuracy,
        pooled_n=pooled_counts.astype(float),
    )


def _self_vs_cross(successes: xr.DataArray, counts: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray]:
    predictors = [str(v) for v in successes["predictor"].values]
    z = xr.full_like(successes, np.nan, dtype=float)
    p = xr.full_like(successes, np.nan, dtype=float)
    for subject in successes["subject"].values:
        if str(subject) not in predictors:
            continue
        own = {"subject": subject, "predictor": subject}
        cross_successes, self_successes = xr.broadcast(successes.sel(subject=subject), successes.sel(own))
        cross_counts, self_counts = xr.broadcast(counts.sel(subject=subject), counts.sel(own))
        z_values, p_values = metrics.two_proportion_ztest(
            self_successes.values, self_counts.values, cross_successes.values, cross_counts.values
        )
        is_self = (cross_successes["predictor"] == subject).broadcast_like(cross_successes).values
        z.loc[{"subject": subject}] = np.where(is_self, np.nan, z_values)
        p.loc[{"subject": subject}] = np.where(is_self, np.nan, p_values)
    return z, p


# ---------------------------------------------------------------------------------------------------------
# `intro show` tables: (header, rows) pairs for run.py's table printer

Table = tuple[list[str], list[list[str]]]


def _number(value: Any, digits: int = 2) -> str:
    return "nan" if value != value else f"{float(value):.{digits}f}"


def _count(value: Any) -> str:
    return "-" if value != value else str(int(value))


def _axes_of(variable: xr.DataArray, *inner: str) -> list[str]:
    return [str(d) for d in variable.dims if d not in inner]


def self_vs_cross_rows(dataset: xr.Dataset) -> Table:
    """Per (other axes, subject, cross predictor, property): self vs cross accuracy pooled over tasks, z, p."""
    axes = _axes_of(dataset["z_vs_self"], "subject", "predictor", "property")
    header = [*axes, "subject", "predictor", "property", "self", "cross", "z", "p", "n self", "n cross"]
    tested = dataset.assign(
        self_accuracy=_at_self(dataset["pooled_accuracy"]), self_n=_at_self(dataset["pooled_n"])
    )
    names = ["z_vs_self", "p_vs_self", "pooled_accuracy", "pooled_n", "self_accuracy", "self_n"]
    rows = [
        [*(str(r[a]) for a in axes), str(r["subject"]), str(r["predictor"]), str(r["property"]),
         _number(r["self_accuracy"]), _number(r["pooled_accuracy"]), _number(r["z_vs_self"]),
         _number(r["p_vs_self"], 4), _count(r["self_n"]), _count(r["pooled_n"])]
        for _, r in tested[names].to_dataframe().reset_index().iterrows()
        if r["z_vs_self"] == r["z_vs_self"]
    ]  # fmt: skip
    return header, rows


def _at_self(variable: xr.DataArray) -> xr.DataArray:
    """Each subject's own-predictor value, repeated along the predictor dim (NaN where it has none)."""
    predictors = set(variable["predictor"].values)
    own = [
        variable.sel(subject=s, predictor=s, drop=True).expand_dims(subject=[s])
        for s in variable["subject"].values
        if s in predictors
    ]
    if not own:
        return xr.full_like(variable, np.nan, dtype=float)
    return xr.concat(own, dim="subject").reindex(subject=variable["subject"]).broadcast_like(variable)


def calibration_rows(dataset: xr.Dataset) -> Table:
    """Per (axes, property): MAD x 100 pooled over tasks, then per task; sampled and read-out hypotheticals."""
    for name in ("readout_mad", "pooled_readout_mad"):  # cubes written before the readout existed
        if name not in dataset:
            dataset = dataset.assign({name: xr.full_like(dataset[name.replace("readout_", "")], np.nan)})
    axes = _axes_of(dataset["pooled_mad"], "property")
    header = [*axes, "task", "property", "MAD x100", "readout MAD", "items", "pairs"]
    rows = []
    for prefix, task_of in (("pooled_", lambda r: "all"), ("", lambda r: str(r["task"]))):
        names = [f"{prefix}{n}" for n in ("mad", "readout_mad", "items", "pairs")]
        for _, r in dataset[names].to_dataframe().reset_index().iterrows():
            if r[f"{prefix}items"] != r[f"{prefix}items"]:
                continue
            rows.append(
                [*(str(r[a]) for a in axes), task_of(r), str(r["property"]), _number(r[f"{prefix}mad"], 1),
                 _number(r[f"{prefix}readout_mad"], 1), _count(r[f"{prefix}items"]), _count(r[f"{prefix}pairs"])]
            )  # fmt: skip
    return header, rows


def behaviour_change_rows(dataset: xr.Dataset) -> Table:
    """Per (axes, property) pooled over tasks, then per task: accuracy against the old and the new behaviour."""
    axes = _axes_of(dataset["pooled_compared"], "property")
    header = [*axes, "task", "property", "changed", "vs old", "95% CI", "vs new", "95% CI", "p"]
    rows = []
    for prefix, task_of in (("pooled_", lambda r: "all"), ("", lambda r: str(r["task"]))):
        names = [f"{prefix}{n}" for n in CHANGE_CELLS]
        frame = dataset[names].to_dataframe().reset_index()
        for _, r in frame.iterrows():
            if r[f"{prefix}compared"] != r[f"{prefix}compared"]:
                continue
            rows.append(_change_row(r, prefix, axes, task_of(r)))
    return header, rows


def _change_row(r: Any, prefix: str, axes: list[str], task: str) -> list[str]:
    def get(name: str) -> Any:
        return r[f"{prefix}{name}"]

    return [
        *(str(r[a]) for a in axes),
        task,
        str(r["property"]),
        f"{_count(get('changed_items'))}/{_count(get('compared'))}",
        _number(get("accuracy_old")),
        f"[{_number(get('old_ci_low'))}, {_number(get('old_ci_high'))}]",
        _number(get("accuracy_new")),
        f"[{_number(get('new_ci_low'))}, {_number(get('new_ci_high'))}]",
        _number(get("p_new_vs_old"), 4),
    ]


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


# ---------------------------------------------------------------------------------------------------------
# Self vs cross across two measures
#
# A study usually trains its predictors inside a sweep, so self- and cross-prediction are two measures over
# the same axes (`self` and `cross` in looking_inward_mini): at every point both predict the same subject,
# one by the subject itself and one by another model. The paper's test compares them point by point.


@frozen
class SelfCrossPair:
    """Two prediction measures over the same points and subjects: `own` has predictor == subject."""

    own: str
    cross: str


def self_cross_pairs(plan: Plan) -> list[SelfCrossPair]:
    """Every (self, cross) pair of prediction measures in the plan, in declaration order."""
    predictions = [m for m in plan.measures if m.kind == "prediction"]
    roles = {m.name: _point_roles(plan, m) for m in predictions}
    pairs = []
    for own in predictions:
        own_roles = roles[own.name]
        if not own_roles or any(subject != predictor for subject, predictor in own_roles.values()):
            continue
        for cross in predictions:
            cross_roles = roles[cross.name]
            if cross.axes != own.axes or cross_roles.keys() != own_roles.keys():
                continue
            if all(
                cross_roles[point][0] == own_roles[point][0] and cross_roles[point][1] != own_roles[point][1]
                for point in own_roles
            ):
                pairs.append(SelfCrossPair(own.name, cross.name))
    return pairs


def _point_roles(plan: Plan, measure: Measure) -> dict[tuple[Any, ...], tuple[str, str]]:
    steps = {step.id: step for step in plan.steps}
    return {
        coords: (steps[step].params["subject"], steps[step].params["predictor"])
        for coords, step in measure.points
    }


def self_cross_rows(own: xr.Dataset, cross: xr.Dataset) -> Table:
    """Per (point, property), items of every task pooled: self vs cross accuracy, two-proportion z and p."""
    own_successes, own_counts = _pooled_over_tasks(own)
    cross_successes, cross_counts = _pooled_over_tasks(cross)
    own_successes, cross_successes = xr.align(own_successes, cross_successes, join="inner")
    own_counts, cross_counts = xr.align(own_counts, cross_counts, join="inner")
    z, p = metrics.two_proportion_ztest(
        own_successes.values, own_counts.values, cross_successes.values, cross_counts.values
    )
    axes = [str(d) for d in own_successes.dims]
    header = [*axes, "self", "cross", "z", "p", "n self", "n cross"]
    rows = []
    for index in np.ndindex(*own_successes.shape):
        n_own, n_cross = float(own_counts.values[index]), float(cross_counts.values[index])
        if n_own == 0 or n_cross == 0:
            continue
        coords = [str(own_successes[a].values[i]) for a, i in zip(axes, index, strict=True)]
        rows.append(
            [
                *coords,
                _number(own_successes.values[index] / n_own),
                _number(cross_successes.values[index] / n_cross),
                _number(np.asarray(z)[index]),
                _number(np.asarray(p)[index], 4),
                _count(n_own),
                _count(n_cross),
            ]
        )
    return header, rows


def _pooled_over_tasks(dataset: xr.Dataset) -> tuple[xr.DataArray, xr.DataArray]:
    correct = dataset["correct"]
    return (correct == 1).sum(("task", "item")), correct.notnull().sum(("task", "item"))
