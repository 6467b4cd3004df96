"""The compiler stays light: `intro check`, `compile` and `fmt` never import the runtime's heavy dependencies."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "specs" / "looking_inward_mini.intro"
HEAVY = ("litellm", "torch", "transformers", "xarray", "zarr", "peft")

# Runs in a fresh interpreter (this test process may have imported anything already). argv[1] names a
# module to import first ("" for none), so a test can check that the probe notices a heavy import.
PROBE = """
import contextlib, importlib, io, json, sys
if sys.argv[1]:
    importlib.import_module(sys.argv[1])
from intro.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    code = main(sys.argv[2:])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY or m.startswith("intro.runtime"))
print(json.dumps({"code": code, "heavy": heavy}))
"""


def run_verb(*argv: str, preload: str = "") -> dict[str, object]:
    probe = f"HEAVY = {set(HEAVY)!r}\n" + PROBE
    result = subprocess.run(
        [sys.executable, "-c", probe, preload, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "argv",
    [
        ("check", str(SPEC)),
        ("compile", str(SPEC)),
        ("fmt", "--check", str(SPEC)),
        ("check", str(ROOT / "tests" / "fixtures" / "errors" / "32_several_errors.intro")),
    ],
    ids=["check", "compile", "fmt", "check-with-errors"],
)
def test_pure_verbs_import_nothing_heavy(argv: tuple[str, ...]) -> None:
    outcome = run_verb(*argv)
    assert outcome["code"] in (0, 2, 3)
    assert outcome["heavy"] == []


def test_the_probe_sees_a_runtime_import() -> None:
    # The test of the test: had `check` imported the runtime, the probe would say so.
    outcome = run_verb("check", str(SPEC), preload="intro.runtime.backends.requests")
    assert "intro.runtime.backends.requests" in outcome["heavy"]  # type: ignore[operator]


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level > 0 and node.module:
            names.add("." * node.level + node.module)
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "compiler").glob("*.py")), ids=lambda p: p.name)
def test_no_compiler_module_imports_the_runtime_even_lazily(path: Path) -> None:
    imported = _imported_modules(path)
    forbidden = {m for m in imported if m.split(".")[0] in HEAVY}
    forbidden |= {m for m in imported if m.startswith(("intro.runtime", "..runtime", "runtime"))}
    assert not forbidden, f"{path.name} imports {sorted(forbidden)}"
