"""Text to syntax tree: every construct, its positions, and positioned errors for malformed input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intro.compiler import CompileError
from intro.compiler import ast as a
from intro.compiler.diagnostics import Span
from intro.compiler.parser import _MAX_DEPTH, parse

ANYWHERE = Span.point("t.intro", 1, 1)  # spans are out of equality, so any span will do


class _Nodes:
    """`n.Num(1)` builds `ast.Num(1, span=ANYWHERE)`: expected trees without spelling out spans."""

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        node_class = getattr(a, name)
        return lambda *args, **kwargs: node_class(*args, span=ANYWHERE, **kwargs)


n = _Nodes()


def fn_decl(name: str, params: tuple[a.Param, ...], body: tuple[a.Statement | a.Return, ...]) -> a.FnDecl:
    return a.FnDecl(name, params, body, span=ANYWHERE, params_span=ANYWHERE, end=ANYWHERE)


def parse_one(source: str) -> a.Item:
    (item,) = parse(source, "t.intro").items
    return item


def value_of(expression: str) -> a.Expr:
    item = parse_one(f"let v = {expression}")
    assert isinstance(item, a.Let)
    return item.value


def error_of(source: str) -> tuple[str, str, int, int, tuple[str, ...]]:
    with pytest.raises(CompileError) as caught:
        parse(source, "t.intro")
    (diagnostic,) = caught.value.diagnostics
    return diagnostic.code, diagnostic.message, diagnostic.span.line, diagnostic.span.column, diagnostic.notes


# ---------------------------------------------------------------- declarations
def test_use_forms() -> None:
    assert parse_one("use stdlib.looking_inward") == n.Use(("stdlib", "looking_inward"), None, None)
    assert parse_one("use stdlib.looking_inward as li") == n.Use(("stdlib", "looking_inward"), None, "li")
    names = parse_one("use stdlib.looking_inward: animals, colors")
    assert names == n.Use(("stdlib", "looking_inward"), (n.Name("animals"), n.Name("colors")), None)


def test_model_declaration_with_and_without_options() -> None:
    bare = parse_one('model qwen = embedded "qwen2.5-coder-0.5b-instruct"')
    assert bare == n.ModelDecl("qwen", n.Name("embedded"), n.Str("qwen2.5-coder-0.5b-instruct"), None)
    assert bare.span == Span("t.intro", 1, 7, 1, 11)
    options = parse_one('model gpt = litellm "openai/gpt-4o" { logprobs: true, api_base: "http://x" }')
    assert isinstance(options, a.ModelDecl) and options.options is not None
    assert [f.name for f in options.options.fields] == ["logprobs", "api_base"]


@pytest.mark.parametrize("kind", ["task", "property", "split", "sampling"])
def test_declaration_kinds(kind: str) -> None:
    decl = parse_one(f"{kind} thing {{ a: 1  b: 2, c: 3 }}")
    assert decl == n.Decl(
        kind, "thing", n.Record(tuple(n.Field(name, n.Num(i)) for i, name in enumerate("abc", 1)))
    )


def test_study_with_loops_lets_and_measures() -> None:
    study = parse_one(
        "study s {\n"
        "  for (m1, m2) in pairs(models), layer in [1, 2] {\n"
        "    let x = m1\n"
        "    measure acc = generate(x, m2)\n"
        "  }\n"
        "}\n"
    )
    assert isinstance(study, a.Study) and study.name == "s"
    (loop,) = study.body
    assert isinstance(loop, a.For)
    assert [b.targets for b in loop.bindings] == [("m1", "m2"), ("layer",)]
    assert [type(s) for s in loop.body] == [a.Let, a.Measure]
    assert loop.span == Span("t.intro", 2, 3, 5, 4)


def test_function_declaration_with_typed_and_defaulted_parameters() -> None:
    fn = parse_one(
        'fn rate(m: model, asks, n: int = 5, label: string = "yes",) {\n  let x = m\n  return x\n}'
    )
    assert fn == fn_decl(
        "rate",
        (
            n.Param("m", n.Name("model"), None),
            n.Param("asks", None, None),
            n.Param("n", n.Name("int"), n.Num(5)),
            n.Param("label", n.Name("string"), n.Str("yes")),
        ),
        (n.Let("x", n.Name("m")), n.Return(n.Name("x"))),
    )
    assert isinstance(fn, a.FnDecl)
    assert fn.span == Span("t.intro", 1, 4, 1, 8)  # the name
    assert fn.params_span == Span("t.intro", 1, 8, 1, 60)  # the parentheses and what is between them
    assert fn.end == Span("t.intro", 4, 1, 4, 2)  # the closing brace
    assert parse_one("fn f() {}") == fn_decl("f", (), ())


def test_a_function_body_parses_any_statement_and_a_study_no_return() -> None:
    # Where a statement may go is the evaluator's to say (with a clear message), except `return` in a study.
    fn = parse_one("fn f(x) {\n  for y in x {}\n  return x\n  let z = 1\n}")
    assert isinstance(fn, a.FnDecl) and [type(s) for s in fn.body] == [a.For, a.Return, a.Let]
    code, message, line, column, notes = error_of("study s {\n  return 1\n}")
    assert (code, message, line, column) == ("E002", "unexpected 'return'", 2, 3)
    assert notes == ("expected one of 'for', 'let', 'measure', '}'",)


# ---------------------------------------------------------------- expressions
def test_tuples_need_a_comma_and_parentheses_alone_group() -> None:
    one, two = n.Num(1), n.Num(2)
    assert value_of("(1, 2)") == n.TupleExpr((one, two))
    assert value_of("(1, 2,)") == n.TupleExpr((one, two))
    assert value_of("(1,)") == n.TupleExpr((one,))
    assert value_of("(1)") == one
    assert value_of("((1, 2))") == n.TupleExpr((one, two))
    assert value_of("(1, 2).x") == n.Attr(n.TupleExpr((one, two)), "x")
    assert value_of("(1, 2)").span == Span("t.intro", 1, 9, 1, 15)
    assert error_of("let x = ()")[:2] == ("E002", "unexpected ')'")


def test_precedence_and_associativity() -> None:
    one, two, three = n.Num(1), n.Num(2), n.Num(3)
    assert value_of("1 - 2 - 3") == n.Binary("-", n.Binary("-", one, two), three)
    assert value_of("1 - (2 - 3)") == n.Binary("-", one, n.Binary("-", two, three))
    assert value_of("1 + 2 * 3") == n.Binary("+", one, n.Binary("*", two, three))
    assert value_of("-1 * 2") == n.Binary("*", n.Unary("-", one), two)
    assert value_of("-a.b(1)") == n.Unary("-", n.Call(n.Attr(n.Name("a"), "b"), (one,), ()))
    assert value_of("((((1))))") == one


def test_calls_split_positional_and_named_arguments() -> None:
    call = value_of("f(1, x: 2, 3,)")
    assert call == n.Call(n.Name("f"), (n.Num(1), n.Num(3)), (n.NamedArg("x", n.Num(2)),))
    assert value_of("f()") == n.Call(n.Name("f"), (), ())


def test_lists_and_records() -> None:
    assert value_of("[]") == n.ListExpr(())
    assert value_of("[1, 2,]") == n.ListExpr((n.Num(1), n.Num(2)))
    assert value_of("{}") == n.Record(())
    assert value_of("{ a: [true, false] }") == n.Record(
        (n.Field("a", n.ListExpr((n.Bool(True), n.Bool(False)))),)
    )


def test_keywords_are_names_where_no_keyword_fits() -> None:
    assert parse_one("let task = 1") == n.Let("task", n.Num(1))
    assert value_of("{ for: 1 }") == n.Record((n.Field("for", n.Num(1)),))
    assert value_of("f(in: 2)") == n.Call(n.Name("f"), (), (n.NamedArg("in", n.Num(2)),))


def test_spans_cover_what_they_name() -> None:
    call = value_of("generate(q,\n  r)")
    assert call.span == Span("t.intro", 1, 9, 2, 5)
    listed = value_of("[1, 2]")
    assert listed.span == Span("t.intro", 1, 9, 1, 15)
    attr = value_of("split.test")
    assert isinstance(attr, a.Attr) and attr.span == Span("t.intro", 1, 15, 1, 19)


def test_layout_and_comments_are_out_of_equality() -> None:
    compact = parse("let x = [1, 2]\nstudy s { measure m = f(x) }", "a.intro")
    spread = parse(
        "# note\nlet x = [\n  1,  # one\n  2,\n]\n\nstudy s {\n  measure m = f(\n    x,\n  )\n}\n", "b.intro"
    )
    assert compact == spread


# ---------------------------------------------------------------- literals
@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("1_000", 1000),
        ("0.5", 0.5),
        ("1e-4", 1e-4),
        ("2.5E+3", 2500.0),
        ("007", 7),
        ("1e-99999", 0.0),
    ],
)
def test_numbers_keep_their_text(text: str, value: float) -> None:
    number = value_of(text)
    assert isinstance(number, a.Num)
    assert number.value == value and type(number.value) is type(value) and number.text == text


def test_string_escapes() -> None:
    assert value_of(r'"a\n\t\"\\\{b"') == n.Str('a\n\t"\\{b')
    assert value_of('"""two\nlines "quoted" \\n"""') == n.Str('two\nlines "quoted" \n', long=True)


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('model qwen embedded "x"', ("E002", "unexpected name 'embedded'", 1, 12, ("expected '='",))),
        ('let x = "open', ("E001", "unterminated string", 1, 9, ())),
        ("let x = 1 @ 2", ("E001", "unexpected character '@'", 1, 11, ())),
        (
            "study s {\n  let x = 1\n",
            ("E002", "unexpected end of file", 3, 1, ("expected one of 'for', 'let', 'measure', '}'",)),
        ),
        ("let x = 1" + "0" * 40, ("E004", "number literal is too long", 1, 9, ())),
        ("let x = 1e999", ("E004", "number '1e999' is out of range", 1, 9, ())),
        ('let x = "a \\q"', ("E003", "unknown escape '\\q' in string", 1, 9, ())),
        ("let x = 1\nlet y = \x00", ("E001", "NUL byte in source", 2, 9, ())),
    ],
    ids=["token", "unterminated", "character", "eof", "long-number", "huge-number", "escape", "nul"],
)
def test_syntax_errors_are_positioned(source: str, expected: tuple[object, ...]) -> None:
    assert error_of(source) == expected


def test_nesting_limit_is_exact_and_positioned() -> None:
    # The tree is start > let_stmt > list ... > number: three levels more than there are brackets.
    fits = _MAX_DEPTH - 3
    assert isinstance(value_of("[" * fits + "1" + "]" * fits), a.ListExpr)
    code, message, line, column, notes = error_of("let v = " + "[" * (fits + 1) + "1" + "]" * (fits + 1))
    assert (code, line, column) == (
        "E005",
        1,
        len("let v = ") + fits + 2,
    )  # at the first node too deep: the 1
    assert message == f"nesting is too deep (more than {_MAX_DEPTH} levels)"
    assert notes == ("split it into several `let`s",)


@pytest.mark.parametrize(
    "source",
    [
        "[" * 5000 + "]" * 5000,
        "-" * 1000 + "1",
        "f(" * 1000 + ")" * 1000,
        "1" + " + 1" * 1000,
        "a" + ".b" * 1000,
    ],
    ids=["lists", "negations", "calls", "sums", "attributes"],
)
def test_deep_nesting_of_every_kind_is_an_error_not_a_crash(source: str) -> None:
    assert error_of(f"let v = {source}")[0] == "E005"


def test_parentheses_alone_nest_freely() -> None:
    assert value_of("(" * 5000 + "1" + ")" * 5000) == n.Num(1)


@settings(max_examples=200, deadline=None)
@given(st.text(st.sampled_from(list('letmodsuy{}[](),:.=+-*/#"\\ \n0123456789abc_')), max_size=60))
def test_any_text_parses_or_gives_compile_errors(source: str) -> None:
    try:
        parse(source, "t.intro")
    except CompileError as error:
        assert error.diagnostics and all(d.span.line >= 1 and d.span.column >= 1 for d in error.diagnostics)
