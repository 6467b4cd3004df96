"""`intro report`: the papers' figures from a run's cubes, as PNG files and one self-contained HTML page.

- prediction measures: pooled accuracy of every point with its 95% bootstrap CI and the mode baseline,
  grouped by subject, so self- vs cross-prediction and before/after training sit side by side
  (Binder et al. 2024, Fig. 1/4);
- calibration: object-level vs hypothetical probability per equal-frequency bin, with MAD x 100;
- behaviour change: accuracy against the old vs the new behaviour;
- injected thought: layer x strength heatmaps of detection and net score (Lindsey 2025);
- thoughts vs text, prefill intention, think / don't think: injected vs control (or think vs don't vs
  control words) side by side along the strength (or word) axis;
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
from intro.runtime.analysis import metrics  # noqa: E402
from intro.runtime.store import cube, cubes_extra  # noqa: E402

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
    for pair in cubes_extra.self_cross_pairs(plan):
        own, cross = _open(run, pair.own), _open(run, pair.cross)
        if own is None or cross is None:
            continue
        figure = self_cross_figure(own, cross, pair)
        name = f"{pair.own}_vs_{pair.cross}.png"
        figure.savefig(output / name, dpi=120, bbox_inches="tight")
        plt.close(figure)
        sections.append((f"self vs cross: {pair.own} vs {pair.cross}", name, _self_cross_table(run, pair)))
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


# ---------------------------------------------------------------- prediction
def pooled_points(dataset: xr.Dataset) -> list[dict[str, Any]]:
    """Accuracy pooled over tasks, properties and items at each point of the measure's axes."""
    axes = [d for d in dataset["correct"].dims if d not in ("task", "property", "item")]
    points = []
    for index in np.ndindex(*(dataset.sizes[a] for a in axes)):
        where = {a: i for a, i in zip(axes, index, strict=True)}
        correct = dataset["correct"].isel(where).values.ravel()
        kept = correct[np.isfinite(correct)]
        if kept.size == 0:
            continue
        n = dataset["n"].isel(where).values
        baseline = dataset["mode_baseline"].isel(where).values
        valid = np.isfinite(n) & np.isfinite(baseline) & (n > 0)
        low, high = metrics.bootstrap_ci(kept, seed=0)
        points.append(
            {
                "coords": {a: str(dataset[a].values[i]) for a, i in where.items()},
                "accuracy": float(kept.mean()),
                "low": float(low),
                "high": float(high),
                "baseline": float(np.average(baseline[valid], weights=n[valid]))
                if valid.any()
                else float("nan"),
                "n": int(kept.size),
            }
        )
    return points


def prediction_figure(dataset: xr.Dataset, name: str) -> Figure:
    points = pooled_points(dataset)
    figure, axis = plt.subplots(figsize=(max(4.0, 1.0 + 0.9 * len(points)), 3.6))
    labels = [", ".join(f"{k}={v}" for k, v in p["coords"].items()) or name for p in points]
    x = np.arange(len(points))
    accuracy = np.array([p["accuracy"] for p in points])
    errors = np.array(
        [[p["accuracy"] - p["low"] for p in points], [p["high"] - p["accuracy"] for p in points]]
    )
    colours = [_colour(p["coords"]) for p in points]
    axis.bar(x, accuracy, yerr=errors, color=colours, capsize=4, label="accuracy (95% CI)")
    axis.scatter(
        x, [p["baseline"] for p in points], marker="_", s=600, color="black", label="mode baseline", zorder=3
    )
    axis.set_xticks(x, labels, rotation=30, ha="right")
    axis.set_ylim(0, 1)
    axis.set_ylabel("accuracy (pooled over tasks and properties)")
    axis.set_title(name)
    axis.legend(loc="upper right", fontsize=8)
    return figure


def self_cross_figure(own: xr.Dataset, cross: xr.Dataset, pair: cubes_extra.SelfCrossPair) -> Figure:
    """Binder et al. 2024, Fig. 1: each subject predicted by itself and by another model, side by side."""
    crossed = {tuple(p["coords"].items()): p for p in pooled_points(cross)}
    points = [(p, crossed[key]) for p in pooled_points(own) if (key := tuple(p["coords"].items())) in crossed]
    figure, axis = plt.subplots(figsize=(max(4.0, 1.0 + 1.6 * len(points)), 3.6))
    x = np.arange(len(points))
    for offset, side, label, colour in ((-0.2, 0, "self", "#2b6cb0"), (0.2, 1, "cross", "#dd6b20")):
        values = np.array([pp[side]["accuracy"] for pp in points])
        low = np.array([pp[side]["low"] for pp in points])
        high = np.array([pp[side]["high"] for pp in points])
        axis.bar(x + offset, values, width=0.4, color=colour, yerr=[values - low, high - values], capsize=3,
                 label=f"{_role(label, pair.own if side == 0 else pair.cross)}, 95% CI")  # fmt: skip
        axis.scatter(x + offset, [pp[side]["baseline"] for pp in points], marker="_", s=300, color="black",
                     zorder=3, label="mode baseline" if side == 0 else None)  # fmt: skip
    labels = [", ".join(f"{k}={v}" for k, v in own_point["coords"].items()) for own_point, _ in points]
    axis.set_xticks(x, labels, rotation=30, ha="right")
    axis.set_ylim(0, 1)
    axis.set_ylabel("accuracy (pooled over tasks and properties)")
    axis.set_title(f"self vs cross prediction: {pair.own} vs {pair.cross}")
    axis.legend(loc="upper right", fontsize=8)
    return figure


def _role(role: str, measure: str) -> str:
    return role if role == measure else f"{role} ({measure})"


def _self_cross_table(run: Path, pair: cubes_extra.SelfCrossPair) -> str:
    from intro.runtime.engine.run import self_cross_table

    try:
        return self_cross_table(run, pair)
    except Exception as error:  # a table is a convenience; the figure is the report
        return f"(no table: {error})"


def _colour(coords: dict[str, str]) -> str:
    # Self-prediction in one colour, cross-prediction in another, anything else neutral.
    if "subject" in coords and "predictor" in coords:
        return "#2b6cb0" if coords["subject"] == coords["predictor"] else "#dd6b20"
    return "#4a5568"


# ---------------------------------------------------------------- calibration
def calibration_figure(dataset: xr.Dataset, name: str) -> Figure:
    axes = [d for d in dataset["pooled_mad"].dims if d != "property"]
    figure, axis = plt.subplots(figsize=(4.6, 4.2))
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for index in np.ndindex(*(dataset.sizes[a] for a in axes)):
        where = {a: i for a, i in zip(axes, index, strict=True)}
        for p, prop in enumerate(dataset["property"].values):
            cell = dataset.isel({**where, "property": p})
            xs, ys = cell["pooled_object_mean"].values, cell["pooled_hypothetical_mean"].values
            keep = np.isfinite(xs) & np.isfinite(ys)
            if not keep.any():
                continue
            label = ", ".join(str(dataset[a].values[i]) for a, i in where.items())
            mad = float(cell["pooled_mad"].values)
            readout = (
                float(cell["pooled_readout_mad"].values) if "pooled_readout_mad" in cell else float("nan")
            )
            extra = f" (logprob readout {readout:.1f})" if readout == readout else ""
            axis.plot(xs[keep], ys[keep], marker="o", label=f"{label} {prop}: MAD {mad:.1f}{extra}")
    axis.set_xlabel("object-level probability")
    axis.set_ylabel("hypothetical probability")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_title(name)
    axis.legend(fontsize=7)
    return figure


# ---------------------------------------------------------------- behaviour change
def behaviour_figure(dataset: xr.Dataset, name: str) -> Figure:
    axes = [d for d in dataset["pooled_accuracy_old"].dims if d != "property"]
    rows = []
    for index in np.ndindex(*(dataset.sizes[a] for a in axes)):
        cell = dataset.isel(dict(zip(axes, index, strict=True)))
        label = ", ".join(str(dataset[a].values[i]) for a, i in zip(axes, index, strict=True)) or name
        for p, prop in enumerate(dataset["property"].values):
            c = cell.isel(property=p)
            rows.append((f"{label} {prop}", c))
    figure, axis = plt.subplots(figsize=(max(4.0, 1.4 * len(rows)), 3.6))
    x = np.arange(len(rows))
    for offset, which, colour in ((-0.2, "old", "#a0aec0"), (0.2, "new", "#2f855a")):
        values = np.array([float(c[f"pooled_accuracy_{which}"]) for _, c in rows])
        low = np.array([float(c[f"pooled_{which}_ci_low"]) for _, c in rows])
        high = np.array([float(c[f"pooled_{which}_ci_high"]) for _, c in rows])
        axis.bar(
            x + offset,
            values,
            width=0.4,
            color=colour,
            yerr=[values - low, high - values],
            capsize=3,
            label=f"vs {which} behaviour",
        )
    axis.set_xticks(x, [r[0] for r in rows], rotation=30, ha="right")
    axis.set_ylim(0, 1)
    axis.set_ylabel("accuracy on items whose behaviour changed")
    axis.set_title(name)
    axis.legend(fontsize=8)
    return figure


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
    "prediction": prediction_figure,
    "calibration": calibration_figure,
    "behaviour_change": behaviour_figure,
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
