"""The VS Code extension folder: its manifest points at real files and agrees with the grammar and the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

from intro.cli import main
from intro.editor.textmate import SCOPE
from intro.editor.vocabulary import vocabulary

EXTENSION = Path(__file__).resolve().parents[2] / "editors" / "vscode"


def _manifest() -> dict:  # type: ignore[type-arg]
    return json.loads((EXTENSION / "package.json").read_text())  # type: ignore[no-any-return]


def test_the_manifest_names_files_that_exist_and_the_generated_grammar() -> None:
    manifest = _manifest()
    assert (EXTENSION / manifest["main"]).is_file()
    (language,) = manifest["contributes"]["languages"]
    (grammar,) = manifest["contributes"]["grammars"]
    assert language["extensions"] == [".intro"] and grammar["language"] == language["id"]
    assert (EXTENSION / language["configuration"]).is_file()
    assert grammar["scopeName"] == SCOPE
    assert json.loads((EXTENSION / grammar["path"]).read_text())["scopeName"] == SCOPE
    assert "vscode-languageclient" in manifest["dependencies"]


def test_the_server_command_is_a_real_intro_subcommand(capsys) -> None:  # type: ignore[no-untyped-def]
    default = _manifest()["contributes"]["configuration"]["properties"]["intro.server.command"]["default"]
    assert default[0] == "intro"
    try:
        main([*default[1:], "--help"])
    except SystemExit as exit:
        assert exit.code == 0
    assert "language server" in capsys.readouterr().out
    script = (EXTENSION / "extension.js").read_text()
    assert (
        'getConfiguration("intro").get("server.command"' in script and "vscode-languageclient/node" in script
    )


def test_the_language_configuration_agrees_with_the_grammar() -> None:
    config = json.loads((EXTENSION / "language-configuration.json").read_text())
    comment = vocabulary().patterns["COMMENT"]
    assert re.fullmatch(comment, config["comments"]["lineComment"] + " a comment")
    symbols = set(vocabulary().symbols)
    assert all(open_ in symbols and close in symbols for open_, close in config["brackets"])
    for rule in config["indentationRules"].values():
        re.compile(rule)
    assert re.fullmatch(config["wordPattern"], "self_trained")
