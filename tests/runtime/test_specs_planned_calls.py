"""Every mini spec in specs/ (one excepted, below), run end to end with tiny models in place of the
embedded ones: the calls `intro plan` counted are the calls `intro run` made (at most that many after a
`filter`, whose kept answers are known only at run time), and a second run makes none.

The specs are copied with their data; only the models' declarations change (`embedded "..."` becomes a
tiny local model of the same family), and a layer written as a number is moved into the tiny model's two
layers. Everything else (the stdlib functions, the sweeps, the samplings, the trainings) is the spec's own.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import pytest

from intro.cli import main
from tests.tinymodels import cached_tiny_model

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# A tiny random model's answers never pass this spec's filter (pure number lists), so its student has no
# examples and the run stops there with that error, as it should; the embedded teacher writes them.
NEEDS_THE_EMBEDDED_MODEL = {"subliminal_learning_mini": "the tiny teacher writes no pure number list"}
SPECS = [
    pytest.param(p.stem, marks=pytest.mark.skip(NEEDS_THE_EMBEDDED_MODEL[p.stem]))
    if p.stem in NEEDS_THE_EMBEDDED_MODEL
    else p.stem
    for p in sorted((ROOT / "specs").glob("*_mini.intro"))
]
TINY_FAMILY = {"gemma": "gemma3"}  # embedded name prefix -> tiny arch; every other model is a tiny qwen2


def intro(*args: str | Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def on_tiny_models(text: str) -> str:
    def tiny(match: re.Match[str]) -> str:
        arch = next((a for prefix, a in TINY_FAMILY.items() if match[1].startswith(prefix)), "qwen2")
        return f'local "{cached_tiny_model(arch)}"'

    text = re.sub(r'embedded "([^"]+)"', tiny, text)
    return re.sub(r"layer in \[\d+\]", "layer in [1]", text)


@pytest.mark.parametrize("name", SPECS)
def test_planned_calls_are_the_calls_made(name: str, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "specs", tmp_path / "specs")
    spec = tmp_path / "specs" / f"{name}.intro"
    spec.write_text(on_tiny_models(spec.read_text(encoding="utf-8")), encoding="utf-8")
    where = ["--cache", tmp_path / "cache", "--runs", tmp_path / "runs"]

    code, out, err = intro("plan", spec, *where, "--json")
    assert code == 0, err
    planned = json.loads(out)
    steps = [s for s in planned["steps"] if "calls" in s]
    exact = all(s.get("exact", True) for s in steps)

    code, out, err = intro("run", spec, *where, "--json-progress")
    assert code == 0, err
    first = {e["event"]: e for e in map(json.loads, out.splitlines())}
    made, to_make = first["run_finished"]["calls"], planned["totals"]["calls_to_make"]
    assert first["run_started"]["calls_to_make"] == to_make
    assert made == to_make if exact else 0 < made <= to_make

    code, out, err = intro("plan", spec, *where, "--json")
    assert code == 0, err
    after = json.loads(out)
    assert after["totals"]["calls_to_make"] == 0
    assert after["totals"]["calls"] == made  # the plan now counts, from the cache, the calls the run made
    code, out, err = intro("run", spec, *where, "--json-progress")
    assert code == 0, err
    assert {e["event"]: e for e in map(json.loads, out.splitlines())}["run_finished"]["calls"] == 0
