"""Checksums that let the store tell its own writes from damage: a disk error, a torn copy, a hand edit.

Everything here is standard library, so `intro plan` and `intro cache verify` use it without loading any
model code. A *record* is a JSON value sealed with its key and the sha256 of its canonical text; a *file
manifest* maps each file of a directory to its size and sha256, written once the directory is complete.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

TEMPORARY_PREFIX = (
    ".tmp-"  # what atomic writes and scratch directories are named until they are moved into place
)


class DamageError(Exception):
    """A stored file is not what intro wrote there; `path` names it, the message says how it differs."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def canonical(value: Any) -> str:
    """The one text of a JSON value that its checksum covers: sorted keys, no spaces."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: Path) -> Any:
    """A JSON file's value, or DamageError when it is not UTF-8 JSON (truncated, garbled)."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise DamageError(path, "not UTF-8 text") from None
    except ValueError:
        raise DamageError(path, "not valid JSON (truncated or garbled)") from None


# ---------------------------------------------------------------- file manifests
def files_of(directory: Path, skip: Iterable[str] = ()) -> list[Path]:
    """Regular files under `directory` (relative), leaving out `skip` and unfinished temporary writes."""
    skipped = set(skip)
    found = []
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if relative.as_posix() in skipped or any(p.startswith(TEMPORARY_PREFIX) for p in relative.parts):
            continue
        if path.is_file():
            found.append(relative)
    return found


def manifest(directory: Path, files: Iterable[Path]) -> dict[str, dict[str, Any]]:
    return {
        f.as_posix(): {"size": (directory / f).stat().st_size, "sha256": file_digest(directory / f)}
        for f in files
    }


def check_manifest(directory: Path, listed: Mapping[str, Any], present: Iterable[Path] | None = None) -> None:
    """DamageError for the first file that is missing, changed, or (when `present` is given) not listed."""
    for name, expected in sorted(listed.items()):
        path = directory / name
        if not path.is_file():
            raise DamageError(path, "missing")
        if path.stat().st_size != expected["size"] or file_digest(path) != expected["sha256"]:
            raise DamageError(path, "changed since it was written (checksum mismatch)")
    for relative in present or ():
        if relative.as_posix() not in listed:
            raise DamageError(directory / relative, "not written by intro")


# ---------------------------------------------------------------- safetensors
def check_safetensors(path: Path) -> None:
    """The structure of a safetensors file: a JSON header whose tensors exactly fill the rest of the file."""
    try:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length).decode("utf-8")) if length < 1 << 26 else None
    except (struct.error, UnicodeDecodeError, ValueError):
        header = None
    if not isinstance(header, dict):
        raise DamageError(path, "not a safetensors file (its header is unreadable)")
    try:
        ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"]
    except (KeyError, IndexError, TypeError, ValueError):
        raise DamageError(path, "not a safetensors file (its header is garbled)") from None
    if path.stat().st_size != 8 + length + max(ends, default=0):
        raise DamageError(path, "truncated or padded (its tensors do not fill the file)")
