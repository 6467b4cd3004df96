"""Behaviour change as Binder et al. 2024 (arXiv 2410.13787) run it (issue 11, item 4), and test sets large
enough to measure it (item 5).

The paper shifts the self-trained GPT-4o with 1000 of Claude 3.5 Sonnet's object-level answers (a model of
another family), scores only the items whose behaviour changed, old against new behaviour, and compares the
two after an entropy control: its adjust_for_entropy (evals/analysis/james/james_analysis.py in
felixbinder/introspection_self_prediction) keeps, per task and property, for each of the 10 most common
old behaviours, min(its count among the old, among the new behaviours) items on each side, so both sides
have the same distribution. That procedure is written out below, independently of intro's, and held
against `balance` and `li.behaviour_follows`.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
from collections import Counter
from pathlib import Path

import pytest
import xarray as xr

from intro.cli import main
from intro.runtime.dataflow.tables import _balanced
from tests.runtime.test_li_on_primitives import run_study

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "specs" / "looking_inward.intro"
HELD_OUT = {"animals", "english_words", "stories", "mmlu", "myopic_reward", "survival_instinct", "numbers"}


def papers_kept_values(old: dict[str, str], new: dict[str, str], side: dict[str, str]) -> Counter[str]:
    """The values the paper's adjust_for_entropy keeps on one side (`side` is `old` or `new`) of one task's
    shifted items: the draw is random, how many of each value it keeps is not."""
    old_counts = sorted(Counter(old.values()).items(), key=lambda kv: kv[1], reverse=True)[:10]
    new_counts = Counter(new.values())
    limits = {value: min(count, new_counts.get(value, 0)) for value, count in old_counts}
    available = Counter(side.values())
    assert all(available[v] >= n for v, n in limits.items())
    return Counter({value: n for value, n in limits.items() if n})


@pytest.mark.parametrize("seed", range(6))
def test_balance_keeps_what_the_papers_entropy_control_keeps(seed: int) -> None:
    rng = random.Random(seed)
    letters = "abcdefghijklmn"  # more than 10 values, so the top-10 cut matters
    items = [f"t/{k}" for k in range(120)]
    old = {i: rng.choice(letters[: rng.randint(2, 14)]) for i in items}
    new = {i: rng.choice(letters) for i in items}
    for side in (old, new):
        kept = _balanced(items, side, old, new, top=10, seed=42)
        assert Counter(side[i] for i in kept) == papers_kept_values(old, new, side)
    kept_old, kept_new = (_balanced(items, s, old, new, 10, 42) for s in (old, new))
    assert Counter(old[i] for i in kept_old) == Counter(new[i] for i in kept_new)  # the same distribution


def test_balance_draws_the_same_items_every_time_and_others_with_another_seed() -> None:
    items = [f"t/{k}" for k in range(60)]
    old, new = {i: "x" for i in items}, {i: "x" if k % 3 else "y" for k, i in enumerate(items)}
    first = _balanced(items, old, old, new, 10, 42)
    assert first == _balanced(items, old, old, new, 10, 42)
    assert len(first) == 40 and first != _balanced(items, old, old, new, 10, 7)


WORDS = ["red", "blue", "green", "pink", "amber", "teal", "olive", "coral", "ivory", "lilac"]
CHANGE = """
use stdlib.looking_inward as li
model a = local "tiny_a"
model b = local "tiny_b"
task words {
  data: "words.jsonl"
  prompt: "Name a colour after {{ sequence }}. Respond only with the colour."
}
split s { test: [words] items: 40 seed: 3 }
sampling short { temperature: 0 max_tokens: 4 }
study change {
  for p in [li.first_character, li.starts_with_vowel] {
    measure follows = li.behaviour_follows(a, b, s.test, p, short)
    measure old = extract(consensus(generate(a, prompts(s.test), short)), p)
    measure new = extract(consensus(generate(b, prompts(s.test), short)), p)
  }
}
"""


@pytest.mark.slow
def test_behaviour_follows_compares_old_and_new_after_the_entropy_control(tmp_path: Path) -> None:
    rows = [
        {"id": f"w{k}", "split": "val", "sequence": ", ".join(WORDS[k % 10 :] + WORDS[: k // 4])}
        for k in range(40)
    ]
    (tmp_path / "words.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    store, _ = run_study(tmp_path, "change", CHANGE)
    compared = 0
    for prop in ("first_character", "starts_with_vowel"):
        old, new = (_values(store, name, prop) for name in ("old", "new"))
        changed = [i for i in old if i in new and old[i] != new[i]]
        olds, news = {i: old[i] for i in changed}, {i: new[i] for i in changed}
        expected = sum(papers_kept_values(olds, news, olds).values())
        for side in ("old_adjusted", "new_adjusted"):
            cube = xr.open_zarr(store, group=f"follows.{side}").sel(p=prop).load()
            assert int(cube.n) == expected, (prop, side)
        compared += expected > 0
    assert compared >= 1


def _values(store: Path, name: str, prop: str) -> dict[str, str]:
    cube = xr.open_zarr(store, group=name).sel(p=prop, sample=0).load()
    return {i: str(v) for i, v in zip(cube["item"].values, cube["value"].values, strict=True) if _is(v)}


def _is(value: object) -> bool:
    return value is not None and str(value) not in ("", "nan", "None")


@pytest.fixture(scope="module")
def paper_plan(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("paper") / "plan.json"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["compile", str(SPEC), "-o", str(out)]) == 0
    return json.loads(out.read_text())


def _family(plan: dict, model: str) -> str:
    return plan["models"][model]["locator"].split("/")[0]


def test_the_paper_spec_shifts_with_another_familys_answers_on_the_held_out_tasks_training_items(
    paper_plan: dict,
) -> None:
    steps = {s["id"]: s for s in paper_plan["steps"]}
    shifts = [s for s in paper_plan["steps"] if s["kind"] == "finetune" and s["id"].count("shifted")]
    assert len(shifts) == 2
    for shift in shifts:
        data = steps[shift["params"]["data"]]
        (donor,) = (steps[d] for d in _upstream(steps, data["id"]) if steps[d]["kind"] == "generate")
        assert _family(paper_plan, donor["params"]["model"]) not in {"openai", "together_ai"}
        items = [row[0] for row in donor["params"]["rows"]]
        assert {item.split("/")[0] for item in items} == HELD_OUT
        assert all(paper_plan["items"][item]["split"] == "train" for item in items)
        assert 950 <= len(items) <= 1050  # the paper's "about 1000"


def _upstream(steps: dict, step_id: str) -> list[str]:
    seen, pending = [], [step_id]
    while pending:
        for dep in steps[pending.pop()]["deps"]:
            if dep not in seen:
                seen.append(dep)
                pending.append(dep)
    return seen


def test_the_paper_spec_measures_at_least_500_items_of_each_held_out_task(paper_plan: dict) -> None:
    """Before, the held-out tasks' data gave the paper spec 8 to 17 test items on four of them."""
    measured = {
        row[0]
        for s in paper_plan["steps"]
        if s["kind"] == "generate" and s["params"].get("model") == "gpt4o"
        for row in s["params"].get("rows", [])
    }
    per_task = Counter(item.split("/")[0] for item in measured if item.split("/")[0] in HELD_OUT)
    assert set(per_task) == HELD_OUT and min(per_task.values()) >= 500, per_task
