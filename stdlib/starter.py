"""The starter study `intro new NAME` writes: a commented spec that checks, plans and runs on the embedded
model in a few model calls (templates/starter.intro.j2)."""

from __future__ import annotations

from pathlib import Path

TEMPLATE = Path(__file__).parent / "templates" / "starter.intro.j2"


def starter_spec(name: str) -> str:
    """The starter spec text for a study called `name` (an identifier)."""
    import jinja2

    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return environment.from_string(TEMPLATE.read_text(encoding="utf-8")).render(name=name)
