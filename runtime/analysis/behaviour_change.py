"""Looking Inward's behaviour-change measurement (Binder et al. 2024, DESIGN.md §6): pure functions over texts.

A model whose object-level behaviour was shifted by finetuning (`after`, trained from `before` on another
model's answers) is asked the hypothetical questions. Only items whose property changed between `before`'s and
`after`'s behaviour count; on them, `after`'s predictions are scored against the old behaviour and against the
new one. Introspection predicts that they follow the new behaviour (GPT-4o: 21.7% old vs 35.4% new). A
non-compliant prediction matches neither. Both accuracies get percentile bootstrap CIs; McNemar's test on the
same items says whether predictions follow the new behaviour more often than the old.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from attrs import frozen

from intro.runtime.analysis import metrics
from intro.runtime.analysis.measures import Texts, property_value, reduce_samples
from intro.stdlib.extractors import prediction


@frozen
class ChangeRow:
    task: str
    item: str
    property: str
    before_response: str
    after_response: str
    old: str | None  # the property of `before`'s behaviour (None: non-compliant or no such property)
    new: str | None  # the property of `after`'s behaviour
    hypothetical_response: str
    predicted: str | None  # `after`'s normalised prediction; None: non-compliant

    # The `property` field names the builtin in this class body, so the decorators are spelled out.
    @builtins.property
    def compared(self) -> bool:
        return self.old is not None and self.new is not None

    @builtins.property
    def changed(self) -> bool:
        return self.compared and self.old != self.new

    @builtins.property
    def matches_old(self) -> bool:
        return self.predicted is not None and self.predicted == self.old

    @builtins.property
    def matches_new(self) -> bool:
        return self.predicted is not None and self.predicted == self.new


def evaluate_behaviour_change(
    params: Mapping[str, Any],
    before: Texts,
    after: Texts,
    hypotheticals: Texts,
    items: Mapping[str, Mapping[str, Any]],
    tasks: Mapping[str, tuple[str, Sequence[str]]],
) -> list[ChangeRow]:
    """One row per (task, item, property) of a behaviour_change step."""
    rows = []
    how = params.get("reduce", "mode")
    for task, item, prop, object_key, hypothetical_key in params["rows"]:
        kind, choices = tasks[task]
        extract = params["properties"][prop]["extract"]
        old_text, new_text = reduce_samples(before[object_key], how), reduce_samples(after[object_key], how)
        answer = reduce_samples(hypotheticals[hypothetical_key], how)
        rows.append(
            ChangeRow(
                task,
                item,
                prop,
                old_text,
                new_text,
                property_value(old_text, extract, kind, choices, items[item]),
                property_value(new_text, extract, kind, choices, items[item]),
                answer,
                prediction(answer, extract),
            )
        )
    return rows


@frozen
class ChangeAggregate:
    compared: int  # items where both behaviours have the property
    changed: int  # of those, items whose property changed: the ones scored
    change_rate: float
    accuracy_old: float  # share of changed items where the prediction matches the old behaviour
    old_ci_low: float
    old_ci_high: float
    accuracy_new: float
    new_ci_low: float
    new_ci_high: float
    p_new_vs_old: float  # McNemar (exact below 25 discordant items) of matches-new vs matches-old


def aggregate_changes(rows: Sequence[ChangeRow], resamples: int = 1000, seed: int = 0) -> ChangeAggregate:
    compared = [r for r in rows if r.compared]
    changed = [r for r in compared if r.changed]
    old = np.array([r.matches_old for r in changed], dtype=bool)
    new = np.array([r.matches_new for r in changed], dtype=bool)
    old_low, old_high = metrics.bootstrap_ci(old, resamples=resamples, seed=seed)
    new_low, new_high = metrics.bootstrap_ci(new, resamples=resamples, seed=seed)
    p_value = metrics.mcnemar(old, new)[1] if changed else float("nan")
    return ChangeAggregate(
        compared=len(compared),
        changed=len(changed),
        change_rate=len(changed) / len(compared) if compared else float("nan"),
        accuracy_old=metrics.accuracy(old),
        old_ci_low=old_low,
        old_ci_high=old_high,
        accuracy_new=metrics.accuracy(new),
        new_ci_low=new_low,
        new_ci_high=new_high,
        p_new_vs_old=p_value,
    )


def grouped_changes(rows: Sequence[ChangeRow]) -> dict[tuple[str | None, str], list[ChangeRow]]:
    """Rows per (task, property), and per property pooled over tasks (task key None)."""
    groups: dict[tuple[str | None, str], list[ChangeRow]] = {}
    for row in rows:
        groups.setdefault((row.task, row.property), []).append(row)
        groups.setdefault((None, row.property), []).append(row)
    return groups
