"""activations(model, prompts, layer): a mean residual-stream vector, with + and - between vectors. The
contrast of a word's prompt with baseline words' prompts is the concept vector `concept()` computes, and
steering with it changes what the model writes (a tiny random model, through the real CLI)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import xarray as xr

from intro.cli import main
from intro.compiler.plan import Plan
from intro.runtime.backends.activations import load_vector
from intro.runtime.store.cache import Cache
from tests.tinymodels import cached_tiny_model

SPEC = """
model a = local "{model}"
sampling short {{ temperature: 0 max_tokens: 8 }}
let hello = prompts(["Hello there, how are you today?"])
study vectors {{
  let by_concept = concept(a, "dog", 1, ["cat", "tree", "car"])
  let by_contrast = activations(a, prompts(["Tell me about dog"]), 1)
    - activations(a, prompts(["Tell me about cat", "Tell me about tree", "Tell me about car"]), 1)
  measure plain = generate(a, hello, short)
  measure steered = generate(steer(a, 12 * by_contrast, 1, 1), hello, short)
  measure steered_by_concept = generate(steer(a, 12 * by_concept, 1, 1), hello, short)
}}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vectors")
    (root / "vectors.intro").write_text(SPEC.format(model=cached_tiny_model("qwen2")))
    argv = ["run", str(root / "vectors.intro"), "--runs", str(root / "runs"), "--cache", str(root / "cache")]
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(io.StringIO()) as out:
        patch.setenv("INTRO_CACHE_DIR", str(root / "intro-cache"))
        assert main([*argv, "--quiet"]) == 0, out.getvalue()
    return root


def vectors(root: Path) -> dict[str, object]:
    plan = Plan.loads((root / "runs" / "vectors" / "plan.json").read_text())
    cache = Cache(root / "cache")
    steps = {s.params.OP: s for s in plan.steps if s.kind == "vector"}
    return {op: load_vector(cache.artifact_dir(s.hash) / "vector.safetensors") for op, s in steps.items()}


def test_a_contrast_of_activations_is_the_concept_vector(run: Path) -> None:
    found = vectors(run)
    assert set(found) >= {"concept", "activations", "add", "scale"}
    concept, contrast = found["concept"], found["add"]
    assert concept.shape == contrast.shape  # type: ignore[attr-defined]
    assert float((concept - contrast).abs().max()) < 1e-4 * float(concept.abs().max())  # type: ignore[operator]


def test_steering_with_the_vector_changes_the_reply(run: Path) -> None:
    def text(group: str) -> str:
        return str(xr.open_zarr(run / "runs" / "vectors" / "cube.zarr", group=group).text.values.ravel()[0])

    assert text("steered") != text("plain")
    assert text("steered") == text("steered_by_concept")
