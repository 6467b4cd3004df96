"""Loading a study's items: JSONL and CSV files whose rows carry a stable id.

A task's dataset is either one of the stdlib's files (`stdlib_data_path("animals")`) or a user's own
JSONL/CSV file with an id column. Loading is pure standard library (json, csv) so `intro check` can
validate data without the runtime's heavy dependencies.

Every problem with a file becomes a `DataError` that names the file, the 1-based line and column and
what is wrong, so the CLI can point at the offending spot exactly as it points at a spec error. Rows
come back as plain dicts in file order; parsed files are cached by (path, mtime, size) because one spec
names the same file from many places.
"""

from __future__ import annotations

import codecs
import copy
import csv
import hashlib
import importlib.resources
import io
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from attrs import frozen

from .files import DATA_LIMIT_ENV, FileProblem, read_bytes, utf8_error_position

Row = dict[str, Any]

DEFAULT_ID_COLUMN = "id"
JSONL_SUFFIXES = (".jsonl", ".ndjson")
CSV_DELIMITERS = {".csv": ",", ".tsv": "\t"}
# Rows are flat records in practice; anything nested deeper is a broken file, and would exhaust the stack
# of whatever walks it later (copying, hashing, rendering).
MAX_JSON_DEPTH = 100


class DataError(Exception):
    """A data file the compiler cannot use, with the position of the problem.

    `line` and `column` are 1-based (the column counts characters, as an editor does); both are None
    when the problem concerns the whole file and no position makes sense (for example a missing file).
    """

    def __init__(
        self,
        message: str,
        path: str | os.PathLike[str],
        line: int | None = None,
        column: int | None = None,
    ):
        self.message = message
        self.path = str(path)
        self.line = line
        self.column = column
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.path}: {self.message}"
        return f"{self.path}:{self.line}:{self.column or 1}: {self.message}"


# ---------------------------------------------------------------------------------------------------
# Public API


def load_rows(path: str | os.PathLike[str], id_column: str = DEFAULT_ID_COLUMN) -> tuple[Row, ...]:
    """Rows of a JSONL (`.jsonl`, `.ndjson`) or CSV (`.csv`, `.tsv`) file, in file order.

    Ids are required, unique and returned as strings (a JSONL integer id 7 becomes "7"), so that an
    item keeps its identity however the file was written. Each call returns fresh copies; changing a
    row never changes what the next caller sees.
    """
    parsed = _parsed(Path(path), id_column)
    return copy.deepcopy(parsed.rows)


def require_fields(
    rows: Sequence[Row],
    fields: Iterable[str],
    path: str | os.PathLike[str],
    id_column: str = DEFAULT_ID_COLUMN,
    needed_by: str = "the template",
) -> None:
    """Raise `DataError` at the first row that lacks one of `fields` (say, the names a template uses).

    The error points at the row's line when `rows` came from `load_rows(path)`; `needed_by` names what
    wants the field, for the message.
    """
    wanted = tuple(fields)
    for row in rows:
        missing = [name for name in wanted if name not in row]
        if missing:
            raise _missing_field_error(rows, row, missing[0], Path(path), id_column, needed_by)


def row_line(path: str | os.PathLike[str], row_id: str, id_column: str = DEFAULT_ID_COLUMN) -> int | None:
    """The line a row with this id starts on, if the file was loaded (and has not changed since)."""
    entry = _CACHE.get(_cache_key(Path(path), id_column))
    return None if entry is None else entry.lines.get(row_id)


def stdlib_data_dir() -> Path:
    """The folder of the stdlib's data files (inside the installed `intro.stdlib` package)."""
    return Path(str(importlib.resources.files("intro.stdlib"))) / "data"


def stdlib_data_names() -> tuple[str, ...]:
    """Names of the stdlib's data sets, as `stdlib_data_path` accepts them."""
    return tuple(sorted(p.stem for p in stdlib_data_dir().glob("*.jsonl")))


def stdlib_data_path(name: str) -> Path:
    """The file of a stdlib data set named `name` ("animals" or "animals.jsonl")."""
    stem = name.removesuffix(".jsonl")
    available = stdlib_data_names()
    if stem not in available:
        raise DataError(f"no stdlib data set named {stem!r}{_suggestion(stem, available)}", name)
    return stdlib_data_dir() / f"{stem}.jsonl"


def load_stdlib_rows(name: str) -> tuple[Row, ...]:
    return load_rows(stdlib_data_path(name))


def data_digest(path: str | os.PathLike[str], id_column: str = DEFAULT_ID_COLUMN) -> str:
    """sha256 of the bytes `load_rows(path, id_column)` parsed (the file is not read a second time)."""
    return _parsed(Path(path), id_column).sha256


def clear_cache() -> None:
    _CACHE.clear()


# ---------------------------------------------------------------------------------------------------
# Cache


@frozen
class _Parsed:
    mtime_ns: int
    size: int
    rows: tuple[Row, ...]
    lines: dict[str, int]  # row id -> line the row starts on
    sha256: str


_CACHE: dict[tuple[str, str], _Parsed] = {}


def _cache_key(path: Path, id_column: str) -> tuple[str, str]:
    return (str(path.resolve()), id_column)


def _parsed(path: Path, id_column: str) -> _Parsed:
    try:
        stat = path.stat()
    except OSError as err:
        raise DataError(f"cannot read the file: {err.strerror}", path) from None
    key = _cache_key(path, id_column)
    cached = _CACHE.get(key)
    if cached is not None and (cached.mtime_ns, cached.size) == (stat.st_mtime_ns, stat.st_size):
        return cached
    rows, lines, sha256 = _parse_file(path, id_column)
    entry = _Parsed(stat.st_mtime_ns, stat.st_size, rows, lines, sha256)
    _CACHE[key] = entry
    return entry


def _parse_file(path: Path, id_column: str) -> tuple[tuple[Row, ...], dict[str, int], str]:
    suffix = path.suffix.lower()
    if suffix not in JSONL_SUFFIXES and suffix not in CSV_DELIMITERS:
        raise DataError(f"unsupported data file type {suffix or '(none)'!r}; use .jsonl or .csv", path)
    data = _read_data(path)
    text = _decoded(data, path)
    if not text.strip():
        raise DataError(
            "the file is empty; expected a header and rows, or one JSON object per line", path, 1, 1
        )
    if suffix in JSONL_SUFFIXES:
        positioned = list(_jsonl_rows(text, path, id_column))
    else:
        positioned = list(_csv_rows(text, path, CSV_DELIMITERS[suffix], id_column))
    if not positioned:
        raise DataError("the file has a header but no rows", path, 2, 1)
    return (*_checked_ids(positioned, path, id_column), hashlib.sha256(data).hexdigest())


def _read_data(path: Path) -> bytes:
    try:
        return read_bytes(path, DATA_LIMIT_ENV)
    except FileProblem as problem:
        raise DataError(f"cannot read the file: {problem.message}", path) from None


def _decoded(data: bytes, path: Path) -> str:
    # Editors hide a byte-order mark; dropping it first keeps reported columns the ones the user sees.
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line, column = utf8_error_position(data, err.start)
        bad = data[err.start : err.start + 1].hex()
        raise DataError(
            f"byte 0x{bad} is not valid UTF-8; save the file as UTF-8", path, line, column
        ) from None


# ---------------------------------------------------------------------------------------------------
# Rows with the position of each field, before ids are checked


@frozen
class _PositionedRow:
    row: Row
    line: int
    id_line: int
    id_column: int


def _checked_ids(
    positioned: list[_PositionedRow], path: Path, id_column: str
) -> tuple[tuple[Row, ...], dict[str, int]]:
    lines: dict[str, int] = {}
    for item in positioned:
        row_id = _row_id(item, path, id_column)
        if row_id in lines:
            raise DataError(
                f"duplicate id {row_id!r} (first used on line {lines[row_id]})",
                path,
                item.id_line,
                item.id_column,
            )
        item.row[id_column] = row_id
        lines[row_id] = item.line
    return tuple(item.row for item in positioned), lines


# The id "column" of files whose rows need no ids of their own (chat examples): each row's line number.
LINE_IDS = "#line"


def _row_id(item: _PositionedRow, path: Path, id_column: str) -> str:
    if id_column == LINE_IDS:
        return str(item.line)
    if id_column not in item.row:
        fields = ", ".join(item.row) or "none"
        raise DataError(f"the row has no {id_column!r} field (its fields: {fields})", path, item.line, 1)
    value = item.row[id_column]
    # bool is an int subclass, but `true` is not an id anyone meant
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value
    found = "an empty string" if isinstance(value, str) else json.dumps(value)
    raise DataError(
        f"the {id_column!r} must be a non-empty string or an integer, found {found}",
        path,
        item.id_line,
        item.id_column,
    )


# ---------------------------------------------------------------------------------------------------
# JSONL


def _jsonl_rows(text: str, path: Path, id_column: str) -> Iterator[_PositionedRow]:
    # split on "\n" only: str.splitlines would also break on U+2028 and friends, which JSON allows in strings
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        if line.strip():
            row = _json_object(line, path, number)
            yield _PositionedRow(row, number, number, _value_column(line, id_column))


def _json_object(line: str, path: Path, number: int) -> Row:
    try:
        value = json.loads(line, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        raise DataError(f"malformed JSON: {err.msg}", path, number, err.colno) from None
    except _DuplicateKey as dup:
        raise DataError(
            f"the key {dup.key!r} appears twice in this object", path, number, _key_column(line, dup.key)
        ) from None
    except RecursionError:
        value = _TOO_DEEP  # deeper than Python's stack allows: reported just below, at the offending bracket
    except ValueError:
        # json's own errors are caught above; what is left is an integer too long for Python to convert
        limit = sys.get_int_max_str_digits()
        match = re.search(rf"\d{{{limit + 1},}}", line)
        column = match.start() + 1 if match else 1
        raise DataError(f"the number is too long (more than {limit} digits)", path, number, column) from None
    if value is _TOO_DEEP or _depth(value) > MAX_JSON_DEPTH:
        column = _too_deep_column(line) or 1
        raise DataError(f"the value is nested more than {MAX_JSON_DEPTH} levels deep", path, number, column)
    if not isinstance(value, dict):
        kind = type(value).__name__ if value is not None else "null"
        column = len(line) - len(line.lstrip()) + 1
        raise DataError(f"each line must be a JSON object, found a {kind}", path, number, column)
    return value


_TOO_DEEP: Any = object()


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in a parsed JSON value (0 for a scalar), without recursion."""
    deepest, pending = 0, [(value, 0)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level + 1)
            if level + 1 > MAX_JSON_DEPTH:
                break
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, level + 1) for child in children)
    return deepest


def _too_deep_column(line: str) -> int | None:
    """Column of the first bracket that opens level MAX_JSON_DEPTH + 1, skipping brackets inside strings."""
    level, in_string, escaped = 0, False, False
    for index, char in enumerate(line):
        if in_string:
            escaped, in_string = (not escaped and char == "\\"), in_string and (escaped or char != '"')
        elif char == '"':
            in_string = True
        elif char in "[{":
            level += 1
            if level > MAX_JSON_DEPTH:
                return index + 1
        elif char in "]}":
            level -= 1
    return None


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _key_column(line: str, key: str) -> int:
    """Column of `"key":` in a JSON line (the first such occurrence), or 1 when it cannot be found."""
    match = re.search(re.escape(json.dumps(key)) + r"\s*:", line)
    return match.start() + 1 if match else 1


def _value_column(line: str, key: str) -> int:
    """Column of the value after `"key":` in a JSON line, or 1 when it cannot be found."""
    match = re.search(re.escape(json.dumps(key)) + r"\s*:\s*", line)
    return match.end() + 1 if match else 1


# ---------------------------------------------------------------------------------------------------
# CSV


@frozen
class _Record:
    fields: list[str]
    positions: list[tuple[int, int]]  # (line, column) where each field starts
    line: int


def _csv_rows(text: str, path: Path, delimiter: str, id_column: str) -> Iterator[_PositionedRow]:
    records = _csv_records(text, path, delimiter)
    header = next(records, None)
    if header is None:
        return
    names = _header_names(header, path, id_column)
    for record in records:
        _check_width(record, len(names), path)
        row = dict(zip(names, record.fields, strict=True))
        id_line, id_col = _position(record, names.index(id_column))
        yield _PositionedRow(row, record.line, id_line, id_col)


def _csv_records(text: str, path: Path, delimiter: str) -> Iterator[_Record]:
    physical = text.split("\n")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    first_line = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise DataError(f"malformed CSV: {err}", path, reader.line_num, 1) from None
        last_line = reader.line_num
        if fields and any(f.strip() for f in fields):
            raw = "\n".join(physical[first_line - 1 : last_line])
            yield _Record(fields, _field_positions(raw, first_line, delimiter), first_line)
        first_line = last_line + 1


def _field_positions(raw: str, first_line: int, delimiter: str) -> list[tuple[int, int]]:
    """Where each field of one CSV record starts, honouring quotes (which may hide delimiters and newlines)."""
    positions = [(first_line, 1)]
    line, column, in_quotes, quotable = first_line, 1, False, True
    for char in raw:
        # As the csv module reads it: a quote opens quoting only at a field's start (or right after a
        # closing quote, which makes a doubled quote); elsewhere in an unquoted field it is a plain character.
        opens = char == '"' and not in_quotes and quotable
        closes = char == '"' and in_quotes
        if opens or closes:
            in_quotes = opens
        elif char == delimiter and not in_quotes:
            positions.append((line, column + 1))
        quotable = closes or (char == delimiter and not in_quotes)
        if char == "\n":
            line, column = line + 1, 0
        column += 1
    return positions


def _position(record: _Record, index: int) -> tuple[int, int]:
    """Where field `index` of a record starts; the record's start when quoting defeats the count."""
    return record.positions[index] if index < len(record.positions) else (record.line, 1)


def _header_names(header: _Record, path: Path, id_column: str) -> list[str]:
    names = [name.strip() for name in header.fields]
    for index, name in enumerate(names):
        line, column = _position(header, index)
        if not name:
            raise DataError(f"column {index + 1} of the header has no name", path, line, column)
        if name in names[:index]:
            raise DataError(f"the header names the column {name!r} twice", path, line, column)
    if id_column not in names:
        message = f"the header has no {id_column!r} column{_suggestion(id_column, names)}"
        raise DataError(message + f" (columns: {', '.join(names)})", path, header.line, 1)
    return names


def _check_width(record: _Record, width: int, path: Path) -> None:
    count = len(record.fields)
    if count == width:
        return
    line, column = _position(record, width) if count > width else (record.line, 1)
    raise DataError(f"the row has {count} fields but the header has {width}", path, line, column)


# ---------------------------------------------------------------------------------------------------
# Missing fields


def _missing_field_error(
    rows: Sequence[Row], row: Row, name: str, path: Path, id_column: str, needed_by: str
) -> DataError:
    row_id = row.get(id_column)
    line = row_line(path, str(row_id), id_column) if row_id is not None else None
    lacking = sum(1 for r in rows if name not in r)
    others = f"; {lacking - 1} more rows lack it too" if lacking > 1 else ""
    present = ", ".join(row) or "none"
    message = (
        f"row {row_id!r} has no field {name!r}, which {needed_by} needs{_suggestion(name, list(row))}"
        f" (its fields: {present}{others})"
    )
    return DataError(message, path, line, 1 if line is not None else None)


def _suggestion(name: str, candidates: Sequence[str]) -> str:
    # compare case-insensitively: a header "ID" is the likeliest reason an "id" column is missing
    by_lower = {candidate.lower(): candidate for candidate in candidates}
    close = get_close_matches(name.lower(), list(by_lower), n=1)
    return f"; did you mean {by_lower[close[0]]!r}?" if close else ""


__all__ = [
    "DEFAULT_ID_COLUMN",
    "DataError",
    "Row",
    "clear_cache",
    "data_digest",
    "load_rows",
    "load_stdlib_rows",
    "require_fields",
    "row_line",
    "stdlib_data_dir",
    "stdlib_data_names",
    "stdlib_data_path",
]
