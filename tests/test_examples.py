"""The examples work: examples/analyse_a_run.ipynb and the README's pandas snippet, run against a real run.

The notebook is executed the plain way (its code cells in order, in one namespace), so no Jupyter kernel is
needed; it must also be a well-formed nbformat 4 document so that Jupyter opens it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from tests.tinyrun import tiny_run

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples" / "analyse_a_run.ipynb"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding `runs/looking_inward_mini`, the run the examples analyse by default."""
    root = tmp_path_factory.mktemp("examples")
    tiny_run(root)
    return root


def code_cells(notebook: dict) -> list[str]:  # type: ignore[type-arg]
    return ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]


def test_the_notebook_is_nbformat_4():
    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    assert notebook["nbformat"] == 4 and isinstance(notebook["nbformat_minor"], int)
    assert isinstance(notebook["metadata"], dict)
    ids = [cell["id"] for cell in notebook["cells"]]
    assert len(set(ids)) == len(ids)
    for cell in notebook["cells"]:
        assert cell["cell_type"] in ("markdown", "code") and isinstance(cell["metadata"], dict)
        assert all(isinstance(line, str) for line in cell["source"])
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


def test_the_notebook_analyses_the_run_named_by_intro_run(workdir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing in the current folder: the run comes from the variable
    monkeypatch.setenv("INTRO_RUN", str(workdir / "runs" / "looking_inward_mini"))
    monkeypatch.setenv("INTRO_EXPORT", str(tmp_path / "tables"))
    namespace: dict = {}  # type: ignore[type-arg]
    for source in code_cells(json.loads(NOTEBOOK.read_text(encoding="utf-8"))):
        exec(compile(source, str(NOTEBOOK), "exec"), namespace)
    assert namespace["measure"] == "untrained.accuracy"
    comparison = namespace["comparison"]
    assert len(comparison) == 8  # 2 subjects x 2 predictors x 2 properties
    assert (tmp_path / "tables" / "untrained.accuracy.parquet").is_file()
    self_vs_cross = namespace["self_vs_cross"]
    assert list(self_vs_cross.columns) == ["self", "cross", "advantage", "ci_low", "ci_high", "n"]
    assert len(self_vs_cross) == 4  # 2 ordered pairs x 2 properties
    difference = self_vs_cross["self"] - self_vs_cross["cross"]
    assert ((difference - self_vs_cross["advantage"]).abs() < 1e-9).all()


def readme_pandas_snippet() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Results in pandas", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def test_the_readme_pandas_snippet_runs(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    snippet = readme_pandas_snippet()
    # Five lines of code; the blank line after the import is ruff format's, not analysis.
    assert len([line for line in snippet.splitlines() if line.strip()]) <= 5
    namespace: dict = {}  # type: ignore[type-arg]
    exec(compile(snippet, "README.md", "exec"), namespace)
    frames = [v for v in namespace.values() if isinstance(v, pd.DataFrame | pd.Series)]
    assert frames and all(len(f) for f in frames)
    assert capsys.readouterr().out.strip()
