"""The TextMate grammar: generated from the lark grammar, and it scopes every character of every spec.

`_TextMate` is a small interpreter of the grammar's rules as VS Code runs them: line by line, at each
position the rule whose regex matches earliest wins (ties: a begin/end rule's end first, then rule order),
`match` rules scope their match, `begin`/`end` rules push a scope that lasts across lines until their end.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from lark import Lark
from lark.lexer import PatternStr

from intro.editor import textmate
from intro.editor.vocabulary import grammar_text, vocabulary_of

ROOT = Path(__file__).resolve().parents[2]
GRAMMAR_FILE = ROOT / "editors" / "vscode" / "syntaxes" / "intro.tmLanguage.json"
SOURCES = sorted([*(ROOT / "specs").glob("*.intro"), *(ROOT / "stdlib").glob("*.intro")])


class _TextMate:
    def __init__(self, grammar: dict[str, Any]):
        self.grammar = grammar

    def rules(self, patterns: list[dict[str, Any]]) -> list[dict[str, Any]]:
        found = []
        for pattern in patterns:
            if "include" in pattern:
                rule = self.grammar["repository"][pattern["include"].removeprefix("#")]
                found += (
                    self.rules(rule["patterns"]) if "patterns" in rule and "begin" not in rule else [rule]
                )
            else:
                found.append(pattern)
        return found

    def scopes(self, text: str) -> list[str | None]:
        """The innermost scope of each character of `text` (None: no rule covered it); newlines get ''."""
        scopes: list[str | None] = []
        stack: list[dict[str, Any]] = []
        for line in text.split("\n"):
            scopes += self._line(line, stack)
            scopes.append("")
        return scopes[:-1]

    def _line(self, line: str, stack: list[dict[str, Any]]) -> list[str | None]:
        scopes: list[str | None] = [None] * len(line)
        position = 0
        while position <= len(line):
            inside = stack[-1] if stack else None
            candidates = [("end", inside)] if inside else []
            patterns = inside.get("patterns", []) if inside else self.grammar["patterns"]
            candidates += [("rule", rule) for rule in self.rules(patterns)]
            best = None
            for kind, rule in candidates:
                regex = rule["end"] if kind == "end" else rule.get("match") or rule["begin"]
                match = re.compile(regex).search(line, position)
                if match and (best is None or match.start() < best[2].start()):
                    best = (kind, rule, match)
            if best is None:
                self._fill(scopes, position, len(line), inside)
                break
            kind, rule, match = best
            self._fill(scopes, position, match.start(), inside)
            self._fill(scopes, match.start(), match.end(), rule)
            if kind == "end":
                stack.pop()
            elif "begin" in rule:
                stack.append(rule)
            position = match.end() if match.end() > position else position + 1
            if match.end() == match.start() and kind != "end" and "begin" not in rule:
                self._fill(scopes, match.start(), match.start() + 1, inside)
        return scopes

    @staticmethod
    def _fill(scopes: list[str | None], start: int, end: int, rule: dict[str, Any] | None) -> None:
        for index in range(start, min(end, len(scopes))):
            scopes[index] = rule["name"] if rule else None


def _checked_in() -> dict[str, Any]:
    return json.loads(GRAMMAR_FILE.read_text())  # type: ignore[no-any-return]


def _grammar_keywords() -> list[str]:
    text = resources.files("intro.compiler").joinpath("grammar/intro.lark").read_text()
    terminals = Lark(text, parser="lalr").terminals
    return sorted(
        t.pattern.value for t in terminals if isinstance(t.pattern, PatternStr) and t.pattern.value.isalpha()
    )


def test_the_checked_in_grammar_is_generated_from_the_lark_grammar() -> None:
    assert GRAMMAR_FILE.read_text() == textmate.render(), (
        "regenerate: python -m intro.editor.textmate editors/vscode/syntaxes/intro.tmLanguage.json"
    )


def test_a_keyword_added_to_the_lark_grammar_changes_the_generated_grammar() -> None:
    changed = grammar_text().replace('"study" NAME', '"experiment" NAME')
    generated = json.dumps(textmate.grammar(vocabulary_of(changed)))
    assert "experiment" in generated and "experiment" not in json.dumps(_checked_in())


@pytest.mark.parametrize("word", _grammar_keywords())
def test_every_keyword_of_the_lark_grammar_is_a_keyword_in_the_textmate_grammar(word: str) -> None:
    keyword_scopes = {"keyword.control.intro", "storage.type.intro", "constant.language.intro"}
    scopes = _TextMate(_checked_in()).scopes(f"{word} x")
    assert set(scopes[: len(word)]) <= keyword_scopes


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_character_of_every_spec_gets_a_scope(path: Path) -> None:
    text = path.read_text()
    scopes = _TextMate(_checked_in()).scopes(text)
    assert len(scopes) == len(text)
    uncovered = [
        f"{text.count(chr(10), 0, i) + 1}:{i - text.rfind(chr(10), 0, i)} {text[i]!r}"
        for i, scope in enumerate(scopes)
        if scope is None and not text[i].isspace()
    ]
    assert uncovered == []


def test_the_interpreter_reports_what_no_rule_covers() -> None:
    scopes = _TextMate(_checked_in()).scopes('let x = @ # note\nlet s = """one\n{{ two }} "three"\n"""')
    text = 'let x = @ # note\nlet s = """one\n{{ two }} "three"\n"""'
    assert [text[i] for i, s in enumerate(scopes) if s is None and not text[i].isspace()] == ["@"]
    assert scopes[text.index("{{")] == "constant.other.placeholder.intro"
    assert scopes[text.index('"three"')] == "string.quoted.triple.intro"  # still inside the long string
    assert scopes[text.index("note")] == "comment.line.number-sign.intro"


def test_names_fields_and_builtins_are_told_apart() -> None:
    text = "let m = finetune(base, rank: 8)"
    scopes = _TextMate(_checked_in()).scopes(text)
    assert scopes[text.index("let")] == "storage.type.intro"
    assert scopes[text.index("finetune")] == "support.function.builtin.intro"
    assert scopes[text.index("base")] == "variable.other.intro"
    assert scopes[text.index("rank")] == "variable.parameter.intro"
    assert scopes[text.index("8")] == "constant.numeric.intro"
