"""The TextMate grammar of `.intro` (VS Code and most editors), generated from the lark grammar.

`editors/vscode/syntaxes/intro.tmLanguage.json` is this module's output; a test fails when the two differ,
so a keyword added to `intro.lark` reaches the editors by running

    python -m intro.editor.textmate editors/vscode/syntaxes/intro.tmLanguage.json

The regular expressions are the grammar's own terminals and stay in the subset that Python's `re` and
Oniguruma read alike (single-line matches, begin/end for the multi-line strings).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from .vocabulary import OPERATORS, Vocabulary, vocabulary

SCOPE = "source.intro"
_KEYWORD_SCOPES = {
    "control": "keyword.control.intro",
    "declaration": "storage.type.intro",
    "constant": "constant.language.intro",
}


def grammar(vocab: Vocabulary | None = None) -> dict[str, Any]:
    vocab = vocab or vocabulary()
    repository = {
        "comment": {"name": "comment.line.number-sign.intro", "match": vocab.patterns["COMMENT"]},
        "long-string": _string('"""', '"""', "string.quoted.triple.intro"),
        # A one-line string: the grammar's STRING cannot cross a newline, so an unclosed one ends with its line.
        "string": _string('"', '"|$', "string.quoted.double.intro"),
        "number": {"name": "constant.numeric.intro", "match": vocab.patterns["NUMBER"]},
        **_keywords(vocab),
        "builtin": {
            "name": "support.function.builtin.intro",
            "match": r"\b(?:" + "|".join(vocab.builtins) + r")\b(?=\s*\()",
        },
        "call": {"name": "entity.name.function.intro", "match": _name(vocab) + r"(?=\s*\()"},
        "field": {"name": "variable.parameter.intro", "match": _name(vocab) + r"(?=\s*:)"},
        "name": {"name": "variable.other.intro", "match": _name(vocab)},
        "operator": {
            "name": "keyword.operator.intro",
            "match": _alternatives(sorted(OPERATORS & set(vocab.symbols))),
        },
        "punctuation": {
            "name": "punctuation.intro",
            "match": _char_class([s for s in vocab.symbols if s not in OPERATORS]),
        },
        "template": {"name": "constant.other.placeholder.intro", "match": r"\{\{.*?\}\}|\{%.*?%\}"},
        "escape": {"name": "constant.character.escape.intro", "match": r"\\."},
    }
    order = ["comment", "long-string", "string", "number", "field", *_keyword_rules(vocab)]
    order += ["builtin", "call", "name", "operator", "punctuation"]
    return {
        "$schema": "https://raw.githubusercontent.com/martinring/tmlanguage/master/tmlanguage.json",
        "name": "intro",
        "scopeName": SCOPE,
        "fileTypes": ["intro"],
        "patterns": [{"include": f"#{rule}"} for rule in order],
        "repository": repository,
    }


def _name(vocab: Vocabulary) -> str:
    return r"\b" + vocab.patterns["NAME"]


def _string(begin: str, end: str, scope: str) -> dict[str, Any]:
    return {
        "name": scope,
        "begin": begin,
        "end": end,
        "patterns": [{"include": "#escape"}, {"include": "#template"}],
    }


def _keyword_rules(vocab: Vocabulary) -> list[str]:
    return [f"keyword-{kind}" for kind in sorted({vocab.keyword_kind(w) for w in vocab.keywords})]


def _keywords(vocab: Vocabulary) -> dict[str, Any]:
    rules = {}
    for kind in sorted({vocab.keyword_kind(w) for w in vocab.keywords}):
        words = [w for w in vocab.keywords if vocab.keyword_kind(w) == kind]
        rules[f"keyword-{kind}"] = {
            "name": _KEYWORD_SCOPES[kind],
            "match": r"\b(?:" + "|".join(words) + r")\b",
        }
    return rules


def _alternatives(symbols: list[str]) -> str:
    """Longest first, so `<=` is one operator and not `<` then `=`."""
    return "(?:" + "|".join(re.escape(s) for s in sorted(symbols, key=len, reverse=True)) + ")"


def _char_class(symbols: list[str]) -> str:
    return "[" + "".join(re.escape(s) for s in symbols) + "]"


def render(vocab: Vocabulary | None = None) -> str:
    return json.dumps(grammar(vocab), indent=2) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m intro.editor.textmate OUTPUT.tmLanguage.json", file=sys.stderr)
        return 2
    Path(argv[0]).write_text(render(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
