"""`intro lsp`: a language server over stdio (pygls).

Diagnostics come from the compiler's own `check` run on the unsaved buffer, so an editor shows exactly
the codes, spans and messages `intro check` prints. Formatting is `intro fmt`'s `format_source`. Hover,
completion and go-to-definition come from `intro.editor.features`, which reads the same grammar.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

from lsprotocol import types
from pygls.lsp.server import LanguageServer
from pygls.workspace import PositionCodec

from intro import __version__
from intro.compiler import CompileError, check
from intro.compiler.diagnostics import Diagnostic
from intro.compiler.format import format_source

from . import features
from .analysis import Definition, Place, file_outline, outline

# Typing pauses this long before a check runs, so a burst of keystrokes is checked once.
CHECK_DELAY_S = 0.3
# `intro check` reports a file without a study; in an editor that is a module being written, not an error.
_NOT_IN_EDITOR = frozenset({"E401"})
_SEVERITY = {"error": types.DiagnosticSeverity.Error, "warning": types.DiagnosticSeverity.Warning}
_KIND = {
    "function": types.CompletionItemKind.Function,
    "module": types.CompletionItemKind.Module,
    "keyword": types.CompletionItemKind.Keyword,
    "parameter": types.CompletionItemKind.Property,
    "field": types.CompletionItemKind.Field,
    "model": types.CompletionItemKind.Class,
    "task": types.CompletionItemKind.Struct,
    "property": types.CompletionItemKind.Property,
    "split": types.CompletionItemKind.Enum,
    "sampling": types.CompletionItemKind.Unit,
}


# ---------------------------------------------------------------- positions
def document_path(uri: str) -> Path:
    """The file a document URI names; an unsaved buffer checks as if it sat in the working directory."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    return Path.cwd() / "untitled.intro"


def to_offset(text: str, position: types.Position, codec: PositionCodec) -> int:
    """An LSP position (line, code units of the client's encoding) as an index into `text`."""
    lines = text.split("\n")
    if position.line >= len(lines):
        return len(text)
    line, units, column = lines[position.line], 0, 0
    while column < len(line) and units < position.character:
        units += codec.client_num_units(line[column])
        column += 1
    return sum(len(previous) + 1 for previous in lines[: position.line]) + column


def to_position(lines: list[str], line: int, column: int, codec: PositionCodec) -> types.Position:
    """A 1-based line and character column (compiler spans) as an LSP position."""
    row = max(line - 1, 0)
    text = lines[row] if row < len(lines) else ""
    return types.Position(line=row, character=codec.client_num_units(text[: max(column - 1, 0)]))


def to_range(lines: list[str], place: Place, codec: PositionCodec) -> types.Range:
    start = to_position(lines, place.line, place.column, codec)
    end = to_position(lines, place.end_line, place.end_column, codec)
    return types.Range(start=start, end=end)


# ---------------------------------------------------------------- diagnostics
def diagnose(path: Path, text: str) -> tuple[list[Diagnostic], dict[str, str]]:
    """The compiler's diagnostics for `text` as the spec at `path`, and the sources they point into."""
    try:
        check(path, source=text)
    except CompileError as error:
        sources = dict(getattr(error, "sources", {}))
        return [d for d in error.diagnostics if d.code not in _NOT_IN_EDITOR], sources
    return [], {}


def lsp_diagnostic(diagnostic: Diagnostic, lines: list[str], codec: PositionCodec) -> types.Diagnostic:
    span = diagnostic.span
    place = Place(Path(span.path), span.line, span.column, span.end_line, span.end_column)
    notes = "".join(f"\nnote: {note}" for note in diagnostic.notes)
    return types.Diagnostic(
        range=to_range(lines, place, codec),
        message=diagnostic.message + notes,
        severity=_SEVERITY.get(diagnostic.severity, types.DiagnosticSeverity.Error),
        code=diagnostic.code,
        source="intro",
    )


class IntroServer(LanguageServer):
    """The server, plus what it remembers between messages: pending checks and where it put diagnostics."""

    def __init__(self) -> None:
        super().__init__("intro", __version__)
        self.generation: dict[str, int] = {}  # uri -> edits seen, so only the latest check publishes
        self.published: dict[str, set[str]] = {}  # uri of a spec -> uris of other files it put diagnostics on

    @property
    def codec(self) -> PositionCodec:
        return self.workspace.position_codec

    def text(self, uri: str) -> str:
        return self.workspace.get_text_document(uri).source

    async def check_later(self, uri: str, delay: float) -> None:
        generation = self.generation.get(uri, 0) + 1
        self.generation[uri] = generation
        if delay:
            await asyncio.sleep(delay)
        if self.generation.get(uri) != generation:
            return
        text = self.text(uri)
        loop = asyncio.get_running_loop()
        found, sources = await loop.run_in_executor(None, diagnose, document_path(uri), text)
        if self.generation.get(uri) == generation:
            self.publish(uri, text, found, sources)

    def publish(self, uri: str, text: str, found: list[Diagnostic], sources: dict[str, str]) -> None:
        """Diagnostics of the spec go on its buffer; those inside imported files go on those files."""
        own = str(document_path(uri))
        by_uri: dict[str, list[types.Diagnostic]] = {uri: []}
        for diagnostic in found:
            path = diagnostic.span.path
            target = uri if path == own else Path(path).resolve().as_uri()
            lines = (text if path == own else sources.get(path, "")).split("\n")
            by_uri.setdefault(target, []).append(lsp_diagnostic(diagnostic, lines, self.codec))
        others = set(by_uri) - {uri}
        for stale in self.published.get(uri, set()) - others:
            by_uri[stale] = []
        self.published[uri] = others
        for target, items in by_uri.items():
            self.text_document_publish_diagnostics(
                types.PublishDiagnosticsParams(uri=target, diagnostics=items)
            )

    def location(self, uri: str, found: Definition) -> types.Location:
        path = found.place.path
        if path == document_path(uri):
            lines, target = self.text(uri).split("\n"), uri
        else:
            known = file_outline(path)
            lines, target = (known.text if known else "").split("\n"), path.resolve().as_uri()
        return types.Location(uri=target, range=to_range(lines, found.place, self.codec))


def build_server() -> IntroServer:
    server = IntroServer()

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    async def did_open(ls: IntroServer, params: types.DidOpenTextDocumentParams) -> None:
        await ls.check_later(params.text_document.uri, 0)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    async def did_change(ls: IntroServer, params: types.DidChangeTextDocumentParams) -> None:
        await ls.check_later(params.text_document.uri, CHECK_DELAY_S)

    @server.feature(types.TEXT_DOCUMENT_DID_SAVE)
    async def did_save(ls: IntroServer, params: types.DidSaveTextDocumentParams) -> None:
        await ls.check_later(params.text_document.uri, 0)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: IntroServer, params: types.DidCloseTextDocumentParams) -> None:
        uri = params.text_document.uri
        ls.generation[uri] = ls.generation.get(uri, 0) + 1
        ls.publish(uri, "", [], {})

    @server.feature(types.TEXT_DOCUMENT_HOVER)
    def hover(ls: IntroServer, params: types.HoverParams) -> types.Hover | None:
        text, uri = ls.text(params.text_document.uri), params.text_document.uri
        found = features.hover(outline(document_path(uri), text), to_offset(text, params.position, ls.codec))
        if found is None:
            return None
        return types.Hover(contents=types.MarkupContent(kind=types.MarkupKind.Markdown, value=found))

    @server.feature(types.TEXT_DOCUMENT_DEFINITION)
    def definition(ls: IntroServer, params: types.DefinitionParams) -> types.Location | None:
        text, uri = ls.text(params.text_document.uri), params.text_document.uri
        offset = to_offset(text, params.position, ls.codec)
        found = features.definition(outline(document_path(uri), text), offset)
        return ls.location(uri, found) if found is not None else None

    @server.feature(
        types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=[".", "(", ":"])
    )
    def completion(ls: IntroServer, params: types.CompletionParams) -> types.CompletionList:
        text, uri = ls.text(params.text_document.uri), params.text_document.uri
        offset = to_offset(text, params.position, ls.codec)
        items = features.completions(outline(document_path(uri), text), offset)
        return types.CompletionList(is_incomplete=False, items=[_completion_item(c) for c in items])

    @server.feature(types.TEXT_DOCUMENT_FORMATTING)
    def formatting(ls: IntroServer, params: types.DocumentFormattingParams) -> list[types.TextEdit] | None:
        uri = params.text_document.uri
        text = ls.text(uri)
        try:
            formatted = format_source(text, str(document_path(uri)))
        except CompileError:
            return None  # the diagnostics already say why; a spec that does not parse is left as it is
        if formatted == text:
            return []
        lines = text.split("\n")
        end = types.Position(line=len(lines) - 1, character=ls.codec.client_num_units(lines[-1]))
        return [
            types.TextEdit(
                range=types.Range(start=types.Position(line=0, character=0), end=end), new_text=formatted
            )
        ]

    return server


def _completion_item(item: features.Completion) -> types.CompletionItem:
    documentation = (
        types.MarkupContent(kind=types.MarkupKind.Markdown, value=item.documentation)
        if item.documentation
        else None
    )
    return types.CompletionItem(
        label=item.label,
        kind=_KIND.get(item.kind, types.CompletionItemKind.Variable),
        detail=item.detail or None,
        documentation=documentation,
        insert_text=item.insert_text,
    )


def serve() -> int:
    """Speak LSP on stdin/stdout until the client says exit. Nothing else may write to stdout."""
    stdout = sys.stdout.buffer
    sys.stdout = sys.stderr
    build_server().start_io(sys.stdin.buffer, stdout)
    return 0
