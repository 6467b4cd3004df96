"""A lean runtime on tiny random models: one loaded base per model with its variants as adapters, models
released after the last step that needs them, training that recomputes activations instead of keeping
them (the same adapter, bit for bit), and `intro run --max-memory`."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch

from intro.cli import main
from intro.compiler import compile_spec
from intro.runtime.backends import local_model
from intro.runtime.backends.local import LocalBackend
from intro.runtime.backends.local_model import attach_adapter, detach_adapter, load_local_model
from intro.runtime.backends.memory import parse_size
from intro.runtime.backends.requests import GenerationRequest, Message, ScoreRequest
from intro.runtime.engine.pool import BackendPool
from intro.runtime.store.cache import Cache
from intro.runtime.training.adapters import read_adapter, train_adapter
from intro.runtime.training.finetune import LoraHyperparameters
from tests.tinymodels import make_tiny_model

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "studies" / "looking_inward_finetune_tiny"
SPEC = "looking_inward_finetune_tiny.intro"
EXAMPLES = [
    ((Message("user", "What is the capital of Japan?"),), "Tokyo"),
    ((Message("user", "Is the sky blue?"),), "Yes"),
    ((Message("user", "Name an animal."),), "A small bird"),
]
QUICK = LoraHyperparameters(rank=4, alpha=8, lr=1e-2, epochs=2, batch_size=2, seed=1)

pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning")


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """Weight digests are remembered under the intro cache directory: keep them out of the user's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INTRO_CACHE_DIR", str(tmp_path_factory.mktemp("intro-cache")))
        yield


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("qwen2"), "qwen2")


@pytest.fixture(scope="module")
def two_adapters(tiny_dir, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("adapters")
    loaded = load_local_model(str(tiny_dir), device="cpu")
    train_adapter(loaded, EXAMPLES, QUICK, root / "first")
    train_adapter(loaded, EXAMPLES[:2], QUICK, root / "second", parent=root / "first")
    return root / "first", root / "second"


@pytest.fixture
def study(tmp_path) -> Path:
    shutil.copytree(FIXTURE, tmp_path, dirs_exist_ok=True)
    make_tiny_model(tmp_path / "tiny_a", "qwen2", seed=0)
    make_tiny_model(tmp_path / "tiny_b", "qwen2", seed=1)
    return tmp_path


def intro(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def answers(backend: LocalBackend) -> tuple[list[str], list[dict[str, float]]]:
    """Greedy replies and closed-set scores of the examples' prompts."""
    prompts = [messages for messages, _ in EXAMPLES]
    generated = backend.generate_now(
        [GenerationRequest(str(i), m, max_tokens=6) for i, m in enumerate(prompts)]
    )
    scored = backend.score_now(
        [ScoreRequest(str(i), m, ("Yes", "No", "Tokyo")) for i, m in enumerate(prompts)]
    )
    return [g.text for g in generated], [dict(s.raw_logprobs) for s in scored]


# ---------------------------------------------------------------------------------------------------------
# Training recomputes activations, with the same result


def test_recomputing_activations_trains_the_same_adapter_bit_for_bit(tiny_dir, tmp_path):
    loaded = load_local_model(str(tiny_dir), device="cpu")
    mlp = loaded.model.model.layers[0].mlp  # inside a checkpointed layer: it runs again when recomputed
    calls, forward = [], mlp.forward
    mlp.forward = lambda *args, **kwargs: calls.append(1) or forward(*args, **kwargs)
    kept = train_adapter(loaded, EXAMPLES, QUICK, tmp_path / "kept", recompute=False)
    forwards_kept = len(calls)
    recomputed = train_adapter(loaded, EXAMPLES, QUICK, tmp_path / "recomputed", recompute=True)
    del mlp.forward
    # Each training step ran the layer twice with recomputation: forward, then again in the backward pass.
    assert len(calls) - forwards_kept == 2 * forwards_kept
    assert kept.losses == recomputed.losses
    a, b = read_adapter(tmp_path / "kept").factors, read_adapter(tmp_path / "recomputed").factors
    assert set(a) == set(b) and all(torch.equal(a[m][i], b[m][i]) for m in a for i in (0, 1))
    # The model is left as found: no checkpointing and no input-gradient hook for inference.
    assert not any(getattr(m, "gradient_checkpointing", False) for m in loaded.model.modules())
    assert not getattr(loaded.model, "_require_grads_hooks", None)


# ---------------------------------------------------------------------------------------------------------
# Variants as adapters on one base


def test_a_variant_on_the_shared_base_answers_as_on_a_fresh_copy(tiny_dir, two_adapters):
    first, second = two_adapters
    shared = load_local_model(str(tiny_dir), device="cpu")
    base = LocalBackend(shared)
    plain = answers(base)
    one, two = LocalBackend(shared, adapter=str(first)), LocalBackend(shared, adapter=str(second))
    assert one.loaded is two.loaded is base.loaded
    # Loading an adapter (peft's load_adapter) moves some of the base's logprobs by a rounding error,
    # whether or not it stays loaded; a fresh copy that loaded the same adapter computes exactly the same.
    base_answers, on_shared = answers(base), answers(two)
    with shared.lock:
        detach_adapter(shared.model, one.adapter_name)
    assert one.adapter_name not in shared.model.peft_config
    assert answers(two) == on_shared and answers(base) == base_answers
    fresh = load_local_model(str(tiny_dir), device="cpu")
    assert answers(LocalBackend(fresh, adapter=str(second))) == on_shared
    assert answers(LocalBackend(fresh)) == base_answers
    assert on_shared != plain and base_answers[0] == plain[0]


def test_detaching_the_last_adapter_leaves_no_adapter_and_the_same_base(tiny_dir, two_adapters):
    shared = load_local_model(str(tiny_dir), device="cpu")
    name = attach_adapter(shared.model, two_adapters[0])
    before = answers(LocalBackend(shared))
    detach_adapter(shared.model, name)
    detach_adapter(shared.model, name)  # a second time: nothing left to remove
    assert not getattr(shared.model, "_hf_peft_config_loaded", False)
    assert answers(LocalBackend(shared)) == before
    assert attach_adapter(shared.model, two_adapters[0]) == name  # and it can come back
    assert answers(LocalBackend(shared, adapter=str(two_adapters[0])))[0] != before[0]


# ---------------------------------------------------------------------------------------------------------
# The pool: one base per model, released after its last step


def _roots(plan) -> dict[str, set[str]]:
    """root -> the model keys computing on its weights (itself and its finetuned variants)."""
    roots = {key for key, entry in plan.models.items() if entry.kind == "local"}
    return {
        root: {k for k, e in plan.models.items() if k == root or e.params.get("root") == root}
        for root in roots
    }


def test_each_model_is_released_after_the_last_step_that_names_it(study, monkeypatch):
    plan = compile_spec(study / SPEC)[0]
    loads = []
    real_load = local_model.load_local_model
    monkeypatch.setattr(
        local_model, "load_local_model", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k)
    )
    pool = BackendPool(plan, Cache(study / "cache"))
    roots = _roots(plan)
    users = {
        root: [s.id for s in plan.steps if keys & strings(s.params.to_json())] for root, keys in roots.items()
    }
    alive = {}
    for step in plan.steps:
        for root in roots:
            if step.id in users[root]:
                alive[root] = weakref.ref(pool.loaded(root))
        pool.step_finished(step)
        for root in alive:
            still_needed = any(s not in done_ids(plan, step) for s in users[root])
            assert (root in pool.loaded_models()) == still_needed, (step.id, root)
            assert (alive[root]() is not None) == still_needed, (step.id, root)
    assert sorted(loads) == sorted(str(plan.models[r].params["locator"]) for r in roots)  # each loaded once
    assert pool.loaded_models() == []


def strings(value) -> set[str]:
    """Every string among a step's parameter values (a model is named by its key, as a value)."""
    if isinstance(value, str):
        return {value}
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list | tuple) else ()
    return set().union(*(strings(item) for item in items))


def done_ids(plan, last) -> set[str]:
    ids = [s.id for s in plan.steps]
    return set(ids[: ids.index(last.id) + 1])


def test_finetuned_variants_share_their_roots_loaded_weights(study, tiny_dir, monkeypatch):
    plan = compile_spec(study / SPEC)[0]
    cache = Cache(study / "cache")
    variants = [k for k, e in plan.models.items() if e.kind == "finetuned" and e.params["root"] == "a"]
    assert len(variants) == 2
    source = load_local_model(str(study / "tiny_a"), device="cpu")
    for count, key in enumerate(variants, start=2):
        step = plan.step(plan.models[key].params["step"])
        train_adapter(source, EXAMPLES[:count], QUICK, cache.artifact_dir(step.hash) / "adapter")
        cache.mark_artifact_done(step.hash, {"kind": "finetune"})
    loads = []
    real_load = local_model.load_local_model
    monkeypatch.setattr(
        local_model, "load_local_model", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k)
    )
    pool = BackendPool(plan, cache)
    backends = [pool.backend(key) for key in [*variants, "a"]]
    assert len(loads) == 1 and pool.loaded_models() == ["a"]
    assert all(backend.loaded is backends[0].loaded for backend in backends)
    names = {backend.adapter_name for backend in backends[:2]}
    assert len(names) == 2 and names <= set(backends[0].loaded.model.peft_config)
    # Once no step names the first variant, its adapter leaves the shared model; the base stays.
    for step in plan.steps:
        if variants[0] in strings(step.params.to_json()):
            pool.step_finished(step)
    assert backends[0].adapter_name not in backends[0].loaded.model.peft_config
    assert pool.loaded_models() == ["a"]


# ---------------------------------------------------------------------------------------------------------
# intro run --max-memory


@pytest.mark.parametrize(
    ("text", "size"), [("4G", 4 * 2**30), ("4GiB", 4 * 2**30), ("512mb", 512 * 2**20), ("1.5g", 3 * 2**29)]
)
def test_memory_sizes_parse_in_powers_of_1024(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "", "0", "-4G", "4X", "1e9"])
def test_a_bad_memory_budget_is_one_line_and_runs_nothing(study, text):
    code, out, err = intro("run", str(study / SPEC), "--runs", str(study / "runs"), f"--max-memory={text}")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("intro: error: --max-memory: "), err
    assert not (study / "runs").exists()


def test_a_model_that_does_not_fit_the_budget_is_refused_in_one_line(study):
    argv = ["run", str(study / SPEC), "--runs", str(study / "runs"), "--cache", str(study / "cache")]
    code, _, err = intro(*argv, "--quiet", "--max-memory", "64M")
    assert code == 1
    assert re.search(
        r"^intro: loading '[ab]' needs about [0-9.]+ GiB but the memory budget of 0\.1 GiB", err
    ), err
    assert "Traceback" not in err


HUGE_PAGE_PROBE = """
from intro.runtime.backends.memory import prefer_huge_pages
assert prefer_huge_pages()  # torch is not imported yet
import torch
buffer = torch.ones(64 * 2**20, dtype=torch.uint8)  # touched: every page is resident
with open("/proc/self/smaps_rollup") as rollup:
    huge = next(int(line.split()[1]) for line in rollup if line.startswith("AnonHugePages:"))
print(huge)
"""


def _huge_page_mode() -> str:
    """The kernel's transparent huge page mode: always, madvise (on request, what torch's switch does) or never."""
    try:
        mode = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "never"
    return mode.split("[", 1)[1].split("]", 1)[0] if "[" in mode else "never"


@pytest.mark.skipif(
    _huge_page_mode() == "never" or not Path("/proc/self/smaps_rollup").exists(),
    reason="the kernel offers no transparent huge pages",
)
@pytest.mark.parametrize(("setting", "huge"), [(None, True), ("0", False)])
def test_torch_buffers_are_backed_by_huge_pages_unless_turned_off(setting, huge):
    if not huge and _huge_page_mode() == "always":
        pytest.skip("the kernel backs every large mapping with huge pages, asked or not")
    environment = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if setting is not None:
        environment["THP_MEM_ALLOC_ENABLE"] = setting
    probe = subprocess.run(
        [sys.executable, "-c", HUGE_PAGE_PROBE], env=environment, capture_output=True, text=True, check=True
    )
    huge_kib = int(probe.stdout.split()[-1])
    assert (huge_kib >= 32 * 1024) if huge else (huge_kib < 32 * 1024)


# Buffers of 8 and 64 MiB, allocated with libc's malloc, are each a mapping of their own (mallinfo2's
# `hblks`) or part of the heap: prints how many mappings each made, before and after `limit_arenas`.
MAPPING_PROBE = """
import ctypes, ctypes.util
from intro.runtime.backends import memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def mappings_for(mib):
    before = libc.mallinfo2().hblks
    buffer = libc.malloc(mib * 2**20)
    made = libc.mallinfo2().hblks - before
    libc.free(buffer)
    return made

default = mappings_for(8)
memory.limit_arenas()
print(default, mappings_for(8), mappings_for(64))
"""


def _has_mallinfo2() -> bool:
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    return name is not None and hasattr(ctypes.CDLL(name), "mallinfo2")


@pytest.mark.skipif(not _has_mallinfo2(), reason="not glibc 2.33 or later")
def test_buffers_come_from_the_heap_up_to_32_mib_and_larger_ones_are_mapped():
    probe = subprocess.run([sys.executable, "-c", MAPPING_PROBE], capture_output=True, text=True, check=True)
    default, heap, mapped = map(int, probe.stdout.split())
    # glibc alone maps an 8 MiB buffer on its own (its threshold starts at 128 KiB); after, the heap holds it.
    assert (default, heap, mapped) == (1, 0, 1)
