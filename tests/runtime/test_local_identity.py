"""A `local` model is what its files hold: identity is a full content digest, and damage is one clear line.

Weights rewritten in place at the same size, with every changed byte past the first MiB, are a new model:
`intro plan` says the steps run again and `intro run` answers with the new weights (the plan used to
hash only names, sizes and the first MiB, and served the old model's cached answers). A broken model
directory is refused by `intro check` when a glance shows it (E133), and by `intro run` with one line
naming the directory when only loading shows it; never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from safetensors.torch import load_file

from intro.cli import main
from tests.studydata import write_ab_rows
from tests.tinymodels import cached_tiny_model, make_tiny_model

MIB = 1 << 20

SPEC = """
use stdlib.looking_inward as li
model a = local "{model}"
task ab {{ data: "ab.jsonl" prompt: "{{{{ question }}}} A) {{{{ option_a }}}} B) {{{{ option_b }}}}" answer: "choice" choices: ["A", "B"] }}
split s {{ test: [ab] items: 2 seed: 1 }}
study ident {{
  measure self = li.predict_property(a, a, s.test, li.ethical_stance)
}}
"""


def padded_weights(perturbed: bool) -> bytes:
    """The tiny model's weights (or a perturbed copy) behind a header padded past 1 MiB.

    Both versions share names, shapes and header, so their files have the same size and the same first
    MiB: every byte that differs lies past it.
    """
    tensors = load_file(cached_tiny_model("qwen2") / "model.safetensors")
    if perturbed:
        noise = torch.Generator().manual_seed(7)
        tensors = {k: v + 0.5 * torch.randn(v.shape, generator=noise) for k, v in tensors.items()}
    return safetensors_bytes(tensors, {"format": "pt", "padding": "x" * (MIB + 4096)})


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """The safetensors layout written by hand, so the header's key order (and so its bytes) is fixed."""
    header: dict[str, object] = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name in sorted(tensors):
        blob = tensors[name].contiguous().numpy().astype("<f4").tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(tensors[name].shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    return len(encoded).to_bytes(8, "little") + encoded + b"".join(blobs)


def write_study(directory: Path, model: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    write_ab_rows(directory / "ab.jsonl", 12)
    spec = directory / "ident.intro"
    spec.write_text(SPEC.format(model=model))
    return spec


def model_with(directory: Path, weights: bytes) -> Path:
    make_tiny_model(directory, "qwen2")
    (directory / "model.safetensors").write_bytes(weights)
    return directory


def run(spec: Path, runs: Path) -> dict[str, xr.Dataset]:
    """The run's replies (the subject's answers and its hypothetical ones), with the values read from them."""
    assert main(["run", str(spec), "--runs", str(runs), "--quiet"]) == 0
    store = runs / "ident" / "cube.zarr"
    return {name: xr.open_zarr(store, group=f"self.{name}").load() for name in ("behaviour", "predictions")}


def steps_to_run(spec: Path, capsys: pytest.CaptureFixture[str]) -> int:
    capsys.readouterr()
    assert main(["plan", str(spec), "--json"]) == 0
    return int(json.loads(capsys.readouterr().out)["totals"]["steps_to_run"])


def answers(cubes: dict[str, xr.Dataset]) -> dict[str, np.ndarray]:
    return {f"{group}.{name}": cube[name].values for group, cube in cubes.items() for name in cube.data_vars}


def compiled(spec: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    assert main(["compile", str(spec)]) == 0
    return json.loads(capsys.readouterr().out)


def rewrite_in_place(path: Path, content: bytes) -> None:
    """Same inode, same size, new bytes; the write gives the file a new mtime, as any editor or copy would."""
    inode, size = path.stat().st_ino, path.stat().st_size
    with path.open("r+b") as handle:
        handle.write(content)
    assert path.stat().st_ino == inode and path.stat().st_size == size == len(content)


def test_plan_identity_covers_every_byte_of_the_weights(tmp_path, monkeypatch, capsys):
    old, new = padded_weights(False), padded_weights(True)
    assert len(old) == len(new) > MIB and old[:MIB] == new[:MIB] and old != new
    monkeypatch.setenv("INTRO_CACHE_DIR", str(tmp_path / "cache"))
    model = model_with(tmp_path / "model", old)
    spec = write_study(tmp_path / "study", model)
    before = compiled(spec, capsys)
    rewrite_in_place(model / "model.safetensors", new)
    after = compiled(spec, capsys)
    assert before["models"]["a"]["identity"] != after["models"]["a"]["identity"]
    # Every step that asks the model something is a new step.
    asks = {step["hash"] for step in before["steps"] if step["params"].get("model") == "a"}
    assert asks and not asks & {step["hash"] for step in after["steps"]}


@pytest.mark.slow
def test_weights_rewritten_in_place_past_the_first_mib_are_a_new_model(tmp_path, monkeypatch, capsys):
    old, new = padded_weights(False), padded_weights(True)
    assert len(old) == len(new) > MIB and old[:MIB] == new[:MIB] and old != new
    model = model_with(tmp_path / "model", old)
    spec = write_study(tmp_path / "study", model)
    monkeypatch.setenv("INTRO_CACHE_DIR", str(tmp_path / "cache"))
    before = run(spec, tmp_path / "runs-before")
    assert steps_to_run(spec, capsys) == 0

    rewrite_in_place(model / "model.safetensors", new)
    assert steps_to_run(spec, capsys) > 0
    after = run(spec, tmp_path / "runs-after")

    # The new weights' answers: the same study on a fresh copy of them, with a cache of its own.
    monkeypatch.setenv("INTRO_CACHE_DIR", str(tmp_path / "cache-fresh"))
    fresh = run(
        write_study(tmp_path / "fresh", model_with(tmp_path / "fresh-model", new)), tmp_path / "runs-fresh"
    )
    assert any(not np.array_equal(answers(before)[name], values) for name, values in answers(fresh).items())
    for name, values in answers(fresh).items():
        np.testing.assert_array_equal(answers(after)[name], values, err_msg=name)
    # The cube's provenance names the model it came from.
    identity = json.loads(after["behaviour"].attrs["models"])["a"]
    assert identity != json.loads(before["behaviour"].attrs["models"])["a"]
    assert identity == json.loads(fresh["behaviour"].attrs["models"])["a"]


# --- the digest cache ----------------------------------------------------------------------------------


def test_digests_are_remembered_and_a_damaged_record_is_recomputed(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("INTRO_CACHE_DIR", str(tmp_path / "cache"))
    spec = write_study(tmp_path / "study", model_with(tmp_path / "model", padded_weights(False)))
    identity = compiled(spec, capsys)["models"]["a"]["identity"]
    records = sorted((tmp_path / "cache" / "digests").glob("*.json"))
    assert len(records) >= 3  # config, weights, tokenizer: each hashed once and remembered
    written = {record: record.stat().st_mtime_ns for record in records}
    assert compiled(spec, capsys)["models"]["a"]["identity"] == identity
    assert {record: record.stat().st_mtime_ns for record in records} == written  # served, not rewritten

    damage = [b"{not json", b"[1, 2]", b'{"sha256": "0000"}', b"\xff\xfe", b""]
    for record, garbage in zip(records, damage * len(records), strict=False):
        record.write_bytes(garbage)
    records[-1].unlink()
    records[-1].mkdir()  # a record that cannot even be replaced: hashing still works, it is only slower
    assert compiled(spec, capsys)["models"]["a"]["identity"] == identity
    for record in records[:-1]:
        assert json.loads(record.read_text())["sha256"] != "0000"  # recomputed and written again


# --- broken model directories --------------------------------------------------------------------------


def check(spec: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["check", str(spec)])
    return code, capsys.readouterr().err


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def replace_json(path: Path, **changes: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def shard(directory: Path) -> None:
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"}})
    )


BROKEN_AT_CHECK = {
    "config-not-json": (lambda d: (d / "config.json").write_text("{nope"), "config.json is not valid JSON"),
    "config-not-object": (
        lambda d: (d / "config.json").write_text("[1, 2]"),
        "config.json is not a JSON object",
    ),
    "config-missing": (lambda d: (d / "config.json").unlink(), "holds no config.json"),
    "weights-missing": (lambda d: (d / "model.safetensors").unlink(), "holds no weights"),
    "weights-truncated": (lambda d: truncate(d / "model.safetensors"), "model.safetensors is truncated"),
    "shard-missing": (shard, "names shard(s) that are missing: model-00001-of-00002.safetensors"),
}


@pytest.mark.parametrize("damage", BROKEN_AT_CHECK.values(), ids=BROKEN_AT_CHECK.keys())
def test_a_visibly_broken_model_directory_is_refused_by_check(damage, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("INTRO_CACHE_DIR", str(tmp_path / "cache"))
    mutate, expected = damage
    model = make_tiny_model(tmp_path / "model", "qwen2")
    mutate(model)
    code, err = check(write_study(tmp_path / "study", model), capsys)
    assert code == 2, err
    first = err.splitlines()[0]
    assert "error[E133]" in first and f"broken model directory '{model}'" in first and expected in first, err
    assert "Traceback" not in err


BROKEN_AT_RUN = {
    "unknown-architecture": (
        lambda d: replace_json(d / "config.json", model_type="nonsense"),
        "cannot load its config from {model}: ValueError",
    ),
    "weights-do-not-fit-config": (
        lambda d: replace_json(d / "config.json", hidden_size=128),
        "cannot load its weights from {model}: RuntimeError",
    ),
    "tokenizer-not-json": (
        lambda d: (d / "tokenizer.json").write_text("{nope"),
        "cannot load its tokenizer from {model}: JSONDecodeError",
    ),
}


@pytest.mark.parametrize("damage", BROKEN_AT_RUN.values(), ids=BROKEN_AT_RUN.keys())
def test_a_model_that_only_loading_shows_broken_fails_the_run_in_one_line(
    damage, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("INTRO_CACHE_DIR", str(tmp_path / "cache"))
    mutate, expected = damage
    model = make_tiny_model(tmp_path / "model", "qwen2")
    mutate(model)
    spec = write_study(tmp_path / "study", model)
    assert check(spec, capsys)[0] == 0
    capsys.readouterr()
    assert main(["run", str(spec), "--runs", str(tmp_path / "runs"), "--quiet"]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("intro: ")]
    assert any(line.startswith("intro: " + expected.format(model=model)) for line in lines), err
    assert "Traceback" not in err
