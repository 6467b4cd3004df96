"""Step handlers for training data and finetuning (filled in with the finetuning issue)."""

from __future__ import annotations

from typing import Any


def handlers(run: Any) -> dict[str, Any]:
    return {}
