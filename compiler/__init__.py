"""The intro compiler: `.intro` text in, a checked study and a content-hashed plan out.

Pure Python (lark, attrs, jinja2): never imports torch, litellm, xarray or zarr, so checking and planning
start instantly.
"""

from __future__ import annotations

from pathlib import Path

from .diagnostics import CompileError, Diagnostic, Span
from .frontend import Checked, check
from .lower import lower
from .plan import Plan

__all__ = ["Checked", "CompileError", "Diagnostic", "Plan", "Span", "check", "compile_spec"]


def compile_spec(path: str | Path, study: str | None = None, *, allow_outside: bool = False) -> list[Plan]:
    """Check a spec and lower each of its studies (or the one named) to a plan."""
    checked = check(path, study, allow_outside=allow_outside)
    return [lower(s, str(path)) for s in checked.studies]
