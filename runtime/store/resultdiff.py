"""Compare the results of two runs: align their cubes on shared coordinates and item ids, and test
each shared cell's change with paired statistics (McNemar on per-item correctness, a paired bootstrap
CI of the accuracy difference). Cells present in only one run are listed, not compared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from intro.compiler.plan import Plan
from intro.runtime.analysis import metrics
from intro.runtime.store import cube


def measures_of(run: Path) -> dict[str, str]:
    plan = Plan.loads((run / "plan.json").read_text(encoding="utf-8"))
    return {m.name: m.kind for m in plan.measures}


def compare_runs(run_a: Path, run_b: Path, *, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    kinds_a, kinds_b = measures_of(run_a), measures_of(run_b)
    report: dict[str, Any] = {
        "only_in_a": sorted(set(kinds_a) - set(kinds_b)),
        "only_in_b": sorted(set(kinds_b) - set(kinds_a)),
        "measures": {},
    }
    for name in kinds_a:
        if name in kinds_b and kinds_a[name] == kinds_b[name] == "prediction":
            a = cube.open_group(run_a / "cube.zarr", name)
            b = cube.open_group(run_b / "cube.zarr", name)
            report["measures"][name] = compare_prediction_cubes(a, b, resamples=resamples, seed=seed)
    return report


def compare_prediction_cubes(
    a: xr.Dataset, b: xr.Dataset, *, resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    cell_dims = [str(d) for d in a["accuracy"].dims]
    if cell_dims != list(b["accuracy"].dims):
        return {"error": f"the cubes have different dimensions: {cell_dims} vs {list(b['accuracy'].dims)}"}
    shared = {d: [v for v in a[d].values.tolist() if v in set(b[d].values.tolist())] for d in cell_dims}
    cells, only = [], {"a": _exclusive(a, b, cell_dims), "b": _exclusive(b, a, cell_dims)}
    for index in np.ndindex(*(len(shared[d]) for d in cell_dims)):
        coords = {d: shared[d][i] for d, i in zip(cell_dims, index, strict=True)}
        cell = _compare_cell(a, b, coords, resamples, seed)
        if cell is not None:
            cells.append(cell)
    return {"dims": cell_dims, "cells": cells, "only_in_a": only["a"], "only_in_b": only["b"]}


def _exclusive(x: xr.Dataset, y: xr.Dataset, dims: list[str]) -> list[str]:
    out = []
    for d in dims:
        others = set(y[d].values.tolist())
        out += [f"{d}={v}" for v in x[d].values.tolist() if v not in others]
    return out


def _paired_items(a: xr.Dataset, b: xr.Dataset, coords: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Per-item correctness in both runs, aligned on item ids; items dropped in either run are left out."""
    ids_a = a["item_id"].sel(task=coords["task"]).values.tolist()
    ids_b = b["item_id"].sel(task=coords["task"]).values.tolist()
    correct_a = a["correct"].sel(coords).values
    correct_b = b["correct"].sel(coords).values
    where_b = {item: i for i, item in enumerate(ids_b) if item}
    pairs = [(correct_a[i], correct_b[where_b[item]]) for i, item in enumerate(ids_a) if item in where_b]
    pairs = [(x, y) for x, y in pairs if np.isfinite(x) and np.isfinite(y)]
    if not pairs:
        return np.array([], dtype=bool), np.array([], dtype=bool)
    values = np.array(pairs)
    return values[:, 0].astype(bool), values[:, 1].astype(bool)


def _compare_cell(
    a: xr.Dataset, b: xr.Dataset, coords: dict[str, Any], resamples: int, seed: int
) -> dict[str, Any] | None:
    x, y = _paired_items(a, b, coords)
    if len(x) == 0:
        return None
    statistic, p = metrics.mcnemar(x, y)
    low, high = metrics.paired_bootstrap_diff_ci(
        y.astype(float), x.astype(float), resamples=resamples, seed=seed
    )
    return {
        **{k: str(v) for k, v in coords.items()},
        "n": int(len(x)),
        "accuracy_a": float(x.mean()),
        "accuracy_b": float(y.mean()),
        "difference": float(y.mean() - x.mean()),
        "ci_low": float(low),
        "ci_high": float(high),
        "mcnemar_statistic": float(statistic),
        "p_value": float(p),
    }


def _aligned(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return ["  " + "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
            for row in [header, *rows]]  # fmt: skip


def render_comparison(report: dict[str, Any]) -> str:
    lines = []
    for name in report["only_in_a"]:
        lines.append(f"- measure {name} (only in A)")
    for name in report["only_in_b"]:
        lines.append(f"+ measure {name} (only in B)")
    for name, result in report["measures"].items():
        if "error" in result:
            lines.append(f"measure {name}: {result['error']}")
            continue
        lines.append(f"measure {name}: {len(result['cells'])} shared cells (paired on item ids)")
        dims = result["dims"]
        header = [*dims, "n", "A", "B", "B-A", "95% CI", "McNemar p"]
        rows = [
            [*(c[d] for d in dims), str(c["n"]), f"{c['accuracy_a']:.2f}", f"{c['accuracy_b']:.2f}",
             f"{c['difference']:+.2f}", f"[{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]",
             f"{c['p_value']:.3g}" + (" *" if c["p_value"] < 0.05 else "")]
            for c in result["cells"]
        ]  # fmt: skip
        lines.extend(_aligned(header, rows))
        for side in ("a", "b"):
            for cell in result[f"only_in_{side}"]:
                lines.append(f"  only in {side.upper()}: {cell}")
    return "\n".join(lines)
