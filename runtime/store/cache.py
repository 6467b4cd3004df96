"""The content-addressed store: one file per finished model call, one directory per produced artifact.

Keys are content hashes from the plan, so a result is valid wherever the same inputs recur: in a re-run,
in another study, on another machine sharing the directory. Every write is atomic (write a temporary
file, then rename), so a process killed at any moment leaves either the whole result or nothing: this is
what makes `kill -9` followed by the same command redo nothing that finished. Standard library only, so
`intro plan` can consult it without loading any model code.

Nothing is trusted blindly. An entry carries its key and the sha256 of its value; an artifact's DONE
marker lists every file of the artifact with its sha256. Whatever fails that check (a disk error, a torn
copy, a hand edit) is reported once, moved into `<store>/quarantine/`, and counts as missing, so the call
or the training is redone. Entries written before checksums existed are used when they have the shape of
a record and are sealed (rewritten with their checksum) the first time a run reads them.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from intro.runtime.store.integrity import (
    DamageError,
    canonical,
    check_manifest,
    check_safetensors,
    files_of,
    manifest,
    read_json,
)
from intro.runtime.store.integrity import text_digest as _digest

CACHE_ENV = "INTRO_CACHE_DIR"
DONE = "DONE"
QUARANTINE = "quarantine"
ENTRY_FIELDS = {"key", "sha256", "value"}


def default_cache_dir() -> Path:
    """The per-user store shared by every study (so studies reuse each other's work); INTRO_CACHE_DIR overrides."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser() / "store"
    import platformdirs

    return Path(platformdirs.user_cache_dir("intro")) / "store"


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Cache:
    """`report` receives one line per damaged file found (default: standard error)."""

    def __init__(self, root: Path, report: Callable[[str], None] = _stderr):
        self.root = Path(root)
        self.report = report
        (self.root / "requests").mkdir(parents=True, exist_ok=True)
        (self.root / "artifacts").mkdir(parents=True, exist_ok=True)
        self._verified: dict[str, tuple[Any, ...]] = {}  # artifact -> the file stats its check saw

    # ------------------------------------------------------------ model calls
    def _request_path(self, key: str) -> Path:
        return self.root / "requests" / key[:2] / f"{key}.json"

    def has(self, key: str) -> bool:
        return self._read(key) is not None

    def get(self, key: str) -> dict[str, Any] | None:
        found = self._read(key)
        if found is None:
            return None
        value, sealed = found
        if not sealed:
            self.put(key, value)
        return value

    def put(self, key: str, value: Mapping[str, Any]) -> None:
        atomic_write(self._request_path(key), entry_text(key, value))

    def _read(self, key: str) -> tuple[dict[str, Any], bool] | None:
        path = self._request_path(key)
        if not path.exists():
            return None
        try:
            return read_entry(path, key)
        except DamageError as damage:
            self.quarantine(damage, path)
            return None

    # ------------------------------------------------------------ artifacts (adapters, vectors, datasets)
    def artifact_dir(self, step_hash: str) -> Path:
        return self.root / "artifacts" / step_hash

    def artifact_done(self, step_hash: str) -> bool:
        directory = self.artifact_dir(step_hash)
        if not (directory / DONE).exists():
            return False
        try:
            self._check_artifact(step_hash)
        except DamageError as damage:
            self.quarantine(damage, directory / DONE)  # not done any more: the step runs again
            if damage.path != directory / DONE and damage.path.exists():
                self.quarantine(None, damage.path)
            return False
        return True

    def mark_artifact_done(self, step_hash: str, info: Mapping[str, Any]) -> None:
        directory = self.artifact_dir(step_hash)
        files = manifest(directory, files_of(directory, skip=[DONE]))
        atomic_write(directory / DONE, done_text(info, files))
        self._verified.pop(step_hash, None)

    def artifact_info(self, step_hash: str) -> dict[str, Any]:
        return read_done(self.artifact_dir(step_hash) / DONE)[0]

    def _check_artifact(self, step_hash: str) -> None:
        directory = self.artifact_dir(step_hash)
        stats = _stats(directory)
        if self._verified.get(step_hash) == stats:
            return
        info, files = read_done(directory / DONE)
        if files is None:  # written before manifests: check what can be checked, then seal it
            for tensors in directory.rglob("*.safetensors"):
                check_safetensors(tensors)
            self.mark_artifact_done(step_hash, info)
        else:
            check_manifest(directory, files)
        self._verified[step_hash] = _stats(directory)

    # ------------------------------------------------------------ damage
    def quarantine(self, damage: DamageError | None, path: Path) -> None:
        """Move a damaged file out of the way (kept for inspection), saying so once."""
        target = self.root / QUARANTINE / path.relative_to(self.root)
        target = target.with_name(f"{target.name}.{time.time_ns()}")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, target)
        except FileNotFoundError:
            return  # another reader moved it first and reported it
        if damage is not None:
            self.report(
                f"intro: damaged cache file {damage.path} ({damage.reason}); "
                f"moved to {target.parent}, its result will be redone"
            )


def _stats(directory: Path) -> tuple[Any, ...]:
    return tuple(
        (str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(directory.rglob("*")) if p.is_file()
    )


# ---------------------------------------------------------------- formats
def entry_text(key: str, value: Mapping[str, Any]) -> str:
    body = canonical(value)
    return f'{{"key":{json.dumps(key)},"sha256":"{_digest(body)}","value":{body}}}'


def read_entry(path: Path, key: str) -> tuple[dict[str, Any], bool]:
    """(value, sealed) of an entry file, or DamageError. `sealed` is False for a pre-checksum entry."""
    data = read_json(path)
    if isinstance(data, dict) and set(data) == ENTRY_FIELDS:
        if data["key"] != key:
            raise DamageError(path, f"holds the entry of another key ({str(data['key'])[:12]})")
        if not isinstance(data["value"], dict) or _digest(canonical(data["value"])) != data["sha256"]:
            raise DamageError(path, "changed since it was written (checksum mismatch)")
        return data["value"], True
    if is_legacy_record(data):
        return data, False
    raise DamageError(path, "not a cache entry")


# The records intro wrote before entries carried checksums, by the fields each kind must have.
LEGACY_SHAPES: tuple[Mapping[str, tuple[type, ...]], ...] = (
    {"text": (str,)},
    {"logprobs": (dict, list), "raw_logprobs": (dict, list, type(None))},
    {"readouts": (list,)},
)
THINK_FIELDS = {"think", "think_controls", "dont_think", "dont_think_controls"}


def is_legacy_record(data: Any) -> bool:
    if not isinstance(data, dict) or not data or ENTRY_FIELDS & set(data):
        return False
    if set(data) <= THINK_FIELDS:
        return all(isinstance(v, (dict, list, float, int)) for v in data.values())
    return any(all(isinstance(data.get(f), types) for f, types in shape.items()) for shape in LEGACY_SHAPES)


def done_text(info: Mapping[str, Any], files: Mapping[str, Any]) -> str:
    body = canonical({"info": info, "files": files})
    return f'{{"sha256":"{_digest(body)}","sealed":{body}}}'


def read_done(path: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(info, files) of an artifact's DONE marker; files is None for a marker written before manifests."""
    data = read_json(path)
    if isinstance(data, dict) and set(data) == {"sha256", "sealed"}:
        sealed = data["sealed"]
        if not isinstance(sealed, dict) or _digest(canonical(sealed)) != data["sha256"]:
            raise DamageError(path, "changed since it was written (checksum mismatch)")
        return sealed["info"], sealed["files"]
    if isinstance(data, dict) and isinstance(data.get("kind"), str):
        return data, None
    raise DamageError(path, "not an artifact marker")


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
