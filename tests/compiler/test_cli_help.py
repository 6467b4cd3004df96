"""`intro --help` teaches: every command explains each option and shows examples; `intro new` starts a study.

The starter spec must pass `intro check`, `intro fmt --check` and `intro plan` (fast, no model); the slow
test runs it on the embedded model.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
from pathlib import Path

import pytest

from intro.cli import _build_parser, main


def intro(cwd: Path, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exit_:  # --help and argparse errors exit from inside parse_args
            code = int(exit_.code or 0)
    return code, out.getvalue(), err.getvalue()


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = _build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


COMMANDS = sorted(subcommands())


def test_the_commands_people_need_are_all_there():
    assert {"new", "check", "plan", "run", "show", "report", "diff", "fmt"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_help_has_an_example_of_itself(command, tmp_path):
    code, out, _ = intro(tmp_path, command, "--help")
    assert code == 0
    examples = out.partition("\nexamples:\n")[2].splitlines()
    commands = [line for line in examples if line.startswith(f"  intro {command}")]
    meanings = [line for line in examples if line.startswith("  # ")]
    assert commands and len(meanings) == len(commands), out


@pytest.mark.parametrize("command", COMMANDS)
def test_each_option_says_what_it_means(command):
    parser = subcommands()[command]
    silent = [a.dest for a in parser._actions if not a.help or a.help == argparse.SUPPRESS]
    assert silent == [], f"intro {command}: options without help: {silent}"


def test_top_level_help_says_where_to_start(tmp_path):
    code, out, _ = intro(tmp_path, "--help")
    assert code == 0 and "intro new first" in out and "COMMAND --help" in out


# ---------------------------------------------------------------- intro new
def test_new_writes_a_starter_that_checks_formats_and_plans(tmp_path):
    code, out, err = intro(tmp_path, "new", "first")
    assert code == 0, err
    spec = tmp_path / "first.intro"
    assert f"wrote {Path('first.intro')}" in out
    text = spec.read_text()
    assert text.startswith("# first: a starter intro study") and "study first {" in text
    assert sum(line.startswith("#") for line in text.splitlines()) >= 15  # it explains itself
    assert intro(tmp_path, "check", "first.intro")[:2] == (
        0,
        "first.intro: ok (first: 6 measurement points)\n",
    )
    assert intro(tmp_path, "fmt", "--check", "first.intro")[0] == 0
    code, out, err = intro(tmp_path, "plan", "first.intro", "--cache", "cache", "--runs", "runs")
    assert code == 0, err
    assert "model calls: 6 to make of 6" in out  # a few calls: a first run takes a minute, not an hour


def test_new_refuses_to_overwrite(tmp_path):
    (tmp_path / "mine.intro").write_text("# my own work\n")
    code, out, err = intro(tmp_path, "new", "mine")
    assert code == 2 and out == ""
    assert err.strip() == "intro: error: mine.intro already exists; choose another name or remove it"
    assert (tmp_path / "mine.intro").read_text() == "# my own work\n"


def test_new_takes_a_folder_and_an_optional_suffix(tmp_path):
    code, _, err = intro(tmp_path, "new", "studies/pilot.intro")
    assert code == 0, err
    assert "study pilot {" in (tmp_path / "studies" / "pilot.intro").read_text()


@pytest.mark.parametrize("name", ["9lives", "my-study", "a b"])
def test_new_refuses_names_that_are_not_study_names(tmp_path, name):
    code, _, err = intro(tmp_path, "new", name)
    assert code == 2 and err.startswith("intro: error: a study name is") and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_the_starter_runs_on_the_embedded_model(tmp_path, monkeypatch):
    """From an empty intro cache: the embedded GGUF is converted once, then 6 calls."""
    monkeypatch.setenv("INTRO_CACHE_DIR", str(tmp_path / "intro-cache"))
    assert intro(tmp_path, "new", "first")[0] == 0
    started = time.perf_counter()
    code, out, err = intro(tmp_path, "run", "first.intro", "--cache", "cache")
    seconds = time.perf_counter() - started
    assert code == 0, err
    assert "first: 6 model calls, 0 from cache" in out
    assert "self.accuracy (estimate)" in out
    assert "  converting embedded:qwen2.5-coder-0.5b-instruct" in err  # one line for the conversion
    print(f"\nintro run first.intro from an empty cache: {seconds:.1f} s")
