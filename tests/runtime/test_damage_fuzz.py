"""Random damage to a finished study's store, then `intro run` again: the same cube or a clear error.

Each case copies the finished study of tests/damagestudy.py, damages one random file (a cache entry, an
artifact such as the LoRA adapter, the journal, a cube chunk or cube metadata) by truncating it, flipping
bytes in it or deleting it, and runs the real CLI in this process. Every case must end with a cube equal
to the undamaged run's, or a non-zero exit whose message names the damaged file: never a traceback, never
a silently different cube. INTRO_DAMAGE_CASES scales it (default 6, about 5 s a case; the report quotes a run of 500),
INTRO_DAMAGE_SEED picks another sequence.
"""

from __future__ import annotations

import os
import random
import shutil
import time
import traceback
from collections import Counter
from pathlib import Path

import pytest

from tests.damagestudy import SPEC_NAME, STUDY, copy_study, cube_values, finished_study, intro, same_values

pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning")

CASES = int(os.environ.get("INTRO_DAMAGE_CASES", "6"))
SEED = int(os.environ.get("INTRO_DAMAGE_SEED", "20240611"))
OPERATIONS = ("truncate", "flip", "delete")


def targets(root: Path) -> dict[str, list[Path]]:
    """The files damage may hit, by kind (a kind is drawn first, so rare kinds such as adapters are hit)."""
    run = root / "runs" / STUDY
    artifacts = root / "store" / "artifacts"
    files = {
        "entry": sorted((root / "store" / "requests").rglob("*.json")),
        "adapter": sorted(artifacts.glob("*/adapter/*")),
        "artifact": sorted(p for p in artifacts.rglob("*") if p.is_file() and "adapter" not in p.parts),
        "journal": [run / "journal.jsonl"],
        "cube chunk": sorted(
            p for p in (run / "cube.zarr").rglob("*") if p.is_file() and "." not in p.name[:1]
        ),
        "cube metadata": sorted(p for p in (run / "cube.zarr").rglob(".*") if p.is_file())
        + [run / "cube.zarr.manifest.json"],
    }
    return {kind: [p.relative_to(root) for p in paths] for kind, paths in files.items() if paths}


def damage(path: Path, operation: str, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    if operation == "delete" or not data:
        path.unlink()
    elif operation == "truncate":
        path.write_bytes(bytes(data[: rng.randrange(len(data))]))
    else:
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] ^= rng.randint(1, 255)
        path.write_bytes(bytes(data))


def outcome(root: Path, relative: Path, reference: dict) -> tuple[str, str]:
    """('same' | 'reported' | a failure kind, details) of `intro run` after the damage."""
    try:
        code, out, err = intro(root, "run", SPEC_NAME)
        shown = intro(root, "show", str(Path("runs") / STUDY))
    except BaseException:  # what a user would see as a traceback
        return "traceback", traceback.format_exc()
    if "Traceback" in err + shown[2]:
        return "traceback", err + shown[2]
    if code != 0:
        named = relative.name in err and "intro" in err
        return ("reported" if named else "unclear error"), err
    if shown[0] != 0:
        return "show failed", shown[2]
    if not same_values(cube_values(root), reference):
        return "different cube", err
    return "same", err


def test_random_damage_ends_in_the_same_cube_or_a_clear_error(tmp_path):
    reference = cube_values(finished_study())
    kinds = targets(finished_study())
    rng = random.Random(SEED)
    results: Counter[tuple[str, str, str]] = Counter()
    failures = []
    started = time.monotonic()
    for case in range(CASES):
        root = copy_study(tmp_path / f"case{case}")
        kind = rng.choice(sorted(kinds))
        relative, operation = rng.choice(kinds[kind]), rng.choice(OPERATIONS)
        damage(root / relative, operation, rng)
        result, details = outcome(root, relative, reference)
        noticed = "noticed" if ("damaged" in details or "skipped" in details) else "not noticed"
        results[(kind, operation, f"{result}, {noticed}" if result == "same" else result)] += 1
        print(f"case {case}: {operation} {relative}: {result}", flush=True)  # shown with -s
        if result not in ("same", "reported"):
            failures.append(f"case {case}: {operation} {relative}: {result}\n{details}")
        shutil.rmtree(root)
    elapsed = time.monotonic() - started
    print(f"\n{CASES} damage cases (seed {SEED}) in {elapsed:.1f} s")
    for (kind, operation, result), count in sorted(results.items()):
        print(f"  {kind:<14} {operation:<9} {result:<24} {count}")
    assert not failures, "\n\n".join(failures[:5])
