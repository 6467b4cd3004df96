"""`intro fmt`: the canonical form keeps meaning and comments, and formatting it again changes nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from intro.compiler import CompileError
from intro.compiler.format import comments_of, format_source
from intro.compiler.parser import parse

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(ROOT.glob("specs/**/*.intro")) + sorted(ROOT.glob("stdlib/**/*.intro"))


def assert_canonical(source: str, path: str = "spec.intro") -> str:
    """Format `source` and check the three promises of `fmt`; return the formatted text."""
    formatted = format_source(source, path)
    assert parse(formatted, path) == parse(source, path), "formatting changed the meaning"
    assert format_source(formatted, path) == formatted, "formatting is not idempotent"
    assert _comment_text(formatted) == _comment_text(source), "a comment was lost or changed"
    return formatted


def _comment_text(source: str) -> str:
    # Comments that land on one line are joined with two spaces, so compare them as one stream.
    return "  ".join(c.text for c in comments_of(source))


# ---------------------------------------------------------------- the project's own specs
def test_there_are_specs_to_format() -> None:
    names = {p.name for p in SOURCES}
    assert "looking_inward_mini.intro" in names and "looking_inward.intro" in names


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_project_specs_format_canonically(path: Path) -> None:
    assert_canonical(path.read_text(encoding="utf-8"), str(path))


# ---------------------------------------------------------------- layout, exactly
MESSY = """\
# header

use stdlib.looking_inward as li   # trailing on use
model  a = embedded "gemma-3-270m" {   # opener comment
  # before logprobs
  logprobs: true  # trailing logprobs

  # before finetune, after blank
  finetune: false,
  # dangling at end of body
}
sampling greedy { temperature: 0  max_tokens: 24 }
task empty {}
let xs = [1,  # one
  2,
  # before three
  3]
let y = 1 + 2 *(3 - 4) - (5 - 6)   # arithmetic
let z = -(1 + 2) / -x.y
let w = { a: 1, b: "q\\"uote\\n" }
let lg = li.predict_property(a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q, r, s, t, u, v, w, xx, yy, zz, aaa)
study s {   # study trailing
  # first statement comment
  let q = 1


  # after two blanks
  for (a, b) in pairs([x, y]), c in [1] {
    measure m = f(a,   # arg comment
       b)
  }
  # end of study
}
# after study

# eof
"""

CANONICAL = """\
# header

use stdlib.looking_inward as li  # trailing on use

model a = embedded "gemma-3-270m" {  # opener comment
  # before logprobs
  logprobs: true  # trailing logprobs

  # before finetune, after blank
  finetune: false
  # dangling at end of body
}

sampling greedy {
  temperature: 0
  max_tokens: 24
}

task empty {}

let xs = [
  1,  # one
  2,
  # before three
  3,
]

let y = 1 + 2 * (3 - 4) - (5 - 6)  # arithmetic
let z = -(1 + 2) / -x.y
let w = { a: 1, b: "q\\"uote\\n" }

let lg = li.predict_property(
  a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q, r, s, t, u, v, w, xx, yy, zz, aaa
)

study s {  # study trailing
  # first statement comment
  let q = 1

  # after two blanks
  for (a, b) in pairs([x, y]), c in [1] {
    measure m = f(
      a,  # arg comment
      b,
    )
  }
  # end of study
}
# after study

# eof
"""


def test_layout_and_comment_placement() -> None:
    assert assert_canonical(MESSY) == CANONICAL


def test_long_call_breaks_one_argument_per_line_when_one_indented_line_is_too_short() -> None:
    args = ", ".join(f"argument_number_{i}" for i in range(8))
    formatted = assert_canonical(f"let x = f({args})\n")
    assert formatted == "let x = f(\n" + "".join(f"  argument_number_{i},\n" for i in range(8)) + ")\n"


def test_long_loop_header_puts_one_binding_per_line() -> None:
    source = (
        "study s {\n"
        '  for layer in layers(qwen, 2, 0.6, 0.7), strength in [2, 4, 8], word in ["dog", "ocean", "volcano"] {\n'
        "    for a in [1],  # first axis\n"
        "        b in [2] { measure m = f(a, b) }\n"
        "  }\n"
        "}\n"
    )
    expected = (
        "study s {\n"
        "  for layer in layers(qwen, 2, 0.6, 0.7),\n"
        "      strength in [2, 4, 8],\n"
        '      word in ["dog", "ocean", "volcano"] {\n'
        "    for a in [1],  # first axis\n"
        "        b in [2] {\n"
        "      measure m = f(a, b)\n"
        "    }\n"
        "  }\n"
        "}\n"
    )
    assert assert_canonical(source) == expected


def test_short_record_stays_on_one_line_and_long_one_breaks() -> None:
    assert assert_canonical("let r = {a: 1 b: 2}") == "let r = { a: 1, b: 2 }\n"
    fields = " ".join(f"field_{i}: {i}" for i in range(12))
    expected = "let r = {\n" + "".join(f"  field_{i}: {i}\n" for i in range(12)) + "}\n"
    assert assert_canonical(f"let r = {{{fields}}}") == expected


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("(a + b) + c", "a + b + c"),
        ("a + (b + c)", "a + (b + c)"),
        ("a - (b - c)", "a - (b - c)"),
        ("(a * b) + (c * d)", "a * b + c * d"),
        ("(a + b) * (c - d)", "(a + b) * (c - d)"),
        ("a / (b * c)", "a / (b * c)"),
        ("-(-a)", "--a"),
        ("-(a + b)", "-(a + b)"),
        ("(-a).b", "(-a).b"),
        ("(a + b).c(d)", "(a + b).c(d)"),
        ("(1).x", "(1).x"),
        ("((((1))))", "1"),
        ("f()(g)", "f()(g)"),
    ],
)
def test_parentheses_are_kept_exactly_where_needed(written: str, canonical: str) -> None:
    assert assert_canonical(f"let v = {written}\n") == f"let v = {canonical}\n"


@pytest.mark.parametrize("number", ["1e-4", "1_000", "0.5", "2.5E+3", "007", "3."[:-1]])
def test_numbers_are_printed_as_written(number: str) -> None:
    assert assert_canonical(f"let n = {number}\n") == f"let n = {number}\n"


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        (r'"tab\there"', r'"tab\there"'),
        ('"raw\ttab"', r'"raw\ttab"'),
        (r'"brace \{ kept"', '"brace { kept"'),
        (r'"back\\slash and \"quotes\""', r'"back\\slash and \"quotes\""'),
        ('"""two\nlines"""', '"""two\nlines"""'),
        (r'"""escaped \"\"\" run"""', r'"""escaped ""\" run"""'),
        (r'"""has \r return"""', r'"""has \r return"""'),
        (r'"""back\\slash"""', r'"""back\\slash"""'),
        ('"""say "hi" twice"""', '"""say "hi" twice"""'),
    ],
)
def test_strings_keep_their_kind_and_value(written: str, canonical: str) -> None:
    assert assert_canonical(f"let s = {written}\n") == f"let s = {canonical}\n"


def test_long_strings_keep_their_lines_unindented() -> None:
    source = 'task t {\n    data: "d.jsonl"\n    prompt: """first\n    second\n{{ x }}"""  # note\n}\n'
    expected = 'task t {\n  data: "d.jsonl"\n  prompt: """first\n    second\n{{ x }}"""  # note\n}\n'
    assert assert_canonical(source) == expected


def test_windows_line_endings_become_newlines() -> None:
    assert assert_canonical("let a = 1  # one\r\nlet b = 2\r\n") == "let a = 1  # one\nlet b = 2\n"


def test_grouped_one_line_items_stay_grouped_and_others_are_separated() -> None:
    source = (
        'use a\nuse b\nmodel x = embedded "m"\nmodel y = embedded "n"\nlet p = 1\n\nlet q = 2\nlet r = 3\n'
    )
    expected = 'use a\nuse b\n\nmodel x = embedded "m"\nmodel y = embedded "n"\n\nlet p = 1\n\nlet q = 2\nlet r = 3\n'
    assert assert_canonical(source) == expected


def test_empty_and_comment_only_files() -> None:
    assert format_source("", "empty.intro") == ""
    assert (
        assert_canonical("\n\n# only a comment\n\n\n# and another   \n")
        == "# only a comment\n\n# and another\n"
    )


FUNCTION = """\
# a library
fn  rates( predictor : model ,subject,  # who is asked
  tasks: selection = mini.test,props: properties=[a, b],) {   # opens
  # first
  let own = li.predict_property(subject,subject,tasks,props)
  let pair=( own , li.predict_property(predictor, subject, tasks, props) )   # a tuple
  let one = ( own, )
  let same = ( own )

  return {own: own, cross: pair}  # the record
}  # closes
fn empty() { return (1,2,) }
"""

FUNCTION_CANONICAL = """\
# a library
fn rates(
  predictor: model,
  subject,  # who is asked
  tasks: selection = mini.test,
  props: properties = [a, b],
) {  # opens
  # first
  let own = li.predict_property(subject, subject, tasks, props)
  let pair = (own, li.predict_property(predictor, subject, tasks, props))  # a tuple
  let one = (own,)
  let same = own

  return { own: own, cross: pair }  # the record
}  # closes

fn empty() {
  return (1, 2)
}
"""


def test_functions_and_tuples_have_a_canonical_layout() -> None:
    assert assert_canonical(FUNCTION) == FUNCTION_CANONICAL
    short = "fn f(a, b: int = 2) {\n  return (a,)\n}\n"
    assert assert_canonical(short) == short


def test_a_long_one_item_tuple_keeps_its_comma_when_broken() -> None:
    item = '"' + "x" * 100 + '"'
    formatted = assert_canonical(f"let t = ({item},)\n")
    assert formatted == f"let t = (\n  {item},\n)\n"


def test_unparseable_source_is_a_positioned_compile_error() -> None:
    with pytest.raises(CompileError) as caught:
        format_source("let x = [1, 2\n", "broken.intro")
    (diagnostic,) = caught.value.diagnostics
    assert (diagnostic.code, diagnostic.span.path, diagnostic.span.line) == ("E002", "broken.intro", 2)


# ---------------------------------------------------------------- generated variants of the real specs
_TOKEN = re.compile(
    r'"""[\s\S]*?"""|"(?:[^"\\\n]|\\.)*"|#[^\n]*|[A-Za-z_][A-Za-z0-9_]*'
    r"|[0-9][0-9_]*(?:\.[0-9_]+)?(?:[eE][+-]?[0-9]+)?|[<>=!]=|\s+|."
)
_SEPARATORS = [
    " ",
    "  ",
    "\n",
    "\n\n\n",
    "\t",
    " # note {i}\n",
    "\n# own line {i}\n",
    "\n  \n  # indented {i}\n",
]


def _tokens(source: str) -> list[str]:
    return [t for t in _TOKEN.findall(source) if not t.isspace()]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), path=st.sampled_from(SOURCES))
def test_any_layout_of_a_project_spec_formats_to_the_same_canonical_text(
    data: st.DataObject, path: Path
) -> None:
    _check_any_layout(data, path.read_text(encoding="utf-8"), str(path))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_layout_of_a_function_formats_to_the_same_canonical_text(data: st.DataObject) -> None:
    _check_any_layout(data, FUNCTION, "lib.intro")


def _check_any_layout(data: st.DataObject, original: str, path: str) -> None:
    tokens = _tokens(original)
    choices = data.draw(st.lists(st.sampled_from(_SEPARATORS), min_size=len(tokens), max_size=len(tokens)))
    pieces = []
    for index, (token, separator) in enumerate(zip(tokens, choices, strict=True)):
        # A comment runs to the end of its line, so whatever follows it starts on a new one.
        pieces.append(token + ("\n" if token.startswith("#") else separator.format(i=index)))
    variant = "".join(pieces)
    formatted = assert_canonical(variant, path)
    assert parse(formatted, path) == parse(original, path)


# ---------------------------------------------------------------- generated expressions
def _short(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def _long(value: str) -> str:
    return '"""' + value.replace("\\", "\\\\").replace('"', '\\"') + '"""'


_NAMES = st.sampled_from(["a", "b", "task_x", "_y", "li", "Z9"])
# Quotes (runs of them), backslashes and line breaks are what string printing gets wrong: they come often.
_PIECES = st.one_of(
    st.sampled_from(['"', '""', '"""', "\\", "\n", "\r", "\t", "{", "#"]),
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
)
_TEXT = st.lists(_PIECES, max_size=8).map("".join)
_ATOMS = st.one_of(
    _NAMES,
    st.integers(0, 10**15).map(str),
    st.sampled_from(["1e-4", "1_000", "0.5", "2.5E+3", "true", "false"]),
    _TEXT.map(_short),
    _TEXT.filter(lambda v: not v.endswith('"')).map(_long),
)


def _call(parts: tuple[str, list[str], list[tuple[str, str]]]) -> str:
    func, args, named = parts
    return f"({func})(" + ", ".join([*args, *(f"{n}: {v}" for n, v in named)]) + ")"


def _compound(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.lists(inner, max_size=4).map(lambda items: "[" + ", ".join(items) + "]"),
        st.lists(inner, min_size=1, max_size=4).map(lambda items: "(" + ", ".join(items) + ",)"),
        st.lists(st.tuples(_NAMES, inner), max_size=3).map(
            lambda fs: "{" + " ".join(f"{n}: {v}" for n, v in fs) + "}"
        ),
        st.tuples(inner, st.lists(inner, max_size=3), st.lists(st.tuples(_NAMES, inner), max_size=2)).map(
            _call
        ),
        st.tuples(inner, _NAMES).map(lambda t: f"({t[0]}).{t[1]}"),
        inner.map(lambda x: f"-({x})"),
        st.tuples(inner, st.sampled_from("+-*/"), inner).map(lambda t: f"({t[0]}) {t[1]} ({t[2]})"),
    )


EXPRESSIONS = st.recursive(_ATOMS, _compound, max_leaves=14)


@settings(max_examples=150, deadline=None)
@given(expression=EXPRESSIONS, comment=st.booleans())
def test_generated_expressions_keep_their_meaning(expression: str, comment: bool) -> None:
    note = "  # about it" if comment else ""
    assert_canonical(f"let value = {expression}{note}\nstudy s {{\n  measure m = {expression}\n}}\n")


@pytest.mark.parametrize(
    "source",
    [
        # a comment between a statement's `=` and a call too long for one line ends the opener's line,
        # where the next formatting finds it and hugs the arguments again
        "let c = # above the call\n  f(" + ", ".join(f"argument_{i}" for i in range(8)) + ")\n",
        # a comment printed at the end of an earlier statement sharing its source line is not inside a call
        "let b = take(x, 20) let c = take(x. # note\n y, 3)\n",
    ],
)
def test_a_comment_near_an_opener_formats_the_same_twice(source: str) -> None:
    assert_canonical(source, "comments.intro")


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_project_specs_are_written_in_canonical_form(path: Path) -> None:
    """`intro fmt --check specs/*.intro stdlib/*.intro` passes: the project's own files show the style."""
    text = path.read_text(encoding="utf-8")
    assert format_source(text, str(path)) == text, f"run: intro fmt {path.relative_to(ROOT)}"
