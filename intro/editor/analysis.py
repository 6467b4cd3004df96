"""What the language server knows about a spec: definitions, imports and scopes, read from its tokens.

An editor's buffer is half-typed most of the time, so this works on any text the parser may reject: it
reads the token stream of `vocabulary.tokenize` (the grammar's own terminals), follows braces to find
study, `for` and `fn` blocks, and resolves names the way the compiler does (block locals and a function's
parameters, then the file's declarations, then imports, then builtins). Deciding what is an error stays
with the compiler.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

from attrs import field, frozen

from intro.compiler.evaluate import module_file

from .vocabulary import Token, tokenize

# Keywords that declare a name (`model qwen = ...`, `let x = ...`, `measure m = ...`, `fn f(...)`).
DECLARING = frozenset({"model", "task", "property", "split", "sampling", "let", "study", "measure", "fn"})
# Keywords whose block follows a header: the names the header binds are visible in the block.
_BLOCK_HEADERS = ("study", "for", "fn")
_SUMMARY_LINES = 10


@frozen
class Place:
    """A region of a file: 1-based lines and columns (in characters), end exclusive, like compiler spans."""

    path: Path
    line: int
    column: int
    end_line: int
    end_column: int

    @classmethod
    def of(cls, path: Path, token: Token) -> Place:
        return cls(path, token.line, token.column, token.line, token.column + len(token.text))


@frozen
class Definition:
    name: str
    kind: str  # a declaring keyword, "loop variable", "parameter" or "module"
    place: Place  # the defining name (the file's start for a module)
    summary: str = ""  # the declaration's text, a few lines at most
    doc: str = ""  # the comment lines right above it (for a module: its leading comments)
    module: str = ""  # for a module: its dotted name; for a definition found in a module: that module


@frozen
class Import:
    module: tuple[str, ...]
    names: tuple[Token, ...]  # `use m: a, b`; empty when the module itself is bound
    alias: Token | None
    start: int  # offsets of the statement
    end: int

    @property
    def bound_name(self) -> str | None:
        """The name the module itself is bound to, if any."""
        if self.names:
            return None
        return self.alias.text if self.alias else self.module[-1]


@frozen
class _Local:
    definition: Definition
    start: int  # visible from here ...
    block: _Block  # ... to the end of this block


class _Block:
    """A study, `for` or `fn` body; its end is known once its closing brace is read."""

    def __init__(self, start: int):
        self.start = start
        self.end: int | None = None


@frozen
class Outline:
    """One file's names: the top-level definitions, imports and the locals of its study blocks."""

    path: Path
    text: str
    tokens: tuple[Token, ...]  # every token, whitespace and comments included
    code: tuple[Token, ...]  # the significant tokens
    definitions: dict[str, Definition]
    imports: tuple[Import, ...]
    locals: tuple[_Local, ...] = field(repr=False)
    block_starts: frozenset[int] = frozenset()  # offsets of the braces opening study, `for` and `fn` bodies

    @property
    def directory(self) -> Path:
        return self.path.parent

    def code_index_at(self, offset: int) -> int | None:
        """The significant token under `offset`, or the name that ends right at it (the cursor after a word)."""
        for index, token in enumerate(self.code):
            if token.offset <= offset < token.end:
                return index
        for index, token in enumerate(self.code):
            if token.end == offset and token.kind in ("name", "keyword"):
                return index
        return None

    def visible_locals(self, offset: int) -> Iterator[Definition]:
        """Block locals visible at `offset`, innermost first. A measure's name is not a name in scope."""
        visible = [
            local
            for local in self.locals
            if local.definition.kind != "measure"
            and local.start <= offset <= (local.block.end if local.block.end is not None else len(self.text))
        ]
        for local in sorted(visible, key=lambda local: local.block.start, reverse=True):
            yield local.definition


# ---------------------------------------------------------------- building an outline
def outline(path: Path, text: str) -> Outline:
    tokens = tuple(tokenize(text))
    code = tuple(t for t in tokens if t.kind not in ("whitespace", "comment"))
    scanner = _Scanner(path, text, code)
    scanner.run()
    return Outline(
        path,
        text,
        tokens,
        code,
        scanner.definitions,
        tuple(scanner.imports),
        tuple(scanner.locals),
        frozenset(scanner.block_starts),
    )


@functools.lru_cache(maxsize=64)
def _file_outline(path: Path, mtime_ns: int) -> Outline:
    return outline(path, path.read_text(encoding="utf-8"))


def file_outline(path: Path) -> Outline | None:
    """The outline of a file on disk (cached until it changes), or None when it cannot be read."""
    try:
        return _file_outline(path, path.stat().st_mtime_ns)
    except (OSError, UnicodeDecodeError):
        return None


class _Scanner:
    """One pass over the significant tokens, tracking brackets to tell blocks from records and calls."""

    def __init__(self, path: Path, text: str, code: tuple[Token, ...]):
        self.path, self.text, self.code = path, text, code
        self.definitions: dict[str, Definition] = {}
        self.imports: list[Import] = []
        self.locals: list[_Local] = []
        self.block_starts: list[int] = []
        self.pending: list[tuple[Definition, _Block, int]] = []  # block locals whose statement is still open
        self.stack: list[tuple[str, _Block | None]] = []  # ("block" | "other", block)
        self.header: str | None = None  # "study", "for" or "fn" until its body's brace
        self.header_depth = 0
        self.targets: list[Token] = []  # a `for` header's loop variables or a function's parameters

    def run(self) -> None:
        index = 0
        while index < len(self.code):
            index = self.step(index)
        for depth in {p[2] for p in self.pending}:
            self.settle(len(self.text), depth)

    def step(self, index: int) -> int:
        token = self.code[index]
        if token.kind == "keyword":
            return self.keyword(index, token)
        if token.kind == "symbol":
            self.bracket(token)
        return index + 1

    def keyword(self, index: int, token: Token) -> int:
        following = self.code[index + 1] if index + 1 < len(self.code) else None
        if token.text == "use" and not self.stack:
            return self.use(index)
        if token.text in ("let", "measure", "for", "return"):
            self.settle(token.offset, len(self.stack))
        if token.text in _BLOCK_HEADERS:
            self.header, self.header_depth, self.targets = token.text, len(self.stack), []
        if token.text == "fn":
            self.targets = self.parameters(index)
        if token.text == "in" and self.header == "for":
            self.targets.extend(self.loop_targets(index))
        if token.text in DECLARING and following is not None and following.kind == "name":
            self.declare(token, following, index)
        return index + 1

    def declare(self, keyword: Token, name: Token, index: int) -> None:
        doc = _doc_above(self.text, keyword.line)
        summary = self.summary(index) if not self.stack else _line_of(self.text, keyword.line)
        definition = Definition(name.text, keyword.text, Place.of(self.path, name), summary, doc)
        innermost = self.stack[-1] if self.stack else None
        if innermost is None:
            self.definitions.setdefault(name.text, definition)
        elif innermost[0] == "block" and innermost[1] is not None:
            self.pending.append((definition, innermost[1], len(self.stack)))

    def settle(self, offset: int, depth: int) -> None:
        """A statement at `depth` ends where the next begins: its `let` is visible from there on."""
        for definition, block, _depth in [p for p in self.pending if p[2] == depth]:
            self.locals.append(_Local(definition, offset, block))
        self.pending = [p for p in self.pending if p[2] != depth]

    def summary(self, index: int) -> str:
        """A top-level declaration's text: from its keyword to the next top-level declaration."""
        depth, end = 0, len(self.code)
        for later in range(index + 1, len(self.code)):
            token = self.code[later]
            depth += {"{": 1, "(": 1, "[": 1, "}": -1, ")": -1, "]": -1}.get(token.text, 0)
            if (
                depth <= 0
                and token.kind == "keyword"
                and token.text in DECLARING | {"use"}
                and later > index + 1
            ):
                end = later
                break
        stop = self.code[end - 1].end if end > index else self.code[index].end
        lines = self.text[self.code[index].offset : stop].split("\n")
        shown = "\n".join(lines[:_SUMMARY_LINES])
        return shown + ("\n..." if len(lines) > _SUMMARY_LINES else "")

    def loop_targets(self, index: int) -> list[Token]:
        before = self.code[index - 1] if index > 0 else None
        if before is not None and before.kind == "name":
            return [before]
        targets = []
        if before is not None and before.text == ")":
            back = index - 2
            while back >= 0 and self.code[back].text != "(":
                if self.code[back].kind == "name":
                    targets.append(self.code[back])
                back -= 1
        return targets[::-1]

    def parameters(self, index: int) -> list[Token]:
        """A function's parameter names: in `fn f(a, b: int = 2) {`, the names after `(` or a `,` at depth 1."""
        found, depth = [], 0
        for position in range(index + 1, len(self.code)):
            token = self.code[position]
            if token.text in ("{", "}") and depth == 0:
                break
            depth += {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}.get(token.text, 0)
            before = self.code[position - 1].text
            if depth == 1 and token.kind == "name" and before in ("(", ",") and position > index + 2:
                found.append(token)
        return found

    def bracket(self, token: Token) -> None:
        if token.text == "{" and self.header is not None and len(self.stack) == self.header_depth:
            block = _Block(token.offset)
            self.block_starts.append(token.offset)
            kind = "parameter" if self.header == "fn" else "loop variable"
            for target in self.targets:
                definition = Definition(
                    target.text,
                    kind,
                    Place.of(self.path, target),
                    _line_of(self.text, target.line),
                )
                self.locals.append(_Local(definition, token.offset, block))
            self.stack.append(("block", block))
            self.header, self.targets = None, []
        elif token.text in "{([":
            self.stack.append(("other", None))
        elif token.text in "})]" and self.stack:
            if self.stack[-1][0] == "block":
                self.settle(token.offset, len(self.stack))
            _, closed = self.stack.pop()
            if closed is not None:
                closed.end = token.end

    def use(self, index: int) -> int:
        start = self.code[index]
        module: list[str] = []
        names: list[Token] = []
        alias: Token | None = None
        position = index + 1
        while position < len(self.code) and self.code[position].kind == "name":
            module.append(self.code[position].text)
            if position + 1 < len(self.code) and self.code[position + 1].text == ".":
                position += 2
                continue
            position += 1
            break
        if position < len(self.code) and self.code[position].text == ":":
            position += 1
            while position < len(self.code) and self.code[position].kind == "name":
                names.append(self.code[position])
                position += 1
                if position < len(self.code) and self.code[position].text == ",":
                    position += 1
        if position + 1 < len(self.code) and self.code[position].text == "as":
            if self.code[position + 1].kind == "name":
                alias = self.code[position + 1]
            position += 2
        if module:
            end = self.code[position - 1].end
            self.imports.append(Import(tuple(module), tuple(names), alias, start.offset, end))
        return max(position, index + 1)


def _line_of(text: str, line: int) -> str:
    lines = text.split("\n")
    return lines[line - 1].strip() if 0 < line <= len(lines) else ""


def _doc_above(text: str, line: int) -> str:
    """The comment lines directly above `line`, without their `#` (a `# ----` ruler ends them)."""
    lines = text.split("\n")
    found: list[str] = []
    row = line - 2
    while row >= 0 and lines[row].lstrip().startswith("#"):
        comment = lines[row].strip()[1:].strip()
        if comment.startswith("---"):
            break
        found.append(comment)
        row -= 1
    return "\n".join(reversed(found)).strip()


def module_doc(text: str) -> str:
    """A module's leading comment block."""
    found = []
    for line in text.split("\n"):
        if not line.lstrip().startswith("#"):
            break
        found.append(line.strip()[1:].strip())
    return "\n".join(found).strip()


# ---------------------------------------------------------------- modules
def module_path(parts: tuple[str, ...], directory: Path) -> Path | None:
    """The file `use a.b` loads, as the compiler finds it; None when there is none."""
    if not parts:
        return None
    path = module_file(parts, directory)
    return path if path.is_file() else None


def module_definition(use: Import, directory: Path) -> Definition | None:
    path = module_path(use.module, directory)
    if path is None:
        return None
    text = file_outline(path)
    doc = module_doc(text.text) if text else ""
    name = use.bound_name or use.module[-1]
    return Definition(
        name, "module", Place(path, 1, 1, 1, 1), "use " + ".".join(use.module), doc, ".".join(use.module)
    )


def module_members(use: Import, directory: Path) -> dict[str, Definition]:
    """A module's top-level definitions, each marked with the module it comes from."""
    path = module_path(use.module, directory)
    found = file_outline(path) if path else None
    if found is None:
        return {}
    dotted = ".".join(use.module)
    return {name: _from_module(d, dotted) for name, d in found.definitions.items() if d.kind != "study"}


def _from_module(definition: Definition, dotted: str) -> Definition:
    return Definition(
        definition.name, definition.kind, definition.place, definition.summary, definition.doc, dotted
    )


def stdlib_directory() -> Path:
    return module_file(("stdlib", "_"), Path(".")).parent


def modules_in(directory: Path, exclude: Path | None = None) -> list[str]:
    """The module names `use` can reach in a folder: `.intro` files and folders holding them."""
    if not directory.is_dir():
        return []
    names = {p.stem for p in directory.glob("*.intro") if p != exclude}
    names |= {p.name for p in directory.iterdir() if p.is_dir() and any(p.rglob("*.intro"))}
    return sorted(n for n in names if n.isidentifier())
