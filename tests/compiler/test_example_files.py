"""examples("file.jsonl") reads the chat files researchers have: no ids needed, rows named by their line."""

from __future__ import annotations

import json
from pathlib import Path

from intro.cli import main

SPEC = """
model m = litellm "openai/some-model" { finetune: true }
study s {
  measure answers = generate(finetune(m, examples("chat.jsonl")), prompts(["Hello?"]))
}
"""


def test_a_chat_file_without_ids_is_training_data(tmp_path: Path) -> None:
    rows = [
        {"messages": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": f"A{i}"}]}
        for i in range(3)
    ]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "s.intro").write_text(SPEC)
    out = tmp_path / "plan.json"
    assert main(["compile", str(tmp_path / "s.intro"), "-o", str(out)]) == 0
    (step,) = [s for s in json.loads(out.read_text())["steps"] if s["kind"] == "examples"]
    assert [target for _, target in step["params"]["fixed"]] == ["A0", "A1", "A2"]


def test_a_bad_row_is_reported_at_its_line(tmp_path: Path, capsys) -> None:
    good = {"prompt": "Q", "completion": "A"}
    (tmp_path / "chat.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({"prompt": "no reply"}) + "\n")
    (tmp_path / "s.intro").write_text(SPEC)
    assert main(["check", str(tmp_path / "s.intro")]) != 0
    assert "chat.jsonl:2:1: error[E331]" in capsys.readouterr().err
