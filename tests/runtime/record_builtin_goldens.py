"""Record the built-in experiments' values into tests/runtime/golden/*.json (see tests/runtime/goldens.py).

    .venv/bin/python -m tests.runtime.record_builtin_goldens [name ...]

Each golden is the built-in measure run on the same tiny-model study as the parity test that reads it
(test_li_on_primitives, test_introspection_on_primitives, test_concept_experiments_on_primitives; their
heads, data and models), in the test's place: the built-ins below, the stdlib's functions there. Only
useful while the built-ins exist: this file goes with them, and the goldens stay.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import xarray as xr

from tests.runtime import goldens
from tests.runtime import test_concept_experiments_on_primitives as concept
from tests.runtime import test_introspection_on_primitives as injected
from tests.runtime import test_li_on_primitives as li

PREDICTION = """
study old {
  for subject in [a, b], predictor in [a, b] {
    measure old = prediction(predictor, subject, s.test, props, object: short, hypothetical: short)
  }
}
"""
HYPOTHETICALS = """
study training {
  let tuned = finetune(a, hypotheticals(a, s.train, props, sampling: short),
                       rank: 4, lr: 0.02, batch: 4, seed: 1)
  measure tuned_answers = generate(tuned, prompts(s.train), short)
}
"""
BEHAVIOUR_CHANGE = """
study change {
  measure old = behaviour_change(a, b, s.test, props, sampling: short)
}
"""
CALIBRATION = """
sampling warm { temperature: 1 samples: 4 max_tokens: 6 seed: 2 }
study calib {
  measure old = calibration(a, a, s.test, props, sampling: warm)
}
"""
# With a judge for a grader the built-in makes no logit readout (calls the stdlib's version does not make).
INJECTED_THOUGHT = """
study old {
  for strength in [4, 8], word in ["dog"] {
    let vector = concept(a, word, 1, take(intro.baseline, 6))
    measure old = injected_thought(a, vector, word, 1, strength, intro.trial, trials: 6, sampling: short,
                                   grader: judged_by(a))
  }
}
"""
CONCEPT_MEASURES = """
      measure old_text = thoughts_vs_text(a, v, word, layer, strength, lines, pool, intro.identify_line,
                                          intro.repeat_line, ways: 4, sampling: short)
      measure old_intention = prefill_intention(a, v, word, layer, strength, lines, intro.ask_word,
                                                intro.intention_question, sampling: short)
"""
CONCEPT_THINK = """
    measure old_think = think_about(a, v, word, layer, lines, take(intro.control_words, 4), intro.think_line,
                                    intro.dont_think_line)
"""


def group(store: Path, name: str) -> xr.Dataset:
    return xr.open_zarr(store, group=name).load()


def li_prediction(root: Path) -> dict[str, Any]:
    store, printed = li.run_study(root, "old", li.HEAD + PREDICTION, plan=True)
    old = group(store, "old")
    cells = goldens.cells(old, ["accuracy", "ci_low", "ci_high", "n", "mode_baseline"])
    pooled = goldens.cells(old, ["pooled_accuracy", "pooled_n"])
    return {
        "calls": goldens.calls_to_make(printed),
        "cells": cells,
        "pooled": pooled,
        "replies": replies(old),
    }


def replies(old: xr.Dataset) -> list[dict[str, str]]:
    """The object-level and hypothetical replies, per pair of models, property and item it reads."""
    rows = goldens.cells(old, ["object_response", "hypothetical_response"])
    items = {
        (str(t), int(i)): str(old.item_id.sel(task=t, item=i).values)
        for t in old.task.values
        for i in old.item.values
    }
    return [
        {
            **{k: row[k] for k in ("subject", "predictor", "property")},
            "item": items[row["task"], int(row["item"])],
            "object": row["object_response"],
            "hypothetical": row["hypothetical_response"],
        }
        for row in rows
        if row["hypothetical_response"]
    ]


def li_hypotheticals(root: Path) -> dict[str, Any]:
    li.run_study(root, "training", li.TRAINING_HEAD + HYPOTHETICALS)
    got = li.trained(root, "training")
    adapter = {
        key: [float(t.double().sum()), float((t.double() ** 2).sum())]
        for key, t in sorted(got["adapter"].items())
    }
    return {"examples": got["examples"], "adapter": adapter, "answers": got["answers"]}


def li_behaviour_change(root: Path) -> dict[str, Any]:
    store, _ = li.run_study(root, "change", li.HEAD + BEHAVIOUR_CHANGE)
    names = ["accuracy_new", "new_ci_low", "new_ci_high", "accuracy_old", "changed_items"]
    return {"cells": goldens.cells(group(store, "old"), names)}


def li_calibration(root: Path) -> dict[str, Any]:
    store, _ = li.run_study(root, "calib", li.HEAD + CALIBRATION)
    return {"cells": goldens.cells(group(store, "old"), ["mad", "items"])}


def injected_thought(root: Path) -> dict[str, Any]:
    path = injected.spec(root / "old.intro", INJECTED_THOUGHT)
    planned = injected.run("plan", str(path), cache=root / "cache")
    injected.run("run", str(path), "--runs", str(root / "runs"), "--quiet", cache=root / "cache")
    old = group(root / "runs" / "old" / "cube.zarr", "old")
    cells = goldens.cells(old, [*injected.RATES, "n_injected"])
    return {"calls": goldens.calls_to_make(planned), "cells": cells}


def concept_experiments(root: Path) -> dict[str, Any]:
    path = concept.spec(root / "old.intro", "old", CONCEPT_MEASURES, CONCEPT_THINK)
    planned = concept.run("plan", str(path), cache=root / "cache")
    concept.run("run", str(path), "--runs", str(root / "runs"), "--quiet", cache=root / "cache")
    store = root / "runs" / "old" / "cube.zarr"
    shifts = [name + suffix for _, _, name in concept.SHIFTS for suffix in ("", "_low", "_high")]
    text = [*concept.TEXT, *(s for s in shifts if s.startswith(("identification", "p_word")))]
    intention = [*concept.INTENTION, *(s for s in shifts if s.startswith(("p_accident", "accident")))]
    think = ["think", "dont", "controls", "think_minus_dont", "think_minus_dont_low", "think_minus_dont_high"]
    return {
        "calls": goldens.calls_to_make(planned),
        "old_text": goldens.cells(group(store, "old_text"), text),
        "old_intention": goldens.cells(group(store, "old_intention"), intention),
        "old_think": goldens.cells(group(store, "old_think"), think),
    }


RECORDERS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "li_prediction": li_prediction,
    "li_hypotheticals": li_hypotheticals,
    "li_behaviour_change": li_behaviour_change,
    "li_calibration": li_calibration,
    "injected_thought": injected_thought,
    "concept_experiments": concept_experiments,
}


def main(names: list[str]) -> None:
    for name in names or list(RECORDERS):
        with tempfile.TemporaryDirectory(prefix=f"golden-{name}-") as root:
            golden = {"recorded_by": "tests/runtime/record_builtin_goldens.py", **RECORDERS[name](Path(root))}
            print(goldens.write(name, golden))


if __name__ == "__main__":
    main(sys.argv[1:])
