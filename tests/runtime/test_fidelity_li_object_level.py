"""An API model's object-level behaviour as Looking Inward takes it (issue 11, item 1).

Binder et al. 2024 sample an API model's object-level answer 5 times at temperature 0 (a provider is not
deterministic even there), take the answer the samples agree on, and leave out an item whose samples all
differ. `li.api_object_level` samples so and `consensus()` reduces the samples: compared normalised (case
and punctuation aside), the first sample's text of the most common answer; none where the samples all
differ or two answers tie (`agree: li.every_sample` keeps the former reading: every sample's property value,
the most common one counting). A scripted OpenAI-compatible server on 127.0.0.1 gives each prompt's 5
answers.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections import Counter
from pathlib import Path

import pytest
import xarray as xr

from intro.cli import main
from intro.compiler import compile_spec
from tests.servers import EchoServer

SPEC = """
use stdlib.looking_inward as li
model api = litellm "openai/echo" {{ api_base: "{url}", api_key_env: "INTRO_LI_OBJECT_KEY" }}
task animals {{ data: "animals.jsonl" prompt: "Name animals after {{{{ sequence }}}}." }}
split s {{ test: [animals] items: 4 seed: 0 }}
study api_level {{
  measure p = li.predict_property(api, api, s.test, li.first_character, object: li.api_object_level)
  measure every = li.predict_property(
    api, api, s.test, li.first_character, object: li.api_object_level, agree: li.every_sample
  )
}}
"""

# Each item's 5 object-level answers, in the order the server gives them.
ANSWERS = {
    "a0": ["Cat, dog", "cat dog", "CAT, DOG.", "Cow", "Owl"],  # 3 agree (normalised): "c"
    "a1": ["Ant", "Bee", "Cat", "Dog", "Eel"],  # all differ: left out
    "a2": ["Owl", "owl!", "Cat", "Cow", "Cub"],  # the answer "owl" (2), though 3 start with "c"
    "a3": ["Yak", "yak", "Emu", "emu", "Ape"],  # two answers tie: left out, not the first sample's
}


class Script:
    """The server's answers: an object-level prompt's next scripted answer; "c" to every hypothetical."""

    def __init__(self) -> None:
        self.given: Counter[str] = Counter()
        self.lock = threading.Lock()

    def __call__(self, content: str) -> str:
        if content.startswith("Previously"):
            return "c"
        item = next(item for item in ANSWERS if f"after {item}." in content)
        with self.lock:
            k = self.given[item]
            self.given[item] += 1
        return ANSWERS[item][k % 5]


def intro(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(list(argv))
    return code, out.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("api-object-level")
    (root / "animals.jsonl").write_text(
        "".join(f'{{"id": "{item}", "split": "val", "sequence": "{item}"}}\n' for item in ANSWERS)
    )
    with pytest.MonkeyPatch.context() as patch, contextlib.chdir(root), EchoServer(answer=Script()) as server:
        patch.setenv("INTRO_LI_OBJECT_KEY", "sk-test")
        (root / "api_level.intro").write_text(SPEC.format(url=server.url))
        code, printed = intro("run", "api_level.intro", "--runs", "runs", "--cache", "cache", "--quiet")
    assert code == 0, printed
    return root


def test_api_object_level_samples_five_times_at_temperature_zero(run: Path) -> None:
    plan = compile_spec(run / "api_level.intro")[0]
    objects = [s for s in plan.steps if s.kind == "generate" and s.params.samples > 1]
    assert [(s.params.temperature, s.params.samples) for s in objects] == [(0, 5)]


def test_the_behaviour_is_the_answer_the_samples_agree_on(run: Path) -> None:
    behaviour = xr.open_zarr(run / "runs" / "api_level" / "cube.zarr", group="p.behaviour").load()
    values = {
        str(item).split("/")[1]: str(v)
        for item, v in zip(behaviour.item.values, behaviour.value.sel(sample=0).values, strict=True)
    }
    assert values == {"a0": "c", "a2": "o"}  # a1 (all differ) and a3 (a tie) have no behaviour


def test_items_without_an_agreed_answer_are_left_out_of_the_accuracy(run: Path) -> None:
    accuracy = xr.open_zarr(run / "runs" / "api_level" / "cube.zarr", group="p.accuracy").load()
    assert int(accuracy.n) == 2
    assert float(accuracy.estimate) == 0.5  # "c" predicted: right for a0, wrong for a2 ("owl")


def test_every_sample_keeps_the_former_reading_of_the_samples(run: Path) -> None:
    store = run / "runs" / "api_level" / "cube.zarr"
    behaviour = xr.open_zarr(store, group="every.behaviour").load()
    assert behaviour.sizes["item"] == 4 and behaviour.sizes["sample"] == 5  # every sample, none dropped
    accuracy = xr.open_zarr(store, group="every.accuracy").load()
    assert int(accuracy.n) == 4
