"""Cubes of the open language's measures: one xarray Dataset per measure, dims the study's axes first.

- texts:      `text`, `prompt` over (axes..., item, sample); "" where a row is absent (filtered out)
- values:     `value` ("" where none), `compliant` (1/0, NaN where absent), plus `text` and, for a judge,
              `reply`, over (axes..., item, sample); `probs` over (..., option) for choose
- estimate:   `estimate`, `ci_low`, `ci_high`, `n`, `compliance` over the axes; `score` over (axes..., item)
- comparison: `estimate` (a - b or r), `ci_low`, `ci_high`, `n`, `a`, `b` over the axes
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from intro.compiler.plan import Measure, Plan
from intro.runtime.store.cube import provenance

KINDS = ("texts", "values", "estimate", "comparison")
SUMMARY = ("estimate", "ci_low", "ci_high", "n")


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
    names = [*SUMMARY, "compliance"] if kind == "estimate" else [*SUMMARY, "a", "b"]
    arrays = {name: np.full((*shape, *inner), np.nan) for name in names}
    items = list(
        dict.fromkeys(i for _, r in points for g in _groups(r).values() for i in g.get("scores", {}))
    )
    scores = np.full((*shape, len(items)), np.nan)
    for at, result in points:
        for group, summary in _groups(result).items():
            where = (*at, groups.index(group)) if by else at
            for name in names:
                arrays[name][where] = summary[name]
            for item, score in summary.get("scores", {}).items():
                scores[(*at, items.index(item))] = score
    dims = (*axes, by) if by else tuple(axes)
    data: dict[str, Any] = {name: (dims, array) for name, array in arrays.items()}
    if kind == "estimate":
        data["score"] = ((*axes, "item"), scores)
    coords: dict[str, Any] = {"item": items}
    if by:
        coords[by] = [str(g) for g in groups]
    return data, coords


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
    """One line per point of the study's axes: the statistic and its interval, or what the texts hold."""
    axes = [str(d) for d in data.dims if d not in ("item", "sample", "option")]
    if kind in ("estimate", "comparison"):
        header = [*axes, "estimate", "95% CI", "n"]
        if kind == "comparison":
            header += ["a", "b"]
        return header, [_summary_line(data, axes, at, kind) for at in _points(data, axes)]
    header = [*axes, "items", "rows", "answers" if kind == "texts" else "most common values (share)"]
    return header, [_rows_line(data, axes, at, kind) for at in _points(data, axes)]


def _points(data: xr.Dataset, axes: list[str]) -> list[dict[str, Any]]:
    import itertools

    return [
        dict(zip(axes, at, strict=True)) for at in itertools.product(*(range(data.sizes[a]) for a in axes))
    ]


def _summary_line(data: xr.Dataset, axes: list[str], at: dict[str, Any], kind: str) -> list[str]:
    cell = data.isel(at)
    labels = [str(data[a].values[at[a]]) for a in axes]
    line = [
        *labels,
        f"{float(cell['estimate']):+.3f}" if kind == "comparison" else f"{float(cell['estimate']):.3f}",
    ]
    line += [
        f"[{float(cell['ci_low']):.3f}, {float(cell['ci_high']):.3f}]",
        str(int(cell["n"])) if cell["n"] == cell["n"] else "-",
    ]
    if kind == "comparison":
        line += [f"{float(cell['a']):.3f}", f"{float(cell['b']):.3f}"]
    return line


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
