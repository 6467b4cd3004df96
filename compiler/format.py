"""The canonical layout of `.intro` files, for `intro fmt`: parse to the syntax tree and print it back.

Layout comes from the tree alone (2-space indents, one field per line in declaration bodies, short
expressions on one line, long ones broken one element per line, one blank line between top-level
declarations), so any two layouts of the same spec format the same. The tree holds no comments: the
lexer hands them over (a `lexer_callbacks` hook on a Lark built from the same grammar) and the printer
puts each back by source line: a comment on its own line goes before the next thing printed after it,
at that thing's indent; a comment after code stays at the end of the printed line that holds that code.
Blank lines the author put between statements, fields and comments are kept (at most one).
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from importlib import resources

from attrs import evolve, frozen
from lark import Lark, Token, Tree

from . import ast
from .parser import parse

WIDTH = 100
INDENT = "  "

# How a printed line may be separated from what comes before it.
NO_GAP = "none"  # never a blank line (inside expressions)
KEEP_GAP = "keep"  # a blank line where the source had one (statements, fields, comments)
BLANK_GAP = "always"  # always a blank line (between top-level declarations)

_OPENERS = ("{", "[", "(")
_COMPARISON = 0  # comparisons do not chain: an operand that is one keeps its parentheses on either side
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2} | dict.fromkeys(
    ("<", "<=", ">", ">=", "==", "!="), _COMPARISON
)
_UNARY, _POSTFIX, _ATTRIBUTE = 3, 4, 5


@frozen
class Comment:
    """A `#` comment: the source line it is on and its text (trailing whitespace dropped)."""

    line: int
    text: str


@frozen
class _Line:
    """One printed line (a long string may make it several physical lines) and the source lines it covers."""

    indent: int
    text: str
    first: int  # comments above this source line are printed before it
    last: int  # comments on or above this source line that are still unprinted end it
    gap: str = NO_GAP
    closing: bool = False  # a closing bracket: comments before it belong to the block it closes


Block = list[_Line]


def format_source(source: str, path: str) -> str:
    """The canonical form of `source`. Raises CompileError (positioned) when it does not parse."""
    module = parse(source, path)
    comments, study_ends = _layout(source)
    printer = _Printer(source, comments, study_ends)
    return printer.module(module)


# ---------------------------------------------------------------- comments, from the lexer
_FOUND: ContextVar[list[Token]] = ContextVar("intro_format_comments")


def _keep_comment(token: Token) -> Token:
    _FOUND.get().append(token)
    return token


@functools.cache
def _lark() -> Lark:
    grammar = resources.files("intro.compiler").joinpath("grammar/intro.lark").read_text()
    return Lark(
        grammar,
        parser="lalr",
        propagate_positions=True,
        maybe_placeholders=True,
        lexer_callbacks={"COMMENT": _keep_comment},
    )


def _layout(source: str) -> tuple[list[Comment], list[int]]:
    """The comments of `source` in order, and the line of each study's closing brace (the AST keeps neither)."""
    found: list[Token] = []
    token = _FOUND.set(found)
    try:
        tree = _lark().parse(source)
    finally:
        _FOUND.reset(token)
    comments = [Comment(t.line or 1, str(t).rstrip()) for t in found]
    ends = [c.meta.end_line for c in tree.children if isinstance(c, Tree) and c.data == "study"]
    return comments, ends


def comments_of(source: str) -> list[Comment]:
    """Every comment in a source that parses (for tests and tools)."""
    return _layout(source)[0]


# ---------------------------------------------------------------- flat text of expressions
def flat(node: ast.Expr) -> str:
    """An expression on one line (a long string may still hold newlines)."""
    match node:
        case ast.Name():
            return node.id
        case ast.Str():
            return _long_string(node.value) if node.long else _string(node.value)
        case ast.Num():
            return node.text or repr(node.value)
        case ast.Bool():
            return "true" if node.value else "false"
        case ast.ListExpr():
            return "[" + ", ".join(flat(item) for item in node.items) + "]"
        case ast.TupleExpr():
            return (
                "("
                + ", ".join(flat(item) for item in node.items)
                + ("," if len(node.items) == 1 else "")
                + ")"
            )
        case ast.Record():
            if not node.fields:
                return "{}"
            return "{ " + ", ".join(f"{f.name}: {flat(f.value)}" for f in node.fields) + " }"
        case ast.Call():
            return _flat_operand(node.func, _POSTFIX) + "(" + ", ".join(_flat_args(node)) + ")"
        case ast.Attr():
            return _flat_operand(node.value, _ATTRIBUTE) + "." + node.name
        case ast.Unary():
            return node.op + _flat_operand(node.operand, _UNARY)
        case ast.Binary():
            context = _PRECEDENCE[node.op]
            left, right = _flat_operand(node.left, context), _flat_operand(node.right, context, right=True)
            return f"{left} {node.op} {right}"
    raise TypeError(f"not an expression: {node!r}")


def _flat_args(node: ast.Call) -> Iterator[str]:
    yield from (flat(arg) for arg in node.args)
    yield from (f"{named.name}: {flat(named.value)}" for named in node.kwargs)


def _flat_operand(node: ast.Expr, context: int, right: bool = False) -> str:
    text = flat(node)
    return f"({text})" if _needs_parens(node, context, right) else text


def _needs_parens(node: ast.Expr, context: int, right: bool = False) -> bool:
    """Whether `node` needs parentheses as an operand of something of precedence `context`.

    Operators associate to the left, so `a - (b - c)` keeps its parentheses and `(a - b) - c` loses
    them. Before an attribute's dot a number keeps them too: `1.x` would lex as the number `1.` and `x`.
    """
    if context == _ATTRIBUTE:
        return isinstance(node, ast.Num) or _needs_parens(node, _POSTFIX)
    precedence = _precedence(node)
    return precedence < context or ((right or context == _COMPARISON) and precedence == context)


def _precedence(node: ast.Expr) -> int:
    if isinstance(node, ast.Binary):
        return _PRECEDENCE[node.op]
    return _UNARY if isinstance(node, ast.Unary) else _POSTFIX


_SHORT_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _string(value: str) -> str:
    return '"' + "".join(_SHORT_ESCAPES.get(char, char) for char in value) + '"'


def _long_string(value: str) -> str:
    """Triple-quoted: newlines and quotes as they are, except what the lexer would misread.

    The lexer ends a long string at the first `\"\"\"`, escapes or not, so every third quote in a row is
    escaped; a carriage return is escaped because reading a file turns it into a newline.
    """
    out, quotes = [], 0
    for char in value:
        if char == '"':
            quotes += 1
            if quotes == 3:
                out.append('\\"')  # the backslash ends the run; this quote starts the next one
                quotes = 1
                continue
        else:
            quotes = 0
        out.append({"\\": "\\\\", "\r": "\\r"}.get(char, char))
    return '"""' + "".join(out) + '"""'


# ---------------------------------------------------------------- source positions
def _start_line(node: ast.Expr) -> int:
    """The line of an expression's first token (an attribute's span is only the name after the dot)."""
    while isinstance(node, ast.Attr):
        node = node.value
    return node.span.line


def _end_column(block: Block) -> int:
    line = block[-1]
    if "\n" in line.text:
        return len(line.text.rsplit("\n", 1)[1])
    return len(INDENT) * line.indent + len(line.text)


# ---------------------------------------------------------------- combining blocks
def _prefix(text: str, block: Block) -> Block:
    return [evolve(block[0], text=text + block[0].text), *block[1:]]


def _suffix(block: Block, text: str, last: int = 0) -> Block:
    end = block[-1]
    return [*block[:-1], evolve(end, text=end.text + text, last=max(end.last, last))]


def _join(head: Block, tail: Block) -> Block:
    """`tail` goes on at the end of `head`'s last line."""
    end, start = head[-1], tail[0]
    merged = evolve(end, text=end.text + start.text, last=max(end.last, start.last))
    return [*head[:-1], merged, *tail[1:]]


def _wrap(opener: str, block: Block, closer: str) -> Block:
    return _suffix(_prefix(opener, block), closer)


def _with_gap(block: Block, gap: str) -> Block:
    return [evolve(block[0], gap=gap), *block[1:]]


# ---------------------------------------------------------------- the printer
class _Printer:
    def __init__(self, source: str, comments: Sequence[Comment], study_ends: Sequence[int]):
        self.comments = list(comments)
        self.comment_lines = [c.line for c in comments]
        self.blank_lines = {n for n, text in enumerate(source.split("\n"), 1) if not text.strip()}
        self.study_ends = iter(study_ends)
        self.out: list[str] = []
        self.next_comment = 0
        self.last_line = 0  # the last source line printed so far
        self.after_opener = True  # no blank line at the start of the file or of a block

    # ------------------------------------------------------------ output
    def module(self, module: ast.Module) -> str:
        previous: tuple[ast.Item, Block] | None = None
        for item in module.items:
            block = self.item(item)
            gap = BLANK_GAP if previous is None or not _same_short_kind(previous, (item, block)) else KEEP_GAP
            self.emit(_with_gap(block, gap))
            previous = (item, block)
        self.flush_comments(before=None, indent=0, gap=KEEP_GAP)
        return "\n".join(self.out) + "\n" if self.out else ""

    def emit(self, block: Block) -> None:
        for line, after in zip(block, [*block[1:], None], strict=True):
            # A comment ends the last printed line holding code from its source line: `[1,  # one`
            # prints as `[` then `1,  # one`.
            self.emit_line(line, line.last if after is None else min(line.last, max(after.first - 1, 0)))

    def emit_line(self, line: _Line, until: int) -> None:
        indent = line.indent + (1 if line.closing else 0)
        flushed = self.flush_comments(before=line.first, indent=indent, gap=line.gap)
        if not line.closing and (
            line.gap == BLANK_GAP and not flushed or self.source_gap(line.gap, line.first)
        ):
            self.blank()
        text = INDENT * line.indent + line.text
        trailing = self.take_comments(until=until)
        if trailing:
            text += "  " + "  ".join(c.text for c in trailing)
        self.out.append(text)
        self.after_opener = line.text.endswith(_OPENERS)
        self.last_line = max(self.last_line, line.last, *(c.line for c in trailing))

    def flush_comments(self, before: int | None, indent: int, gap: str) -> int:
        """Print the comments above source line `before` (all that are left when None) on their own lines."""
        pending = self.take_comments(until=None if before is None else before - 1)
        for index, comment in enumerate(pending):
            if (index == 0 and gap == BLANK_GAP) or self.source_gap(gap, comment.line):
                self.blank()
            self.out.append(INDENT * indent + comment.text)
            self.after_opener = False
            self.last_line = max(self.last_line, comment.line)
        return len(pending)

    def take_comments(self, until: int | None) -> list[Comment]:
        end = len(self.comments) if until is None else bisect.bisect_right(self.comment_lines, until)
        taken = self.comments[self.next_comment : end]
        self.next_comment = max(self.next_comment, end)
        return taken

    def source_gap(self, gap: str, line: int) -> bool:
        """Whether the source had a blank line between what was printed last and `line` (and it counts)."""
        if gap == NO_GAP:
            return False
        return any(n in self.blank_lines for n in range(self.last_line + 1, line))

    def blank(self) -> None:
        if self.out and self.out[-1] != "" and not self.after_opener:
            self.out.append("")

    def comment_after_the_opener(self, first: int, middle_first: int, last: int) -> bool:
        """Whether a comment inside brackets opened on line `first` and closed on `last`, around items that
        start on line `middle_first`, would not end the opener's line: then the items go one per line.

        A comment on the opener's line (or before it) ends the opener's line whether the items are hugged or
        stacked, so it does not decide between them: the next formatting finds it there again and decides
        the same (formatting stays idempotent).
        """
        return self.comment_inside(min(first, middle_first - 1) + 1, last)

    def comment_inside(self, first: int, last: int) -> bool:
        """Whether a comment sits on lines first..last-1: inside a construct that closes on line `last`."""
        # A comment already printed (at the end of an earlier statement sharing its source line) is not inside.
        index = max(bisect.bisect_left(self.comment_lines, first), self.next_comment)
        return index < len(self.comment_lines) and self.comment_lines[index] < last

    # ------------------------------------------------------------ top-level items
    def item(self, item: ast.Item) -> Block:
        match item:
            case ast.Use():
                return [_Line(0, _use_text(item), item.span.line, item.span.end_line)]
            case ast.ModelDecl():
                return self.model(item)
            case ast.Decl():
                head = _Line(0, f"{item.kind} {item.name} ", item.span.line, item.body.span.line)
                return _join([head], self.body(item.body, 0))
            case ast.Let():
                return self.binding_statement("let", item.name, item.value, item.span.line, 0)
            case ast.FnDecl():
                return self.function(item)
            case ast.Study():
                end = next(self.study_ends)
                head = _Line(0, f"study {item.name} ", item.span.line, item.span.end_line)
                return _join([head], self.statements(item.body, 0, item.span.line, end))
        raise TypeError(f"not a top-level item: {item!r}")

    def model(self, decl: ast.ModelDecl) -> Block:
        text = f"model {decl.name} = {decl.backend.id} {_string(decl.locator.value)}"
        head = [_Line(0, text, decl.span.line, decl.locator.span.end_line)]
        if decl.options is None:
            return head
        return _join(_suffix(head, " "), self.body(decl.options, 0))

    def function(self, decl: ast.FnDecl) -> Block:
        """`fn name(params) {`, the parameters on one line when they fit, else one per line; then the body."""
        texts = [_param_text(p) for p in decl.params]
        header_end = decl.params_span.end_line
        one_line = f"fn {decl.name}(" + ", ".join(texts) + ") {"
        head = [_Line(0, f"fn {decl.name}", decl.span.line, decl.span.line)]
        if (
            len(one_line) <= WIDTH
            and "\n" not in one_line
            and not self.comment_inside(decl.span.line, header_end)
        ):
            head = _suffix(head, "(" + ", ".join(texts) + ")", header_end)
        else:
            params = [_suffix(self.parameter(p), ",") for p in decl.params]
            head = _join(head, self.bracketed("(", params, ")", 0, decl.span.line, header_end, NO_GAP))
        body = self.statements(decl.body, 0, header_end, decl.end.line)
        return _join(_suffix(head, " "), body)

    def parameter(self, param: ast.Param) -> Block:
        head = param.name if param.type is None else f"{param.name}: {param.type.id}"
        if param.default is None:
            return [_Line(1, head, param.span.line, param.span.line)]
        value = self.expr(param.default, 1, len(INDENT) + len(head) + 3, reserve=1)
        return _prefix(head + " = ", _retag(value, param.span.line))

    def body(self, record: ast.Record, indent: int) -> Block:
        """A declaration's body: one field per line."""
        first, last = record.span.line, record.span.end_line
        if not record.fields and not self.comment_inside(first, last):
            return [_Line(indent, "{}", first, last)]
        fields = [self.field(f, indent + 1, KEEP_GAP) for f in record.fields]
        return self.bracketed("{", fields, "}", indent, first, last, KEEP_GAP)

    def field(self, field: ast.Field, indent: int, gap: str) -> Block:
        head = f"{field.name}: "
        value = self.expr(field.value, indent, len(INDENT) * indent + len(head))
        return _with_gap(_prefix(head, _retag(value, field.span.line)), gap)

    # ------------------------------------------------------------ statements
    def statements(
        self, body: Sequence[ast.Statement | ast.Return], indent: int, first: int, last: int
    ) -> Block:
        if not body and not self.comment_inside(first, last):
            return [_Line(indent, "{}", first, last)]
        blocks = [_with_gap(self.statement(s, indent + 1), KEEP_GAP) for s in body]
        return self.bracketed("{", blocks, "}", indent, first, last, KEEP_GAP)

    def statement(self, stmt: ast.Statement | ast.Return, indent: int) -> Block:
        match stmt:
            case ast.Let():
                return self.binding_statement("let", stmt.name, stmt.value, stmt.span.line, indent)
            case ast.Measure():
                return self.binding_statement("measure", stmt.name, stmt.value, stmt.span.line, indent)
            case ast.For():
                return self.loop(stmt, indent)
            case ast.Return():
                block = self.expr(stmt.value, indent, len(INDENT) * indent + len("return "))
                return _prefix("return ", _retag(block, stmt.span.line))
        raise TypeError(f"not a statement: {stmt!r}")

    def binding_statement(self, keyword: str, name: str, value: ast.Expr, line: int, indent: int) -> Block:
        head = f"{keyword} {name} = "
        block = self.expr(value, indent, len(INDENT) * indent + len(head))
        return _prefix(head, _retag(block, line))

    def loop(self, stmt: ast.For, indent: int) -> Block:
        """`for a in x, b in y {`; a header too long for one line puts each binding on its own line."""
        heads = [_target_text(b.targets) + " in " for b in stmt.bindings]
        one_line = "for " + ", ".join(h + flat(b.iterable) for h, b in zip(heads, stmt.bindings, strict=True))
        too_long = len(INDENT) * indent + len(one_line) + len(" {") > WIDTH or "\n" in one_line
        stacked = too_long or self.comment_inside(stmt.span.line, stmt.bindings[-1].span.line)
        block = [_Line(indent, "for ", stmt.span.line, stmt.span.line)]
        for index, (head, binding) in enumerate(zip(heads, stmt.bindings, strict=True)):
            if index and stacked:
                # Continuation lines line up under the first binding, just after `for `.
                block = [*_suffix(block, ","), _Line(indent + 2, "", binding.span.line, binding.span.line)]
            elif index:
                block = _suffix(block, ", ")
            block = _suffix(block, head)
            block = _join(block, self.expr(binding.iterable, block[-1].indent, _end_column(block), reserve=2))
        body_start = block[-1].last
        return _join(_suffix(block, " "), self.statements(stmt.body, indent, body_start, stmt.span.end_line))

    # ------------------------------------------------------------ expressions
    def expr(self, node: ast.Expr, indent: int, column: int, reserve: int = 0) -> Block:
        """`node` starting at `column` of a line indented `indent` levels, leaving `reserve` columns after it."""
        text = flat(node)
        first, last = _start_line(node), node.span.end_line
        fits = "\n" not in text and column + len(text) + reserve <= WIDTH
        if fits and not self.comment_inside(first, last):
            return [_Line(indent, text, first, last)]
        match node:
            case ast.ListExpr():
                return self.sequence("[", [(None, item) for item in node.items], "]", indent, first, last)
            case ast.TupleExpr():
                items = [(None, item) for item in node.items]
                return self.sequence("(", items, ")", indent, first, last, hug=len(items) > 1)
            case ast.Record():
                fields = [self.field(f, indent + 1, NO_GAP) for f in node.fields]
                return self.bracketed("{", fields, "}", indent, first, last, NO_GAP)
            case ast.Call():
                return self.call(node, indent, column)
            case ast.Attr():
                return _suffix(self.operand(node.value, _ATTRIBUTE, indent, column), "." + node.name, last)
            case ast.Unary():
                return _prefix(node.op, self.operand(node.operand, _UNARY, indent, column + 1, reserve))
            case ast.Binary():
                context = _PRECEDENCE[node.op]
                left = _suffix(self.operand(node.left, context, indent, column), f" {node.op} ")
                right = self.operand(node.right, context, indent, _end_column(left), reserve, right=True)
                return _join(left, right)
        return [_Line(indent, text, first, last)]

    def operand(
        self, node: ast.Expr, context: int, indent: int, column: int, reserve: int = 0, right: bool = False
    ) -> Block:
        if _needs_parens(node, context, right):
            return _wrap("(", self.expr(node, indent, column + 1, reserve + 1), ")")
        return self.expr(node, indent, column, reserve)

    def call(self, node: ast.Call, indent: int, column: int) -> Block:
        func = self.operand(node.func, _POSTFIX, indent, column)
        args = [(None, arg) for arg in node.args] + [(named.name, named.value) for named in node.kwargs]
        if not args:
            return _suffix(func, "()", node.span.end_line)
        return _join(func, self.sequence("(", args, ")", indent, func[-1].last, node.span.end_line))

    def sequence(
        self,
        opener: str,
        items: Sequence[tuple[str | None, ast.Expr]],
        closer: str,
        indent: int,
        first: int,
        last: int,
        hug: bool = True,
    ) -> Block:
        """Items of a list or call that do not fit on one line: all on one indented line, else one per line.

        `hug=False` always puts one per line, each with its comma (a one-item tuple needs its comma).
        """
        if not items:
            return [_Line(indent, opener + closer, first, last)]
        texts = [(f"{name}: " if name else "") + flat(value) for name, value in items]
        hugged = ", ".join(texts)
        middle_first = _start_line(items[0][1])
        inner = len(INDENT) * (indent + 1)
        if (
            hug
            and "\n" not in hugged
            and inner + len(hugged) <= WIDTH
            and not self.comment_after_the_opener(first, middle_first, last)
        ):
            middle = [_Line(indent + 1, hugged, middle_first, items[-1][1].span.end_line)]
            return self.bracketed(opener, [middle], closer, indent, first, last, NO_GAP)
        lines = []
        for name, value in items:
            head = f"{name}: " if name else ""
            block = self.expr(value, indent + 1, inner + len(head), reserve=1)
            lines.append(_suffix(_prefix(head, block), ","))
        return self.bracketed(opener, lines, closer, indent, first, last, NO_GAP)

    def bracketed(
        self, opener: str, parts: list[Block], closer: str, indent: int, first: int, last: int, gap: str
    ) -> Block:
        block = [_Line(indent, opener, first, first)]
        for part in parts:
            block.extend(part)
        block.append(_Line(indent, closer, last, last, gap=gap, closing=True))
        return block


def _retag(block: Block, line: int) -> Block:
    """A statement's first printed line starts at its keyword's line, which may be above its value's."""
    return [evolve(block[0], first=min(block[0].first, line)), *block[1:]]


def _param_text(param: ast.Param) -> str:
    text = param.name if param.type is None else f"{param.name}: {param.type.id}"
    return text if param.default is None else f"{text} = {flat(param.default)}"


def _target_text(targets: tuple[str, ...]) -> str:
    return targets[0] if len(targets) == 1 else "(" + ", ".join(targets) + ")"


def _use_text(use: ast.Use) -> str:
    text = "use " + ".".join(use.module)
    if use.names is not None:
        text += ": " + ", ".join(n.id for n in use.names)
    if use.alias is not None:
        text += " as " + use.alias
    return text


def _same_short_kind(previous: tuple[ast.Item, Block], current: tuple[ast.Item, Block]) -> bool:
    """Consecutive one-line `use`, `model` or `let` items may stay together, as their author grouped them."""
    (before, before_block), (item, block) = previous, current
    if len(before_block) != 1 or len(block) != 1 or "\n" in before_block[0].text + block[0].text:
        return False
    return type(before) is type(item) and isinstance(item, ast.Use | ast.ModelDecl | ast.Let)
