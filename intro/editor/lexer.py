"""A pygments lexer for `.intro`, registered as the `intro` lexer (entry point `pygments.lexers`).

It reads the grammar's own terminals through `vocabulary.tokenize`, so docs and notebooks highlight
exactly the keywords, names, numbers, strings and comments the parser knows. A character no terminal
matches is an `Error` token, as in the parser.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from pygments.lexer import Lexer
from pygments.token import (
    Comment,
    Error,
    Keyword,
    Name,
    Number,
    Operator,
    Punctuation,
    String,
    Whitespace,
)
from pygments.token import _TokenType as TokenType

from .vocabulary import OPERATORS, Token, tokenize, vocabulary

# Jinja2 placeholders and tags inside prompt strings.
_TEMPLATE = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.DOTALL)
_KEYWORDS = {"control": Keyword.Namespace, "constant": Keyword.Constant, "declaration": Keyword.Declaration}
_SIMPLE = {
    "comment": Comment.Single,
    "number": Number,
    "whitespace": Whitespace,
    "error": Error,
}
_DECLARED_AS = {"let": Name.Variable, "measure": Name.Variable, "study": Name.Namespace}


class IntroLexer(Lexer):
    """Lexer for intro experiment specs."""

    name = "intro"
    aliases = ["intro"]
    filenames = ["*.intro"]
    mimetypes = ["text/x-intro"]

    def get_tokens_unprocessed(self, text: str) -> Iterator[tuple[int, TokenType, str]]:  # type: ignore[override]
        tokens = tokenize(text)
        code = [t for t in tokens if t.kind not in ("whitespace", "comment")]
        following = {id(a): b for a, b in zip(code, code[1:], strict=False)}
        preceding = {id(b): a for a, b in zip(code, code[1:], strict=False)}
        for token in tokens:
            if token.kind in ("string", "long_string"):
                yield from _string(token)
            else:
                kind = _token_type(token, preceding.get(id(token)), following.get(id(token)))
                yield token.offset, kind, token.text


def _token_type(token: Token, before: Token | None, after: Token | None) -> TokenType:
    if token.kind in _SIMPLE:
        return _SIMPLE[token.kind]
    if token.kind == "keyword":
        if after is not None and after.text == ":":
            return Name.Attribute  # no keyword precedes ':' in the grammar: `sampling: warm` is a field
        return _KEYWORDS[vocabulary().keyword_kind(token.text)]
    if token.kind == "symbol":
        return Operator if token.text in OPERATORS else Punctuation
    return _name_type(token, before, after)


def _name_type(token: Token, before: Token | None, after: Token | None) -> TokenType:
    if (
        before is not None
        and before.kind == "keyword"
        and vocabulary().keyword_kind(before.text) == "declaration"
    ):
        return _DECLARED_AS.get(before.text, Name.Class)
    if after is not None and after.text == "(":
        return Name.Builtin if token.text in vocabulary().builtins else Name.Function
    if after is not None and after.text == ":":
        return Name.Attribute  # a record field or a named argument
    return Name


def _string(token: Token) -> Iterator[tuple[int, TokenType, str]]:
    """A string, with its jinja2 placeholders marked as interpolation."""
    kind = String.Double if token.kind == "string" else String.Doc
    position = 0
    for match in _TEMPLATE.finditer(token.text):
        if match.start() > position:
            yield token.offset + position, kind, token.text[position : match.start()]
        yield token.offset + match.start(), String.Interpol, match.group()
        position = match.end()
    if position < len(token.text):
        yield token.offset + position, kind, token.text[position:]
