"""A small finished study to damage: one tiny local model, one LoRA finetune, a prediction measure
(stdlib `li.predict_property`) over the untrained and the trained model. Built once per test process
(about 20 s), then copied per test.

`run_dir/cube.zarr` has the measure's groups (`predicted.accuracy`, `predicted.behaviour`, ...) with two
predictor points each and the training group; the store has request entries, a training-data artifact and
an adapter artifact (safetensors); the run directory has its journal.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from intro.cli import main
from tests.tinymodels import make_tiny_model

FIXTURE_DATA = (
    Path(__file__).resolve().parent / "fixtures" / "studies" / "looking_inward_finetune_tiny" / "data"
)
SPEC_NAME = "damage.intro"
STUDY = "damage"
SPEC = """use stdlib.looking_inward as li

model a = local "tiny_a"

task animals {
  data: "data/animals.jsonl"
  prompt: "What are the next 3 animals after {{ sequence }}? Respond only with the animals."
}

task colours {
  data: "data/colours.jsonl"
  prompt: "What are the next 3 colours after {{ sequence }}? Respond only with the colours."
}

split s {
  train: [animals]
  test: [colours]
  items: 4
  seed: 3
}

sampling short {
  temperature: 0
  max_tokens: 4
}

study damage {
  let trained = finetune(a, li.hypothetical_examples(a, s.train, [li.first_character], short),
                         rank: 2, lr: 0.02, epochs: 1, batch: 4, seed: 1)
  for predictor in [a, trained] {
    measure predicted = li.predict_property(predictor, a, s.test, li.first_character, object: short,
                                            hypothetical: short)
  }
}
"""
# Varies between two trainings of the same adapter; every other value of the cube must not.
UNSTABLE_VARIABLES = ("seconds",)

_built: list[Path] = []


def finished_study() -> Path:
    """The directory of a finished run of the study (spec, data, tiny_a/, store/, runs/damage/)."""
    if not _built:
        root = Path(tempfile.mkdtemp(prefix="intro-damage-"))
        atexit.register(shutil.rmtree, root, True)
        shutil.copytree(FIXTURE_DATA, root / "data")
        (root / SPEC_NAME).write_text(SPEC)
        make_tiny_model(root / "tiny_a", "qwen2", seed=0)
        code, out, err = intro(root, "run", SPEC_NAME)
        assert code == 0, out + err
        _built.append(root)
    return _built[0]


def copy_study(destination: Path) -> Path:
    shutil.copytree(finished_study(), destination, symlinks=True, dirs_exist_ok=True)
    return destination


def intro(root: Path, *argv: str) -> tuple[int, str, str]:
    """The real CLI in this process, in `root`, with the study's runs and store (and no user cache)."""
    if argv[0] in ("run", "plan"):
        argv = (*argv, "--runs", "runs", "--cache", "store", *(("--quiet",) if argv[0] == "run" else ()))
    out, err = io.StringIO(), io.StringIO()
    previous = os.environ.get("INTRO_CACHE_DIR")
    os.environ["INTRO_CACHE_DIR"] = str(root.parent / f"{root.name}-user-cache")
    try:
        with contextlib.chdir(root), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(argv))
    finally:
        if previous is None:
            os.environ.pop("INTRO_CACHE_DIR", None)
        else:
            os.environ["INTRO_CACHE_DIR"] = previous
    return code, out.getvalue(), err.getvalue()


def cube_values(root: Path) -> dict[str, dict[str, Any]]:
    """Every variable of every group of the study's cube, read straight through zarr."""
    store = root / "runs" / STUDY / "cube.zarr"
    groups = sorted(p.name for p in store.iterdir() if p.is_dir())
    values = {}
    for group in groups:
        dataset = xr.open_zarr(store, group=group).load()
        values[group] = {
            name: dataset[name].values for name in dataset.variables if name not in UNSTABLE_VARIABLES
        }
    return values


def same_values(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> bool:
    if a.keys() != b.keys() or any(a[g].keys() != b[g].keys() for g in a):
        return False
    return all(_equal(a[g][n], b[g][n]) for g in a for n in a[g])


def _equal(x: Any, y: Any) -> bool:
    if x.dtype.kind == "f" and y.dtype.kind == "f":
        return bool(np.array_equal(x, y, equal_nan=True))
    return bool(np.array_equal(x, y))
