"""Compare the results of two runs: align their cubes on the shared points of their axes, and give each
shared point's change (an estimate's with a paired bootstrap CI over items where both runs scored the same
items). Points present in only one run are listed, not compared.
"""

from __future__ import annotations

import math
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
        kind = kinds_a[name]
        if name not in kinds_b or kind not in COMPARERS:
            continue
        if kinds_b[name] != kind:
            report["measures"][name] = {"error": f"it is a {kind} in A and a {kinds_b[name]} in B"}
            continue
        a = cube.open_group(run_a / "cube.zarr", name)
        b = cube.open_group(run_b / "cube.zarr", name)
        report["measures"][name] = {"kind": kind, **COMPARERS[kind](a, b, resamples, seed)}
    return report


def _exclusive(x: xr.Dataset, y: xr.Dataset, dims: list[str]) -> list[str]:
    out = []
    for d in dims:
        others = set(y[d].values.tolist())
        out += [f"{d}={v}" for v in x[d].values.tolist() if v not in others]
    return out


# ---------------------------------------------------------------- the open language's measures
def compare_estimate_cubes(
    a: xr.Dataset, b: xr.Dataset, resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Each shared point's estimate in A and B, paired on the items both scored: B - A over those items with
    a paired bootstrap CI. Where they share fewer than half of either run's items (other items drawn,
    another data file), B - A of the two estimates with an unpaired bootstrap CI, each run's items
    resampled on their own; where the items are not told apart (an estimate grouped `by` a field), the two
    estimates as they are, without an interval."""
    # An estimate grouped `by` a field has a dim its per-item scores lack: its groups' items are not told apart.
    paired = set(a["estimate"].dims) <= set(a["score"].dims) and set(b["estimate"].dims) <= set(
        b["score"].dims
    )
    return _by_point(a, b, "estimate", lambda x, y: _estimate_cell(x, y, paired, resamples, seed))


def _estimate_cell(a: xr.Dataset, b: xr.Dataset, paired: bool, resamples: int, seed: int) -> dict[str, Any]:
    scores_a, scores_b = (_scores(a), _scores(b)) if paired else ({}, {})
    pairs = [(x, scores_b[item]) for item, x in scores_a.items() if item in scores_b]
    if not pairs or 2 * len(pairs) < max(len(scores_a), len(scores_b)):  # mostly other items: unpaired
        x, y = float(a["estimate"]), float(b["estimate"])
        cell = {"n": 0, "paired": False, "a": x, "b": y, "difference": y - x, "ci_low": None, "ci_high": None}
        if scores_a and scores_b:  # an estimate is the mean of its item scores: their resamples bound B - A
            ys, xs = np.array(list(scores_b.values())), np.array(list(scores_a.values()))
            low, high = metrics.unpaired_bootstrap_diff_ci(ys, xs, resamples=resamples, seed=seed)
            cell |= {"ci_low": float(low), "ci_high": float(high), "items_a": len(xs), "items_b": len(ys)}
        return cell
    first, second = np.array(pairs).T
    low, high = metrics.paired_bootstrap_diff_ci(second, first, resamples=resamples, seed=seed)
    difference = float(second.mean() - first.mean())
    cell = {"n": len(pairs), "paired": True, "a": float(first.mean()), "b": float(second.mean())}
    return {**cell, "difference": difference, "ci_low": float(low), "ci_high": float(high)}


def _scores(data: xr.Dataset) -> dict[str, float]:
    """The items an estimate scored at one point, with their scores."""
    pairs = zip(data["item"].values.tolist(), data["score"].values.tolist(), strict=True)
    return {item: score for item, score in pairs if np.isfinite(score)}


def compare_comparison_cubes(
    a: xr.Dataset, b: xr.Dataset, resamples: int = 0, seed: int = 0
) -> dict[str, Any]:
    """Each shared point's comparison (a difference or a correlation) in A and B, with A's and B's own
    intervals: per-item scores are not kept for comparisons, so B - A has no interval of its own."""
    return _by_point(a, b, "estimate", _comparison_cell)


def _comparison_cell(a: xr.Dataset, b: xr.Dataset) -> dict[str, Any]:
    x, y = float(a["estimate"]), float(b["estimate"])
    intervals = {
        side: [_number(d["ci_low"]), _number(d["ci_high"])] for side, d in (("a_ci", a), ("b_ci", b))
    }
    return {"n": _number(b["n"]), "a": x, "b": y, "difference": y - x, **intervals}


def compare_row_cubes(a: xr.Dataset, b: xr.Dataset, resamples: int = 0, seed: int = 0) -> dict[str, Any]:
    """Texts or values: at each shared point, how many of the (item, sample) rows both runs have differ."""
    name = "value" if "compliant" in a else "text"
    if any(name not in data or "item" not in data.dims for data in (a, b)):  # written before any row was
        return {"error": f"a cube without its '{name}' rows (run the study again to rewrite it)"}
    return _by_point(a, b, name, lambda x, y: _rows_cell(x, y, name))


def _rows_cell(a: xr.Dataset, b: xr.Dataset, name: str) -> dict[str, Any]:
    rows_a, rows_b = _present_rows(a, name), _present_rows(b, name)
    shared = [key for key in rows_a if key in rows_b]
    changed = sum(rows_a[key] != rows_b[key] for key in shared)
    share = changed / len(shared) if shared else 0.0
    only = {"only_a": len(rows_a) - len(shared), "only_b": len(rows_b) - len(shared)}
    return {"n": len(shared), "changed": changed, "difference": share, **only}


def _present_rows(data: xr.Dataset, name: str) -> dict[tuple[str, int], str]:
    """(item, sample) -> the row's text or value, for the rows that exist (a value row is compliant or not;
    a text row is one that is not empty)."""
    present = np.isfinite(data["compliant"].values) if name == "value" else data[name].values != ""
    items, samples = data["item"].values.tolist(), data["sample"].values.tolist()
    return {
        (items[i], int(samples[j])): str(data[name].values[i, j])
        for i, j in zip(*np.nonzero(present), strict=True)
    }


def _by_point(a: xr.Dataset, b: xr.Dataset, variable: str, compare: Any) -> dict[str, Any]:
    """`compare` at each point of the study's axes that both cubes have."""
    dims = [str(d) for d in a[variable].dims if d not in ("item", "sample", "option")]
    dims_b = [str(d) for d in b[variable].dims if d not in ("item", "sample", "option")]
    if dims != dims_b:
        return {"error": f"the cubes have different dimensions: {dims} vs {dims_b}"}
    shared = {d: [v for v in a[d].values.tolist() if v in set(b[d].values.tolist())] for d in dims}
    cells = []
    for index in np.ndindex(*(len(shared[d]) for d in dims)):
        coords = {d: shared[d][i] for d, i in zip(dims, index, strict=True)}
        cells.append({**{k: str(v) for k, v in coords.items()}, **compare(a.sel(coords), b.sel(coords))})
    return {
        "dims": dims,
        "cells": cells,
        "only_in_a": _exclusive(a, b, dims),
        "only_in_b": _exclusive(b, a, dims),
    }


def _number(value: Any) -> float | None:
    number = float(value)
    return number if np.isfinite(number) else None


COMPARERS: dict[str, Any] = {
    "estimate": compare_estimate_cubes,
    "comparison": compare_comparison_cubes,
    "texts": compare_row_cubes,
    "values": compare_row_cubes,
}


def _aligned(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return ["  " + "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
            for row in [header, *rows]]  # fmt: skip


def runs_differ(report: dict[str, Any]) -> bool:
    """Whether two runs' cubes differ: a measure or a point in one only, cubes that cannot be compared, or
    a cell whose values changed. A point without a value in either run (no item to score) is the same."""
    measures = report["measures"].values()
    return bool(
        report["only_in_a"]
        or report["only_in_b"]
        or any("error" in m or m.get("only_in_a") or m.get("only_in_b") for m in measures)
        or any(_cell_differs(cell) for m in measures for cell in m.get("cells", []))
    )


def _cell_differs(cell: dict[str, Any]) -> bool:
    if cell.get("only_a") or cell.get("only_b"):  # rows of one run only
        return True
    difference = cell["difference"]
    if not math.isnan(difference):
        return difference != 0
    return not (math.isnan(cell.get("a", math.nan)) and math.isnan(cell.get("b", math.nan)))


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
        lines.extend(_render_points(name, result))
    return "\n".join(lines)


def _render_points(name: str, result: dict[str, Any]) -> list[str]:
    """An open-language measure's comparison, one line per shared point of its axes."""
    kind, dims, cells = result["kind"], result["dims"], result["cells"]
    header, line, how = POINT_COLUMNS["rows" if kind in ("texts", "values") else kind]
    rows = [[*(cell[d] for d in dims), *line(cell)] for cell in cells]
    lines = [f"measure {name} ({kind}): {len(cells)} shared points{how}"]
    lines += _aligned([*dims, *header], rows) if rows else []
    for side in ("a", "b"):
        lines += [f"  only in {side.upper()}: {cell}" for cell in result[f"only_in_{side}"]]
    return lines


def _rows_line(c: dict[str, Any]) -> list[str]:
    return [str(c["n"]), str(c["changed"]), f"{c['difference']:.2f}", str(c["only_a"]), str(c["only_b"])]


def _estimate_line(c: dict[str, Any]) -> list[str]:
    interval = _interval(c["ci_low"], c["ci_high"])
    if not c["paired"]:
        unpaired = (
            f"unpaired, {c['items_a']} vs {c['items_b']} items" if "items_a" in c else "no shared items"
        )
        interval += f" ({unpaired})"
    return [str(c["n"]), f"{c['a']:.3f}", f"{c['b']:.3f}", f"{c['difference']:+.3f}", interval]


def _comparison_line(c: dict[str, Any]) -> list[str]:
    a, b = f"{c['a']:+.3f}", f"{c['b']:+.3f}"
    return [a, _interval(*c["a_ci"]), b, _interval(*c["b_ci"]), f"{c['difference']:+.3f}"]


# kind -> (columns after the axes, the cells' values for them, how the runs are paired)
POINT_COLUMNS: dict[str, tuple[list[str], Any, str]] = {
    "rows": (["rows in both", "changed", "share", "only in A", "only in B"], _rows_line,
             ", rows paired on (item, sample)"),
    "estimate": (["n", "A", "B", "B-A", "95% CI"], _estimate_line, ", paired on item ids"),
    "comparison": (["A", "A 95% CI", "B", "B 95% CI", "B-A"], _comparison_line, ""),
}  # fmt: skip


def _interval(low: float | None, high: float | None) -> str:
    return "-" if low is None or high is None else f"[{low:+.3f}, {high:+.3f}]"
