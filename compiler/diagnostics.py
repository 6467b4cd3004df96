"""Source positions and the errors users see.

Every problem found in a spec becomes a `Diagnostic`: a code, a message, a span and optional notes.
Passes collect diagnostics instead of stopping at the first one; `CompileError` carries them all to the
CLI, which prints them as `path:line:col: error[CODE]: message` with the source line and carets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from difflib import get_close_matches

from attrs import field, frozen


@frozen(order=True)
class Span:
    """A region of one source file: 1-based line and column of start and end (end exclusive)."""

    path: str
    line: int
    column: int
    end_line: int
    end_column: int

    @classmethod
    def point(cls, path: str, line: int, column: int) -> Span:
        return cls(path, line, column, line, column + 1)

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "line": self.line,
            "column": self.column,
            "end_line": self.end_line,
            "end_column": self.end_column,
        }


@frozen
class Diagnostic:
    code: str
    message: str
    span: Span
    notes: tuple[str, ...] = ()
    severity: str = "error"

    def to_dict(self) -> dict[str, object]:
        return {
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            **self.span.to_dict(),
            "notes": list(self.notes),
        }


class CompileError(Exception):
    """One or more diagnostics; the only exception the compiler lets escape for bad input."""

    def __init__(self, diagnostics: Sequence[Diagnostic]):
        self.diagnostics = tuple(sorted(diagnostics, key=lambda d: d.span))
        super().__init__("\n".join(d.message for d in self.diagnostics))


@frozen
class Sink:
    """Collects diagnostics across a pass; `check()` raises when any were reported."""

    items: list[Diagnostic] = field(factory=list)

    def error(self, code: str, message: str, span: Span, *notes: str) -> None:
        if not any(d.span == span and d.code == code for d in self.items):
            self.items.append(Diagnostic(code, message, span, tuple(notes)))

    def check(self) -> None:
        if self.items:
            raise CompileError(self.items)


def did_you_mean(name: str, candidates: Iterable[str]) -> tuple[str, ...]:
    close = get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return (f"did you mean '{close[0]}'?",) if close else ()


def render(diagnostic: Diagnostic, source: str | None) -> str:
    """`path:line:col: error[CODE]: message`, then the source line with carets under the span."""
    span = diagnostic.span
    head = f"{span.path}:{span.line}:{span.column}: {diagnostic.severity}[{diagnostic.code}]: {diagnostic.message}"
    lines = [head]
    text = _source_line(source, span.line)
    if text is not None:
        width = (span.end_column - span.column) if span.end_line == span.line else len(text) - span.column + 1
        text, column, width = _window(text, span.column, max(1, width))
        gutter = f"{span.line:>4} | "
        lines.append(gutter + text)
        lines.append(" " * (len(gutter) + column - 1) + "^" * width)
    lines.extend(f"     = note: {note}" for note in diagnostic.notes)
    return "\n".join(lines)


def render_all(error: CompileError, sources: dict[str, str], limit: int = 20) -> str:
    shown = [render(d, sources.get(d.span.path)) for d in error.diagnostics[:limit]]
    hidden = len(error.diagnostics) - limit
    if hidden > 0:
        shown.append(f"... and {hidden} more")
    count = len(error.diagnostics)
    shown.append(f"{count} error{'s' if count != 1 else ''}")
    return "\n".join(shown)


_WINDOW = 100


def _window(text: str, column: int, width: int) -> tuple[str, int, int]:
    """Cut a long source line to about 100 characters around the span, marking the cuts with '...'."""
    if len(text) <= _WINDOW:
        return text, column, width
    start = max(0, min(column - 1 - _WINDOW // 3, len(text) - _WINDOW))
    shown = text[start : start + _WINDOW]
    prefix = "..." if start > 0 else ""
    suffix = "..." if start + _WINDOW < len(text) else ""
    width = min(width, _WINDOW - (column - 1 - start))
    return prefix + shown + suffix, column - start + len(prefix), max(1, width)


def _source_line(source: str | None, line: int) -> str | None:
    if source is None:
        return None
    lines = source.split("\n")
    if not 1 <= line <= len(lines):
        return None
    # Tabs would misplace the carets; show them as single spaces.
    return lines[line - 1].replace("\t", " ").rstrip("\r")
