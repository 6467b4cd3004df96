"""Literal lists as prompt rows (`prompts([...])`): each list's items are keyed by its content, so two
different lists with the same ids keep their own fields (which run-time templates, judges' rubrics and
rules read by item key) and are not paired as the same items, while the same list asked twice is."""

from __future__ import annotations

from pathlib import Path

from intro.compiler import compile_spec

SPEC = """
model m = litellm "openai/gpt-4o-mini"
study s {
  measure a = generate(m, prompts([{q: "apple"}], "Say {{ q }}"))
  measure b = generate(m, prompts([{q: "banana"}], "Say {{ q }}"))
  measure again = generate(m, prompts([{q: "apple"}], "Name {{ q }}"))
}
"""


def test_two_lists_with_the_same_ids_keep_their_own_items(tmp_path: Path) -> None:
    spec = tmp_path / "s.intro"
    spec.write_text(SPEC, encoding="utf-8")
    plan = compile_spec(spec)[0]
    fields = {key: row["q"] for key, row in plan.items.items()}
    assert sorted(fields.values()) == ["apple", "banana"], fields
    rows = {s.id: s.params.rows for s in plan.steps if s.kind == "generate"}
    items = {name: [row.item for row in r] for name, r in rows.items()}
    apple, banana, again = items.values()
    assert apple == again and apple != banana
