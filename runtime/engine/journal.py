"""A study's journal (`runs/<study>/journal.jsonl`): one JSON line per finished step, appended as it finishes.

It only tells `intro plan` which cached steps this study finished itself, so a damaged line (a torn
append, a disk error, an edit) is skipped with one warning and never stops a plan or a run.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def finished_hashes(path: Path, warn: Callable[[str], None] = _stderr) -> set[str]:
    """Hashes of the steps the journal records as finished; unreadable lines are counted and skipped."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return set()
    hashes, bad = set(), 0
    for line in raw.splitlines():
        step_hash = _hash_of(line)
        if step_hash is None:
            bad += line.strip() != b""
        else:
            hashes.add(step_hash)
    if bad:
        warn(f"intro: warning: skipped {bad} unreadable line(s) of {path}")
    return hashes


def _hash_of(line: bytes) -> str | None:
    try:
        entry = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    step_hash = entry.get("hash") if isinstance(entry, dict) else None
    return step_hash if isinstance(step_hash, str) else None


def open_for_append(path: Path) -> TextIO:
    """The journal, positioned so that the next line starts on a line of its own even after a torn append."""
    handle = path.open("a", encoding="utf-8")
    if handle.tell() > 0:
        with path.open("rb") as existing:
            existing.seek(-1, 2)
            if existing.read(1) != b"\n":
                handle.write("\n")
    return handle
