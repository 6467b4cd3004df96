"""A study's body evaluated: its lets, its `for` loops as axes, and its measures as measure points.

The statements of a study are the one part of the language that is not an expression: `evaluate.py`
evaluates each expression (and the module names it reads) in the scope this module builds, block by block,
one point of the loops' product at a time. A statement that fails is reported and skipped, so one study
reports every independent error.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from . import ast, ir
from .diagnostics import Span
from .evaluate import _POISON, Evaluator, Scope, _Abort, _label, _Namespace
from .types import is_measurement, type_name


def evaluate_study(namespace: _Namespace, study: ast.Study) -> ir.Study:
    runner = _StudyRunner(namespace, study)
    runner.block(study.body, Scope(namespace, {}), ())
    axes = tuple((name, tuple(values)) for name, values in runner.axes.items())
    models = tuple(v for v in namespace.values.values() if isinstance(v, ir.BaseModel))
    return ir.Study(study.name, axes, tuple(runner.points), models)


class _StudyRunner:
    def __init__(self, namespace: _Namespace, study: ast.Study):
        self.ctx = namespace.ctx
        self.study = study
        self.points: list[ir.MeasurePoint] = []
        self.axes: dict[str, list[ir.Scalar]] = {}
        self._measure_axes: dict[str, tuple[tuple[str, ...], Span]] = {}

    def block(
        self, body: tuple[ast.Statement, ...], scope: Scope, coords: tuple[tuple[str, Any], ...]
    ) -> None:
        local: dict[str, Any] = {}
        inner = scope.child(local)
        for statement in body:
            try:
                self.statement(statement, inner, local, coords)
            except _Abort:
                if isinstance(statement, ast.Let):
                    local.setdefault(statement.name, _POISON)

    def statement(
        self, stmt: ast.Statement, scope: Scope, local: dict[str, Any], coords: tuple[Any, ...]
    ) -> None:
        match stmt:
            case ast.Let():
                if stmt.name in local:
                    self.ctx.fail("E101", f"'{stmt.name}' is declared twice in this block", stmt.span)
                local[stmt.name] = _label(Evaluator(self.ctx, scope).expr(stmt.value), stmt.name)
            case ast.Measure():
                self.measure(stmt, scope, coords)
            case ast.For():
                self.loop(stmt, scope, coords)

    def measure(self, stmt: ast.Measure, scope: Scope, coords: tuple[tuple[str, Any], ...]) -> None:
        axes = tuple(name for name, _ in coords)
        known = self._measure_axes.setdefault(stmt.name, (axes, stmt.span))
        if known[1] != stmt.span:
            self.ctx.fail("E107", f"measure '{stmt.name}' is declared twice", stmt.span)
        value = Evaluator(self.ctx, scope).expr(stmt.value)
        labels = tuple((name, _coordinate(v)) for name, v in coords)
        for name, measured in self._measured(stmt, value):
            self.points.append(ir.MeasurePoint(name, labels, measured, span=stmt.span))

    def _measured(self, stmt: ast.Measure, value: Any) -> list[tuple[str, Any]]:
        """A measurement, or a record of them (a function's several results): one measure per field."""
        if is_measurement(value):
            return [(stmt.name, value)]
        if not isinstance(value, Mapping):
            self.ctx.fail(
                "E209",
                f"a measure must be a measurement (prediction, calibration, ...), not a {type_name(value)}",
                stmt.value.span,
            )
        wrong = [
            f"'{field}' is a {type_name(item)}" for field, item in value.items() if not is_measurement(item)
        ]
        if wrong or not value:
            message = "a measure's record must hold measurements" + (": " + ", ".join(wrong) if wrong else "")
            self.ctx.fail("E209", message, stmt.value.span)
        return [(f"{stmt.name}.{field}", item) for field, item in value.items()]

    def loop(self, stmt: ast.For, scope: Scope, coords: tuple[tuple[str, Any], ...]) -> None:
        ev = Evaluator(self.ctx, scope)
        columns: list[tuple[tuple[str, ...], tuple[Any, ...]]] = []
        for binding in stmt.bindings:
            values = ev.expect(binding.iterable, "list", "a loop's range")
            if not values:
                self.ctx.fail("E210", "a loop over an empty list measures nothing", binding.iterable.span)
            for name in binding.targets:
                if name in dict(coords) or any(name in names for names, _ in columns):
                    self.ctx.fail("E108", f"axis '{name}' is already in use", binding.span)
            if len(binding.targets) > 1:
                self._check_tuples(binding, values)
            columns.append((binding.targets, values))
        labels = [_arm_labels(values) for _, values in columns]
        for at in itertools.product(*(range(len(values)) for _, values in columns)):
            local: dict[str, Any] = {}
            point = list(coords)
            for (names, values), arms, index in zip(columns, labels, at, strict=True):
                value = values[index]
                parts = value if len(names) > 1 else (value,)
                local.update(zip(names, parts, strict=True))
                # A tuple binding is one dimension (its arms), named after its first name.
                label = arms[index] if len(names) > 1 else _coordinate(value)
                point.append((names[0], label))
                self._record_axis(names[0], label)
            self.block(stmt.body, scope.child(local), tuple(point))

    def _check_tuples(self, binding: ast.Binding, values: tuple[Any, ...]) -> None:
        width = len(binding.targets)
        for value in values:
            if not isinstance(value, tuple) or len(value) != width:
                self.ctx.fail(
                    "E211", f"cannot unpack a {type_name(value)} into {width} names", binding.iterable.span
                )

    def _record_axis(self, name: str, value: Any) -> None:
        label = _coordinate(value)
        values = self.axes.setdefault(name, [])
        if label not in values:
            values.append(label)


def _arm_labels(values: tuple[Any, ...]) -> list[ir.Scalar]:
    """The labels of a tuple loop's arms: each tuple's first value, or all its values joined with "/"
    where the first values alone do not tell the arms apart."""
    if not all(isinstance(v, tuple) and v for v in values):  # not a tuple loop's arms (`[[1], 12]`)
        return [_coordinate(v) for v in values]
    first = [_coordinate(v[0]) for v in values]
    if len(set(first)) == len(first):
        return first
    return ["/".join(str(_coordinate(part)) for part in v) for v in values]


def _coordinate(value: Any) -> ir.Scalar:
    """How a loop value appears as a cube coordinate."""
    if isinstance(value, str | int | float | bool):
        return value
    label = getattr(value, "label", None) or getattr(value, "name", None) or getattr(value, "word", None)
    return str(label) if label is not None else type_name(value)
