"""The code's layout stays easy to see: no import cycles, runtime/ subpackages layered, no module too long.

Imports are read from the source (module-level statements only: an import inside a function or under
`if TYPE_CHECKING:` is deliberately late and cannot form a cycle at import time).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("compiler", "runtime", "stdlib", "intro")
MAX_LINES = 600


def _sources() -> Iterator[Path]:
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[0] != "intro":
        parts = ("intro", *parts)  # compiler/ is installed as intro.compiler, and so on
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.stmt, module: str, is_package: bool, known: set[str]) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names if alias.name in known)
    elif isinstance(node, ast.ImportFrom):
        base = module.split(".") if is_package else module.split(".")[:-1]
        prefix = ".".join(base[: len(base) - node.level + 1]) if node.level else ""
        source = ".".join(p for p in (prefix, node.module or "") if p)
        for alias in node.names:
            if f"{source}.{alias.name}" in known:
                yield f"{source}.{alias.name}"
            elif source in known:
                yield source


def import_graph() -> dict[str, set[str]]:
    paths = {_module_name(path): path for path in _sources()}
    known = set(paths)
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        body = ast.parse(path.read_text()).body
        is_package = path.name == "__init__.py"
        graph[module] = {
            name for node in body for name in _imported(node, module, is_package, known) if name != module
        }
    return graph


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for successor in graph.get(todo.pop(), ()):
            if successor not in seen:
                seen.add(successor)
                todo.append(successor)
    return seen


def _subpackage(module: str) -> str:
    return ".".join(module.split(".")[:3])  # intro.runtime.engine, intro.compiler.plan, ...


# Mutual recursion that is the algorithm, not tangled layers: evaluating a call binds its arguments, and
# binding evaluates them. evaluate.py imports functions.py last, at the end of the module, and says why.
DELIBERATE_CYCLES = {frozenset({"intro.compiler.evaluate", "intro.compiler.functions"})}


def test_no_module_imports_itself_back() -> None:
    graph = import_graph()
    for pair in DELIBERATE_CYCLES:
        first, second = sorted(pair)
        assert second in graph[first] and first in graph[second], f"{pair} is no longer a cycle: unlist it"
        graph[first] = graph[first] - {second}
    cycles = sorted(m for m in graph if m in _reachable(graph, m))
    assert cycles == []


def test_runtime_subpackages_are_layered() -> None:
    graph = import_graph()
    packages: dict[str, set[str]] = {}
    for module, imports in graph.items():
        for imported in imports:
            if _subpackage(module) != _subpackage(imported):
                packages.setdefault(_subpackage(module), set()).add(_subpackage(imported))
    cycles = sorted(p for p in packages if p.startswith("intro.runtime.") and p in _reachable(packages, p))
    assert cycles == []


def test_the_cycle_check_sees_a_cycle() -> None:
    assert _reachable({"a": {"b"}, "b": {"a"}}, "a") == {"a", "b"}
    assert "a" not in _reachable({"a": {"b"}, "b": set()}, "a")


def test_no_module_is_too_long() -> None:
    lengths = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in _sources()}
    assert {path: n for path, n in lengths.items() if n > MAX_LINES} == {}
