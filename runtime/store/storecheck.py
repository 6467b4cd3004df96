"""`intro cache verify` and `intro cache gc`: check a whole store, and remove what no run will read again.

Verify reads every entry and every artifact the way a run would (key, checksum, file manifest) and
changes nothing: a damaged file is listed, and the next run that needs it moves it into quarantine and
redoes it. Garbage collection removes the temporary files that killed writes leave behind (only old ones,
so a run writing right now is never disturbed) and the quarantine.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from attrs import frozen

from intro.runtime.store.cache import DONE, QUARANTINE, read_done, read_entry
from intro.runtime.store.integrity import TEMPORARY_PREFIX, DamageError, check_manifest, check_safetensors

OK, DAMAGED, BAD_INPUT = 0, 1, 2


@frozen
class Finding:
    """One file's state: `what` is a counter name, `damage` says how a damaged file differs."""

    what: str
    path: Path
    damage: str = ""


def verify(root: Path) -> Iterator[Finding]:
    yield from _entries(root / "requests")
    yield from _artifacts(root / "artifacts")
    for path in _temporaries(root, min_age=0.0):
        yield Finding("temporary", path)
    if (root / QUARANTINE).is_dir():
        yield from (Finding("quarantined", p) for p in (root / QUARANTINE).rglob("*") if p.is_file())


def _entries(directory: Path) -> Iterator[Finding]:
    for path in sorted(directory.glob("*/*.json")):
        if path.name.startswith(TEMPORARY_PREFIX):
            continue
        try:
            _, sealed = read_entry(path, path.stem)
        except DamageError as damage:
            yield Finding("damaged", path, damage.reason)
            continue
        yield Finding("entries" if sealed else "unsealed entries", path)


def _artifacts(directory: Path) -> Iterator[Finding]:
    for artifact in sorted(p for p in directory.glob("*") if p.is_dir()):
        if not (artifact / DONE).exists():
            yield Finding("unfinished artifacts", artifact)
            continue
        try:
            _check_artifact(artifact)
        except DamageError as damage:
            yield Finding("damaged", damage.path, damage.reason)
            continue
        yield Finding("artifacts", artifact)


def _check_artifact(artifact: Path) -> None:
    _, files = read_done(artifact / DONE)
    if files is not None:
        check_manifest(artifact, files)
        return
    for tensors in artifact.rglob("*.safetensors"):
        check_safetensors(tensors)


def _temporaries(root: Path, min_age: float) -> list[Path]:
    """Leftovers of writes that never finished, last touched at least `min_age` seconds ago."""
    now = time.time()
    found = []
    for top in ("requests", "artifacts"):
        for path in sorted((root / top).rglob(f"{TEMPORARY_PREFIX}*")):
            if any(p.name.startswith(TEMPORARY_PREFIX) for p in path.parents):
                continue  # inside a temporary directory already listed
            if now - path.stat().st_mtime >= min_age:
                found.append(path)
    return found


def render_verify(root: Path, findings: list[Finding]) -> tuple[str, int]:
    counts = Counter(f.what for f in findings)
    order = ("entries", "unsealed entries", "artifacts", "unfinished artifacts", "damaged", "temporary")
    lines = [f"store {root}: " + ", ".join(f"{counts[k]} {k}" for k in (*order, "quarantined"))]
    lines += [f"  damaged: {f.path} ({f.damage})" for f in findings if f.what == "damaged"]
    if counts["damaged"]:
        lines.append(
            "the next intro run that needs a damaged file moves it to quarantine and redoes its work"
        )
    if counts["temporary"] or counts["quarantined"]:
        lines.append("`intro cache gc` removes temporary and quarantined files")
    if counts["unsealed entries"]:
        lines.append("unsealed entries were written before checksums; a run seals each one it reads")
    return "\n".join(lines), DAMAGED if counts["damaged"] else OK


def collect_garbage(root: Path, min_age: float) -> str:
    """Remove old temporary leftovers and the quarantine; returns what was removed, in one line."""
    removed, size = 0, 0
    targets = _temporaries(root, min_age)
    if (root / QUARANTINE).is_dir():
        targets.append(root / QUARANTINE)
    for path in targets:
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        removed += len(files)
        size += sum(p.stat().st_size for p in files)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return f"store {root}: removed {removed} temporary or quarantined files ({size} bytes)"
