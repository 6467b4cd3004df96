"""Residual-stream readings of the open language: `residuals` steps read each prompt's mean residual over a
span (one model pass per prompt, each cached by its request: model, prompt, layer, span), and `cosine`
compares them with vectors. A reading is stored as little-endian float32 bytes in base64, a few KB each.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from intro.compiler.plan import Prompt, digest
from intro.runtime.dataflow.vectors import VECTOR_FILE

__all__ = ["VECTOR_FILE", "cosine", "decode", "encode", "load_vector", "read", "reading_key"]


def reading_key(identity: str, prompt: str, layer: int, span: str | None) -> str:
    return digest(["residual", identity, prompt, layer, span])


def encode(vector: np.ndarray) -> dict[str, Any]:
    data = np.asarray(vector, dtype="<f4").tobytes()
    return {"residual": base64.b64encode(data).decode("ascii"), "size": int(np.asarray(vector).size)}


def decode(record: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(record["residual"]), dtype="<f4")


def load_vector(path: Path) -> np.ndarray:
    from safetensors.numpy import load_file

    return np.asarray(load_file(str(path))["vector"], dtype=np.float32)


def cosine(reading: np.ndarray, vector: np.ndarray) -> float:
    """As torch's cosine_similarity in float32 (the built-in think / don't think's)."""
    a, b = reading.astype(np.float32), vector.astype(np.float32)
    norms = np.float32(max(float(np.linalg.norm(a)) * float(np.linalg.norm(b)), 1e-8))
    return float(np.float32(np.dot(a, b)) / norms)


def read(loaded: Any, prompts: Sequence[Prompt], spans: Sequence[str | None], layer: int) -> list[np.ndarray]:
    """Each prompt's mean residual after `layer` over its span's tokens (or its last token), as the declared
    model's own weights give it."""
    from intro.runtime.backends.activations import last_token_activations, span_activation
    from intro.runtime.backends.local_model import activate_adapter
    from intro.runtime.backends.requests import Message

    out = []
    with loaded.lock:
        activate_adapter(loaded.model, None)  # whatever ran before
        for prompt, span in zip(prompts, spans, strict=True):
            messages = tuple(Message(role, content) for role, content in prompt.messages)
            if span is None:
                rendered = loaded.render(messages, prompt.prefill)
                vector = last_token_activations(loaded, [rendered], layer)[0]
            else:
                vector = span_activation(loaded, messages, span, layer, prompt.prefill)
            out.append(vector.float().numpy())
    return out
