"""Prompt templates are checked by `intro check`: every template against every row it can be rendered with.

A misspelt or missing field, a sandbox break, `{% include %}` and a runaway loop are positioned diagnostics
from `intro check`, and compile, plan and run report the same diagnostic instead of a traceback (or a hang).
Rendering is bounded by a budget the environment can change (INTRO_TEMPLATE_STEPS, _OUTPUT, _SECONDS).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jinja2
import pytest
from jinja2.sandbox import SandboxedEnvironment

from intro.cli import main
from intro.compiler.template_sandbox import BUDGET, Budget, TemplateProblem, render

ROWS = [
    {"id": "a1", "sequence": "cat, dog", "answer": "cow", "split": "val"},
    {"id": "a2", "sequence": "owl, bat", "split": "val"},
    {"id": "a3", "sequence": "ant, bee", "answer": "fly", "split": "val"},
]

SPEC = """\
model qwen = embedded "qwen2.5-coder-0.5b-instruct"

task animals {{
  data: "animals.jsonl"
  prompt: {prompt}
}}

property first_character {{
  extract: "first_character"
  question: {question}
}}

split held_out {{
  test: [animals]
  items: 3
}}

study s {{
  let asked = prompts(held_out.test, {template}, about: first_character)
  let behaviour = extract(generate(qwen, prompts(held_out.test)), first_character)
  measure m = accuracy(extract(generate(qwen, asked), predicted(first_character)), behaviour)
}}
"""
PROMPT_LINE, QUESTION_LINE, TEMPLATE_LINE = 5, 10, 19
HEAD = re.compile(r"^s\.intro:(\d+):(\d+): error\[(E\d{3})\]: (.*)$", re.MULTILINE)
BUDGET_ENV = ("INTRO_TEMPLATE_STEPS", "INTRO_TEMPLATE_OUTPUT", "INTRO_TEMPLATE_SECONDS")


def literal(text: str) -> str:
    """`text` as a one-line .intro string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def write_spec(
    folder: Path,
    prompt: str = "After {{ sequence }}?",
    question: str = "First character?",
    template: str = "Earlier you were asked: {{ object_prompt }} {{ question }}",
) -> Path:
    (folder / "animals.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    spec = folder / "s.intro"
    values = {"prompt": prompt, "question": question, "template": template}
    spec.write_text(SPEC.format(**{name: literal(value) for name, value in values.items()}))
    return spec


def intro(folder: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI, run in this process from `folder` with `env` added to a budget-free environment."""
    err, out = io.StringIO(), io.StringIO()
    with (
        _environment(folder, env or {}),
        contextlib.chdir(folder),
        contextlib.redirect_stderr(err),
        contextlib.redirect_stdout(out),
    ):
        code = main(list(args))
    return subprocess.CompletedProcess(["intro", *args], code, out.getvalue(), err.getvalue())


def intro_process(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a child process, for what used to hang: a hang fails the test instead of stopping the suite."""
    clean = {k: v for k, v in os.environ.items() if k not in BUDGET_ENV}
    return subprocess.run(
        [sys.executable, "-m", "intro.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=folder,
        env={**clean, "PYTHONDONTWRITEBYTECODE": "1", "INTRO_CACHE_DIR": str(folder / "cache")},
        check=False,
    )


@contextlib.contextmanager
def _environment(folder: Path, env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    for name in BUDGET_ENV:
        os.environ.pop(name, None)
    os.environ.update({"INTRO_CACHE_DIR": str(folder / "cache"), **env})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def one_error(result: subprocess.CompletedProcess[str]) -> tuple[int, int, str, str]:
    """(line, column, code, message) of the only diagnostic; the command must have exited 2 without a traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    heads = HEAD.findall(result.stderr)
    assert len(heads) == 1, result.stderr
    line, column, code, message = heads[0]
    return int(line), int(column), code, message


# ---------------------------------------------------------------- every row, every template
def test_a_field_some_rows_lack_is_found_at_check(tmp_path: Path) -> None:
    write_spec(tmp_path, prompt="After {{ sequence }} comes {{ answer }}?")
    result = intro(tmp_path, "check", "s.intro")
    line, column, code, message = one_error(result)
    assert (line, column, code) == (PROMPT_LINE, 11, "E146")
    assert message == "template uses 'answer', which row 'a2' of 'animals.jsonl' does not have"
    assert "2 of 3 rows have it; row 'a2' has: id, sequence, split" in result.stderr


def test_a_misspelt_question_variable_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    write_spec(tmp_path, question="First character of {{ sequnce }}?")
    result = intro(tmp_path, "check", "s.intro")
    line, column, code, message = one_error(result)
    assert (line, column, code) == (QUESTION_LINE, 13, "E146")
    assert "uses 'sequnce', which the rows of task 'animals' do not have" in message
    assert "did you mean 'sequence'?" in result.stderr


@pytest.mark.parametrize(
    "template", ["{{ object_promt }} {{ question }}", "{{ object_promt | upper }} {{ question }}"]
)
def test_a_hypothetical_template_over_a_selection_knows_its_fields(tmp_path: Path, template: str) -> None:
    # A template over a task selection `about` a property is given each row's fields, the task's name, its
    # prompt for the row (`object_prompt`) and the property's question for it (`question`).
    write_spec(tmp_path, template=template)
    result = intro(tmp_path, "check", "s.intro")
    line, _, code, message = one_error(result)
    assert (line, code, message) == (
        TEMPLATE_LINE,
        "E146",
        "template uses 'object_promt', which the tasks' rows do not have",
    )
    assert "did you mean 'object_prompt'?" in result.stderr


@pytest.mark.xfail(
    strict=True,
    reason="check renders a template over a task selection with placeholder `object_prompt` and `question` "
    "values, so one that fails only on the real ones passes check and compile raises a TemplateProblem",
)
def test_a_hypothetical_template_is_rendered_with_the_real_question_at_check(tmp_path: Path) -> None:
    # "First character?" has 16 characters: the template divides by zero on every row, once lowered.
    write_spec(tmp_path, template="{{ object_prompt }} {{ 1 / (question | length - 16) }}")
    line, _, code, message = one_error(intro(tmp_path, "check", "s.intro"))
    assert (line, code) == (TEMPLATE_LINE, "E181")
    assert "ZeroDivisionError: division by zero" in message


@pytest.mark.parametrize(
    ("prompt", "code", "words"),
    [
        (
            "{{ sequence.__class__.__mro__ }}",
            "E182",
            "access to attribute '__class__' of 'str' object is unsafe",
        ),
        (
            "{{ [].append(1) }}{{ sequence }}",
            "E182",
            "access to attribute 'append' of 'list' object is unsafe",
        ),
        ('{% include "other.txt" %}', "E182", "cannot use {% include %}"),
        ('{% import "macros.txt" as m %}', "E182", "cannot use {% import %}"),
        ('{% extends "base.txt" %}', "E182", "cannot use {% extends %}"),
        ("{% for i in range(10**9) %}{% endfor %}", "E183", "range(1000000000) has 1,000,000,000 items"),
        ("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}", "E183", "steps"),
        ("{{ sequence * 10**9 }}", "E183", "would hold about 8,000,000,000 characters"),
        ("{{ sequence | length / 0 }}", "E181", "ZeroDivisionError: division by zero"),
    ],
)
def test_check_reports_what_compile_would_have_crashed_or_hung_on(
    tmp_path: Path, prompt: str, code: str, words: str
) -> None:
    write_spec(tmp_path, prompt=prompt)
    started = time.monotonic()
    line, column, found, message = one_error(intro(tmp_path, "check", "s.intro"))
    assert (line, column, found) == (PROMPT_LINE, 11, code)
    assert words in message
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    ("prompt", "question"),
    [
        ("After {{ sequence }}, {{ answer }}?", "First character?"),
        ("After {{ sequence }}?", "First character of {{ sequnce }}?"),
        ("{{ sequence.__class__ }}", "First character?"),
    ],
)
def test_compile_plan_and_run_report_the_diagnostic_instead_of_a_traceback(
    tmp_path: Path, prompt: str, question: str
) -> None:
    write_spec(tmp_path, prompt=prompt, question=question)
    checked = one_error(intro(tmp_path, "check", "s.intro"))
    assert one_error(intro(tmp_path, "compile", "s.intro", "-o", "plan.json")) == checked
    assert one_error(intro(tmp_path, "plan", "s.intro")) == checked
    assert one_error(intro(tmp_path, "run", "s.intro", "--quiet")) == checked
    assert not (tmp_path / "plan.json").exists()


def test_compiling_a_runaway_template_stops_with_a_diagnostic(tmp_path: Path) -> None:
    # Lowering renders the prompts: this one used to loop for hours there, after a clean check.
    write_spec(
        tmp_path, prompt="{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"
    )
    line, column, code, message = one_error(intro_process(tmp_path, "compile", "s.intro", "-o", "plan.json"))
    assert (line, column, code) == (PROMPT_LINE, 11, "E183")
    assert "more than 100,000 steps" in message


# ---------------------------------------------------------------- positions inside a template
def test_an_error_points_at_its_line_inside_a_long_string_template(tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    long = '"""Continue the list.\n{% for animal in sequence.split(", ") %}\n- {{ animal }} ({{ animal | length / 0 }})\n{% endfor %}"""'
    spec.write_text(spec.read_text().replace('"After {{ sequence }}?"', long))
    result = intro(tmp_path, "check", "s.intro")
    line, column, code, _ = one_error(result)
    assert (line, column, code) == (PROMPT_LINE + 2, 1, "E181")
    assert "^" * len("- {{ animal }} ({{ animal | length / 0 }})") in result.stderr


def test_an_error_points_at_its_line_inside_a_one_line_template_with_escaped_newlines(tmp_path: Path) -> None:
    write_spec(tmp_path, question='First character?\n{{ "x" ~ sequnce }}\nThanks.')
    line, column, code, _ = one_error(intro(tmp_path, "check", "s.intro"))
    # `  question: "First character?\n` is 31 characters: the template's second line starts after them.
    assert (line, column, code) == (QUESTION_LINE, 32, "E146")


# ---------------------------------------------------------------- what the check must still accept
def test_a_template_that_guards_fields_some_or_all_rows_lack_is_accepted(tmp_path: Path) -> None:
    # The old check read the names off the template and wanted each in the first row: `hint` failed it.
    prompt = (
        "{% if hint is defined %}[{{ hint }}] {% endif %}{% if answer is defined %}({{ answer }}) {% endif %}"
        "{% for i in range(2) %}{{ sequence }};{% endfor %}"
    )
    write_spec(tmp_path, prompt=prompt)
    assert intro(tmp_path, "check", "s.intro").returncode == 0
    compiled = intro(tmp_path, "compile", "s.intro", "-o", "plan.json")
    assert compiled.returncode == 0, compiled.stderr
    texts = {
        p["messages"][-1][1] for p in json.loads((tmp_path / "plan.json").read_text())["prompts"].values()
    }
    assert {"(cow) cat, dog;cat, dog;", "owl, bat;owl, bat;", "(fly) ant, bee;ant, bee;"} <= texts


# ---------------------------------------------------------------- budgets from the environment
def test_the_budget_comes_from_the_environment(tmp_path: Path) -> None:
    write_spec(tmp_path, prompt="{% for i in range(30) %}{{ sequence }}{% endfor %}")
    assert intro(tmp_path, "check", "s.intro").returncode == 0
    _, _, code, message = one_error(intro(tmp_path, "check", "s.intro", env={"INTRO_TEMPLATE_STEPS": "20"}))
    assert (code, message) == (
        "E183",
        "template exceeds its budget on row 'a1' of 'animals.jsonl': "
        "range(30) has 30 items, more than the 20 steps allowed",
    )
    _, _, code, message = one_error(intro(tmp_path, "check", "s.intro", env={"INTRO_TEMPLATE_OUTPUT": "100"}))
    assert (code, message) == (
        "E183",
        "template exceeds its budget on row 'a1' of 'animals.jsonl': more than 100 characters of output",
    )
    _, _, code, message = one_error(
        intro(tmp_path, "check", "s.intro", env={"INTRO_TEMPLATE_SECONDS": "soon"})
    )
    assert (code, message) == (
        "E184",
        "INTRO_TEMPLATE_SECONDS must be a positive number of seconds, not 'soon'",
    )


# ---------------------------------------------------------------- the renderer itself
@pytest.mark.parametrize(
    "template",
    [
        "{% set ns = namespace(s='xx') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "{% macro f(s) %}{{ f(s ~ s) }}{% endmacro %}{{ f('x') }}",
        "{{ 'x'|center(1000000000) }}",
        "{{ 'x'.center(1000000000) }}",
        "{{ '%1000000000d' % 1 }}",
        "{{ '{:1000000000}'.format(1) }}",
        "{{ range(99999)|join('x' * 99999) }}",
        "{{ ('x' * 99999).replace('', 'x' * 999) }}",
        "{{ [1]|batch(1000000000, 'x')|list }}",
        "{{ 7 ** 1000000 }}",
        "{% for x in range(3) recursive %}{% if loop.depth < 4 %}{{ loop(range(99999)) }}{% endif %}{% endfor %}",
        "{% for i in range(1000) %}{{ 'y' * 10000 }}{% endfor %}",
    ],
)
def test_a_template_cannot_build_without_bound(template: str) -> None:
    started = time.monotonic()
    with pytest.raises(TemplateProblem) as caught:
        render(template, {}, Budget(), clock=True)
    assert caught.value.code == BUDGET
    assert time.monotonic() - started < 5


def test_a_slow_step_is_stopped_by_the_clock() -> None:
    started = time.monotonic()
    with pytest.raises(TemplateProblem, match=r"more than 0.2 s"):
        render(
            "{% for i in range(9999) %}{{ range(99999)|sort|first }}{% endfor %}",
            {},
            Budget(seconds=0.2),
            True,
        )
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    ("template", "values"),
    [
        ("Next after {{ sequence }}?", {"sequence": "cat, dog"}),
        ("line one\r\nline two {{ x }}\rthree\n", {"x": 1.5}),
        ("{{ a }}{{ b }}{{ c }} and {{ d }}", {"a": None, "b": True, "c": [1, "x"], "d": {"k": 2}}),
        ("plain text, no names\n\n", {}),
        ("ünïcödé {{ word }} ✓", {"word": "naïve"}),
    ],
)
def test_plain_substitution_renders_exactly_what_jinja_renders(
    template: str, values: dict[str, object]
) -> None:
    # Plans hash rendered prompts: the fast path for `{{ name }}` templates must not change one character.
    jinja = SandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    assert render(template, values) == jinja.from_string(template).render(values)


@pytest.mark.parametrize(
    "template",
    [
        '{% for x in xs %}{{ loop.index }}/{{ loop.length }}:{{ loop.revindex }}{{ loop.cycle("o", "e") }}{% endfor %}',
        "{% for k, v in d|dictsort %}{{ k }}={{ v }};{% else %}none{% endfor %}{% for x in [] %}{% else %}-{% endfor %}",
        "{% for n in tree recursive %}{{ n.n }}[{{ loop(n.c) }}]{% endfor %}",
        '{% for x in xs if x != "b" %}{{ x }}{{ loop.last }}{% endfor %}',
        "{% set ns = namespace(t=0) %}{% for x in range(4) %}{% set ns.t = ns.t + x %}{% endfor %}{{ ns.t }}",
        '{{ xs|map("upper")|join(", ") }} {{ "%s-%d" % ("a", 3) }} {{ "{}:{:>4}".format(1, 2) }} {{ d|tojson }}',
    ],
)
def test_a_metered_render_means_what_jinja_means(template: str) -> None:
    values = {"xs": ["a", "b", "c"], "d": {"k": 1, "j": 2}, "tree": [{"n": 1, "c": [{"n": 2, "c": []}]}]}
    jinja = SandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    assert render(template, values, Budget(), clock=True) == jinja.from_string(template).render(values)


# ---------------------------------------------------------------- concept templates (filled with str.format)
CONCEPT_SPEC = """\
use stdlib.introspection as intro

model qwen = embedded "qwen2.5-coder-0.5b-instruct"

study s {{
  measure detection = intro.injected_thought_trials(
    qwen,
    concept(qwen, "dog", 16, intro.baseline, template: {template}),
    "dog", 16, 2, trials: 2,
  )
}}
"""


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("Tell me about {word} and {topic}", "the concept template may only fill in {word}, not {topic}"),
        (
            "Tell me about {word.__class__}",
            "the concept template may only fill in {word}, not {word.__class__}",
        ),
        ("Tell me about {word:>999999999}", "the concept template fills in {word} as it is: no conversion"),
        ("Tell me about {word} }", "the concept template is not a valid format string: Single '}'"),
        ("Tell me about {{word}}", "the concept template must contain {word}"),
    ],
)
def test_a_concept_template_that_format_would_fail_on_is_an_error_at_check(
    tmp_path: Path, template: str, message: str
) -> None:
    # The runtime fills it with str.format when it computes the vector: these failed (or reached into
    # Python objects) mid-run.
    (tmp_path / "s.intro").write_text(CONCEPT_SPEC.format(template=literal(template)))
    line, column, code, text = one_error(intro(tmp_path, "check", "s.intro"))
    assert (line, column, code) == (8, 56, "E311")
    assert text.startswith(message)


def test_a_concept_template_with_escaped_braces_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "s.intro").write_text(
        CONCEPT_SPEC.format(template=literal("Tell me about {word} {{please}}"))
    )
    assert intro(tmp_path, "check", "s.intro").returncode == 0
