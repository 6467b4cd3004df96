"""The language's words and token shapes, read from the lark grammar, and a tokenizer that never fails.

Keywords are the grammar's alphabetic string terminals (`"use"`, `"model"`, `"true"`, ...); symbols are its
other string terminals; names, numbers, strings and comments use the grammar's own regular expressions.
The tokenizer covers every character of any text: what no terminal matches becomes an `error` token, so
editors can work on half-typed specs that the parser rejects.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

from attrs import frozen
from lark import Lark
from lark.lexer import PatternStr

from intro.compiler.builtins import FUNCTIONS

# How a keyword is highlighted. Keywords not named here are declaration words (`model`, `task`, `let`, ...),
# so a keyword added to the grammar is highlighted as one without touching this module.
CONTROL = frozenset({"use", "as", "for", "in", "return"})
CONSTANTS = frozenset({"true", "false"})
OPERATORS = frozenset({"=", "+", "-", "*", "/", "<", ">", "<=", ">=", "==", "!="})
# The regex terminals, in the order the tokenizer tries them (a long string before a string).
REGEX_TERMINALS = ("COMMENT", "LONG_STRING", "STRING", "NUMBER", "NAME")


@frozen
class Vocabulary:
    keywords: tuple[str, ...]
    symbols: tuple[str, ...]
    patterns: dict[str, str]  # terminal name -> Python regular expression, from the grammar
    whitespace: str
    builtins: tuple[str, ...]

    def keyword_kind(self, word: str) -> str:
        """`control`, `constant` or `declaration`."""
        if word in CONTROL:
            return "control"
        return "constant" if word in CONSTANTS else "declaration"


def grammar_text() -> str:
    return resources.files("intro.compiler").joinpath("grammar/intro.lark").read_text(encoding="utf-8")


@functools.cache
def vocabulary() -> Vocabulary:
    return vocabulary_of(grammar_text())


def vocabulary_of(grammar: str) -> Vocabulary:
    """The vocabulary of a lark grammar text (the real one, or a changed one in tests)."""
    terminals = Lark(grammar, parser="lalr").terminals
    words = [t.pattern.value for t in terminals if isinstance(t.pattern, PatternStr)]
    patterns = {t.name: t.pattern.to_regexp() for t in terminals if not isinstance(t.pattern, PatternStr)}
    words += [word for regex in patterns.values() for word in _literal_alternatives(regex)]
    return Vocabulary(
        keywords=tuple(sorted(w for w in words if w.isidentifier())),
        symbols=tuple(sorted(w for w in words if not w.isidentifier())),
        patterns={name: patterns[name] for name in REGEX_TERMINALS},
        whitespace=patterns["WS"],
        builtins=tuple(sorted(FUNCTIONS)),
    )


def _literal_alternatives(regex: str) -> list[str]:
    """The words of a terminal written as alternatives of symbols (`COMPARE: "<=" | ">=" | ...` reaches lark
    as `(?:<=|>=|...)`): symbols like the grammar's string terminals. Any other regex gives none."""
    match = re.fullmatch(r"\(\?:(.*)\)", regex)
    if match is None:
        return []
    words = [re.sub(r"\\(.)", r"\1", part) for part in match.group(1).split("|")]
    if not all(
        word and not any(c.isalnum() or c.isspace() or c in "\\()[]{}?*+.^$" for c in word) for word in words
    ):
        return []
    return words


# ---------------------------------------------------------------- tokens
@frozen
class Token:
    kind: str  # comment | long_string | string | number | name | keyword | symbol | whitespace | error
    text: str
    offset: int  # index into the text
    line: int  # 1-based, like the compiler's spans
    column: int  # 1-based, in characters

    @property
    def end(self) -> int:
        return self.offset + len(self.text)


@functools.cache
def _master() -> re.Pattern[str]:
    vocab = vocabulary()
    parts = [f"(?P<{name}>{vocab.patterns[name]})" for name in REGEX_TERMINALS]
    parts.append(f"(?P<WS>{vocab.whitespace})")
    symbols = sorted(vocab.symbols, key=len, reverse=True)
    parts.append("(?P<SYMBOL>" + "|".join(re.escape(s) for s in symbols) + ")")
    parts.append(r"(?P<ERROR>(?s:.))")
    return re.compile("|".join(parts))


_KINDS = {
    "COMMENT": "comment",
    "LONG_STRING": "long_string",
    "STRING": "string",
    "NUMBER": "number",
    "NAME": "name",
    "WS": "whitespace",
    "SYMBOL": "symbol",
    "ERROR": "error",
}


def tokenize(text: str) -> list[Token]:
    """Every character of `text` in exactly one token, in order."""
    keywords = set(vocabulary().keywords)
    tokens = []
    line, line_start = 1, 0
    for match in _master().finditer(text):
        kind = _KINDS[match.lastgroup or "ERROR"]
        if kind == "name" and match.group() in keywords:
            kind = "keyword"
        tokens.append(Token(kind, match.group(), match.start(), line, match.start() - line_start + 1))
        newlines = match.group().count("\n")
        if newlines:
            line += newlines
            line_start = match.start() + match.group().rindex("\n") + 1
    return tokens
