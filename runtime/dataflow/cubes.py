"""Cubes of the open language's measures: one xarray Dataset per measure, dims the study's axes first.

- texts:      `text`, `prompt` over (axes..., item, sample); "" where a row is absent (filtered out)
- values:     `value` ("" where none), `compliant` (1/0, NaN where absent), plus `text` and, for a judge,
              `reply`, over (axes..., item, sample); `probs` over (..., option) for choose
- estimate:   `estimate`, `ci_low`, `ci_high`, `n`, `compliance`, `items` (resampled items), `wilson_low`,
              `wilson_high` (a proportion's Wilson interval; NaN for other statistics) over the axes;
              `score` over (axes..., item); a calibration also its curve, `curve_object`,
              `curve_hypothetical` and `curve_count` over (axes..., bin)
- comparison: `estimate` (a - b or r), `ci_low`, `ci_high`, `n`, `a`, `b`, `items`, `p_value` and `p_holm`
              (Holm-adjusted over the measure's cells) over the axes; a paired difference with an axis
              also `pooled_*` (estimate, ci_low, ci_high, n, items, a, b, p_value, p_holm): the paired test
              over every value of its innermost axis (the attr `pooled_over`), by item (statistics.py)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from intro.compiler.plan import Measure, Plan
from intro.runtime.dataflow.statistics import holm, pooled_difference
from intro.runtime.store.cube import provenance

KINDS = ("texts", "values", "estimate", "comparison")
SUMMARY = ("estimate", "ci_low", "ci_high", "n")
# Fields added after the first cubes were written: a result without them (a calibration) leaves NaN.
ESTIMATE_FIELDS = (*SUMMARY, "compliance", "items", "wilson_low", "wilson_high")
COMPARISON_FIELDS = (*SUMMARY, "a", "b", "items", "p_value")
POOLED_FIELDS = (*SUMMARY, "items", "a", "b", "p_value")


def dataset(
    plan: Plan, measure: Measure, result: Callable[[str], Any], user_turn: Callable[[str], str]
) -> xr.Dataset:
    """The measure's cube from each point's result (`result(step id)`: a table or a summary)."""
    axes = [name for name, _ in measure.axes]
    values = [[str(v) for v in vs] for _, vs in measure.axes]
    shape = tuple(len(v) for v in values)
    points = [
        (tuple(values[i].index(str(c)) for i, c in enumerate(coords)), step)
        for coords, step in measure.points
    ]
    if measure.kind in ("estimate", "comparison"):
        data, inner = _summaries(measure.kind, axes, shape, [(at, result(step)) for at, step in points])
    else:
        data, inner = _rows(measure.kind, axes, shape, [(at, result(step)) for at, step in points], user_turn)
    used = {d for dims, _ in data.values() for d in dims}
    coords = {**dict(zip(axes, values, strict=True)), **{k: v for k, v in inner.items() if k in used}}
    attrs = provenance(plan, measure)
    if measure.kind in ("estimate", "comparison"):  # which statistic: a difference and r read differently
        attrs["statistic"] = next((_statistic(result(step)) for _, step in points), "")
    if "pooled_estimate" in data:
        attrs["pooled_over"] = axes[-1]
    return xr.Dataset(data, coords=coords, attrs=attrs)


def _statistic(result: Mapping[str, Any]) -> str:
    first = next(iter(_groups(result).values()), None)
    return "" if first is None else str(first.get("statistic", ""))


Data = tuple[dict[str, Any], dict[str, Any]]  # variables, and coordinates of the inner dims


def _summaries(kind: str, axes: list[str], shape: tuple[int, ...], points: Sequence[tuple[Any, Any]]) -> Data:
    """Summaries over the axes, and over the groups of a grouped estimate (`by`) as one more dim."""
    by = next((r["by"] for _, r in points if "groups" in r), None)
    groups = list(dict.fromkeys(g for _, r in points for g in _groups(r))) if by else [None]
    inner = (len(groups),) if by else ()
    names = ESTIMATE_FIELDS if kind == "estimate" else COMPARISON_FIELDS
    arrays = {name: np.full((*shape, *inner), np.nan) for name in names}
    items = list(
        dict.fromkeys(i for _, r in points for g in _groups(r).values() for i in g.get("scores", {}))
    )
    scores = np.full((*shape, len(items)), np.nan)
    for at, result in points:
        for group, summary in _groups(result).items():
            where = (*at, groups.index(group)) if by else at
            for name in names:
                arrays[name][where] = summary.get(name, np.nan)
            for item, score in summary.get("scores", {}).items():
                scores[(*at, items.index(item))] = score
    dims = (*axes, by) if by else tuple(axes)
    data: dict[str, Any] = {name: (dims, array) for name, array in arrays.items()}
    if kind == "estimate":
        data["score"] = ((*axes, "item"), scores)
        data.update(_curves(dims, (*shape, *inner), groups, points))
    else:
        data["p_holm"] = (dims, _holm(arrays["p_value"]))
        data.update(_pooled(axes, shape, groups if by else [], points))
    coords: dict[str, Any] = {"item": items}
    if by:
        coords[by] = [str(g) for g in groups]
    return data, coords


def _curves(
    dims: tuple[str, ...], shape: tuple[int, ...], groups: list[Any], points: Sequence[tuple[Any, Any]]
) -> dict[str, Any]:
    """A calibration's curve per point (and group): `curve_object`, `curve_hypothetical` (the bins' mean
    object-level and hypothetical probabilities) and `curve_count` (points per bin) over a `bin` dim, NaN
    past a cell's last non-empty bin. Nothing for other statistics."""
    cells = [(at, group, s["curve"]) for at, r in points for group, s in _groups(r).items() if "curve" in s]
    if not cells:
        return {}
    width = max(len(curve["object"]) for _, _, curve in cells)
    arrays = {name: np.full((*shape, width), np.nan) for name in ("object", "hypothetical", "count")}
    for at, group, curve in cells:
        where = (*at, groups.index(group)) if group is not None else tuple(at)
        for name, array in arrays.items():
            array[(*where, slice(0, len(curve[name])))] = curve[name]
    return {f"curve_{name}": ((*dims, "bin"), array) for name, array in arrays.items()}


def _holm(p_values: np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values of one family: all the cells of one measure (many p-values shown together
    are read as a family; issue 11, item 5)."""
    return np.array(holm(p_values.ravel().tolist())).reshape(p_values.shape)


def _pooled(
    axes: list[str], shape: tuple[int, ...], groups: list[Any], points: Sequence[tuple[Any, Any]]
) -> dict[str, Any]:
    """A paired difference pooled over the innermost axis (in the Looking Inward specs, `property`: self
    vs cross over all properties, the paper's headline), at every point of the other axes and every group.
    Nothing where the measure has no axis, or its cells keep no pairs (a correlation)."""
    if not axes or not any("pairs" in g for _, r in points for g in _groups(r).values()):
        return {}
    outer = (*shape[:-1], *((len(groups),) if groups else ()))
    arrays = {name: np.full(outer, np.nan) for name in POOLED_FIELDS}
    for index in np.ndindex(*outer):
        at, group = (index[:-1], groups[index[-1]]) if groups else (index, None)
        cells = [_groups(r).get(group, {}) for where, r in points if tuple(where[:-1]) == tuple(at)]
        pooled = pooled_difference(cells)
        for name in POOLED_FIELDS:
            arrays[name][index] = pooled[name]
    dims = (*axes[:-1], *((str(_by(points)),) if groups else ()))
    data: dict[str, Any] = {f"pooled_{name}": (dims, array) for name, array in arrays.items()}
    data["pooled_p_holm"] = (dims, _holm(arrays["p_value"]))
    return data


def _by(points: Sequence[tuple[Any, Any]]) -> Any:
    return next(r["by"] for _, r in points if "groups" in r)


def _groups(result: Mapping[str, Any]) -> Mapping[Any, Any]:
    """A result's summaries by group (one group, None, for an ungrouped one)."""
    return result.get("groups", {None: result})  # type: ignore[no-any-return]


def _rows(
    kind: str,
    axes: list[str],
    shape: tuple[int, ...],
    points: Sequence[tuple[Any, list[dict[str, Any]]]],
    user_turn: Callable[[str], str],
) -> Data:
    items = list(dict.fromkeys(r["item"] for _, rows in points for r in rows))
    samples = 1 + max((r["sample"] for _, rows in points for r in rows), default=0)
    dims = (*axes, "item", "sample")
    size = (*shape, len(items), samples)
    fields = ["text", "prompt"] if kind == "texts" else ["value", "text", "reply"]
    strings = {name: np.full(size, "", dtype=object) for name in fields}
    compliant = np.full(size, np.nan)
    options = list(dict.fromkeys(o for _, rows in points for r in rows for o in r.get("probs", {})))
    probs = np.full((*size, len(options)), np.nan)
    for at, rows in points:
        for row in rows:
            where = (*at, items.index(row["item"]), row["sample"])
            for name in fields:
                strings[name][where] = _string(row, name, user_turn)
            compliant[where] = float(row.get("value") is not None)
            for option, p in row.get("probs", {}).items():
                probs[(*where, options.index(option))] = p
    # The kind's own variable is always there (an empty cube still has its item dim); the others when used.
    main = "text" if kind == "texts" else "value"
    data: dict[str, Any] = {
        name: (dims, array.astype(str)) for name, array in strings.items() if name == main or _used(array)
    }
    if kind == "values":
        data["compliant"] = (dims, compliant)
    if options:
        data["probs"] = ((*dims, "option"), probs)
    return data, {"item": items, "sample": np.arange(samples), "option": options}


def _string(row: dict[str, Any], name: str, user_turn: Callable[[str], str]) -> str:
    if name == "prompt":
        return user_turn(row["prompt"]) if "prompt" in row else ""
    value = row.get(name)
    return "" if value is None else str(value)


def _used(array: np.ndarray) -> bool:
    return bool((array != "").any())


# ---------------------------------------------------------------- `intro show`
def table_rows(data: xr.Dataset, kind: str) -> tuple[list[str], list[list[str]]]:
    """One line per point of the study's axes: the statistic and its interval, or what the texts hold.

    An estimate of a proportion adds its Wilson interval; a comparison its p-value, and with more than one,
    Holm's adjustment over the measure's cells; a pooled difference adds one line per point of the other
    axes, its innermost axis shown as "(all)"."""
    # A statistic's own axes: a calibration's curve adds a `bin` axis its MAD does not vary along.
    shown = data["estimate"].dims if kind in ("estimate", "comparison") else data.dims
    axes = [str(d) for d in shown if d not in ("item", "sample", "option")]
    if kind in ("estimate", "comparison"):
        header = [*axes, "estimate", "95% CI", "n", *_extra_header(data, kind)]
        lines = [_summary_line(data, axes, at, kind) for at in _points(data, axes)]
        return header, lines + _pooled_lines(data, axes)
    header = [*axes, "items", "rows", "answers" if kind == "texts" else "most common values (share)"]
    return header, [_rows_line(data, axes, at, kind) for at in _points(data, axes)]


def _extra_header(data: xr.Dataset, kind: str) -> list[str]:
    if kind == "estimate":
        return ["Wilson 95%"] if _shows_wilson(data) else []
    tests = int(np.isfinite(data["p_value"].values).sum()) if "p_value" in data else 0
    return ["a", "b", *(["p"] if tests else []), *([f"p (Holm, {tests} tests)"] if tests > 1 else [])]


def _shows_wilson(data: xr.Dataset) -> bool:
    return "wilson_low" in data and bool(np.isfinite(data["wilson_low"].values).any())


def _points(data: xr.Dataset, axes: list[str]) -> list[dict[str, Any]]:
    import itertools

    return [
        dict(zip(axes, at, strict=True)) for at in itertools.product(*(range(data.sizes[a]) for a in axes))
    ]


def _summary_line(
    data: xr.Dataset, axes: list[str], at: dict[str, Any], kind: str, prefix: str = ""
) -> list[str]:
    cell = data[[name for name in data.data_vars if str(name).startswith(prefix)]].isel(at)
    labels = [str(data[a].values[at[a]]) if a in at else "(all)" for a in axes]
    estimate = float(cell[f"{prefix}estimate"])
    line = [*labels, f"{estimate:+.3f}" if kind == "comparison" else f"{estimate:.3f}"]
    line += [_interval(cell, f"{prefix}ci"), _count(cell, prefix)]
    if kind == "estimate":
        return line + ([_interval(cell, "wilson")] if _shows_wilson(data) else [])
    line += [f"{float(cell[f'{prefix}a']):.3f}", f"{float(cell[f'{prefix}b']):.3f}"]
    extra = len(_extra_header(data, kind)) - 2
    return line + [_p(cell, f"{prefix}p_value"), _p(cell, f"{prefix}p_holm")][:extra]


def _pooled_lines(data: xr.Dataset, axes: list[str]) -> list[list[str]]:
    if "pooled_estimate" not in data:
        return []
    dims = [str(d) for d in data["pooled_estimate"].dims]
    return [_summary_line(data, axes, at, "comparison", "pooled_") for at in _points(data, dims)]


def _count(cell: xr.Dataset, prefix: str) -> str:
    """n, and the items it was resampled by where they are fewer (an item under several properties)."""
    n = float(cell[f"{prefix}n"])
    items = float(cell[f"{prefix}items"]) if f"{prefix}items" in cell else n
    if n != n:
        return "-"
    return f"{int(n)} ({int(items)} items)" if items == items and items < n else str(int(n))


def _interval(cell: xr.Dataset, stem: str) -> str:
    return f"[{float(cell[f'{stem}_low']):.3f}, {float(cell[f'{stem}_high']):.3f}]"


def _p(cell: xr.Dataset, name: str) -> str:
    value = float(cell[name]) if name in cell else float("nan")
    return f"{value:.3g}" if value == value else "-"


def _rows_line(data: xr.Dataset, axes: list[str], at: dict[str, Any], kind: str) -> list[str]:
    cell = data.isel(at)
    labels = [str(data[a].values[at[a]]) for a in axes]
    name = "text" if kind == "texts" else "value"
    values = [str(v) for v in np.asarray(cell[name].values).ravel() if str(v)] if name in cell else []
    if kind == "texts":
        shown = "; ".join(repr(v[:40]) for v in values[:2])
        return [*labels, str(data.sizes["item"]), str(len(values)), shown]
    counts = {v: values.count(v) for v in dict.fromkeys(values)}
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:3]
    total = max(len(values), 1)
    return [
        *labels,
        str(data.sizes["item"]),
        str(len(values)),
        ", ".join(f"{v} ({n / total:.2f})" for v, n in top),
    ]
