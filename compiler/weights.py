"""What a local model directory *is*: a digest of its files' full content, and cheap checks that it is whole.

The compiler imports this module (stdlib only), so a `local` model's identity is known before anything
runs and every step hash depends on the weights' bytes.

Identity (`weights_digest`): sha256 over the relative name and the sha256 of the whole content of each
file transformers may read from the directory: every regular, non-hidden file at its top level except
documentation (README, LICENSE, images). Subdirectories are not read by `from_pretrained`, so a
checkpoint folder or an `original/` copy of the weights costs nothing and changes nothing.

Each file is hashed once: its digest is remembered in `<cache>/digests/<key>.json` (written atomically)
under its absolute path, size, mtime_ns and inode, and recomputed whenever one of them differs. A
remembered record that is unreadable, not JSON, or not exactly a record for this file is ignored and
replaced; a cache that cannot be written only costs a re-hash next time.
Tradeoff: a stat-keyed cache cannot see a rewrite that keeps the inode and the size and then restores
the old mtime_ns (`os.utime`); any ordinary write, copy or replacement changes mtime_ns or the inode and
is noticed. Delete `<cache>/digests` to force a full re-hash.

Checks (`directory_problem`): what can be seen without loading anything: config.json present and a JSON
object (or one GGUF file), weights present (every shard an index names), and each safetensors file as
long as its header says. Anything else (a broken tokenizer, weights that do not match the config) is
found when the runtime loads the model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

_BLOCK = 1 << 22
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DOC_SUFFIXES = frozenset({".md", ".rst", ".pdf", ".png", ".jpg", ".jpeg", ".gif", ".svg"})
_DOC_PREFIXES = ("readme", "license", "licence", "notice", "use_policy")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")
# safetensors refuses headers over 100 MB; a larger length is damage, and is never read into memory.
_MAX_SAFETENSORS_HEADER = 100_000_000


class ModelDirectoryError(Exception):
    """A model directory that cannot be used; the message names the file and what is wrong with it."""


def intro_cache_dir() -> Path:
    """The user-level cache for weights and their digests (`$INTRO_CACHE_DIR` overrides)."""
    override = os.environ.get("INTRO_CACHE_DIR")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_cache_dir("intro"))


# ---------------------------------------------------------------- identity
def weights_digest(directory: Path) -> str:
    """The content identity of a model directory (see the module docstring). Raises ModelDirectoryError."""
    digest = hashlib.sha256()
    for path in identity_files(directory):
        try:
            content = cached_sha256(path)
        except OSError as error:
            raise ModelDirectoryError(f"cannot read {path}: {error.strerror or error}") from None
        digest.update(f"{path.name}\0{content}\n".encode())
    return digest.hexdigest()


def identity_files(directory: Path) -> list[Path]:
    """The files a model's identity covers, sorted by name."""
    try:
        entries = sorted(directory.iterdir())
    except OSError as error:
        raise ModelDirectoryError(f"cannot list {directory}: {error.strerror or error}") from None
    return [path for path in entries if path.is_file() and not _outside_identity(path.name)]


def _outside_identity(name: str) -> bool:
    lowered = name.lower()
    return name.startswith(".") or lowered.startswith(_DOC_PREFIXES) or Path(lowered).suffix in _DOC_SUFFIXES


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def cached_sha256(path: Path) -> str:
    """sha256 of `path`'s content, hashed once per (absolute path, size, mtime_ns, inode)."""
    stat = path.stat()
    remembered = remembered_sha256(path, stat)
    if remembered is not None:
        return remembered
    digest = file_sha256(path)
    remember_sha256(path, stat, digest)
    return digest


def remembered_sha256(path: Path, stat: os.stat_result) -> str | None:
    """The digest recorded for exactly this file state, or None (no record, or a damaged one)."""
    try:
        record = json.loads(_record_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record != {**_file_state(path, stat), "sha256": record.get("sha256")}:
        return None
    digest = record["sha256"]
    return digest if isinstance(digest, str) and _SHA256.match(digest) else None


def remember_sha256(path: Path, stat: os.stat_result, digest: str) -> None:
    """Record `digest` for this file state; a cache that cannot be written is only a missed shortcut."""
    record = _record_path(path)
    partial = record.with_name(f"{record.name}.partial-{os.getpid()}")
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps({**_file_state(path, stat), "sha256": digest}), encoding="utf-8")
        os.replace(partial, record)
    except OSError:
        partial.unlink(missing_ok=True)


def _file_state(path: Path, stat: os.stat_result) -> dict[str, Any]:
    return {
        "path": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "inode": stat.st_ino,
    }


def _record_path(path: Path) -> Path:
    # Records live in the cache even for files inside site-packages, which may be read-only.
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]
    return intro_cache_dir() / "digests" / f"{key}.json"


# ---------------------------------------------------------------- checks
def directory_problem(directory: Path) -> str | None:
    """What is visibly wrong with a model directory (naming the file), or None if nothing cheap to see is."""
    try:
        _check_directory(directory)
    except ModelDirectoryError as error:
        return str(error)
    except OSError as error:
        return f"cannot read {error.filename or directory}: {error.strerror or error}"
    return None


def read_config(directory: Path) -> dict[str, Any]:
    """config.json as a JSON object, or ModelDirectoryError saying why it is not one."""
    path = directory / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelDirectoryError(f"{path} is missing") from None
    except OSError as error:
        raise ModelDirectoryError(f"cannot read {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise ModelDirectoryError(f"{path} is not valid JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as error:
        raise ModelDirectoryError(f"{path} is not valid JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(config, dict):
        raise ModelDirectoryError(f"{path} is not a JSON object")
    return config


def _check_directory(directory: Path) -> None:
    ggufs = sorted(directory.glob("*.gguf"))
    if not (directory / "config.json").exists():
        if len(ggufs) != 1:
            raise ModelDirectoryError(
                f"{directory} holds no config.json (transformers weights) and no single .gguf file"
            )
        _check_gguf(ggufs[0])
        return
    read_config(directory)
    for shard in _weight_files(directory):
        if shard.suffix == ".safetensors":
            _check_safetensors(shard)


def _weight_files(directory: Path) -> list[Path]:
    indexes = sorted(directory.glob("*.index.json"))
    if indexes:
        return [shard for index in indexes for shard in _index_shards(index)]
    weights = [p for p in sorted(directory.iterdir()) if p.is_file() and p.suffix in _WEIGHT_SUFFIXES]
    if not weights:
        raise ModelDirectoryError(f"{directory} holds no weights (no *.safetensors or *.bin file)")
    return weights


def _index_shards(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
    except (ValueError, AttributeError):
        raise ModelDirectoryError(f"{index} is not a valid weights index (JSON with a weight_map)") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ModelDirectoryError(f"{index} is not a valid weights index (JSON with a weight_map)")
    shards = [index.parent / name for name in sorted(set(weight_map.values()))]
    missing = [shard.name for shard in shards if not shard.is_file()]
    if missing:
        raise ModelDirectoryError(f"{index} names shard(s) that are missing: {', '.join(missing)}")
    return shards


def _check_safetensors(path: Path) -> None:
    """A safetensors file is an 8-byte header length, a JSON header, then the tensors it places."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little") if size >= 8 else -1
        if length < 0 or length > _MAX_SAFETENSORS_HEADER or 8 + length > size:
            raise ModelDirectoryError(f"{path} is truncated or not a safetensors file ({size} bytes)")
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            raise ModelDirectoryError(f"{path} has a damaged header (not JSON)") from None
    needed = 8 + length + _tensor_bytes(path, header)
    if needed > size:
        raise ModelDirectoryError(f"{path} is truncated: its header places {needed} bytes, it holds {size}")


def _tensor_bytes(path: Path, header: Any) -> int:
    try:
        ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    except (AttributeError, KeyError, TypeError, IndexError):
        raise ModelDirectoryError(f"{path} has a damaged header (tensors without data offsets)") from None
    if not all(isinstance(end, int) for end in ends):
        raise ModelDirectoryError(f"{path} has a damaged header (tensors without data offsets)")
    return max(ends, default=0)


def _check_gguf(path: Path) -> None:
    with path.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise ModelDirectoryError(f"{path} is not a GGUF file (it does not start with 'GGUF')")
