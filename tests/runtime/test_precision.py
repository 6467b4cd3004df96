"""The dtype an in-process model computes in (runtime/backends/precision.py): the rule, the override, the
loaded weights, the run's report, and that cached answers are never served across dtypes."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from intro.cli import main
from intro.runtime.backends.local_model import load_local_model
from intro.runtime.backends.precision import (
    choose_dtype,
    dtype_override,
    numerics_identity,
    parse_dtype,
    planned_dtype,
)
from intro.runtime.backends.requests import BackendError
from tests.tinymodels import make_tiny_model

SPEC = """
model a = local "tiny_a"
sampling short { temperature: 0 max_tokens: 4 }
study numerics {
  let asked = prompts(["What is the capital of Japan?", "Is the sky blue?", "Count to five."])
  measure said = generate(a, asked, short)
  measure picked = choose(a, asked, ["yes", "no", "Tokyo"])
}
"""


@pytest.fixture(autouse=True)
def cpu_only(monkeypatch):
    """These tests state the CPU's rule (float32 unless overridden); on a machine with a GPU, the default
    device would be CUDA, whose own rule tests/runtime/test_gpu.py checks."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("precision") / "tiny_a", "qwen2", seed=0)


@pytest.fixture
def study(tmp_path, tiny) -> Path:
    (tmp_path / "tiny_a").symlink_to(tiny)
    (tmp_path / "study.intro").write_text(SPEC)
    return tmp_path


def intro(root: Path, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv))
    return status, out.getvalue(), err.getvalue()


def run_json(root: Path) -> dict:
    argv = ["run", str(root / "study.intro"), "--runs", str(root / "runs"), "--cache", str(root / "cache")]
    status, out, err = intro(root, *argv, "--json-progress")
    assert status == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    return next(e for e in events if e["event"] == "run_finished")


def to_make(root: Path) -> int:
    argv = ["plan", str(root / "study.intro"), "--json", "--cache", str(root / "cache")]
    status, out, err = intro(root, *argv)
    assert status == 0, err
    return int(json.loads(out)["totals"]["calls_to_make"])


# ---------------------------------------------------------------------------------------------------------
# The rule


@pytest.mark.parametrize(
    ("device", "native", "override", "expected"),
    [
        ("cpu", False, None, "float32"),
        ("cpu", True, None, "float32"),
        ("cuda", True, None, "bfloat16"),
        ("cuda", False, None, "float16"),
        ("mps", False, None, "float32"),
        ("cuda", True, "float32", "float32"),
        ("cpu", False, "bfloat16", "bfloat16"),
    ],
)
def test_the_dtype_follows_the_device_unless_overridden(device, native, override, expected):
    assert choose_dtype(device, native_bf16=native, override=override) == expected


@pytest.mark.parametrize(
    ("text", "name"),
    [("bf16", "bfloat16"), ("BFloat16", "bfloat16"), ("fp16", "float16"), ("half", "float16"),
     ("fp32", "float32"), (" float32 ", "float32"), ("auto", None), ("", None)],
)  # fmt: skip
def test_dtype_names_and_their_aliases(text, name):
    assert parse_dtype(text) == name


def test_a_bad_dtype_name_says_what_is_allowed():
    with pytest.raises(ValueError, match="not a dtype; use one of auto, float32, bfloat16, float16"):
        parse_dtype("int8")


def test_the_override_comes_from_intro_dtype():
    assert dtype_override({}) is None
    assert dtype_override({"INTRO_DTYPE": "bf16"}) == "bfloat16"


def test_a_cpu_plan_resolves_without_cuda():
    assert planned_dtype("cpu") == "float32"
    assert planned_dtype("cpu", "float16") == "float16"
    if not torch.cuda.is_available():
        assert planned_dtype(None) == "float32"


def test_only_float32_keeps_the_plan_identity():
    identity = "ab" * 32
    assert numerics_identity(identity, "float32") == identity
    assert numerics_identity(identity, None) == identity
    others = {numerics_identity(identity, "bfloat16"), numerics_identity(identity, "float16")}
    assert len(others) == 2 and identity not in others


# ---------------------------------------------------------------------------------------------------------
# Loading


def test_weights_load_in_the_chosen_dtype(tiny, monkeypatch):
    assert load_local_model(str(tiny)).dtype == torch.float32
    assert load_local_model(str(tiny), dtype="bf16").dtype == torch.bfloat16
    monkeypatch.setenv("INTRO_DTYPE", "float16")
    assert load_local_model(str(tiny)).dtype == torch.float16
    assert load_local_model(str(tiny), dtype="float32").dtype == torch.float32  # the caller's word wins


def test_a_bad_dtype_at_load_is_one_line(tiny, monkeypatch):
    monkeypatch.setenv("INTRO_DTYPE", "int4")
    with pytest.raises(BackendError, match="INTRO_DTYPE: 'int4' is not a dtype"):
        load_local_model(str(tiny))


# ---------------------------------------------------------------------------------------------------------
# Runs: the report and the cache


def test_answers_are_cached_per_dtype_and_the_run_says_which(study, monkeypatch):
    first = run_json(study)
    assert first["numerics"] == {"a": "float32 on cpu (oneDNN)"}
    assert first["calls"] == 6 and first["cached"] == 0

    monkeypatch.setenv("INTRO_DTYPE", "bfloat16")
    assert to_make(study) == 6  # the float32 answers do not stand for bfloat16 ones
    second = run_json(study)
    assert second["numerics"] == {"a": "bfloat16 on cpu"}
    assert (second["calls"], second["cached"]) == (6, 0)
    assert to_make(study) == 0
    assert "model_work" not in run_json(study)  # bfloat16 answers now cached: no model work at all

    monkeypatch.delenv("INTRO_DTYPE")
    assert to_make(study) == 0  # the float32 answers are still there, under their own keys
    again = run_json(study)
    assert (again["calls"], again["cached"]) == (0, 6)
    entries = list((study / "cache" / "requests").glob("*/*.json"))
    assert len(entries) == 12


def test_torchs_kernels_answer_from_the_same_cache_and_the_run_says_which(study, monkeypatch):
    first = run_json(study)
    assert first["numerics"] == {"a": "float32 on cpu (oneDNN)"}
    monkeypatch.setenv("INTRO_CPU_MATMUL", "torch")
    # The kernels add in another order, as another CPU would: the answers keep their keys.
    assert to_make(study) == 0
    shutil.rmtree(study / "cache" / "requests")
    second = run_json(study)
    assert second["numerics"] == {"a": "float32 on cpu"}
    assert second["calls"] == first["calls"] == 6


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        (
            "INTRO_DTYPE",
            "double",
            "'double' is not a dtype; use one of auto, float32, bfloat16, float16 (or bf16, fp16, fp32)",
        ),
        ("INTRO_CPU_MATMUL", "blas", "'blas' is not a choice of kernels; use onednn or torch"),
    ],
)
def test_a_bad_numerics_setting_is_one_line_and_runs_nothing(study, monkeypatch, variable, value, reason):
    monkeypatch.setenv(variable, value)
    for command in ("run", "plan"):
        argv = [command, str(study / "study.intro"), "--cache", str(study / "cache")]
        argv += ["--runs", str(study / "runs")] if command == "run" else []
        status, out, err = intro(study, *argv)
        assert status == 2
        assert err.strip().splitlines() == [f"intro: error: {variable}: {reason}"]
    assert not (study / "runs").exists() and not (study / "cache" / "requests").exists()
