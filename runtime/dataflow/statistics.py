"""The statistics of the open language: per-item scores, estimates and comparisons with bootstrap CIs.

Items are the unit of resampling: an item's samples are averaged into one score first, so an item asked
ten times weighs as much as one asked once, and intervals are not narrowed by repeated samples of the same
prompt. Intervals are percentile bootstraps (1000 resamples, seed 0, as runtime/analysis/metrics.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from intro.runtime.analysis.metrics import bootstrap_ci, normalise_answer, paired_bootstrap_diff_ci
from intro.stdlib.rules import passes

Row = Mapping[str, Any]
RESAMPLES = 1000


def estimate(
    statistic: str, values: Sequence[Row], other: Sequence[Row] | None, equals: Any = None, top_k: int = 3
) -> dict[str, Any]:
    if statistic == "calibration":
        return calibration(values, other or (), top_k)
    scores = item_scores(statistic, values, other, equals)
    kept = [r for r in values if r.get("value") is not None]
    array = np.array(list(scores.values()), dtype=float)
    low, high = bootstrap_ci(array, resamples=RESAMPLES)
    return {
        "statistic": statistic,
        "estimate": float(array.mean()) if array.size else float("nan"),
        "ci_low": low,
        "ci_high": high,
        "n": len(scores),
        "compliance": len(kept) / len(values) if values else float("nan"),
        "scores": scores,
    }


def calibration(predicted: Sequence[Row], behaviour: Sequence[Row], top_k: int) -> dict[str, Any]:
    """Looking Inward's calibration of sampled predictions against sampled behaviour (the built-in
    calibration's curve: runtime/analysis/calibration.py); items without any behaviour are left out."""
    from intro.runtime.analysis.calibration import NON_ANSWER, ItemSamples, calibrate

    answers: dict[str, list[str]] = {}
    for row in predicted:
        answers.setdefault(row["item"], []).append(
            NON_ANSWER if row.get("value") is None else str(row["value"])
        )
    seen = _values_by_item(behaviour)
    samples = [
        ItemSamples("", item, "", tuple(str(v) for v in seen.get(item, ())), tuple(hypothetical))
        for item, hypothetical in answers.items()
    ]
    cell = calibrate(samples, top_k)
    nan = float("nan")
    return {
        "statistic": "calibration",
        "estimate": cell.curve.mad,
        "ci_low": nan,
        "ci_high": nan,
        "n": cell.items,
        "compliance": nan,
        "scores": {},
    }


def item_scores(
    statistic: str, values: Sequence[Row], other: Sequence[Row] | None, equals: Any
) -> dict[str, float]:
    """Each item's score: the mean over its samples of what the statistic counts."""
    by_item = _values_by_item(values)
    if statistic == "rate":
        return {item: _mean([_counts(v, equals) for v in vs]) for item, vs in by_item.items()}
    if statistic == "mean":
        numbers = {item: [n for v in vs if (n := _number(v)) is not None] for item, vs in by_item.items()}
        return {item: _mean(ns) for item, ns in numbers.items() if ns}
    if statistic == "accuracy":
        # As Looking Inward scores predictions: an item counts where the truth (`other`) has a value; a
        # prediction without one (not compliant) is wrong, not left out.
        modes = {item: _mode(vs) for item, vs in _values_by_item(other or ()).items()}
        guesses: dict[str, list[Any]] = {}
        for row in values:
            guesses.setdefault(row["item"], []).append(row.get("value"))
        return {
            item: _mean([v is not None and normalise_answer(str(v)) == modes[item] for v in vs])
            for item, vs in guesses.items()
            if item in modes
        }
    if statistic == "mode_baseline":
        modes = {item: _mode(vs) for item, vs in by_item.items()}
        overall = Counter(modes.values()).most_common(1)[0][0] if modes else None
        return {item: float(mode == overall) for item, mode in modes.items()}
    raise ValueError(f"unknown statistic {statistic!r}")


def comparison(statistic: str, a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    # Trials (samples) of two conditions are independent draws, never pairs, whatever their index.
    independent = "samples" in (a.get("over"), b.get("over"))
    shared = [] if independent else [item for item in a["scores"] if item in b["scores"]]
    first = np.array([a["scores"][i] for i in shared], dtype=float)
    second = np.array([b["scores"][i] for i in shared], dtype=float)
    if statistic == "correlation":
        value, (low, high) = _correlation(first, second)
        return {"statistic": statistic, "estimate": value, "ci_low": low, "ci_high": high, "n": len(shared),
                "paired": True, "a": a["estimate"], "b": b["estimate"]}  # fmt: skip
    if shared:
        low, high = paired_bootstrap_diff_ci(first, second, resamples=RESAMPLES)
        value, paired = float(first.mean() - second.mean()), True
    else:  # no item in common: two independent samples, resampled each on its own
        value, (low, high), paired = a["estimate"] - b["estimate"], _unpaired_ci(a, b), False
    return {"statistic": statistic, "estimate": value, "ci_low": low, "ci_high": high,
            "n": len(shared) if paired else a["n"] + b["n"], "paired": paired,
            "a": a["estimate"], "b": b["estimate"]}  # fmt: skip


def _correlation(first: np.ndarray, second: np.ndarray) -> tuple[float, tuple[float, float]]:
    if first.size < 3 or first.std() == 0 or second.std() == 0:
        return float("nan"), (float("nan"), float("nan"))
    value = float(np.corrcoef(first, second)[0, 1])
    rng = np.random.default_rng(0)
    indices = rng.integers(0, first.size, size=(RESAMPLES, first.size))
    replicates = [_r(first[i], second[i]) for i in indices]
    kept = np.array([r for r in replicates if r == r])
    if not kept.size:
        return value, (float("nan"), float("nan"))
    low, high = np.quantile(kept, [0.025, 0.975])
    return value, (float(low), float(high))


def _r(x: np.ndarray, y: np.ndarray) -> float:
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _unpaired_ci(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[float, float]:
    first = np.array(list(a["scores"].values()), dtype=float)
    second = np.array(list(b["scores"].values()), dtype=float)
    if not first.size or not second.size:
        return float("nan"), float("nan")
    rng = np.random.default_rng(0)
    draws_a = first[rng.integers(0, first.size, size=(RESAMPLES, first.size))].mean(axis=1)
    draws_b = second[rng.integers(0, second.size, size=(RESAMPLES, second.size))].mean(axis=1)
    low, high = np.quantile(draws_a - draws_b, [0.025, 0.975])
    return float(low), float(high)


def _values_by_item(rows: Sequence[Row]) -> dict[str, list[Any]]:
    """Each item's values, leaving out those that are None (not compliant)."""
    out: dict[str, list[Any]] = {}
    for row in rows:
        if row.get("value") is not None:
            out.setdefault(row["item"], []).append(row["value"])
    return out


def _counts(value: Any, equals: Any) -> bool:
    if equals is None:
        return passes(str(value))
    return normalise_answer(str(value)) == normalise_answer(str(equals))


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _mode(values: Sequence[Any]) -> str:
    """The most common normalised value; a tie goes to the value seen first."""
    normalised = [normalise_answer(str(v)) for v in values]
    return Counter(normalised).most_common(1)[0][0]


def _mean(flags: Sequence[float | bool]) -> float:
    return float(np.mean(np.asarray(flags, dtype=float))) if len(flags) else float("nan")
