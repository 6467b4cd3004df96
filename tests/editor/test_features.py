"""The language server's answers on half-typed text: never an exception, and names resolved as the compiler does."""

from __future__ import annotations

from pathlib import Path

import pytest

from intro.editor import features
from intro.editor.analysis import outline

ROOT = Path(__file__).resolve().parents[2]
MINI = ROOT / "specs" / "looking_inward_mini.intro"
SPECS = sorted((ROOT / "specs").glob("*_mini.intro"))


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_every_prefix_of_a_spec_gets_answers_without_an_exception(path: Path) -> None:
    text = path.read_text()
    for cut in range(0, len(text), max(1, len(text) // 40)):
        typed = outline(path, text[:cut])
        for offset in (cut, max(0, cut - 3)):
            features.completions(typed, offset)
            features.hover(typed, offset)
            features.definition(typed, offset)


def _at(text: str, needle: str, within: int = 0) -> int:
    return text.index(needle) + within


def test_a_let_that_shadows_a_builtin_is_what_hover_shows() -> None:
    text = 'model m = embedded "x"\nlet take = [m]\nstudy s { for x in take { } }\n'
    doc = outline(Path("/tmp/s.intro"), text)
    shown = features.hover(doc, _at(text, "in take", 4))
    assert shown is not None and "let take = [m]" in shown and "(builtin)" not in shown


def test_a_split_completes_its_train_and_test_and_measures_are_not_names() -> None:
    text = MINI.read_text().replace("mini.test, property, hypothetical", "mini.", 1)
    doc = outline(MINI, text)
    labels = [c.label for c in features.completions(doc, _at(text, "mini.:", 5))]
    assert labels == ["train", "test"]
    inside = [c.label for c in features.completions(doc, _at(text, "measure self", 0))]
    assert "untrained" not in inside and "self_trained" in inside and "own" in inside
    assert "difference" in inside


def test_hover_on_an_imported_module_and_on_a_named_argument() -> None:
    text = MINI.read_text()
    doc = outline(MINI, text)
    module = features.hover(doc, _at(text, "as li", 4))
    assert module is not None and module.startswith("module `stdlib.looking_inward`") and "Binder" in module
    rank = features.hover(doc, _at(text, "rank: 8", 1))
    assert rank is not None and "rank: int = 8" in rank and "parameter of `finetune`" in rank


def test_a_functions_parameters_and_lets_are_names_in_its_body_only() -> None:
    text = (
        "let k = 1\nfn rate(m: model, n: int = k, r: record = { a: 1, b: 2 }) {\n  let x = n\n  return x\n}\n"
        "study s { measure q = rate(k) }\n"
    )
    doc = outline(Path("/tmp/s.intro"), text)
    assert set(doc.definitions) == {"k", "rate", "s"}
    parameter = features.definition(doc, _at(text, "= n", 2))
    assert parameter is not None and (parameter.kind, parameter.place.line) == ("parameter", 2)
    inside = {c.label for c in features.completions(doc, _at(text, "return x", 7))}
    assert {"m", "n", "r", "x", "rate"} <= inside and "a" not in inside and "b" not in inside
    outside = {c.label for c in features.completions(doc, _at(text, "rate(k)", 5))}
    assert "rate" in outside and not {"m", "n", "x"} & outside
    shown = features.hover(doc, _at(text, "rate(k)", 1))
    assert shown is not None and "fn rate(" in shown
