"""The store under damage: cache entries, artifacts (adapters), the journal and the cube.

Each test copies a small finished study (tests/damagestudy.py), damages one file the way a disk error, a
torn copy or a hand edit would, and drives the real CLI: a damaged file is named once, moved aside and
redone, and the study's cube comes out exactly as the undamaged run's; a damaged cube is reported by
`intro show` / `intro report` with the command that rebuilds it, and `intro run` rebuilds it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.damagestudy import SPEC_NAME, STUDY, copy_study, cube_values, finished_study, intro, same_values

pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning")


@pytest.fixture
def study(tmp_path):
    return copy_study(tmp_path / "study")


@pytest.fixture(scope="module")
def reference():
    return cube_values(finished_study())


def entries(root: Path) -> list[Path]:
    return sorted((root / "store" / "requests").glob("*/*.json"))


def sample_entry(root: Path) -> Path:
    """An entry holding a sampled text (the kind every prediction reads)."""
    return next(p for p in entries(root) if "text" in json.dumps(json.loads(p.read_text())))


def cube_file(root: Path, group: str, variable: str) -> Path:
    directory = root / "runs" / STUDY / "cube.zarr" / group / variable
    return next(p for p in sorted(directory.iterdir()) if not p.name.startswith("."))


def adapter(root: Path) -> Path:
    (found,) = (root / "store" / "artifacts").glob("*/adapter/adapter_model.safetensors")
    return found


def damage_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "damaged" in line]


# ---------------------------------------------------------------- cache entries
def test_an_entry_edited_into_other_valid_json_is_reported_moved_aside_and_redone(study, reference):
    path = sample_entry(study)
    data = json.loads(path.read_text())
    record = data.get("value", data)
    record["text"] = "an edited answer"
    path.write_text(json.dumps(data))
    code, out, err = intro(study, "run", SPEC_NAME)
    assert code == 0, err
    (line,) = damage_lines(err)
    assert path.name in line and "Traceback" not in err
    assert list((study / "store" / "quarantine").rglob(f"{path.name}.*"))
    assert same_values(cube_values(study), reference)
    assert "an edited answer" not in path.read_text()


@pytest.mark.parametrize(
    "content",
    [b"", b"{}", b"[]", b'"x"', b"\xff\xfe\x00garbage", b"{'half", None],
    ids=["empty", "empty-object", "list", "string", "binary", "garbage", "truncated"],
)
def test_a_torn_or_foreign_entry_is_not_counted_as_cached_and_is_redone(study, reference, content):
    path = sample_entry(study)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2] if content is None else content)
    code, out, err_plan = intro(study, "plan", SPEC_NAME, "--json")
    assert code == 0, err_plan
    assert json.loads(out)["totals"]["calls_to_make"] == 1
    code, out, err_run = intro(study, "run", SPEC_NAME)
    assert code == 0, err_run
    assert "Traceback" not in err_plan + err_run
    assert len(damage_lines(err_plan + err_run)) == 1  # reported once, by whichever read it first
    assert same_values(cube_values(study), reference)


def test_an_entry_written_before_checksums_is_used_and_sealed(study, reference):
    path = sample_entry(study)
    data = json.loads(path.read_text())
    path.write_text(json.dumps(data.get("value", data)))  # the format intro wrote before checksums
    code, _, err = intro(study, "run", SPEC_NAME)
    assert code == 0 and not damage_lines(err), err
    assert same_values(cube_values(study), reference)
    assert set(json.loads(path.read_text())) == {"key", "sha256", "value"}


def test_an_entry_under_another_key_is_damage(study, reference):
    first, second = entries(study)[:2]
    first.write_bytes(second.read_bytes())
    code, _, err = intro(study, "run", SPEC_NAME)
    assert code == 0, err
    (line,) = damage_lines(err)
    assert first.name in line
    assert same_values(cube_values(study), reference)


def test_cache_verify_lists_damage_and_gc_removes_leftovers(study):
    code, out, _ = intro(study, "cache", "verify", "--cache", "store")
    assert code == 0, out
    assert "0 damaged" in out
    path = sample_entry(study)
    path.write_bytes(path.read_bytes()[:10])
    leftover = path.parent / ".tmp-abandoned.json"
    leftover.write_text("{")
    old = time.time() - 7200
    os.utime(leftover, (old, old))
    code, out, _ = intro(study, "cache", "verify", "--cache", "store")
    assert code == 1
    assert f"damaged: {Path('store') / 'requests' / path.parent.name / path.name}" in out
    assert "1 temporary" in out
    assert intro(study, "run", SPEC_NAME)[0] == 0  # moves the entry into quarantine and redoes it
    code, out, _ = intro(study, "cache", "gc", "--cache", "store")
    assert code == 0 and "removed 2" in out, out
    assert not leftover.exists() and not (study / "store" / "quarantine").exists()
    code, out, _ = intro(study, "cache", "verify", "--cache", "store")
    assert code == 0 and "0 damaged" in out and "0 temporary" in out, out


def test_cache_verify_of_a_folder_that_is_no_cache_is_one_line(tmp_path):
    code, _, err = intro(tmp_path, "cache", "verify", "--cache", str(tmp_path / "nothing"))
    assert code == 2 and "is not an intro cache" in err and "Traceback" not in err


# ---------------------------------------------------------------- adapters
@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_a_damaged_adapter_is_detected_and_retrained(study, reference, how):
    path = adapter(study)
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) - 40] ^= 0x55  # inside a tensor: loads fine, computes something else
    else:
        del data[len(data) // 2 :]
    path.write_bytes(bytes(data))
    code, out, err = intro(study, "run", SPEC_NAME)
    assert code == 0, err
    (line,) = damage_lines(err)
    assert "adapter_model.safetensors" in line
    assert "1 trained" in out
    assert same_values(cube_values(study), reference)


# ---------------------------------------------------------------- journal
def test_garbage_in_the_journal_is_skipped_with_one_warning(study):
    journal = study / "runs" / STUDY / "journal.jsonl"
    with journal.open("ab") as handle:
        handle.write(b'\xff\xfe not json\n{"step": "torn')
    code, out, err = intro(study, "plan", SPEC_NAME)
    assert code == 0, err
    assert "Traceback" not in err
    (warning,) = [line for line in err.splitlines() if "journal" in line]
    assert "2 unreadable line" in warning
    assert "from another study" not in out  # the readable lines still say which steps were this study's
    assert intro(study, "run", SPEC_NAME)[0] == 0
    last = journal.read_bytes().splitlines()[-1]
    assert json.loads(last)["step"]  # the next line starts on a line of its own


# ---------------------------------------------------------------- cubes
@pytest.mark.parametrize("how", ["garble", "delete"])
def test_a_damaged_cube_chunk_is_reported_and_run_rebuilds_it(study, reference, how):
    chunk = cube_file(study, "predicted.accuracy", "estimate")
    if how == "garble":
        chunk.write_bytes(b"\x00garbage" + chunk.read_bytes()[8:])
    else:
        chunk.unlink()  # zarr would read the missing chunk as NaN
    run = str(Path("runs") / STUDY)
    for verb in ("show", "report"):
        code, out, err = intro(study, verb, run)
        assert code == 1, (verb, out, err)
        assert "Traceback" not in err
        assert "cube.zarr/predicted.accuracy is damaged" in err and f"intro run {SPEC_NAME}" in err
    code, _, err = intro(study, "run", SPEC_NAME)
    assert code == 0 and "rebuilding it from the cache" in err, err
    assert intro(study, "show", run)[0] == 0
    assert same_values(cube_values(study), reference)


def test_a_cube_whose_run_stopped_while_writing_it_is_reported(study):
    manifest = study / "runs" / STUDY / "cube.zarr.manifest.json"
    listed = json.loads(manifest.read_text())
    listed["groups"]["predicted.accuracy"] = "writing"
    manifest.write_text(json.dumps(listed))
    code, _, err = intro(study, "show", str(Path("runs") / STUDY))
    assert code == 1 and "stopped while writing" in err, err
