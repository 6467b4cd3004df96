"""Loading JSONL/CSV study data: rows in order, and every kind of bad input reported at its line and column."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intro.compiler import datasets
from intro.compiler.datasets import (
    DataError,
    load_rows,
    load_stdlib_rows,
    require_fields,
    row_line,
    stdlib_data_names,
    stdlib_data_path,
)


@pytest.fixture(autouse=True)
def _fresh_cache():
    datasets.clear_cache()
    yield
    datasets.clear_cache()


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_bytes(content.encode("utf-8"))
    return path


def error_of(path: Path, **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        load_rows(path, **kwargs)
    return info.value


# ---------------------------------------------------------------------------------------------------
# Good input


def test_jsonl_rows_come_back_in_file_order_as_plain_dicts(tmp_path):
    path = write(tmp_path, "items.jsonl", '{"id": "b", "x": 1}\n\n{"id": "a", "x": [1, 2]}\n')
    rows = load_rows(path)
    assert rows == ({"id": "b", "x": 1}, {"id": "a", "x": [1, 2]})
    assert all(type(row) is dict for row in rows)


def test_integer_ids_become_strings(tmp_path):
    path = write(tmp_path, "items.jsonl", '{"id": 7}\n{"id": 8}\n')
    assert [row["id"] for row in load_rows(path)] == ["7", "8"]


def test_csv_with_a_custom_id_column(tmp_path):
    path = write(tmp_path, "items.csv", 'key,question,answer\nq1,What is 2+2?,4\nq2,"Red, or blue?",red\n')
    rows = load_rows(path, id_column="key")
    assert rows == (
        {"key": "q1", "question": "What is 2+2?", "answer": "4"},
        {"key": "q2", "question": "Red, or blue?", "answer": "red"},
    )


def test_tsv_uses_tabs(tmp_path):
    path = write(tmp_path, "items.tsv", "id\ttext\na\thello, world\n")
    assert load_rows(path) == ({"id": "a", "text": "hello, world"},)


def test_crlf_and_byte_order_mark_are_accepted(tmp_path):
    path = write(tmp_path, "items.csv", b"\xef\xbb\xbfid,text\r\na,one\r\nb,two\r\n")
    assert load_rows(path) == ({"id": "a", "text": "one"}, {"id": "b", "text": "two"})


def test_row_line_remembers_where_each_row_starts(tmp_path):
    path = write(tmp_path, "items.jsonl", '\n{"id": "a"}\n\n{"id": "b"}\n')
    load_rows(path)
    assert row_line(path, "a") == 2
    assert row_line(path, "b") == 4


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.text(min_size=1, max_size=8).filter(lambda k: k != "id"),
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.text(),
                lambda inner: st.lists(inner, max_size=3),
                max_leaves=5,
            ),
            max_size=4,
        ),
        min_size=1,
        max_size=6,
    )
)
def test_any_jsonl_round_trips(tmp_path_factory, bodies):
    rows = [{"id": f"item-{i}", **body} for i, body in enumerate(bodies)]
    path = tmp_path_factory.mktemp("rt") / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert load_rows(path) == tuple(rows)


# ---------------------------------------------------------------------------------------------------
# Cache


def test_parsed_files_are_cached_until_they_change(tmp_path, monkeypatch):
    path = write(tmp_path, "items.jsonl", '{"id": "a"}\n')
    parses = []
    real_parse = datasets._parse_file
    monkeypatch.setattr(datasets, "_parse_file", lambda *a: parses.append(a) or real_parse(*a))
    load_rows(path)
    load_rows(path)
    assert len(parses) == 1
    path.write_text('{"id": "a"}\n{"id": "b"}\n', encoding="utf-8")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert [row["id"] for row in load_rows(path)] == ["a", "b"]
    assert len(parses) == 2


def test_changing_a_returned_row_does_not_change_the_cache(tmp_path):
    path = write(tmp_path, "items.jsonl", '{"id": "a", "tags": ["x"]}\n')
    first = load_rows(path)
    first[0]["tags"].append("y")
    first[0]["new"] = 1
    assert load_rows(path) == ({"id": "a", "tags": ["x"]},)


# ---------------------------------------------------------------------------------------------------
# Bad input: each carries the right position


def test_malformed_json_reports_the_json_error_position(tmp_path):
    path = write(tmp_path, "items.jsonl", '{"id": "a"}\n{"id": "b"}\n{"id": "c", "x": }\n')
    err = error_of(path)
    assert (err.path, err.line, err.column) == (str(path), 3, 18)
    assert "malformed JSON" in err.message
    assert str(err) == f"{path}:3:18: {err.message}"


def test_a_line_that_is_not_an_object(tmp_path):
    path = write(tmp_path, "items.jsonl", '{"id": "a"}\n  [1, 2]\n')
    err = error_of(path)
    assert (err.line, err.column) == (2, 3)
    assert "JSON object" in err.message


def test_missing_id_in_jsonl(tmp_path):
    path = write(tmp_path, "items.jsonl", '{"id": "a"}\n{"name": "b"}\n')
    err = error_of(path)
    assert (err.line, err.column) == (2, 1)
    assert "'id'" in err.message and "name" in err.message


def test_an_empty_or_null_id_points_at_the_value(tmp_path):
    path = write(tmp_path, "items.jsonl", '{"id": "a"}\n{"text": "t", "id": null}\n')
    err = error_of(path)
    assert (err.line, err.column) == (2, 21)
    assert "null" in err.message


def test_duplicate_id_in_jsonl_names_the_first_use(tmp_path):
    path = write(tmp_path, "items.jsonl", '{"id": "a"}\n{"id": "b"}\n{"x": 1, "id": "a"}\n')
    err = error_of(path)
    assert (err.line, err.column) == (3, 16)
    assert "duplicate id 'a'" in err.message and "line 1" in err.message


def test_duplicate_key_inside_one_object(tmp_path):
    path = write(tmp_path, "items.jsonl", '{"id": "a", "x": 1, "x": 2}\n')
    err = error_of(path)
    assert (err.line, err.column) == (1, 13)
    assert "'x'" in err.message


def test_csv_without_the_id_column_suggests_a_close_name(tmp_path):
    path = write(tmp_path, "items.csv", "ID,text\n1,a\n")
    err = error_of(path)
    assert (err.line, err.column) == (1, 1)
    assert "did you mean 'ID'" in err.message


def test_csv_empty_id_points_at_its_cell(tmp_path):
    path = write(tmp_path, "items.csv", 'text,id\nhello,a\n"x, y",\n')
    err = error_of(path)
    assert (err.line, err.column) == (3, 8)


def test_csv_duplicate_id_points_at_its_cell(tmp_path):
    path = write(tmp_path, "items.csv", 'text,id\n"two\nlines",a\nthree,a\n')
    err = error_of(path)
    assert (err.line, err.column) == (4, 7)
    assert "first used on line 2" in err.message


def test_csv_field_after_a_multiline_quoted_field(tmp_path):
    path = write(tmp_path, "items.csv", 'text,id\n"two\nlines",\n')
    err = error_of(path)
    assert (err.line, err.column) == (3, 8)


def test_csv_row_with_too_many_fields(tmp_path):
    path = write(tmp_path, "items.csv", "id,text\na,one\nb,two,extra\n")
    err = error_of(path)
    assert (err.line, err.column) == (3, 7)
    assert "3 fields" in err.message


def test_csv_row_with_too_few_fields(tmp_path):
    path = write(tmp_path, "items.csv", "id,text,answer\na,one\n")
    err = error_of(path)
    assert (err.line, err.column) == (2, 1)


def test_csv_duplicate_header_name(tmp_path):
    path = write(tmp_path, "items.csv", "id,text,text\na,b,c\n")
    err = error_of(path)
    assert (err.line, err.column) == (1, 9)


@pytest.mark.parametrize(
    ("name", "content", "line"),
    [
        ("empty.jsonl", "", 1),
        ("blank.jsonl", "\n  \n\n", 1),
        ("empty.csv", "", 1),
        ("header.csv", "id,text\n", 2),
    ],
)
def test_a_file_without_rows(tmp_path, name, content, line):
    err = error_of(write(tmp_path, name, content))
    assert (err.line, err.column) == (line, 1)


def test_non_utf8_bytes_report_line_and_character_column(tmp_path):
    path = write(
        tmp_path,
        "items.jsonl",
        '{"id": "a"}\n{"id": "é\xff"}\n'.encode().replace(b"\xc3\xbf", b"\xff"),
    )
    err = error_of(path)
    assert (err.line, err.column) == (2, 10)
    assert "0xff" in err.message and "UTF-8" in err.message


def test_missing_file_and_unknown_suffix(tmp_path):
    err = error_of(tmp_path / "nowhere.jsonl")
    assert err.line is None and "cannot read" in err.message
    assert str(err).startswith(str(tmp_path / "nowhere.jsonl") + ": ")
    err = error_of(write(tmp_path, "items.txt", "id\n"))
    assert "unsupported" in err.message


# ---------------------------------------------------------------------------------------------------
# Fields a template needs


def test_require_fields_points_at_the_first_row_lacking_one(tmp_path):
    path = write(tmp_path, "items.jsonl", '{"id": "a", "question": "q"}\n{"id": "b", "questoin": "q"}\n')
    rows = load_rows(path)
    require_fields(rows, ["id"], path)
    with pytest.raises(DataError) as info:
        require_fields(rows, ["question"], path)
    err = info.value
    assert (err.line, err.column) == (2, 1)
    assert "'b'" in err.message and "did you mean 'questoin'" in err.message


def test_require_fields_counts_other_rows_and_names_who_needs_it(tmp_path):
    path = write(tmp_path, "items.csv", "id,text\na,x\nb,y\nc,z\n")
    rows = load_rows(path)
    with pytest.raises(DataError) as info:
        require_fields(rows, ["text", "matching"], path, needed_by="property ethical_stance")
    err = info.value
    assert (err.line, err.column) == (2, 1)
    assert "property ethical_stance" in err.message and "2 more rows" in err.message


def test_require_fields_on_rows_not_from_a_file_has_no_position():
    with pytest.raises(DataError) as info:
        require_fields([{"id": "a"}], ["text"], "inline")
    assert info.value.line is None


# ---------------------------------------------------------------------------------------------------
# The stdlib's data by name


def test_stdlib_data_by_name():
    assert "animals" in stdlib_data_names()
    assert stdlib_data_path("animals") == stdlib_data_path("animals.jsonl")
    assert stdlib_data_path("animals").is_file()
    assert load_stdlib_rows("animals")[0]["id"] == "animals-0000"


def test_unknown_stdlib_name_suggests_one():
    with pytest.raises(DataError) as info:
        stdlib_data_path("anmals")
    assert "did you mean 'animals'" in info.value.message
