"""The compiler's front door: a spec file in, a checked study (IR) out, or every diagnostic found."""

from __future__ import annotations

from pathlib import Path

from attrs import frozen

from . import ir
from .diagnostics import CompileError, Diagnostic, Sink, Span
from .evaluate import Program, _Abort, evaluate_study
from .files import Confinement


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
    sink = Sink()
    program = Program(sink, Confinement.for_spec(path, allow_outside))
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
