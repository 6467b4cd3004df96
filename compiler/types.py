"""The language's value types: names for messages and the checks that function parameters use."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from attrs import frozen

from . import ir


@frozen
class Module:
    """An imported file: its top-level names, evaluated on demand."""

    name: str
    lookup: Callable[[str], Any]
    names: Callable[[], tuple[str, ...]]


@frozen
class Function:
    """A builtin: its signature, its builder, and the reference text `docs/language.md` is generated from.

    `returns` is the `type_name` of what a call gives; `example` is a call that checks in the reference
    spec (`compiler/reference.py`), so tests fail when an example stops being valid.
    """

    name: str
    params: tuple[Param, ...]
    build: Callable[..., Any]
    doc: str = ""
    returns: str = ""
    example: str = ""


REQUIRED = object()


@frozen
class Param:
    name: str
    type: str
    default: Any = REQUIRED


def type_name(value: Any) -> str:
    """The user-facing name of a value's type."""
    match value:
        case bool():
            return "bool"
        case int() | float():
            return "number"
        case str():
            return "string"
        case tuple():
            return "list"
        case Mapping():
            return "record"
        case ir.BaseModel() | ir.FinetunedModel() | ir.SteeredModel():
            return "model"
        case ir.Task():
            return "task"
        case ir.Property():
            return "property"
        case ir.Split():
            return "split"
        case ir.Selection():
            return "task selection"
        case ir.Sampling():
            return "sampling"
        case ir.ConceptVector() | ir.RandomVector() | ir.ScaledVector() | ir.FileVector():
            return "vector"
        case ir.Hypotheticals() | ir.ObjectAnswers():
            return "training data"
        case ir.Grader():
            return "grader"
        case Module():
            return "module"
        case Function():
            return "function"
    return "measurement"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _list_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, tuple) and all(check(v) for v in value)


_MODEL = (ir.BaseModel, ir.FinetunedModel, ir.SteeredModel)
_VECTOR = (ir.ConceptVector, ir.RandomVector, ir.ScaledVector, ir.FileVector)

CHECKS: dict[str, Callable[[Any], bool]] = {
    "model": lambda v: isinstance(v, _MODEL),
    "task": lambda v: isinstance(v, ir.Task),
    "tasks": _list_of(lambda v: isinstance(v, ir.Task)),
    "selection": lambda v: isinstance(v, ir.Selection),
    "property": lambda v: isinstance(v, ir.Property),
    "properties": _list_of(lambda v: isinstance(v, ir.Property)),
    "sampling": lambda v: isinstance(v, ir.Sampling),
    "vector": lambda v: isinstance(v, _VECTOR),
    "data": lambda v: isinstance(v, ir.Hypotheticals | ir.ObjectAnswers),
    "grader": lambda v: isinstance(v, ir.Grader),
    "number": _is_number,
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "strings": _list_of(lambda v: isinstance(v, str)),
    "bool": lambda v: isinstance(v, bool),
    "list": lambda v: isinstance(v, tuple),
    "record": lambda v: isinstance(v, Mapping),
    "any": lambda v: True,
}

# How a parameter type reads in an error message.
EXPECTED = {
    "tasks": "list of tasks",
    "properties": "list of properties",
    "strings": "list of strings",
    "int": "whole number",
    "data": "training data",
    "selection": "task selection (e.g. mysplit.test)",
}


def describe_type(type_: str) -> str:
    return EXPECTED.get(type_, type_)
