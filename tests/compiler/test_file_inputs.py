"""The files a spec names, read through the real `intro` command: regular files only, bounded, inside the
spec's folder; every bad file is one positioned diagnostic (exit 2), never a traceback or a hang.

Each command runs in a subprocess with a timeout and a 2 GB address-space limit, so code that blocked on
a FIFO or read /dev/zero would fail here instead of hanging the suite or filling the machine's memory.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest

POSITIONED = re.compile(r"^(\S+):(\d+):(\d+): error\[(E\d{3})\]: (.*)$", re.MULTILINE)
TIMEOUT_S = 60

SPEC = """\
use stdlib.looking_inward: first_character, predict_property

model qwen = embedded "qwen2.5-coder-0.5b-instruct"

task animals {
  data: "DATA"
  prompt: "What comes after {{ sequence }}?"
ID}

split held_out { test: [animals]  items: 3 }

study s {
  measure m = predict_property(qwen, qwen, held_out.test, first_character)
}
"""

ROWS = [{"id": f"a{i}", "sequence": f"cat, dog, {i}", "split": "val"} for i in range(4)]


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def intro(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "intro.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        preexec_fn=_limit_memory,
        env={**os.environ, **(env or {})},
    )


def write_spec(
    folder: Path, data: str = "data/animals.jsonl", id_line: str = "", name: str = "s.intro"
) -> Path:
    spec = folder / name
    spec.write_text(SPEC.replace("DATA", data).replace("ID", id_line))
    return spec


def write_rows(path: Path, rows: list[dict[str, object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def one_error(result: subprocess.CompletedProcess[str]) -> tuple[str, int, int, str, str]:
    """The single positioned diagnostic of a failed command: (path, line, column, code, message)."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    found = POSITIONED.findall(result.stderr)
    assert len(found) == 1, result.stderr
    path, line, column, code, message = found[0]
    return path, int(line), int(column), code, message


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write_rows(tmp_path / "data" / "animals.jsonl", ROWS)
    return tmp_path


# ---------------------------------------------------------------- files that are not regular files
def test_a_fifo_spec_is_refused_without_blocking(project: Path) -> None:
    os.mkfifo(project / "pipe.intro")
    assert one_error(intro("check", "pipe.intro", cwd=project))[1:] == (
        1,
        1,
        "E000",
        "cannot read file: it is a FIFO (named pipe), not a regular file",
    )


def test_a_device_as_spec_is_refused_not_read(tmp_path: Path) -> None:
    result = intro("check", "/dev/zero", cwd=tmp_path)
    assert one_error(result) == (
        "/dev/zero",
        1,
        1,
        "E000",
        "cannot read file: it is a character device, not a regular file",
    )


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
def test_a_data_path_that_is_not_a_regular_file_is_refused(project: Path, kind: str) -> None:
    data = project / "data" / "odd.jsonl"
    if kind == "fifo":
        os.mkfifo(data)
    elif kind == "dev-zero":
        data.symlink_to("/dev/zero")
    else:
        data.mkdir()
    write_spec(project, "data/odd.jsonl")
    # --allow-outside: /dev/zero lies outside the folder, and it is the file-kind check under test here
    path, line, column, code, message = one_error(intro("check", "--allow-outside", "s.intro", cwd=project))
    assert (path, line, column, code) == ("s.intro", 6, 9, "E140")
    assert message.endswith("not a regular file"), message


def test_a_spec_over_the_size_limit_is_refused(project: Path) -> None:
    spec = write_spec(project)
    limit = spec.stat().st_size - 1
    result = intro("check", "s.intro", cwd=project, env={"INTRO_MAX_SPEC_BYTES": str(limit)})
    assert one_error(result)[1:4] == (1, 1, "E000")
    assert f"larger than {limit:,} bytes (the limit INTRO_MAX_SPEC_BYTES sets)" in result.stderr
    # at exactly its size the spec itself is read (the stdlib module it uses is larger, and refused)
    at_size = intro("check", "s.intro", cwd=project, env={"INTRO_MAX_SPEC_BYTES": str(limit + 1)})
    assert "s.intro:1:1: error[E000]" not in at_size.stderr and "looking_inward.intro" in at_size.stderr


def test_a_data_file_over_the_size_limit_is_refused_at_its_path(project: Path) -> None:
    write_spec(project)
    result = intro("check", "s.intro", cwd=project, env={"INTRO_MAX_DATA_BYTES": "100"})
    path, line, column, code, message = one_error(result)
    assert (path, line, column, code) == ("s.intro", 6, 9, "E140")
    assert "larger than 100 bytes (the limit INTRO_MAX_DATA_BYTES sets)" in message


def test_a_malformed_size_limit_is_a_diagnostic(project: Path) -> None:
    write_spec(project)
    result = intro("check", "s.intro", cwd=project, env={"INTRO_MAX_SPEC_BYTES": "lots"})
    assert "INTRO_MAX_SPEC_BYTES must be a positive whole number of bytes" in one_error(result)[4]


# ---------------------------------------------------------------- staying inside the spec's folder
def test_a_data_symlink_out_of_the_folder_is_refused_and_not_quoted(project: Path, tmp_path_factory) -> None:
    secret = tmp_path_factory.mktemp("elsewhere") / "secret.csv"
    secret.write_text("token,value\nhunter2,1\n")
    (project / "data" / "leak.csv").symlink_to(secret)
    write_spec(project, "data/leak.csv")
    result = intro("check", "s.intro", cwd=project)
    assert one_error(result)[:4] == ("s.intro", 6, 9, "E147")
    assert "hunter2" not in result.stderr and "token" not in result.stderr
    # with --allow-outside the file is read (and is wrong for other reasons)
    allowed = intro("check", "--allow-outside", "s.intro", cwd=project)
    assert allowed.returncode == 2 and "E147" not in allowed.stderr


def test_a_dotdot_data_path_is_refused(project: Path) -> None:
    nested = project / "specs"
    nested.mkdir()
    write_spec(nested, "../data/animals.jsonl")
    assert one_error(intro("check", "specs/s.intro", cwd=project))[:4] == ("specs/s.intro", 6, 9, "E147")
    assert intro("check", "--allow-outside", "specs/s.intro", cwd=project).returncode == 0


def test_a_module_symlinked_out_of_the_folder_is_refused(project: Path, tmp_path_factory) -> None:
    outside = tmp_path_factory.mktemp("lib") / "shared.intro"
    outside.write_text("let words = 1\n")
    (project / "shared.intro").symlink_to(outside)
    spec = write_spec(project)
    spec.write_text("use shared\n" + spec.read_text())
    assert one_error(intro("check", "s.intro", cwd=project))[:4] == ("s.intro", 1, 1, "E112")
    assert intro("check", "--allow-outside", "s.intro", cwd=project).returncode == 0


@pytest.mark.parametrize("command", ["compile", "plan", "run", "diff"])
def test_every_spec_command_confines_and_takes_allow_outside(project: Path, command: str) -> None:
    nested = project / "specs"
    nested.mkdir()
    write_spec(nested, "../data/animals.jsonl")
    args = [command, "specs/s.intro"] + (["specs/s.intro"] if command == "diff" else [])
    result = intro(*args, "--runs", "r", "--cache", "c", cwd=project) if command in ("plan", "run") else None
    result = result or intro(*args, cwd=project)
    assert result.returncode == (1 if command == "diff" else 2), result.stderr
    assert "E147" in result.stderr and "Traceback" not in result.stderr
    if command != "run":  # running would load a model; that it parses the flag is enough here
        allowed = [*args, "--allow-outside"] + (["--runs", "r", "--cache", "c"] if command == "plan" else [])
        assert intro(*allowed, cwd=project).returncode == 0


# ---------------------------------------------------------------- what is inside a data file
def test_a_100k_deep_json_value_names_the_data_file_line_and_column(project: Path) -> None:
    line = json.dumps(ROWS[1])[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}"
    (project / "data" / "animals.jsonl").write_text(json.dumps(ROWS[0]) + "\n" + line + "\n")
    write_spec(project)
    path, number, column, code, message = one_error(intro("check", "s.intro", cwd=project))
    # the object is level 1; the 100th "[" opens level 101
    assert (path, number, code) == ("data/animals.jsonl", 2, "E141")
    assert column == line.index("[") + 100
    assert message == "the value is nested more than 100 levels deep"


def test_a_5000_digit_number_names_the_data_file_line_and_column(project: Path) -> None:
    line = json.dumps(ROWS[0])[:-1] + ', "n": ' + "9" * 5000 + "}"
    (project / "data" / "animals.jsonl").write_text(line + "\n")
    write_spec(project)
    path, number, column, code, message = one_error(intro("check", "s.intro", cwd=project))
    assert (path, number, column, code) == ("data/animals.jsonl", 1, line.index("9999") + 1, "E141")
    assert message == "the number is too long (more than 4300 digits)"


def test_a_csv_row_with_a_stray_quote_and_a_field_too_many_is_positioned(project: Path) -> None:
    # found by the fuzz: a quote inside an unquoted field is a plain character to the csv module
    (project / "data" / "rows.csv").write_text('id,sequence,split\nr0,cat " dog,val,1\n')
    write_spec(project, "data/rows.csv")
    path, line, column, code, message = one_error(intro("check", "s.intro", cwd=project))
    assert (path, line, column, code) == ("data/rows.csv", 2, 18, "E141")
    assert message == "the row has 4 fields but the header has 3"


def test_non_utf8_bytes_in_a_spec_are_positioned(project: Path) -> None:
    # (a data file's were already positioned: tests/compiler/test_datasets.py)
    spec = write_spec(project)
    spec.write_bytes(spec.read_bytes().replace(b"What comes", b"What\xff comes"))
    path, line, column, code, message = one_error(intro("check", "s.intro", cwd=project))
    assert (path, line, column, code) == ("s.intro", 7, 16, "E000")
    assert message == "byte 0xff is not valid UTF-8; save the file as UTF-8"


# ---------------------------------------------------------------- tasks keyed by a column, splits
def test_a_task_keyed_by_a_named_column_compiles_plans_and_diffs(project: Path) -> None:
    rows = [{"word": f"w{i}", "sequence": f"cat, {i}", "split": "val"} for i in range(3)]
    write_rows(project / "data" / "words.jsonl", rows)
    write_spec(project, "data/words.jsonl", '  id: "word"\n')
    assert intro("check", "s.intro", cwd=project).returncode == 0
    compiled = intro("compile", "s.intro", cwd=project)
    assert compiled.returncode == 0, compiled.stderr
    plan = json.loads(compiled.stdout)
    assert set(plan["items"]) == {"animals/w0", "animals/w1", "animals/w2"}
    plan_run = intro("plan", "s.intro", "--runs", "r", "--cache", "c", cwd=project)
    assert plan_run.returncode == 0, plan_run.stderr
    assert intro("diff", "s.intro", "s.intro", cwd=project).returncode == 0
    # a row without the named column is an error at that row
    write_rows(project / "data" / "words.jsonl", [{"word": "w0", "sequence": "a"}, {"sequence": "b"}])
    path, line, column, code, message = one_error(intro("check", "s.intro", cwd=project))
    assert (path, line, column, code) == ("data/words.jsonl", 2, 1, "E141")
    assert message == "the row has no 'word' field (its fields: sequence)"


def test_a_split_whose_test_part_is_empty_is_an_error_at_check_time(project: Path) -> None:
    write_rows(project / "data" / "animals.jsonl", [{**row, "split": "train"} for row in ROWS])
    write_spec(project)
    path, line, column, code, message = one_error(intro("check", "s.intro", cwd=project))
    assert (path, line, column, code) == ("s.intro", 10, 24, "E162")
    assert message == "task 'animals' has no rows in the test part of split 'held_out'"


# ---------------------------------------------------------------- intro fmt
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("absent.intro", "absent.intro:1:1: error[E000]: cannot read file: No such file or directory"),
        ("data", "data:1:1: error[E000]: cannot read file: it is a directory, not a regular file"),
        (
            "latin1.intro",
            "latin1.intro:1:6: error[E000]: byte 0xe9 is not valid UTF-8; save the file as UTF-8",
        ),
    ],
)
def test_fmt_reports_an_unreadable_file_like_check(project: Path, name: str, expected: str) -> None:
    (project / "latin1.intro").write_bytes(b"let x\xe9 = 1\n")
    for command in ("fmt", "check"):
        result = intro(command, name, cwd=project)
        assert (result.returncode, result.stderr) == (2, expected + "\n1 error\n")
