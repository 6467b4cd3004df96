"""The content-addressed store: one file per finished model call, one directory per produced artifact.

Keys are content hashes from the plan, so a result is valid wherever the same inputs recur: in a re-run,
in another study, on another machine sharing the directory. Every write is atomic (write a temporary
file, then rename), so a process killed at any moment leaves either the whole result or nothing: this is
what makes `kill -9` followed by the same command redo nothing that finished. Standard library only, so
`intro plan` can consult it without loading any model code.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

CACHE_ENV = "INTRO_CACHE_DIR"


def default_cache_dir() -> Path:
    """The per-user store shared by every study (so studies reuse each other's work); INTRO_CACHE_DIR overrides."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser() / "store"
    import platformdirs

    return Path(platformdirs.user_cache_dir("intro")) / "store"


class Cache:
    def __init__(self, root: Path):
        self.root = Path(root)
        (self.root / "requests").mkdir(parents=True, exist_ok=True)
        (self.root / "artifacts").mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------ model calls
    def _request_path(self, key: str) -> Path:
        return self.root / "requests" / key[:2] / f"{key}.json"

    def has(self, key: str) -> bool:
        return self._request_path(key).is_file()

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._request_path(key).read_text(encoding="utf-8"))  # type: ignore[no-any-return]
        except FileNotFoundError:
            return None
        except ValueError:
            # A torn file cannot come from our atomic writes; treat it as missing so the call is redone.
            return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        atomic_write(self._request_path(key), json.dumps(value, ensure_ascii=False))

    # ------------------------------------------------------------ artifacts (adapters, vectors, datasets)
    def artifact_dir(self, step_hash: str) -> Path:
        return self.root / "artifacts" / step_hash

    def artifact_done(self, step_hash: str) -> bool:
        return (self.artifact_dir(step_hash) / "DONE").is_file()

    def mark_artifact_done(self, step_hash: str, info: dict[str, Any]) -> None:
        atomic_write(self.artifact_dir(step_hash) / "DONE", json.dumps(info, ensure_ascii=False))

    def artifact_info(self, step_hash: str) -> dict[str, Any]:
        return json.loads((self.artifact_dir(step_hash) / "DONE").read_text(encoding="utf-8"))  # type: ignore[no-any-return]


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
