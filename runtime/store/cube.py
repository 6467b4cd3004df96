"""Result cubes: one xarray Dataset per measure, stored as a group of `cube.zarr`.

The open language's cubes are laid out in runtime/dataflow/cubes.py; the finetuning group in
runtime/store/training_cube.py. Each carries in its attrs the plan hash, study, measure kind, intro and library
versions, model identities and date.

The group is rewritten after each finished point, so a running study's partial results are readable;
points not yet run hold NaN. Everything here is derived from the request cache, so a torn write is
repaired by the next run.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import shutil
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import xarray as xr

from intro.compiler.plan import Measure, Plan
from intro.runtime.store.cache import atomic_write
from intro.runtime.store.integrity import DamageError, check_manifest, files_of, manifest, read_json


@functools.cache
def _library_versions() -> dict[str, str]:
    """The versions of the libraries a cube's values depend on (read once: a metadata scan is slow)."""
    from importlib.metadata import version

    versions = {}
    for package in ("torch", "transformers", "litellm", "xarray", "zarr", "numpy"):
        try:
            versions[package] = version(package)
        except Exception:  # a package that is not installed is simply not recorded
            continue
    return versions


def provenance(plan: Plan, measure: Measure) -> dict[str, Any]:
    import intro

    versions = _library_versions()
    return {
        "study": plan.study,
        "measure": measure.name,
        "kind": measure.kind,
        "plan_hash": plan.hash,
        "source": plan.source,
        "intro_version": intro.__version__,
        "versions": json.dumps(versions),
        "models": json.dumps({k: m.identity for k, m in plan.models.items()}),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def write(dataset: xr.Dataset, store: Path, group: str) -> None:
    store.mkdir(parents=True, exist_ok=True)
    _record(store, group, None)  # a run stopped inside to_zarr leaves the group marked as being written
    # Zarr format 2: its string encoding is specified and read by every zarr library (v3 has none yet).
    dataset.to_zarr(store, group=group, mode="w", zarr_format=2, consolidated=True)
    _record(store, group, manifest(store / group, files_of(store / group)))


class CubeWriter:
    """Writes cubes on one thread beside the model work, in the order they were handed over.

    A cube write (zarr files and the store's manifest) takes a good part of a second, and a study of many
    small measures writes dozens; on the event loop they would hold back the next model calls. One thread
    keeps the manifest's read-modify-write serial. `close` waits for every write and raises the first
    error, so a run never reports success over a missing cube (cubes are rebuilt from the cache).
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cube-writer")
        self._pending: list[Future[None]] = []

    def write(self, dataset: xr.Dataset, store: Path, group: str) -> None:
        self._pending = [f for f in self._pending if not f.done() or f.exception() is not None]
        self._pending.append(self._pool.submit(write, dataset, store, group))

    def close(self) -> None:
        try:
            for future in self._pending:
                future.result()
        finally:
            self._pool.shutdown(wait=True)


# ---------------------------------------------------------------- integrity
# `cube.zarr.manifest.json`, beside the store (inside it zarr would warn about a foreign object), lists
# every file of the store with its sha256, written after each group: a garbled chunk, a deleted chunk
# (which zarr would silently read as NaN) or a torn write is found before anything reads the cube. Cubes
# are derived from the cache, so `intro run` rebuilds a damaged one.
WRITING = "writing"


class DamagedCubeError(Exception):
    def __init__(self, store: Path, group: str | None, damage: str):
        where = f"{store}/{group}" if group else str(store)
        super().__init__(f"{where} is damaged ({damage})")
        self.store, self.group = store, group


def check_group(store: Path, group: str) -> None:
    """DamagedCubeError if a measure's files differ from what the run wrote (a no-op for older cubes)."""
    listed = _manifest_of(store)
    if listed is not None:
        _check_group(store, group, listed)


def open_group(store: Path, group: str) -> xr.Dataset:
    """A measure's cube, loaded and checked; FileNotFoundError before it exists, DamagedCubeError if damaged."""
    if not (store / group).is_dir():
        raise FileNotFoundError(store / group)
    check_group(store, group)
    try:
        return xr.open_zarr(store, group=group).load()
    except Exception as error:  # zarr and its codecs raise many kinds on a garbled store
        raise DamagedCubeError(store, group, f"unreadable: {type(error).__name__}") from None


def check_store(store: Path) -> None:
    """DamagedCubeError for the first damage in a whole cube store (every group its manifest lists)."""
    listed = _manifest_of(store)
    if listed is None:
        for name in (".zgroup", ".zattrs", ".zmetadata"):
            _read_json(store / name)
        return
    for group in listed["groups"]:
        if (store / group).is_dir():
            _check_group(store, group, listed)


def discard_if_damaged(store: Path, report: Any) -> None:
    """Before a run rewrites a cube: a damaged one is removed (it is rebuilt from the cache), saying why."""
    if not store.is_dir():
        return
    try:
        check_store(store)
    except DamagedCubeError as error:
        report(f"intro: {error}; rebuilding it from the cache")
        shutil.rmtree(store)
        manifest_path(store).unlink(missing_ok=True)


def _check_group(store: Path, group: str, listed: Mapping[str, Any]) -> None:
    files = listed["groups"].get(group)
    try:
        if files == WRITING:
            raise DamageError(store / group, "its run stopped while writing it")
        check_manifest(store, listed["root"])
        if files is not None:
            check_manifest(store / group, files, present=files_of(store / group))
    except DamageError as damage:
        raise DamagedCubeError(store, group, f"{damage.path.relative_to(store)}: {damage.reason}") from None


def manifest_path(store: Path) -> Path:
    return store.with_name(store.name + ".manifest.json")


def _manifest_of(store: Path) -> dict[str, Any] | None:
    path = manifest_path(store)
    if not path.exists():
        return None  # written before manifests: only what zarr itself checks
    data = _read_json(path)
    if not (
        isinstance(data, dict) and isinstance(data.get("groups"), dict) and isinstance(data.get("root"), dict)
    ):
        raise DamagedCubeError(store, None, f"{path.name}: not a cube manifest")
    return data


def _read_json(path: Path) -> Any:
    if not path.exists():
        return None
    try:
        return read_json(path)
    except DamageError as damage:
        raise DamagedCubeError(path.parent, None, f"{path.name}: {damage.reason}") from None


def _record(store: Path, group: str, files: Mapping[str, Any] | None) -> None:
    try:
        listed = _manifest_of(store) or {"groups": {}}
    except DamagedCubeError:
        listed = {"groups": {}}
    listed["groups"][group] = WRITING if files is None else dict(files)
    listed["root"] = manifest(store, [Path(p.name) for p in store.iterdir() if p.is_file()])
    atomic_write(manifest_path(store), json.dumps(listed, indent=1, sort_keys=True))


def rebuild_advice(run: Path, error: DamagedCubeError) -> str:
    """The one line that names a damaged cube and the command that rebuilds it from the cache."""
    try:
        source = json.loads((run / "plan.json").read_text(encoding="utf-8"))["source"]
    except (OSError, ValueError, KeyError, TypeError):
        source = "SPEC"
    return f"intro: {error}; `intro run {source}` rebuilds it from the cache"
