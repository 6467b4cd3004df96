"""The JSON form of typed step parameters (compiler/step_params.py), derived from their type annotations.

A record (a frozen attrs class) is a JSON object: one key per field, in field order, the key being the
field's name or its `key` metadata; a field marked `omit` is left out while it holds its omit value.
A row (a NamedTuple) is a JSON array of its fields; its trailing fields that default to None are left out
while None. `tuple[X, ...]` is an array, `Mapping[str, X]` an object, `A | B` whichever fits first, `Any` any
JSON value as it is. Encoding leaves a tuple of scalars (a plain row, or a tuple of those) as it is: the
json module writes a tuple as an array, so the text, and every hash over it, is the same as a list's, and
a plan's few hundred thousand rows cost nothing to write. Decoding checks every value against its annotation and raises `ParamError` naming the
path of the first bad one (`rows[3][1]`, `hparams.rank`); an int is a float where a float is asked for, and
stays an int (a step's hash covers the JSON it was lowered to).

Encoders and decoders are built once per type and cached: a plan holds a few hundred thousand rows.
"""

from __future__ import annotations

import functools
import json
import types
import typing
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

import attrs

KEY = "intro.key"  # field metadata: the JSON key, where it is not the field's name (`from`)
OMIT = "intro.omit"  # field metadata: the value it is left out of the JSON at

Decoder = Callable[[Any], Any]
Encoder = Callable[[Any], Any]


class ParamError(ValueError):
    """A value that does not have the form its parameter's type gives; `where` is its path."""

    def __init__(self, problem: str, where: tuple[str | int, ...] = ()):
        super().__init__(problem)
        self.problem = problem
        self.where = where

    def within(self, part: str | int) -> ParamError:
        return ParamError(self.problem, (part, *self.where))

    @property
    def path(self) -> str:
        text = ""
        for part in self.where:
            text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
        return text

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}" if self.where else self.problem


def field(*, key: str | None = None, default: Any = attrs.NOTHING, omit: Any = attrs.NOTHING) -> Any:
    """A parameter: stored under `key` in JSON (default: its name), left out there while it equals `omit`."""
    metadata: dict[str, Any] = {}
    if key is not None:
        metadata[KEY] = key
    if omit is not attrs.NOTHING:
        metadata[OMIT] = omit
    return attrs.field(default=default, metadata=metadata)


# ---------------------------------------------------------------- records (JSON objects)
@attrs.frozen
class _Field:
    name: str
    key: str
    required: bool
    omit: Any  # attrs.NOTHING: never left out
    decode: Decoder
    encode: Encoder


@cache
def record_fields(cls: Any) -> tuple[_Field, ...]:
    hints = typing.get_type_hints(cls)
    return tuple(
        _Field(
            f.name,
            f.metadata.get(KEY, f.name),
            f.default is attrs.NOTHING,
            f.metadata.get(OMIT, attrs.NOTHING),
            decoder(hints[f.name]),
            encoder(hints[f.name]),
        )
        for f in attrs.fields(cls)
    )


def encode_record(value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cls: Any = type(value)
    for f in record_fields(cls):
        item = getattr(value, f.name)
        if f.omit is not attrs.NOTHING and item == f.omit:
            continue
        out[f.key] = f.encode(item)
    return out


def decode_record(cls: type, data: Any) -> Any:
    if not isinstance(data, Mapping):
        raise ParamError(f"expected an object, got {_shown(data)}")
    fields = record_fields(cls)
    unknown = data.keys() - _keys(cls)
    if unknown:
        raise ParamError("is not a parameter of this step", (next(k for k in data if k in unknown),))
    values = {}
    for f in fields:
        if f.key not in data:
            if f.required:
                raise ParamError("is missing", (f.key,))
            continue
        try:
            values[f.name] = f.decode(data[f.key])
        except ParamError as error:
            raise error.within(f.key) from None
    return cls(**values)


@cache
def _keys(cls: type) -> frozenset[str]:
    return frozenset(f.key for f in record_fields(cls))


# ---------------------------------------------------------------- decoders
@cache
def decoder(tp: Any) -> Decoder:
    """A function checking a JSON value against `tp` and returning it as a `tp`."""
    if tp is Any:
        return lambda value: value
    if tp in _SCALARS:
        return _scalar(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return _union(args)
    if origin is tuple:
        return _sequence(args[0]) if len(args) == 2 and args[1] is Ellipsis else _fixed(args)
    if origin is Mapping:
        return _mapping(args[1])
    if _is_row(tp):
        return _row(tp)
    if attrs.has(tp):
        return getattr(tp, "from_json", lambda data: decode_record(tp, data))  # type: ignore[no-any-return]
    raise TypeError(f"no JSON form for {tp!r}")


def _is_row(tp: Any) -> bool:
    """Whether a type is a row: a NamedTuple."""
    return isinstance(tp, type) and issubclass(tp, tuple) and hasattr(tp, "_fields")


def _checked(accepts: tuple[type, ...], what: str) -> Decoder:
    def decode(value: Any) -> Any:
        if type(value) not in accepts:
            raise ParamError(f"expected {what}, got {_shown(value)}")
        return value

    return decode


_SCALARS: dict[Any, tuple[tuple[type, ...], str]] = {
    str: ((str,), "a string"),
    int: ((int,), "an integer"),
    float: ((int, float), "a number"),
    bool: ((bool,), "true or false"),
    type(None): ((type(None),), "null"),
}


def _scalar(tp: Any) -> Decoder:
    return _checked(*_SCALARS[tp])


def _union(members: tuple[Any, ...]) -> Decoder:
    what = " or ".join(describe(m) for m in members)
    if all(m in _SCALARS for m in members):
        return _checked(tuple(t for m in members for t in _SCALARS[m][0]), what)
    others = [decoder(m) for m in members if m is not type(None)]
    optional = len(others) < len(members)

    def decode(value: Any) -> Any:
        if value is None and optional:
            return None
        if len(others) == 1:
            return others[0](value)
        for each in others:
            try:
                return each(value)
            except ParamError:
                continue
        raise ParamError(f"expected {what}, got {_shown(value)}")

    return decode


def _sequence(item: Any) -> Decoder:
    each = decoder(item)
    plain = _plain_types(item)
    exact = _exact_row(item)
    new = functools.partial(tuple.__new__, item)

    def decode(value: Any) -> Any:
        if type(value) is not list:
            raise ParamError(f"expected a list, got {_shown(value)}")
        if plain is not None and set(map(type, value)) <= plain:
            return tuple(value)
        if exact is not None and all(type(r) is list and tuple(map(type, r)) == exact for r in value):
            return tuple(map(new, value))  # rows of scalars of exactly their types: checked at C speed
        try:
            return tuple(map(each, value))
        except ParamError:  # again, one by one, to say where
            return tuple(_at(each, index, x) for index, x in enumerate(value))

    return decode


def _exact_row(tp: Any) -> tuple[type, ...] | None:
    """A row type whose fields are all str, int or bool (no defaults): the JSON types of its values."""
    if not _is_row(tp) or tp._field_defaults:
        return None
    hints = typing.get_type_hints(tp)
    types_ = [hints[name] for name in tp._fields]
    return tuple(types_) if all(t in (str, int, bool) for t in types_) else None


def _plain_types(tp: Any) -> set[type] | None:
    """The JSON types a scalar type takes as they are (None: not a scalar)."""
    return set(_SCALARS[tp][0]) if tp in _SCALARS else None


def _fixed(items: tuple[Any, ...]) -> Decoder:
    decoders = [decoder(i) for i in items]

    def decode(value: Any) -> Any:
        if type(value) is not list or len(value) != len(decoders):
            raise ParamError(f"expected a list of {len(decoders)}, got {_shown(value)}")
        return tuple(_at(each, index, x) for index, (each, x) in enumerate(zip(decoders, value, strict=True)))

    return decode


def _mapping(item: Any) -> Decoder:
    each = decoder(item)

    def decode(value: Any) -> Any:
        if type(value) is not dict:
            raise ParamError(f"expected an object, got {_shown(value)}")
        return {key: _at(each, key, x) for key, x in value.items()}

    return decode


def _row(cls: Any) -> Decoder:
    hints = typing.get_type_hints(cls)
    decoders = [decoder(hints[name]) for name in cls._fields]
    least = len(decoders) - len(cls._field_defaults)
    what = f"a list [{', '.join(cls._fields)}]"
    # The common case, checked at C speed: a full row of scalars of exactly their types.
    new = tuple.__new__
    exact = tuple(
        _SCALARS[hints[name]][0][0] if hints[name] in (str, int, bool) else None for name in cls._fields
    )

    def decode(value: Any) -> Any:
        if type(value) is not list or not least <= len(value) <= len(decoders):
            raise ParamError(f"expected {what}, got {_shown(value)}")
        if tuple(map(type, value)) == exact:
            return new(cls, value)
        return cls(
            *(_at(each, index, x) for index, (each, x) in enumerate(zip(decoders, value, strict=False)))
        )

    return decode


def _at(decode: Decoder, where: str | int, value: Any) -> Any:
    try:
        return decode(value)
    except ParamError as error:
        raise error.within(where) from None


def describe(tp: Any) -> str:
    if tp in _SCALARS:
        return _SCALARS[tp][1]
    origin = typing.get_origin(tp)
    if origin is tuple:
        return "a list"
    if origin is Mapping or attrs.has(tp):
        return "an object"
    return getattr(tp, "__name__", str(tp))


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------- encoders
@cache
def encoder(tp: Any) -> Encoder:
    """A function giving a `tp` value's JSON form (lists for tuples, objects for records)."""
    if tp is Any or tp in _SCALARS:
        return _same
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return _either(args)
    if origin is tuple:
        return _list(args[0]) if len(args) == 2 and args[1] is Ellipsis else _list_of(args)
    if origin is Mapping:
        each = encoder(args[1])
        if each is _same:
            return dict
        return lambda value: {key: each(x) for key, x in value.items()}
    if _is_row(tp):
        return _row_list(tp)
    if attrs.has(tp):
        return lambda value: value.to_json()
    raise TypeError(f"no JSON form for {tp!r}")


def _same(value: Any) -> Any:
    return value


def _either(members: tuple[Any, ...]) -> Encoder:
    encoders = [encoder(m) for m in members]
    if all(e is _same for e in encoders):
        return _same
    present = [e for m, e in zip(members, encoders, strict=True) if m is not type(None)]
    if len(present) != 1:
        raise TypeError(f"no JSON form for a union of {members!r}: only `X | None` of a structured X")
    only = present[0]
    return lambda value: None if value is None else only(value)


def _list(item: Any) -> Encoder:
    each = encoder(item)
    if each is _same:  # a tuple of scalars or plain rows is its own JSON form
        return _same
    return lambda value: [each(x) for x in value]


def _list_of(items: tuple[Any, ...]) -> Encoder:
    encoders = [encoder(i) for i in items]
    if all(e is _same for e in encoders):
        return _same
    return lambda value: [each(x) for each, x in zip(encoders, value, strict=True)]


def _row_list(cls: Any) -> Encoder:
    hints = typing.get_type_hints(cls)
    encoders = [encoder(hints[name]) for name in cls._fields]
    optional = {name for name, default in cls._field_defaults.items() if default is None}
    plain = all(e is _same for e in encoders)

    if plain and not optional:
        return _same

    def encode(value: Any) -> list[Any]:
        out = list(value) if plain else [each(x) for each, x in zip(encoders, value, strict=True)]
        while optional and len(out) > len(encoders) - len(optional) and out[-1] is None:
            out.pop()
        return out

    return encode
