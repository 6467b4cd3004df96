"""intro: a declarative experiment-spec compiler for LLM introspection research.

The Python API for results: `intro.open_run("runs/<study>")` gives a run's cubes as one xarray DataTree;
`intro.export_run("runs/<study>", format="parquet")` writes them as tidy tables for pandas. Both live in
`intro.runtime.store.export` and are imported on first use, so `import intro` (and the CLI) stays light.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports them when first used
    from intro.runtime.store.export import RunError, export_run, open_run

__version__ = "0.1.0"
__all__ = ["RunError", "__version__", "export_run", "open_run"]

_RESULTS_API = ("open_run", "export_run", "RunError")


def __getattr__(name: str) -> Any:
    if name in _RESULTS_API:
        from intro.runtime.store import export

        return getattr(export, name)
    raise AttributeError(f"module 'intro' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_RESULTS_API])
