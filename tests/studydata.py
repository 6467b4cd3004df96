"""Rows the small test studies read: sequences to continue and A/B questions (half match A, half B)."""

from __future__ import annotations

import json
from pathlib import Path


def write_sequence_rows(path: Path, count: int) -> None:
    with path.open("w") as f:
        for i in range(count):
            f.write(json.dumps({"id": f"s{i}", "split": "val", "sequence": f"cat, dog, item{i}"}) + "\n")


def write_ab_rows(path: Path, count: int) -> None:
    with path.open("w") as f:
        for i in range(count):
            row = {
                "id": f"q{i}",
                "split": "val",
                "question": f"Pick {i}?",
                "option_a": "yes",
                "option_b": "no",
                "matching": "AB"[i % 2],
            }
            f.write(json.dumps(row) + "\n")
