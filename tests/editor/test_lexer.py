"""The pygments lexer: found through its entry point, and clean on every spec and stdlib module."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
from lark import Lark
from lark.lexer import PatternStr
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name, get_lexer_for_filename
from pygments.token import Error, Keyword, Name, String

from intro.editor.lexer import IntroLexer

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*(ROOT / "specs").glob("*.intro"), *(ROOT / "stdlib").glob("*.intro")])


def _grammar_keywords() -> list[str]:
    grammar = resources.files("intro.compiler").joinpath("grammar/intro.lark").read_text()
    terminals = Lark(grammar, parser="lalr").terminals
    return sorted(
        t.pattern.value for t in terminals if isinstance(t.pattern, PatternStr) and t.pattern.value.isalpha()
    )


def test_the_entry_point_registers_the_lexer() -> None:
    assert isinstance(get_lexer_by_name("intro"), IntroLexer)
    assert isinstance(get_lexer_for_filename("study.intro"), IntroLexer)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_spec_and_module_lexes_without_errors(path: Path) -> None:
    text = path.read_text()
    tokens = list(IntroLexer().get_tokens(text))
    assert [value for kind, value in tokens if kind is Error] == []
    assert "".join(value for _, value in tokens) == text.strip("\n") + "\n"  # pygments trims blank ends


def test_sources_were_found() -> None:
    assert len(SOURCES) >= 8


@pytest.mark.parametrize("word", _grammar_keywords())
def test_every_keyword_of_the_grammar_is_a_keyword(word: str) -> None:
    (kind, value), _newline = list(IntroLexer().get_tokens(word))
    assert value == word and kind in Keyword


def test_names_strings_and_placeholders() -> None:
    tokens = list(IntroLexer().get_tokens('task t { prompt: "Say {{ word }}" }\nlet m = finetune(x)'))
    kinds = {value: kind for kind, value in tokens}
    assert kinds["t"] in Name.Class and kinds["prompt"] in Name.Attribute
    assert kinds["{{ word }}"] is String.Interpol and kinds["finetune"] is Name.Builtin
    assert kinds["m"] is Name.Variable and kinds["x"] is Name
    (kind, _), *_ = IntroLexer().get_tokens("sampling: warm")
    assert kind is Name.Attribute  # a field named like a keyword, as the TextMate grammar scopes it


def test_what_the_grammar_rejects_is_an_error_token() -> None:
    tokens = list(IntroLexer().get_tokens('let x = @ "unterminated\n'))
    assert [value for kind, value in tokens if kind is Error] == ["@", '"']


def test_highlight_renders_html() -> None:
    html = highlight(
        (ROOT / "specs" / "looking_inward_mini.intro").read_text(), IntroLexer(), HtmlFormatter()
    )
    assert '<span class="kn">use</span>' in html and '<span class="nb">finetune</span>' in html
