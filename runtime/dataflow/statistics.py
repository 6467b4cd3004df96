"""The statistics of the open language: per-item scores, estimates and comparisons with bootstrap CIs.

Items are the unit of resampling: an item's samples are averaged into one score first, so an item asked
ten times weighs as much as one asked once, and intervals are not narrowed by repeated samples of the same
prompt. Intervals are percentile bootstraps (1000 resamples, seed 0, as runtime/analysis/metrics.py).

Where one item appears under several properties (a table read by several properties keys its units
`item#property`; a pooled comparison gathers the same item from every property's cell), the bootstrap
resamples *items*, each drawn with all its units: units of one item are not independent, and resampling
them as if they were would narrow the interval (issue 11, item 5, "Bootstrap by item").

Besides the bootstrap interval:
- a proportion (rate, accuracy, mode baseline) has a Wilson score interval (`wilson_low`, `wilson_high`,
  over its items), which unlike the percentile bootstrap does not collapse to a point at 0/n or n/n in a
  small cell;
- a comparison has a two-sided `p_value`: a paired difference by a sign-flip randomisation test over items
  (exact up to EXACT_FLIPS items), an unpaired one by permuting the units between the two sides, a
  correlation by permuting the pairing;
- `pooled_difference` is the paired test over many cells at once (self vs cross over all properties, the
  paper's headline comparison), and `holm` adjusts a family of p-values (Holm 1979, step-down).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from intro.runtime.analysis.metrics import (
    bootstrap_ci,
    normalise_answer,
    paired_bootstrap_diff_ci,
    unpaired_bootstrap_diff_ci,
    wilson_interval,
)
from intro.runtime.dataflow.calibration import calibration
from intro.stdlib.rules import passes

Row = Mapping[str, Any]
RESAMPLES = 1000
# Randomisation tests: Monte Carlo with this many draws (seed 0), or every sign pattern for at most
# EXACT_FLIPS items (2^12 = 4096 patterns).
PERMUTATIONS = 10_000
EXACT_FLIPS = 12
# Statistics whose item scores are shares of 0/1 outcomes: they get a Wilson interval.
PROPORTIONS = ("rate", "accuracy", "mode_baseline")


def estimate(
    statistic: str, values: Sequence[Row], other: Sequence[Row] | None, equals: Any = None, top_k: int = 3
) -> dict[str, Any]:
    if statistic == "calibration":  # the paper's binned curve and its MAD (runtime/dataflow/calibration.py)
        return calibration(values, other or (), top_k)
    scores = item_scores(statistic, values, other, equals)
    kept = [r for r in values if r.get("value") is not None]
    array = np.array(list(scores.values()), dtype=float)
    low, high = _mean_ci(scores)
    items = len({item_of(unit) for unit in scores})
    value = float(array.mean()) if array.size else float("nan")
    return {
        "statistic": statistic,
        "estimate": value,
        "ci_low": low,
        "ci_high": high,
        "n": len(scores),
        "items": items,
        "compliance": len(kept) / len(values) if values else float("nan"),
        **_wilson(statistic, value, items),
        "scores": scores,
    }


def item_of(unit: str) -> str:
    """The item a unit belongs to: `item#property` (and `item#property@sample`) are units of `item`
    (with its sample kept: trials of one prompt stay apart, see tables._units)."""
    head, at, sample = unit.rpartition("@")
    base, sample = (head, at + sample) if at and sample.isdigit() else (unit, "")
    return base.rsplit("#", 1)[0] + sample if "#" in base else unit


def _wilson(statistic: str, value: float, items: int) -> dict[str, float]:
    """The Wilson score interval of a proportion over its items (a pooled share of several units per item
    counts each item once, so the interval is not narrowed by units that are not independent)."""
    if statistic not in PROPORTIONS or not items or value != value:
        return {"wilson_low": float("nan"), "wilson_high": float("nan")}
    low, high = wilson_interval(value * items, items)
    return {"wilson_low": float(low), "wilson_high": float(high)}


def _mean_ci(scores: Mapping[str, float]) -> tuple[float, float]:
    """The bootstrap interval of the mean unit score, resampling items (each with all its units)."""
    sums, counts = _item_totals((item_of(unit), score) for unit, score in scores.items())
    if counts.size == len(scores):  # one unit per item: the plain bootstrap over items
        return bootstrap_ci(np.array(list(scores.values()), dtype=float), resamples=RESAMPLES)
    return _clustered_ci(sums, counts)


def _item_totals(units: Iterable[tuple[str, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Per item (in first-seen order) of (item, value) units: the sum of its values and how many it has."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for item, value in units:
        sums[item] = sums.get(item, 0.0) + value
        counts[item] = counts.get(item, 0) + 1
    return np.array(list(sums.values()), dtype=float), np.array(list(counts.values()), dtype=float)


def _clustered_ci(sums: np.ndarray, counts: np.ndarray) -> tuple[float, float]:
    """Percentile interval of the mean over units, items resampled with replacement (seed 0)."""
    if not counts.size:
        return float("nan"), float("nan")
    rng = np.random.default_rng(0)
    draws = rng.integers(0, counts.size, size=(RESAMPLES, counts.size))
    replicates = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    low, high = np.quantile(replicates, [0.025, 0.975])
    return float(low), float(high)


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
    sides = {"a": a["estimate"], "b": b["estimate"]}
    if statistic == "correlation":
        value, (low, high) = _correlation(first, second)
        return {"statistic": statistic, "estimate": value, "ci_low": low, "ci_high": high, "n": len(shared),
                "items": len({item_of(i) for i in shared}), "paired": True,
                "p_value": _correlation_p(first, second), **sides}  # fmt: skip
    if shared:
        pairs = [(u, item_of(u), float(x), float(y)) for u, x, y in zip(shared, first, second, strict=True)]
        return {"statistic": statistic, **paired_difference(pairs), **sides}
    # no item in common: two independent samples, resampled each on its own
    value, (low, high) = a["estimate"] - b["estimate"], _unpaired_ci(a, b)
    return {"statistic": statistic, "estimate": value, "ci_low": low, "ci_high": high, "n": a["n"] + b["n"],
            "items": a.get("items", a["n"]) + b.get("items", b["n"]), "paired": False,
            "p_value": _permutation_p(a["scores"], b["scores"]), **sides}  # fmt: skip


Pair = tuple[str, str, float, float]  # a unit, its item, a's score and b's score


def paired_difference(pairs: Sequence[Pair]) -> dict[str, Any]:
    """Mean of a - b over paired units, with a bootstrap interval and a sign-flip p-value that both
    resample or flip *items*, each with all its units. `pairs` keeps each unit's (a, b) (what a pooled test
    over several cells gathers)."""
    first = np.array([x for _, _, x, _ in pairs], dtype=float)
    second = np.array([y for _, _, _, y in pairs], dtype=float)
    sums, counts = _item_totals((item, x - y) for _, item, x, y in pairs)
    if counts.size == len(pairs):  # one unit per item: the plain paired bootstrap over items
        low, high = paired_bootstrap_diff_ci(first, second, resamples=RESAMPLES)
    else:
        low, high = _clustered_ci(sums, counts)
    nan = float("nan")
    return {
        "estimate": float(first.mean() - second.mean()) if pairs else nan,
        "ci_low": low,
        "ci_high": high,
        "n": len(pairs),
        "items": int(counts.size),
        "paired": True,
        "p_value": sign_flip_p(sums) if pairs else nan,
        "pairs": {unit: (x, y) for unit, _, x, y in pairs},
    }


def pooled_difference(cells: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One paired difference over several comparisons' cells (self vs cross over all properties: the
    paper's headline test, issue 11 item 5): every cell's paired units together, resampled and sign-flipped
    by item, so an item asked under several properties counts as one draw. Cells without pairs add
    nothing; NaN when none has any."""
    pairs: list[Pair] = []
    for k, cell in enumerate(cells):
        pairs += [(f"{k}:{u}", item_of(u), x, y) for u, (x, y) in cell.get("pairs", {}).items()]
    result = paired_difference(pairs)
    del result["pairs"]
    first, second = [x for *_, x, _ in pairs], [y for *_, y in pairs]
    return {**result, "a": _mean(first), "b": _mean(second)}


def sign_flip_p(sums: np.ndarray) -> float:
    """Two-sided p-value of a paired mean difference of zero: under the null, each item's summed
    difference is as likely negated, so the observed |total| is ranked among the totals with every item's
    sign flipped at random (all 2^k patterns for k <= EXACT_FLIPS items, else PERMUTATIONS draws)."""
    if not sums.size:
        return float("nan")
    observed = abs(sums.sum()) - 1e-12 * max(1.0, float(np.abs(sums).sum()))  # ties count as extreme
    if sums.size <= EXACT_FLIPS:
        patterns = ((np.arange(2**sums.size)[:, None] >> np.arange(sums.size)) & 1) * 2 - 1
        return float(np.mean(np.abs(patterns @ sums) >= observed))
    rng = np.random.default_rng(0)
    extreme = 0
    for _ in range(PERMUTATIONS // 1000):
        signs = rng.integers(0, 2, size=(1000, sums.size)) * 2 - 1
        extreme += int(np.sum(np.abs(signs @ sums) >= observed))
    return (1 + extreme) / (1 + PERMUTATIONS)


def _permutation_p(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """Two-sided p-value of equal means of two independent samples: units shuffled between the sides."""
    first, second = np.array(list(a.values()), dtype=float), np.array(list(b.values()), dtype=float)
    if not first.size or not second.size:
        return float("nan")
    pooled = np.concatenate([first, second])
    observed = abs(first.mean() - second.mean()) - 1e-12
    rng = np.random.default_rng(0)
    extreme = 0
    for _ in range(PERMUTATIONS // 1000):
        shuffled = rng.permuted(np.broadcast_to(pooled, (1000, pooled.size)), axis=1)
        gaps = shuffled[:, : first.size].mean(axis=1) - shuffled[:, first.size :].mean(axis=1)
        extreme += int(np.sum(np.abs(gaps) >= observed))
    return (1 + extreme) / (1 + PERMUTATIONS)


def _correlation_p(first: np.ndarray, second: np.ndarray) -> float:
    """Two-sided p-value of r = 0: the pairing permuted (PERMUTATIONS draws, seed 0)."""
    observed = _r(first, second) if first.size >= 3 else float("nan")
    if observed != observed:
        return float("nan")
    x = (first - first.mean()) / first.std()
    y = (second - second.mean()) / second.std()  # a permutation keeps y's mean and spread
    rng = np.random.default_rng(0)
    extreme = 0
    for _ in range(PERMUTATIONS // 1000):
        shuffled = rng.permuted(np.broadcast_to(y, (1000, y.size)), axis=1)
        extreme += int(np.sum(np.abs(shuffled @ x / x.size) >= abs(observed) - 1e-12))
    return (1 + extreme) / (1 + PERMUTATIONS)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (NaN ones are not members and stay NaN): the
    i-th smallest of m is multiplied by m - i, and adjusted values never decrease along that order."""
    finite = sorted((p, k) for k, p in enumerate(p_values) if p == p)
    adjusted = [float("nan")] * len(p_values)
    running = 0.0
    for rank, (p, k) in enumerate(finite):
        running = max(running, min(1.0, (len(finite) - rank) * p))
        adjusted[k] = running
    return adjusted


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
    return unpaired_bootstrap_diff_ci(first, second, resamples=RESAMPLES)


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
