"""The language's value types: names for messages and the checks that function parameters use."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

from attrs import field, frozen

from . import dataflow as df
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


def entry(
    name: str, build: Any, *params: Param, doc: str, returns: str, example: str
) -> tuple[str, Function]:
    """A builtin table's `(name, Function)` row, keyword-documented where the tables are written."""
    return name, Function(name, params, build, doc, returns, example)


REQUIRED = object()


@frozen
class Param:
    name: str
    type: str
    default: Any = REQUIRED


@frozen
class UserFunction:
    """A function declared in a spec or module with `fn` (see `compiler/functions.py`).

    `params` hold each default as the expression written (evaluated at each call in the defining module);
    `decl` is its `ast.FnDecl`; `home` the defining module's namespace, where its body looks up names.
    """

    name: str
    params: tuple[Param, ...]
    decl: Any = field(repr=False)
    home: Any = field(repr=False)


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
        case (
            ir.ConceptVector()
            | ir.RandomVector()
            | ir.ScaledVector()
            | ir.FileVector()
            | ir.ActivationVector()
        ):
            return "vector"
        case ir.SumVector():
            return "vector"
        case Module():
            return "module"
        case Function() | UserFunction():
            return "function"
    return _DATAFLOW_TYPES.get(type(value), "measurement")


_DATAFLOW_TYPES: dict[type, str] = {
    df.Items: "rows",
    df.PromptSet: "prompts",
    df.Generate: "texts",
    df.Filter: "texts",
    df.Consensus: "texts",
    df.Extract: "values",
    df.Judge: "values",
    df.Choose: "values",
    df.Score: "values",
    df.Differs: "values",
    df.Balance: "values",
    df.AllOf: "values",
    df.Probability: "values",
    df.Cosine: "values",
    df.Residuals: "activations",
    df.Estimate: "estimate",
    df.Comparison: "comparison",
    df.Rule: "rule",
    df.Examples: "training data",
}


def is_measurement(value: Any) -> bool:
    """Whether `measure NAME = value` can store it: an experiment, texts, values, an estimate or a comparison."""
    kind = _DATAFLOW_TYPES.get(type(value))  # the common case, without type_name's walk through the rest
    return (kind or type_name(value)) in ("measurement", "texts", "values", "estimate", "comparison")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _list_of_instances(kind: type) -> Callable[[Any], bool]:
    # A list whose items are all `kind`s, checked without a Python call per item: a list of 50 strings is
    # checked at each call that takes one.
    return lambda value: isinstance(value, tuple) and all(map(isinstance, value, itertools.repeat(kind)))


_MODEL = (ir.BaseModel, ir.FinetunedModel, ir.SteeredModel)
_VECTOR = (
    ir.ConceptVector,
    ir.RandomVector,
    ir.ScaledVector,
    ir.FileVector,
    ir.ActivationVector,
    ir.SumVector,
)

# The types whose values are the instances of some classes (the others' checks are below).
INSTANCES: dict[str, type | tuple[type, ...]] = {
    "model": _MODEL,
    "task": ir.Task,
    "selection": ir.Selection,
    "property": ir.Property,
    "sampling": ir.Sampling,
    "vector": _VECTOR,
    "data": df.Examples,
    "prompts": df.PromptSet,
    "texts": df.TEXTS,
    "values": df.VALUES,
    "activations": df.Residuals,
    "estimate": df.Estimate,
    "rule": df.Rule,
    "string": str,
    "list": tuple,
    "record": Mapping,
    "function": (Function, UserFunction),
}


def _instance_of(name: str) -> Callable[[Any], bool]:
    kinds = INSTANCES[name]
    return lambda value: isinstance(value, kinds)


CHECKS: dict[str, Callable[[Any], bool]] = {
    "model": _instance_of("model"),
    "task": _instance_of("task"),
    "tasks": _list_of_instances(ir.Task),
    "selection": _instance_of("selection"),
    "property": _instance_of("property"),
    "properties": _list_of_instances(ir.Property),
    "sampling": _instance_of("sampling"),
    "vector": _instance_of("vector"),
    "data": _instance_of("data"),
    "prompts": _instance_of("prompts"),
    "texts": _instance_of("texts"),
    "values": _instance_of("values"),
    "activations": _instance_of("activations"),
    "estimate": _instance_of("estimate"),
    "rule": _instance_of("rule"),
    "number": _is_number,
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "string": _instance_of("string"),
    "strings": _list_of_instances(str),
    "bool": lambda v: isinstance(v, bool),
    "list": _instance_of("list"),
    "record": _instance_of("record"),
    "function": _instance_of("function"),
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
    "prompts": "prompt set (see prompts())",
    "texts": "texts (see generate())",
    "values": "values (see extract(), judge(), choose(), score())",
    "activations": "activations per prompt (see residuals())",
    "estimate": "estimate (see rate(), mean(), accuracy())",
}


def describe_type(type_: str) -> str:
    return EXPECTED.get(type_, type_)
