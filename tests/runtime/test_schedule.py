"""engine/schedule.py: steps on in-process weights start one model at a time, each model's work back to back;
and a run of a two-model study holds one model at a time while its steps run."""

from __future__ import annotations

import contextlib
import io
import shutil
import weakref
from collections.abc import Iterable
from pathlib import Path

import pytest
import xarray as xr

from intro.cli import main
from intro.compiler.plan import Step
from intro.compiler.step_params import ProbabilityParams
from intro.runtime.backends import local_model, memory
from intro.runtime.engine.schedule import RootSchedule
from tests.tinymodels import make_tiny_model

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "studies" / "looking_inward_finetune_tiny"
STUDY = "looking_inward_finetune_tiny"
SPEC = f"{STUDY}.intro"


def step(name: str) -> Step:
    # The schedule reads nothing of a step but what roots_of says of it.
    return Step(
        id=name,
        kind="probability",
        hash=name,
        deps=(),
        params=ProbabilityParams(values=name, option="yes", against=None),
    )


ROOTS = {"a1": {"a"}, "a2": {"a"}, "b1": {"b"}, "b2": {"b"}, "ab": {"a", "b"}, "pure": set()}


def schedule(loaded: Iterable[str] = ()) -> RootSchedule:
    return RootSchedule(lambda s: frozenset(ROOTS[s.id]), lambda: list(loaded))


def ids(steps: list[Step]) -> list[str]:
    return [s.id for s in steps]


def start(plan: RootSchedule, ready: list[Step]) -> list[str]:
    chosen = plan.startable(ready)
    for s in chosen:
        plan.started(s)
    return ids(chosen)


def test_steps_of_one_root_start_together_and_pure_steps_start_at_once() -> None:
    plan = schedule()
    assert start(plan, [step("b1"), step("a1"), step("a2"), step("pure")]) == ["pure", "a1", "a2"]


def test_no_other_root_starts_while_one_runs() -> None:
    plan = schedule()
    a1, b1, b2 = step("a1"), step("b1"), step("b2")
    assert start(plan, [a1, b2]) == ["a1"]  # one ready step each: the first in plan order wins the tie
    assert start(plan, [b1, b2]) == []
    plan.finished(a1)
    assert start(plan, [b1, b2]) == ["b1", "b2"]


def test_the_active_root_keeps_going_while_it_has_ready_steps() -> None:
    plan = schedule()
    a1 = step("a1")
    assert start(plan, [a1]) == ["a1"]
    plan.finished(a1)
    # b has more ready steps, but a has one: a's work stays back to back
    assert start(plan, [step("b1"), step("b2"), step("a2")]) == ["a2"]


def test_a_loaded_root_goes_before_one_that_must_load() -> None:
    plan = schedule(loaded=["b"])
    assert start(plan, [step("a1"), step("a2"), step("b1")]) == ["b1"]


def test_a_step_on_two_roots_runs_with_both_and_takes_their_single_steps_along() -> None:
    plan = schedule()
    ab = step("ab")
    assert start(plan, [ab]) == ["ab"]
    assert start(plan, [step("a1"), step("b1")]) == ["a1", "b1"]


# ---------------------------------------------------------------------------------------------------------
# A real run: a budget that holds one model's weights, and a two-model study with three trainings


@pytest.fixture
def study(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURE, tmp_path, dirs_exist_ok=True)
    make_tiny_model(tmp_path / "tiny_a", "qwen2", seed=0)
    make_tiny_model(tmp_path / "tiny_b", "qwen2", seed=1)
    return tmp_path


def run(study: Path, name: str, *options: str) -> dict[str, xr.Dataset]:
    """The run's cube, group by group, without what two runs never share: when it was written, and how
    many seconds each training took."""
    argv = ["run", str(study / SPEC), "--runs", str(study / name), "--cache", str(study / name / "cache")]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*argv, "--quiet", *options])
    assert code == 0, err.getvalue()
    tree = xr.open_datatree(study / name / STUDY / "cube.zarr", engine="zarr").load()
    groups = {}
    for node in tree.subtree:
        dataset = node.to_dataset(inherit=False).drop_vars("seconds", errors="ignore")
        dataset.attrs.pop("created", None)
        groups[node.path] = dataset
    return groups


def test_under_a_budget_for_one_model_the_study_holds_one_at_a_time_with_the_same_cube(study, monkeypatch):
    unbudgeted = run(study, "plain")
    # What the process holds, for the budget: the weights of the models alive now, as loading estimates them.
    alive: list[weakref.ref] = []
    most_alive, loads = [0], []
    real_load = local_model.load_local_model

    def load(source: str, **options):
        loads.append(Path(source).name)
        loaded = real_load(source, **options)
        alive.append(weakref.ref(loaded))
        most_alive[0] = max(most_alive[0], sum(ref() is not None for ref in alive))
        return loaded

    one_model = local_model.needed_to_load(str(study / "tiny_a"))
    monkeypatch.setattr(local_model, "load_local_model", load)
    monkeypatch.setattr(memory, "resident_bytes", lambda: one_model * sum(ref() is not None for ref in alive))
    budgeted = run(study, "budgeted", "--max-memory", str(int(one_model * 1.5)))
    assert most_alive[0] == 1  # two models' weights do not fit
    # a then b then a, each model's work back to back: not a reload per step (the plan has 25 on a and b)
    assert loads == ["tiny_a", "tiny_b", "tiny_a"]
    assert budgeted.keys() == unbudgeted.keys() and len(budgeted) > 10
    for group, dataset in budgeted.items():
        xr.testing.assert_identical(dataset, unbudgeted[group])
