"""The compiler's front door: a spec file in, a checked study (IR) out, or every diagnostic found."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from pathlib import Path

from attrs import frozen

from . import ir
from .diagnostics import CompileError, Diagnostic, Sink, Span
from .evaluate import Program, _Abort
from .files import Confinement
from .study import evaluate_study


@frozen
class Checked:
    studies: tuple[ir.Study, ...]
    sources: dict[str, str]


def check(
    path: str | Path, study: str | None = None, source: str | None = None, *, allow_outside: bool = False
) -> Checked:
    """Parse, resolve and check a spec. Raises CompileError with every diagnostic found.

    `source`, when given, is the spec's text in place of the file's (an editor's unsaved buffer); imports
    and data files still resolve next to `path`. Files outside the spec's folder (and the stdlib) are
    errors unless `allow_outside`.
    """
    try:
        return _check(Path(path), study, source, allow_outside)
    except RecursionError:
        # The parser bounds nesting; a long enough chain of names defined by later names can still exhaust
        # Python's stack. Users get a diagnostic, never a traceback.
        message = "definitions refer to each other too deeply to check (a chain of hundreds of names)"
        raise CompileError([Diagnostic("E006", message, Span.point(str(path), 1, 1))]) from None


def _check(path: Path, study: str | None, source: str | None, allow_outside: bool) -> Checked:
    program = Program(Sink(), Confinement.for_spec(path, allow_outside))
    try:
        with _collecting_less():
            return _check_program(program, path, study, source)
    finally:
        # The calls the memo kept are most of what evaluation allocated: freed now, not at the garbage
        # collector's next full pass (the program and its modules refer to each other).
        program.memo.clear()


@contextlib.contextmanager
def _collecting_less() -> Iterator[None]:
    """Fewer passes of Python's cycle collector while a spec is checked, as before after.

    Evaluation allocates hundreds of thousands of values that live until it ends (the IR, the call
    memo) and makes almost no garbage cycles; at the default thresholds the collector walks all of them
    again and again (full passes that took a fifth of the check of a study calling functions 3600 times,
    before the memo kept less).
    """
    young, middle, old = gc.get_threshold()
    gc.set_threshold(young and max(young, 10_000), middle, max(old, 100))  # 0: collection is off
    try:
        yield
    finally:
        gc.set_threshold(young, middle, old)


def _check_program(program: Program, path: Path, study: str | None, source: str | None) -> Checked:
    sink = program.sink
    try:
        namespace, module = program.load_spec(path, source)
    except CompileError as error:
        error.sources = program.sources  # type: ignore[attr-defined]
        raise
    for name in list(namespace.decls):
        try:
            namespace.lookup(name)
        except _Abort:
            continue
    blocks = namespace.studies
    if study is not None:
        blocks = [b for b in blocks if b.name == study]
        if not blocks:
            sink.error("E400", f"no study '{study}' in this file", Span.point(str(path), 1, 1))
    elif not blocks and not sink.items:
        sink.error("E401", "this file declares no study", Span.point(str(path), 1, 1))
    seen: dict[str, Span] = {}
    studies = []
    for block in blocks:
        if block.name in seen:
            sink.error("E101", f"study '{block.name}' is declared twice", block.span)
        seen[block.name] = block.span
        result = evaluate_study(namespace, block)
        if not result.points and not sink.items:
            sink.error("E402", f"study '{block.name}' measures nothing", block.span)
        studies.append(result)
    if sink.items:
        failure = CompileError(_unique(sink.items))
        failure.sources = program.sources  # type: ignore[attr-defined]
        raise failure
    return Checked(tuple(studies), program.sources)


def _unique(items: list[Diagnostic]) -> list[Diagnostic]:
    seen: set[tuple[str, Span, str]] = set()
    unique = []
    for item in items:
        key = (item.code, item.span, item.message)
        if key not in seen:
            seen.add(key)
            unique.append(item)
    return unique
