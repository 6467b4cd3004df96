"""Backends for the plan's models, opened on first use and shared for the whole run.

Where a model is served is decided here, late: a plan's `serving` section (from the spec) or a
`--serve MODEL=URL` override sends a model's calls to an OpenAI-compatible server without changing
any hash. In-process weights are loaded once per root model; finetuned variants share them and only
switch their LoRA adapter.

Memory: the executor tells the pool each finished step (`step_finished`); a model no remaining step
names is released then (a root's weights with every backend on them, a finetuned variant's adapter), so a
study holds only what is still to be used. Weights load within the run's memory budget (`memory_budget`,
`intro run --max-memory`, default what the machine has available): when a load would pass it, loaded
roots that no step is using at that moment are released first (a later step loads them again, the
same weights, so the same results), and a model that still cannot fit is refused in one line.

Numerics: each root computes in the dtype `numerics` resolves before anything loads (backends/precision.py:
float32 on the CPU, bfloat16 or float16 on CUDA, `INTRO_DTYPE` to override), its weights load in exactly
that dtype, and the run's tables key the model's answers by it (`Tables(numerics=pool.numerics)`). On the
CPU, float32 linears multiply in oneDNN unless `INTRO_CPU_MATMUL=torch` (backends/cpu_matmul.py).
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from intro.compiler.plan import ModelEntry, Plan, Step
from intro.runtime.backends import memory, precision
from intro.runtime.backends.requests import Backend, BackendError
from intro.runtime.backends.work import ModelWork
from intro.runtime.store.cache import Cache

# Told (phase, model, source, seconds) as weights load: "loading", "converting" (a GGUF, once), "loaded".
LoadListener = Callable[[str, str, str, float], None]


class BackendPool:
    def __init__(
        self,
        plan: Plan,
        cache: Cache,
        serving: Mapping[str, str] | None = None,
        on_load: LoadListener | None = None,
        *,
        memory_budget: int | None = None,
        dtypes: Mapping[str, str] | None = None,
    ):
        self.plan = plan
        self.cache = cache
        self.overrides = dict(serving or {})
        self.on_load: LoadListener = on_load or (lambda phase, model, source, seconds: None)
        # What the machine has for this process: what is still available plus what it already holds.
        self.memory_budget = memory_budget or memory.machine_memory() + memory.resident_bytes()
        self._backends: dict[str, Backend] = {}
        self._loaded: dict[str, Any] = {}  # root key -> LoadedModel, least recently used first
        self._users = steps_using_models(plan)  # model key -> ids of the steps still to finish that need it
        self._released_work = ModelWork()  # what the weights released so far computed
        # root key -> the dtype it computes in: fixed by the caller (a Ray driver for its workers) or resolved
        # once, before the load, so the keys of its answers and its weights always agree.
        self._dtypes: dict[str, str] = dict(dtypes or {})
        computes_here = any(map(self.in_process, plan.models))
        # Read now, so that a bad value stops the run before anything runs.
        self._dtype_override = (
            _setting(precision.DTYPE_ENV, precision.dtype_override) if computes_here else None
        )
        self._matmul = _setting(precision.MATMUL_ENV, precision.matmul_choice) if computes_here else None

    def backend(self, model_key: str) -> Backend:
        """The backend that answers for `model_key` (a steered model answers through its base)."""
        entry = self.plan.models[model_key]
        if entry.kind == "steered":
            return self.backend(entry.params["base"])
        if model_key not in self._backends:
            self._backends[model_key] = self._open(entry)
        return self._backends[model_key]

    def in_process(self, model_key: str) -> bool:
        """Whether the model's calls run on this machine's processor (not on a server)."""
        entry = self.plan.models[model_key]
        while entry.kind in ("steered", "finetuned"):
            entry = self.plan.models[entry.params["base"]]
        overridden = entry.key in self.overrides or entry.params.get("label") in self.overrides
        return entry.kind in ("embedded", "local") and not overridden

    def roots_computed_here(self, step: Step) -> frozenset[str]:
        """The roots whose weights `step` computes on in this process (engine/schedule.py runs one such
        root's steps at a time)."""
        return frozenset(root_of(self.plan, key) for key in step.params.models if self.in_process(key))

    def numerics(self, model_key: str) -> str | None:
        """The dtype `model_key`'s calls compute in ("float32", "bfloat16", "float16"), None for a model
        not computed in this process (an API model, a served one)."""
        if not self.in_process(model_key):
            return None
        root = root_of(self.plan, model_key)
        if root not in self._dtypes:
            self._dtypes[root] = self._resolve_dtype(root)
        return self._dtypes[root]

    def _resolve_dtype(self, root_key: str) -> str:
        return precision.planned_dtype(self.planned_device(root_key), self._dtype_override)

    def planned_device(self, root_key: str) -> str | None:
        """The device a root's weights will load on (None: CUDA when there is one, else the CPU)."""
        device = self.plan.serving.get(root_key, {}).get("device")
        return str(device) if device is not None else None

    def _open(self, entry: ModelEntry) -> Backend:
        url = self.overrides.get(entry.key) or self.overrides.get(entry.params.get("label", ""))
        if url:
            from intro.runtime.backends.litellm_backend import LiteLLMBackend

            return LiteLLMBackend(f"openai/{entry.key}", api_base=url, concurrency=64)
        if entry.kind == "litellm":
            return self._litellm(entry)
        if entry.kind == "finetuned":
            return self._finetuned(entry)
        return self._local(entry, adapter=None)

    def _litellm(self, entry: ModelEntry) -> Backend:
        from intro.runtime.backends.litellm_backend import LiteLLMBackend

        serving = self.plan.serving.get(entry.key, {})
        return LiteLLMBackend(
            entry.params["locator"],
            api_base=serving.get("api_base"),
            api_key_env=serving.get("api_key_env"),
            concurrency=int(serving.get("concurrency", 16)),
            timeout=float(serving.get("timeout", 120)),
            supports_logprobs=("logprobs" in entry.params.get("capabilities", ())) or None,
        )

    def _finetuned(self, entry: ModelEntry) -> Backend:
        step = self.plan.step(entry.params["step"])
        info = self.cache.artifact_info(step.hash)
        root = self.plan.models[entry.params["root"]]
        if root.kind == "litellm":
            from intro.runtime.backends.litellm_backend import LiteLLMBackend

            serving = self.plan.serving.get(root.key, {})
            return LiteLLMBackend(
                info["model_id"], api_base=serving.get("api_base"), api_key_env=serving.get("api_key_env")
            )
        return self._local(root, adapter=str(self.cache.artifact_dir(step.hash) / "adapter"))

    def _local(self, entry: ModelEntry, adapter: str | None) -> Backend:
        from intro.runtime.backends.local import LocalBackend

        serving = self.plan.serving.get(entry.key, {})
        loaded = self.loaded(entry.key)
        # Attaching an adapter rewrites the shared model's layers: never in the middle of another backend's
        # batch or of a LoRA training run on the same weights (runtime/training/adapters.py holds the same
        # lock).
        # Without a batch_size, batches are sized to the device's free memory on CUDA (16 rows on the CPU).
        batch_size = int(serving["batch_size"]) if "batch_size" in serving else None
        with loaded.lock:
            return LocalBackend(loaded, batch_size=batch_size, adapter=adapter, share_prefix=share_prefix())

    def loaded(self, model_key: str) -> Any:
        """The in-process weights of a root model (embedded or local), loaded once (again only if the
        memory budget made the pool release them)."""
        entry = self.plan.models[model_key]
        if entry.kind not in ("embedded", "local"):
            raise BackendError(f"model '{model_key}' is not an in-process model")
        if model_key in self._loaded:
            self._loaded[model_key] = self._loaded.pop(model_key)  # most recently used last
        else:
            self._loaded[model_key] = self._load(entry)
        return self._loaded[model_key]

    def _load(self, entry: ModelEntry) -> Any:
        from intro.runtime.backends.local_model import load_local_model

        serving = self.plan.serving.get(entry.key, {})
        source = _source(entry)
        label = entry.params.get("label", entry.key)
        device = serving.get("device")
        if device in (None, "cpu"):  # the budget is this machine's memory; a GPU has its own check
            self._within_budget(label, self._weights_bytes(entry.key))
        started = time.monotonic()
        self.on_load("loading", label, source, 0.0)
        loaded = load_local_model(
            source,
            device=device,
            on_convert=lambda: self.on_load("converting", label, source, time.monotonic() - started),
            dtype=self.numerics(entry.key),
            matmul=self._matmul,
        )
        loaded.work.numerics[label] = loaded.numerics
        self.on_load("loaded", label, source, time.monotonic() - started)
        return loaded

    def _within_budget(self, label: str, needed: int) -> None:
        self._make_room(needed)
        left = self.memory_budget - memory.resident_bytes()
        if needed > left:
            raise BackendError(
                f"loading '{label}' needs about {needed / 2**30:.1f} GiB but the memory budget of "
                f"{self.memory_budget / 2**30:.1f} GiB leaves {max(left, 0) / 2**30:.1f} GiB; "
                "raise --max-memory or use a smaller model"
            )

    def make_room_to_train(self, root_key: str) -> None:
        """Before a LoRA training on `root_key`'s weights: release other idle roots until the training's
        working memory fits the budget. It is taken to be the weights' size again (Qwen 0.5B, batch 8, its
        activations recomputed: 3 steps peaked at 3.4 GB resident with its 2.0 GB of float32 weights); the
        next step on a released root loads it again."""
        if self._trains_on_cpu(root_key):
            self._make_room(self._weights_bytes(root_key), keep=root_key)

    def _trains_on_cpu(self, root_key: str) -> bool:
        """Whether training on `root_key` runs in this process on the CPU, in the memory the budget covers."""
        return self.in_process(root_key) and self.planned_device(root_key) in (None, "cpu")

    def _weights_bytes(self, root_key: str) -> int:
        from intro.runtime.backends.local_model import needed_to_load

        return needed_to_load(_source(self.plan.models[root_key]))

    def _make_room(self, needed: int, keep: str | None = None) -> None:
        """Release loaded roots other than `keep`, least recently used first, until `needed` more bytes fit
        the budget.

        A root some backend is computing on at this moment is kept (releasing it would free nothing)."""
        for key in list(self._loaded):
            if memory.resident_bytes() + needed <= self.memory_budget:
                return
            if key != keep and not self._loaded[key].lock.locked():
                self._release(key)

    # ------------------------------------------------------------ releasing what no step needs
    def step_finished(self, step: Step) -> None:
        """Forget `step` as a user of its models; release each model no remaining step needs."""
        for key in models_named(self.plan, step):
            users = self._users.get(key)
            if users is None:
                continue
            users.discard(step.id)
            if not users:
                self._release(key)

    def _release(self, model_key: str) -> None:
        """Drop a root's weights (and every backend on them) or a finetuned variant's adapter."""
        if model_key in self._loaded:
            loaded = self._loaded.pop(model_key)
            self._released_work.merge(loaded.work)
            for key in [k for k in self._backends if root_of(self.plan, k) == model_key]:
                del self._backends[key]
            del loaded
            gc.collect()  # the model's modules refer to each other: free the weights now, not later
            memory.release_free_memory()
        elif model_key in self._backends and self._in_process_variant(model_key):
            self._detach(model_key, self._backends.pop(model_key))

    def _in_process_variant(self, model_key: str) -> bool:
        # A variant served elsewhere (an API model's fine-tune, --serve) keeps its client until aclose.
        return self.plan.models[model_key].kind == "finetuned" and self.in_process(model_key)

    def _detach(self, model_key: str, backend: Any) -> None:
        name = getattr(backend, "adapter_name", None)
        loaded = self._loaded.get(root_of(self.plan, model_key))
        shared = any(getattr(other, "adapter_name", None) == name for other in self._backends.values())
        if name is None or loaded is None or shared:
            return
        from intro.runtime.backends.local_model import detach_adapter

        with loaded.lock:
            detach_adapter(loaded.model, name)

    def model_work(self) -> ModelWork:
        """Seconds and tokens of every in-process model call of this run so far (backends/work.py)."""
        work = ModelWork()
        work.merge(self._released_work)
        for loaded in self._loaded.values():
            work.merge(loaded.work)
        return work

    def loaded_models(self) -> list[str]:
        """Keys of the roots whose weights are loaded now."""
        return list(self._loaded)

    async def aclose(self) -> None:
        for backend in self._backends.values():
            await backend.aclose()


def _source(entry: ModelEntry) -> str:
    """Where an in-process root's weights come from, as load_local_model takes it."""
    return f"embedded:{entry.params['locator']}" if entry.kind == "embedded" else entry.params["locator"]


T = TypeVar("T")


def _setting(name: str, read: Callable[[], T]) -> T:
    """An environment setting of how in-process models compute (precision.py); a bad one is one line."""
    try:
        return read()
    except ValueError as error:
        raise BackendError(f"{name}: {error}") from None


def share_prefix() -> bool:
    """Whether in-process batches compute their prompts' shared prefix once (runtime/backends/local.py);
    `INTRO_SHARE_PREFIX=0` computes every prompt whole, to reproduce results made that way bit for bit."""
    return os.environ.get("INTRO_SHARE_PREFIX", "1").strip().lower() not in ("0", "off", "false", "no")


def root_of(plan: Plan, model_key: str) -> str:
    """The root model whose weights `model_key` computes with (through finetunes and steering)."""
    return next(iter(reversed(list(lineage_of(plan, model_key)))))


def lineage_of(plan: Plan, model_key: str) -> Iterator[str]:
    """`model_key`, then the models it computes through, down to its root: a steered model runs on its
    base; a finetuned model on its root alone (its adapter holds the whole delta, runtime/training)."""
    key: str | None = model_key
    while key is not None:
        yield key
        entry = plan.models[key]
        key = {"steered": "base", "finetuned": "root"}.get(entry.kind)
        key = entry.params[key] if key else None


def models_named(plan: Plan, step: Step) -> set[str]:
    """Every model a step needs (compiler/step_params.py's `models`), with the models each derives from."""
    return {ancestor for key in step.params.models for ancestor in lineage_of(plan, key)}


def steps_using_models(plan: Plan) -> dict[str, set[str]]:
    """model key -> ids of the plan's steps that need it (directly or through a model derived from it)."""
    users: dict[str, set[str]] = {key: set() for key in plan.models}
    for step in plan.steps:
        for key in models_named(plan, step):
            users[key].add(step.id)
    return users
