"""`intro lsp` end to end: the real command in a subprocess, spoken to in LSP JSON-RPC over its stdio."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lsprotocol import types
from pygls.lsp.client import LanguageClient

from intro.compiler.builtins import FUNCTIONS
from intro.compiler.format import format_source
from intro.compiler.parser import parse

ROOT = Path(__file__).resolve().parents[2]
INTRO = str(Path(sys.executable).parent / "intro")
MINI = ROOT / "specs" / "looking_inward_mini.intro"
LOOKING_INWARD = ROOT / "stdlib" / "looking_inward.intro"
TIMEOUT_S = 120  # generous: the suite may share a loaded machine


class _Client(LanguageClient):
    def __init__(self) -> None:
        super().__init__("intro-tests", "1")
        self.diagnostics: dict[str, list[types.Diagnostic]] = {}

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not predicate():
            assert time.monotonic() < deadline, f"timed out; diagnostics so far: {self.diagnostics}"
            await asyncio.sleep(0.05)


class _Session:
    """One `intro lsp` process for the module, driven from an event loop in a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.client = _Client()

        @self.client.feature(types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
        def publish(params: types.PublishDiagnosticsParams) -> None:
            self.client.diagnostics[params.uri] = list(params.diagnostics)

        self.run(self._start)

    def run(self, scenario: Callable[[_Client], Awaitable[Any]]) -> Any:
        future = asyncio.run_coroutine_threadsafe(scenario(self.client), self.loop)
        return future.result(TIMEOUT_S)

    async def _start(self, client: _Client) -> None:
        await client.start_io(INTRO, "lsp")
        await client.initialize_async(
            types.InitializeParams(capabilities=types.ClientCapabilities(), root_uri=ROOT.as_uri())
        )
        client.initialized(types.InitializedParams())

    async def _stop(self, client: _Client) -> int | None:
        await client.shutdown_async(None)
        client.exit(None)
        await client.stop()
        return client._server.returncode if client._server else None

    def close(self) -> int | None:
        try:
            return self.run(self._stop)  # type: ignore[no-any-return]
        finally:
            if self.client._server is not None and self.client._server.returncode is None:
                self.client._server.kill()
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(TIMEOUT_S)


@pytest.fixture(scope="module")
def lsp() -> Iterator[_Session]:
    session = _Session()
    yield session
    assert session.close() == 0  # shutdown, then exit: the server ends cleanly


def _open(client: _Client, path: Path, text: str) -> str:
    uri = path.as_uri()
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id="intro", version=1, text=text)
        )
    )
    return uri


def _position(text: str, needle: str, within: int = 0) -> types.Position:
    offset = text.index(needle) + within
    line = text.count("\n", 0, offset)
    return types.Position(line=line, character=offset - (text.rfind("\n", 0, offset) + 1))


def _doc(uri: str) -> types.TextDocumentIdentifier:
    return types.TextDocumentIdentifier(uri=uri)


# ---------------------------------------------------------------- diagnostics
def test_diagnostics_match_intro_check_and_follow_the_buffer(lsp: _Session, tmp_path: Path) -> None:
    spec = tmp_path / "study.intro"
    broken = MINI.read_text().replace("li.numbers", "li.numbrs")
    spec.write_text(broken)
    checked = subprocess.run([INTRO, "check", str(spec), "--json"], capture_output=True, text=True)
    assert checked.returncode == 2
    expected = json.loads(checked.stdout)
    assert [d["code"] for d in expected] == ["E104"]

    async def scenario(client: _Client) -> None:
        uri = _open(client, spec, broken)
        await client.wait_for(lambda: bool(client.diagnostics.get(uri)))
        got = client.diagnostics[uri]
        assert [d.code for d in got] == [d["code"] for d in expected]
        for lsp, cli in zip(got, expected, strict=True):
            assert (lsp.range.start.line + 1, lsp.range.start.character + 1) == (cli["line"], cli["column"])
            assert (lsp.range.end.line + 1, lsp.range.end.character + 1) == (
                cli["end_line"],
                cli["end_column"],
            )
            assert lsp.message.split("\n")[0] == cli["message"]
            assert [line.removeprefix("note: ") for line in lsp.message.split("\n")[1:]] == cli["notes"]
            assert lsp.severity == types.DiagnosticSeverity.Error and lsp.source == "intro"
        # Typing the fix clears the error without saving: the server checks the buffer, not the file.
        client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
                content_changes=[types.TextDocumentContentChangeWholeDocument(text=MINI.read_text())],
            )
        )
        await client.wait_for(lambda: client.diagnostics.get(uri) == [])

    lsp.run(scenario)


def test_a_syntax_error_typed_into_the_buffer_is_reported_where_intro_check_puts_it(
    lsp: _Session, tmp_path: Path
) -> None:
    spec = tmp_path / "study.intro"
    clean = MINI.read_text()
    spec.write_text(clean)
    typed = clean.replace("items: 12", "items: 12 +")
    (tmp_path / "typed.intro").write_text(typed)
    expected = json.loads(
        subprocess.run([INTRO, "check", str(tmp_path / "typed.intro"), "--json"], capture_output=True).stdout
    )

    async def scenario(client: _Client) -> None:
        uri = _open(client, spec, clean)
        await client.wait_for(lambda: uri in client.diagnostics)
        assert client.diagnostics[uri] == []
        client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
                content_changes=[types.TextDocumentContentChangeWholeDocument(text=typed)],
            )
        )
        await client.wait_for(lambda: bool(client.diagnostics.get(uri)))
        (got,) = client.diagnostics[uri]
        (cli,) = expected
        assert (got.code, got.range.start.line + 1, got.range.start.character + 1) == (
            cli["code"],
            cli["line"],
            cli["column"],
        )

    lsp.run(scenario)


# ---------------------------------------------------------------- hover, completion, definition
def test_hover_on_finetune_shows_its_reference(lsp: _Session, tmp_path: Path) -> None:
    text = MINI.read_text()

    async def scenario(client: _Client) -> types.Hover | None:
        uri = _open(client, tmp_path / "spec.intro", text)
        return await client.text_document_hover_async(
            types.HoverParams(text_document=_doc(uri), position=_position(text, "finetune(", 3))
        )

    hover = lsp.run(scenario)
    assert hover is not None and isinstance(hover.contents, types.MarkupContent)
    value = hover.contents.value
    finetune = FUNCTIONS["finetune"]
    assert "finetune(model: model, data: data, rank: int = 8" in value
    assert finetune.doc and finetune.doc in value
    assert all(f"{p.name}:" in value for p in finetune.params)


def test_completion_after_a_module_alias_lists_the_module_names(lsp: _Session, tmp_path: Path) -> None:
    text = MINI.read_text().replace("li.numbers,", "li.,")
    module = parse(LOOKING_INWARD.read_text(), str(LOOKING_INWARD))
    declared = {item.name for item in module.items if hasattr(item, "name")}

    async def scenario(client: _Client) -> types.CompletionList | list[types.CompletionItem] | None:
        uri = _open(client, tmp_path / "spec.intro", text)
        return await client.text_document_completion_async(
            types.CompletionParams(text_document=_doc(uri), position=_position(text, "li.,", 3))
        )

    result = lsp.run(scenario)
    items = result.items if isinstance(result, types.CompletionList) else result
    assert items is not None
    labels = {item.label for item in items}
    assert len(declared) > 20 and labels == declared
    assert "finetune" not in labels  # a module's names, not everything in scope


def test_completion_offers_stdlib_modules_and_named_parameters(lsp: _Session, tmp_path: Path) -> None:
    text = MINI.read_text().replace("use stdlib.looking_inward as li", "use stdlib.")
    text = text.replace("rank: 8,\n      lr", "r\n      lr", 1)

    async def scenario(client: _Client) -> tuple[Any, Any]:
        uri = _open(client, tmp_path / "spec.intro", text)
        modules = await client.text_document_completion_async(
            types.CompletionParams(text_document=_doc(uri), position=_position(text, "use stdlib.", 11))
        )
        params = await client.text_document_completion_async(
            types.CompletionParams(text_document=_doc(uri), position=_position(text, "r\n      lr", 1))
        )
        return modules, params

    modules, params = lsp.run(scenario)
    stdlib = {p.stem for p in (ROOT / "stdlib").glob("*.intro")}
    assert {item.label for item in modules.items} == stdlib
    by_label = {item.label: item for item in params.items}
    for param in FUNCTIONS["finetune"].params:
        assert by_label[param.name].insert_text == f"{param.name}: "
    assert "self_trained" not in by_label  # a let is not visible before it is defined
    assert {"subject", "other", "qwen", "mini", "props", "li"} - set(by_label) == {"li"}  # li is not imported


def test_definition_of_an_imported_name_lands_in_the_stdlib_file(lsp: _Session, tmp_path: Path) -> None:
    text = MINI.read_text()
    lines = LOOKING_INWARD.read_text().split("\n")
    task_line = next(i for i, line in enumerate(lines) if line.startswith("task countries "))
    imported = text.replace(
        "use stdlib.looking_inward as li",
        "use stdlib.looking_inward as li\nuse stdlib.looking_inward: animals",
    )
    imported = imported.replace("test: [li.animals, ", "test: [animals, ", 1)
    animals_line = next(i for i, line in enumerate(lines) if line.startswith("task animals "))

    async def scenario(client: _Client) -> list[Any]:
        uri = _open(client, tmp_path / "spec.intro", imported)
        found = []
        for needle, within in (("li.countries", 4), ("[animals", 2), ("subject, mini.train", 1)):
            found.append(
                await client.text_document_definition_async(
                    types.DefinitionParams(
                        text_document=_doc(uri), position=_position(imported, needle, within)
                    )
                )
            )
        return found

    countries, animals, subject = lsp.run(scenario)
    assert countries.uri == LOOKING_INWARD.as_uri()
    assert countries.range.start == types.Position(line=task_line, character=len("task "))
    assert countries.range.end == types.Position(line=task_line, character=len("task countries"))
    assert animals.uri == LOOKING_INWARD.as_uri() and animals.range.start.line == animals_line
    # A loop variable is defined by its `for`, in the spec itself.
    for_line = imported.split("\n").index("  for (subject, other) in pairs([qwen, gemma]) {")
    assert subject.uri == (tmp_path / "spec.intro").as_uri() and subject.range.start == types.Position(
        line=for_line, character=len("  for (")
    )


# ---------------------------------------------------------------- formatting
def test_formatting_is_intro_fmt(lsp: _Session, tmp_path: Path) -> None:
    text = MINI.read_text().replace("model qwen = embedded", "model   qwen   =   embedded")
    text = text.replace("  items: 12\n", "      items:12\n")
    expected = format_source(text, str(MINI))
    assert expected != text

    async def scenario(client: _Client) -> Any:
        uri = _open(client, tmp_path / "spec.intro", text)
        return await client.text_document_formatting_async(
            types.DocumentFormattingParams(
                text_document=_doc(uri), options=types.FormattingOptions(tab_size=2, insert_spaces=True)
            )
        )

    (edit,) = lsp.run(scenario)
    lines = text.split("\n")
    assert edit.range == types.Range(
        start=types.Position(line=0, character=0),
        end=types.Position(line=len(lines) - 1, character=len(lines[-1])),
    )
    assert edit.new_text == expected


def test_an_error_inside_an_imported_module_is_published_on_that_module(
    lsp: _Session, tmp_path: Path
) -> None:
    helpers = tmp_path / "helpers.intro"
    helpers.write_text('let greeting = "hello"\nlet broken = [1, 2\n')
    spec_text = 'use helpers\nmodel m = embedded "gemma-3-270m"\n'
    expected = json.loads(
        subprocess.run(
            [INTRO, "check", str(_write(tmp_path / "spec.intro", spec_text)), "--json"], capture_output=True
        ).stdout
    )
    assert [(Path(d["path"]).name, d["code"]) for d in expected] == [("helpers.intro", "E002")]

    async def scenario(client: _Client) -> None:
        uri = _open(client, tmp_path / "spec.intro", spec_text)
        await client.wait_for(lambda: bool(client.diagnostics.get(helpers.as_uri())))
        assert client.diagnostics[uri] == []
        (got,) = client.diagnostics[helpers.as_uri()]
        (cli,) = expected
        assert (got.code, got.range.start.line + 1, got.range.start.character + 1) == (
            cli["code"],
            cli["line"],
            cli["column"],
        )
        # Once the spec stops importing it, the module's diagnostics are withdrawn.
        client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
                content_changes=[
                    types.TextDocumentContentChangeWholeDocument(text=spec_text.split("\n", 1)[1])
                ],
            )
        )
        await client.wait_for(lambda: client.diagnostics.get(helpers.as_uri()) == [])

    lsp.run(scenario)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
