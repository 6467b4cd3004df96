"""`intro report`: the papers' figures from a run's cubes, as PNG files and one self-contained HTML page.

- estimates and comparisons: each point of the study's axes with its 95% CI (a difference next to its two
  sides);
- texts and values: as tables;
- training: loss curves of every finetuned model.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display here or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from intro.compiler.plan import Plan  # noqa: E402
from intro.runtime.store import cube  # noqa: E402

Figure = Any


def write_report(run: Path, output: Path | None = None) -> Path:
    plan = Plan.loads((run / "plan.json").read_text(encoding="utf-8"))
    output = output or run / "report"
    output.mkdir(parents=True, exist_ok=True)
    sections: list[tuple[str, str, str]] = []  # (title, png file, table text)
    for measure in plan.measures:
        dataset = _open(run, measure.name)
        if dataset is None:
            continue
        draw = FIGURES.get(measure.kind)
        if draw is None:
            if measure.kind in TABLE_ONLY:  # texts and values: what they hold is best read as a table
                sections.append((f"{measure.name} ({measure.kind})", "", _table(dataset, measure)))
            continue
        figure = draw(dataset, measure.name)
        name = f"{measure.name}.png"
        figure.savefig(output / name, dpi=120, bbox_inches="tight")
        plt.close(figure)
        sections.append((f"{measure.name} ({measure.kind})", name, _table(dataset, measure)))
    training = _open(run, "training")
    if training is not None and "loss" in training:
        figure = training_figure(training)
        figure.savefig(output / "training.png", dpi=120, bbox_inches="tight")
        plt.close(figure)
        sections.append(("training", "training.png", ""))
    page = output / "report.html"
    page.write_text(_html(plan, output, sections), encoding="utf-8")
    return page


def _open(run: Path, group: str) -> xr.Dataset | None:
    """A group's cube, None before it exists; a damaged one raises `cube.DamagedCubeError`."""
    try:
        return cube.open_group(run / "cube.zarr", group)
    except (FileNotFoundError, KeyError, OSError, ValueError):
        return None


def _table(dataset: xr.Dataset, measure: Any) -> str:
    from intro.runtime.engine.run import measure_table

    try:
        return str(measure_table(dataset, measure))
    except Exception as error:  # a table is a convenience; the figure is the report
        return f"(no table: {error})"


# ---------------------------------------------------------------- training
def training_figure(dataset: xr.Dataset) -> Figure:
    figure, axis = plt.subplots(figsize=(5, 3.4))
    labels = (
        dataset["label"].values
        if "label" in dataset.coords or "label" in dataset
        else dataset["model"].values
    )
    for i, model in enumerate(dataset["model"].values):
        loss = dataset["loss"].sel(model=model).values
        keep = np.isfinite(loss)
        axis.plot(np.arange(loss.size)[keep], loss[keep], label=str(labels[i]))
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("training loss")
    axis.set_title("LoRA training")
    axis.legend(fontsize=7)
    return figure


# ---------------------------------------------------------------- the open language's statistics
def statistic_figure(dataset: xr.Dataset, name: str) -> Figure:
    """An estimate or a comparison at every point of the study's axes, with its 95% CI."""
    points, labels = _summary_points(dataset, name)
    figure, axis = plt.subplots(figsize=(max(3.0, 0.9 * len(points) + 1.5), 3.4))
    _intervals(axis, dataset, points, labels)
    if dataset.attrs.get("kind") == "comparison":  # a difference or r: zero is "no effect"
        axis.axhline(0, color="grey", linewidth=0.8)
    axis.set_ylabel(str(dataset.attrs.get("kind", "estimate")))
    axis.set_title(f"{name} (95% bootstrap CI over items)")
    return figure


def comparison_figure(dataset: xr.Dataset, name: str) -> Figure:
    """A difference: its two sides next to each other at every point (left), and the difference with its
    95% CI (right), so "self 0.42 vs cross 0.31" and "+0.11 [0.02, 0.20]" read from one picture."""
    if dataset.attrs.get("statistic") == "correlation" or "a" not in dataset:
        return statistic_figure(dataset, name)
    points, labels = _summary_points(dataset, name)
    xs = np.arange(len(points))
    figure, (sides, diff) = plt.subplots(1, 2, figsize=(max(6.0, 1.4 * len(points) + 3), 3.4))
    for offset, side, marker in ((-0.12, "a", "o"), (0.12, "b", "s")):
        sides.plot(xs + offset, [float(dataset[side].values[at]) for at in points], marker, label=side)
    sides.set_xticks(xs, labels, rotation=30, ha="right")
    sides.set_ylabel("estimate")
    sides.legend(fontsize=8)
    sides.set_title(f"{name}: a and b")
    _intervals(diff, dataset, points, labels)
    diff.axhline(0, color="grey", linewidth=0.8)
    diff.set_title("\n".join(["a - b (95% bootstrap CI over items)", *_pooled_captions(dataset)]))
    return figure


def _pooled_captions(dataset: xr.Dataset) -> list[str]:
    """The paired difference pooled over the innermost axis (self vs cross over all properties), one line
    per point of the other axes: estimate, CI, sign-flip p over items and Holm's p over those lines."""
    if "pooled_estimate" not in dataset:
        return []
    pooled = dataset[[str(v) for v in dataset.data_vars if str(v).startswith("pooled_")]]
    dims = [str(d) for d in pooled["pooled_estimate"].dims]
    lines = []
    for at in np.ndindex(*(pooled.sizes[d] for d in dims)):
        cell = pooled.isel(dict(zip(dims, at, strict=True)))
        where = ", ".join(str(pooled[d].values[i]) for d, i in zip(dims, at, strict=True))
        lines.append(
            f"{where + ': ' if where else ''}all {dataset.attrs.get('pooled_over', '')} "
            f"{float(cell['pooled_estimate']):+.3f} [{float(cell['pooled_ci_low']):.3f}, "
            f"{float(cell['pooled_ci_high']):.3f}], p = {float(cell['pooled_p_value']):.3g} "
            f"(Holm {float(cell['pooled_p_holm']):.3g}; {int(cell['pooled_items'])} items)"
        )
    return lines


def _summary_points(dataset: xr.Dataset, name: str) -> tuple[list[tuple[int, ...]], list[str]]:
    """Every point of a summary cube's axes, and its label (the measure's name where it has no axes)."""
    axes = [str(d) for d in dataset["estimate"].dims]
    points = list(np.ndindex(*(dataset.sizes[a] for a in axes)))
    labels = [", ".join(str(dataset[a].values[i]) for a, i in zip(axes, at, strict=True)) for at in points]
    return points, [label or name for label in labels]


def _intervals(axis: Any, dataset: xr.Dataset, points: list[tuple[int, ...]], labels: list[str]) -> None:
    """The estimate at each point with its 95% CI as error bars; a proportion's Wilson interval next to it
    in grey (the bootstrap collapses to a point at 0/n or n/n in a small cell; the Wilson interval does not)."""
    value, low, high = (
        np.array([float(dataset[v].values[at]) for at in points]) for v in ("estimate", "ci_low", "ci_high")
    )
    errors = np.nan_to_num(np.vstack([value - low, high - value]))
    axis.errorbar(range(len(points)), value, yerr=errors, fmt="o", capsize=4)
    if "wilson_low" in dataset and np.isfinite(dataset["wilson_low"].values).any():
        wilson_low, wilson_high = (
            np.array([float(dataset[v].values[at]) for at in points]) for v in ("wilson_low", "wilson_high")
        )
        spread = np.nan_to_num(np.vstack([value - wilson_low, wilson_high - value]))
        xs = np.arange(len(points)) + 0.15
        axis.errorbar(xs, value, yerr=spread, fmt="none", ecolor="grey", capsize=3, label="Wilson 95%")
        axis.legend(fontsize=7)
    axis.set_xticks(range(len(points)), labels, rotation=30, ha="right")


TABLE_ONLY = ("texts", "values")

FIGURES: dict[str, Callable[[xr.Dataset, str], Figure]] = {
    "estimate": statistic_figure,
    "comparison": comparison_figure,
}


# ---------------------------------------------------------------- the page
def _html(plan: Plan, output: Path, sections: list[tuple[str, str, str]]) -> str:
    created = ""
    parts = []
    for title, png, table in sections:
        image = ""
        if png:
            encoded = base64.b64encode((output / png).read_bytes()).decode()
            image = f"<img alt='{html.escape(title)}' src='data:image/png;base64,{encoded}'>"
        parts.append(
            f"<section><h2>{html.escape(title)}</h2>{image}"
            + (f"<pre>{html.escape(table)}</pre>" if table else "")
            + "</section>"
        )
    for measure in plan.measures:
        cube = _open(output.parent, measure.name)
        if cube is not None and "created" in cube.attrs:
            created = str(cube.attrs["created"])
            break
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(plan.study)} — intro report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#1a202c}}
img{{max-width:100%}}pre{{font-size:12px;background:#f7fafc;padding:8px;overflow-x:auto}}
.meta{{color:#4a5568}}</style></head><body>
<h1>{html.escape(plan.study)}</h1>
<p class="meta">spec {html.escape(plan.source)} · plan {plan.hash[:16]} · results written {html.escape(created)}</p>
{"".join(parts) or "<p>No results yet.</p>"}
</body></html>
"""
