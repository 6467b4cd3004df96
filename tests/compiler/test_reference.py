"""The generated language reference: docs/language.md is current, every example checks, `intro doc` works.

The examples are compiled for real: the language examples form one spec and each builtin's example is a
`let` in it (compiler/reference.py `example_spec`), checked by `intro check`'s own front end.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from attrs import evolve
from safetensors.numpy import save_file

from intro.cli import main
from intro.compiler import CompileError, check, reference
from intro.compiler.builtins import FUNCTIONS
from intro.compiler.declarations import FIELDS
from intro.compiler.diagnostics import Sink, render_all
from intro.compiler.evaluate import Program
from intro.compiler.files import Confinement
from intro.compiler.models import BACKENDS
from intro.compiler.parser import parse
from intro.compiler.types import CHECKS, type_name

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "language.md"
GRAMMAR = ROOT / "compiler" / "grammar" / "intro.lark"
CAPITALS = [("fr", "France", "train"), ("de", "Germany", "train"), ("it", "Italy", "train")]
CAPITALS += [("es", "Spain", "val"), ("pt", "Portugal", "val"), ("nl", "Netherlands", "val")]


def stale(text: str) -> str | None:
    """Why `text` (docs/language.md) is not the generator's output, with the command that fixes it."""
    if text == reference.markdown():
        return None
    return f"docs/language.md is stale: regenerate it with `.venv/bin/{reference.REGENERATE}`"


def write_example_spec(folder: Path) -> Path:
    """The examples' spec and the files it reads (reference.EXAMPLE_FILES) in `folder`."""
    (folder / "data").mkdir()
    rows = [json.dumps({"id": i, "country": c, "split": s}) + "\n" for i, c, s in CAPITALS]
    (folder / "data" / "capitals.jsonl").write_text("".join(rows))
    (folder / "vectors").mkdir()
    save_file({"vector": np.ones(8, dtype=np.float32)}, str(folder / "vectors" / "dog.safetensors"))
    assert {str(p.relative_to(folder)) for p in folder.rglob("*.*")} == set(reference.EXAMPLE_FILES)
    spec = folder / "reference.intro"
    spec.write_text(reference.example_spec(), encoding="utf-8")
    return spec


def check_problems(spec: Path) -> str | None:
    """`intro check`'s report on the example spec, or None when it checks."""
    try:
        check(spec)
    except CompileError as error:
        return render_all(error, getattr(error, "sources", {}))
    return None


def intro(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------- docs/language.md
def test_docs_language_md_is_the_generators_output() -> None:
    problem = stale(DOCS.read_text(encoding="utf-8"))
    assert problem is None, problem


def test_a_stale_reference_is_caught_with_the_command_that_fixes_it() -> None:
    edited = DOCS.read_text(encoding="utf-8").replace("`qwen`", "`gwen`", 1)
    assert stale(edited) == (
        "docs/language.md is stale: regenerate it with "
        "`.venv/bin/python -m intro.compiler.reference > docs/language.md`"
    )


def test_the_reference_has_every_function_construct_and_stdlib_module() -> None:
    text = reference.markdown()
    headings = set(re.findall(r"^### (\S+)$", text, re.MULTILINE))
    assert set(FUNCTIONS) <= headings
    assert {
        "use",
        "model",
        "task",
        "property",
        "split",
        "sampling",
        "let",
        "study",
        "measure",
        "for",
    } <= headings
    assert {"stdlib.looking_inward", "stdlib.introspection"} <= headings
    assert "| `lr` | number | `0.0001` |" in text  # finetune's parameters, typed, with defaults
    assert "- property: `first_character`, `second_character`" in text  # a module's exported names


def test_every_keyword_of_the_grammar_has_an_entry() -> None:
    keywords = set(re.findall(r'"([a-z]+)"', GRAMMAR.read_text())) - {"in", "as", "true", "false"}
    assert keywords == {c.name for c in reference.CONSTRUCTS} - {"expressions"}


def test_every_declaration_field_is_explained() -> None:
    assert {kind: set(fields) for kind, fields in reference.FIELD_DOCS.items()} == {
        kind: set(fields) for kind, fields in FIELDS.items()
    }


def test_the_model_entry_names_every_backend() -> None:
    model = next(c for c in reference.CONSTRUCTS if c.name == "model")
    assert all(f"`{backend}`" in model.doc for backend in BACKENDS)


# ---------------------------------------------------------------- the examples are real
RETURN_TYPES = {"model", "training data", "measurement", "vector", "grader", "list"} | {
    "rows", "string", "prompts", "texts", "values", "rule", "estimate", "comparison", "sampling", "activations",
    "bool", "number",
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_each_builtin_has_a_doc_a_return_type_and_an_example_calling_it(name: str) -> None:
    function = FUNCTIONS[name]
    assert function.doc and function.example
    assert function.returns in RETURN_TYPES
    (let,) = parse(f"let x = {function.example}\n", "example").items
    assert let.value.func.id == name  # type: ignore[attr-defined]


def test_every_example_checks(tmp_path: Path) -> None:
    problems = check_problems(write_example_spec(tmp_path))
    assert problems is None, f"an example of the reference no longer checks:\n{problems}"


def test_each_function_example_gives_what_its_entry_says(tmp_path: Path) -> None:
    spec = write_example_spec(tmp_path)
    sink = Sink()
    namespace, _ = Program(sink, Confinement.for_spec(spec, False)).load_spec(spec)
    given = {name: type_name(namespace.lookup(reference.example_name(f))) for name, f in FUNCTIONS.items()}
    assert not sink.items
    assert given == {name: f.returns for name, f in FUNCTIONS.items()}


def test_an_example_that_stops_checking_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = FUNCTIONS["random_like"].example.replace("seed:", "sed:")
    assert wrong != FUNCTIONS["random_like"].example
    monkeypatch.setitem(FUNCTIONS, "random_like", evolve(FUNCTIONS["random_like"], example=wrong))
    problems = check_problems(write_example_spec(tmp_path))
    assert problems is not None
    assert "error[E206]: random_like() has no parameter 'sed'" in problems
    assert "let example_random_like = random_like(" in problems  # the report shows whose example it is


def test_the_sampling_default_is_shown_as_a_spec_writes_it() -> None:
    (sampling,) = [p for p in FUNCTIONS["generate"].params if p.name == "sampling"]
    assert reference.show_value(sampling.default) == "{ temperature: 0, samples: 1, max_tokens: 16 }"
    assert CHECKS["sampling"](sampling.default)


# ---------------------------------------------------------------- intro doc
def test_intro_doc_prints_a_functions_entry() -> None:
    code, out, err = intro("doc", "generate")
    assert (code, err) == (0, "")
    assert out.startswith("generate(model, prompts, sampling) -> texts\n")
    assert "  sampling  sampling = { temperature: 0, samples: 1, max_tokens: 16 }\n" in out
    assert "  model     model (required)\n" in out
    assert f"  {FUNCTIONS['generate'].example}\n" in out


def test_intro_doc_prints_a_declaration_kind_with_its_fields() -> None:
    code, out, _ = intro("doc", "sampling")
    assert code == 0 and out.startswith("sampling NAME { FIELDS }\n")
    assert re.search(r"^  reduce +string = \"mode\" +how several samples", out, re.MULTILINE)


def test_intro_doc_prints_a_stdlib_modules_names() -> None:
    code, out, _ = intro("doc", "stdlib.looking_inward")
    assert code == 0 and out.startswith("use stdlib.looking_inward\n")
    assert "task: wikipedia, countries, colors," in out


def test_intro_doc_without_a_name_lists_every_entry() -> None:
    code, out, _ = intro("doc")
    assert code == 0
    listed = {
        name for line in out.splitlines() if ": " in line for name in line.split(": ", 1)[1].split(", ")
    }
    assert set(FUNCTIONS) | {c.name for c in reference.CONSTRUCTS} | {"stdlib.introspection"} <= listed


def test_intro_doc_of_an_unknown_name_is_one_line_with_a_suggestion() -> None:
    code, out, err = intro("doc", "genrate")
    assert (code, out) == (2, "")
    assert (
        err
        == "intro: error: no reference entry 'genrate'; did you mean 'generate'? (`intro doc` lists them)\n"
    )
    assert intro("doc", "nothing_like_it")[2].count("\n") == 1
