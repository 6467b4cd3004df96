"""The built-in experiments' values, recorded, for the tests that hold the stdlib's functions to them.

The stdlib's functions on the primitives (`li.predict_property`, `li.calibration_of`,
`intro.injected_thought_trials`, ...) were written to give the values of the built-in measures they
replace (`prediction`, `calibration`, `injected_thought`, ...) from the same model calls. The built-ins'
values on the parity tests' tiny-model studies were recorded in tests/runtime/golden/*.json while the
built-ins existed, so that guarantee outlives them.

A golden holds plain JSON: a cell is a record of its coordinates and values, with NaN written as null.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import xarray as xr

GOLDEN = Path(__file__).resolve().parent / "golden"


def load(name: str) -> dict[str, Any]:
    """The golden `name` (tests/runtime/golden/<name>.json)."""
    return json.loads((GOLDEN / f"{name}.json").read_text())


def write(name: str, golden: dict[str, Any]) -> Path:
    """Write the golden `name`, one line per cell of its lists, so that a change reads as a line's change."""
    GOLDEN.mkdir(exist_ok=True)
    path = GOLDEN / f"{name}.json"
    entries = [f" {_json(key)}: {_entry(value)}" for key, value in golden.items()]
    path.write_text("{\n" + ",\n".join(entries) + "\n}\n")
    return path


def _entry(value: Any) -> str:
    if isinstance(value, list) and value:
        return "[\n" + ",\n".join(f"  {_json(v)}" for v in value) + "\n ]"
    if isinstance(value, dict) and value:
        return "{\n" + ",\n".join(f"  {_json(k)}: {_json(v)}" for k, v in value.items()) + "\n }"
    return _json(value)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def cells(data: xr.Dataset, variables: Iterable[str]) -> list[dict[str, Any]]:
    """One record per point of `variables`' shared axes: the coordinates (as strings), then the values."""
    names = list(variables)
    frame = data[names].to_dataframe().reset_index()
    dims = [str(d) for d in data[names[0]].dims]
    return [
        {**{d: str(row[d]) for d in dims}, **{v: plain(row[v]) for v in names}}
        for row in frame.to_dict("records")
    ]


def plain(value: Any) -> Any:
    """A cube's value as JSON holds it: floats as floats (NaN as None), strings as strings."""
    if isinstance(value, str):
        return value
    number = float(value)
    return None if math.isnan(number) else number


def same(got: float, expected: float | None, tolerance: float) -> bool:
    """`got` is the golden value within `tolerance`, or both are missing (NaN / null)."""
    if expected is None:
        return math.isnan(got)
    return abs(got - expected) <= tolerance


def calls_to_make(plan_output: str) -> int:
    """The model calls `intro plan` says a run will make."""
    found = re.search(r"^model calls: (\d+) to make", plan_output, re.MULTILINE)
    assert found, plan_output
    return int(found.group(1))
