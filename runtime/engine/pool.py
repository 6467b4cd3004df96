"""Backends for the plan's models, opened on first use and shared for the whole run.

Where a model is served is decided here, late: a plan's `serving` section (from the spec) or a
`--serve MODEL=URL` override sends a model's calls to an OpenAI-compatible server without changing
any hash. In-process weights are loaded once per root model; finetuned variants share them and only
switch their LoRA adapter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from intro.compiler.plan import ModelEntry, Plan
from intro.runtime.backends.requests import Backend, BackendError
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
    ):
        self.plan = plan
        self.cache = cache
        self.overrides = dict(serving or {})
        self.on_load: LoadListener = on_load or (lambda phase, model, source, seconds: None)
        self._backends: dict[str, Backend] = {}
        self._loaded: dict[str, Any] = {}

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
        with loaded.lock:
            return LocalBackend(loaded, batch_size=int(serving.get("batch_size", 16)), adapter=adapter)

    def loaded(self, model_key: str) -> Any:
        """The in-process weights of a root model (embedded or local), loaded once."""
        entry = self.plan.models[model_key]
        if entry.kind not in ("embedded", "local"):
            raise BackendError(f"model '{model_key}' is not an in-process model")
        if model_key not in self._loaded:
            from intro.runtime.backends.local_model import load_local_model

            serving = self.plan.serving.get(entry.key, {})
            source = (
                f"embedded:{entry.params['locator']}" if entry.kind == "embedded" else entry.params["locator"]
            )
            label = entry.params.get("label", model_key)
            started = time.monotonic()
            self.on_load("loading", label, source, 0.0)
            self._loaded[model_key] = load_local_model(
                source,
                device=serving.get("device"),
                on_convert=lambda: self.on_load("converting", label, source, time.monotonic() - started),
            )
            self.on_load("loaded", label, source, time.monotonic() - started)
        return self._loaded[model_key]

    async def aclose(self) -> None:
        for backend in self._backends.values():
            await backend.aclose()
