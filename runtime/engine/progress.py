"""Live progress of a run, in one of three forms, and its time estimate.

- "text" (default): plain lines on stderr (rich bars on a terminal); the summary and tables on stdout.
- "quiet": nothing on the console but errors (stderr) and the final summary line (stdout).
- "json": one JSON object per line on stdout, nothing else there; errors still go to stderr as lines.
  Every event has "event" and "t" (seconds since the run started). Events, in order of a run:
    run_started     study, plan, steps, calls_to_make, trainings
    model_loading   model, source           (an in-process model's weights are being read)
    model_converting model, source          (a GGUF file is dequantised once into the user cache)
    model_loaded    model, seconds
    step_started    step, kind
    calls           step, finished, total, eta_s   (after each batch of a step's model calls)
    note            step, text              (what a step reports: training losses, examples, ...)
    step_finished   step, kind, done, steps, calls, eta_s
    run_finished    study, calls, cached, trained, seconds, results, model_work (when in-process models
                    computed: per kind of work its seconds, token positions computed and needed, calls;
                    and numerics: model -> "<dtype> on <device>" its weights computed in)
    run_failed      study, error
  `eta_s` is null until every kind of step still to run has a measured rate.

Every line and event also goes to the run's log (`run.log`), so a quiet run leaves the same story behind.

The estimate (`Eta`) is per step kind: each kind's seconds per unit of work (model calls for steps that
call models, runs for trainings and vectors) comes from the finished work of that kind, and the time
left is the sum over kinds of units left times that rate. Wall time is attributed to the work that
completes at the end of it (in-process models compute one batch at a time), and time spent loading or
converting weights is attributed to nothing, so it never inflates a rate.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from intro.compiler.plan import Step
from intro.runtime.engine.executor import Counters

MODES = ("text", "quiet", "json")


class Eta:
    """Seconds left, from per-kind rates measured on finished work (see the module docstring)."""

    def __init__(self, units_left: Mapping[str, float], clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        # Units and seconds are fractional (Counter is typed for int counts), so float-valued defaultdicts.
        self.left: defaultdict[str, float] = defaultdict(float, units_left)
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.done: defaultdict[str, float] = defaultdict(float)
        self._since = clock()

    def pause(self) -> None:
        """The time since the last finished work (model loading) belongs to no kind of step."""
        self._since = self.clock()

    def finished(self, kind: str, units: float) -> None:
        """`units` of `kind` are done; the wall time since the last event was spent on them."""
        now = self.clock()
        self.seconds[kind] += now - self._since
        self._since = now
        self.done[kind] += units
        self.left[kind] = max(0.0, self.left[kind] - units)

    def seconds_left(self) -> float | None:
        """None while some kind with work left has no measured rate yet."""
        total = 0.0
        for kind, left in self.left.items():
            if left <= 0:
                continue
            if self.done[kind] <= 0:
                return None
            total += left * self.seconds[kind] / self.done[kind]
        return total


def step_units(summary: Mapping[str, Any]) -> int:
    """Units of work a step will do, from its `intro plan` summary: calls to make, or one training/vector."""
    if summary.get("status") != "will run":
        return 0
    return int(summary.get("to_run") or 1)


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """The run's console and log voice; run.py calls one method per thing that happens."""

    def __init__(
        self, log: TextIO, work: Mapping[str, tuple[str, int]], calls_to_make: int, *, mode: str = "text"
    ):
        if mode not in MODES:
            raise ValueError(f"unknown progress mode {mode!r}")
        self.log = log
        self.mode = mode
        self.work = dict(work)  # step id -> (kind, units to do)
        self.total_steps = len(self.work)
        self.calls_to_make = calls_to_make
        units: Counter[str] = Counter()
        for kind, n in self.work.values():
            units[kind] += n
        self.eta = Eta(units)
        self._credited: Counter[str] = Counter()  # step id -> units already counted as done
        self._started = time.monotonic()
        self._bars: Any = None
        if mode == "text" and sys.stderr.isatty():
            self._bars = _rich_bars(self.total_steps, calls_to_make)

    def __enter__(self) -> Progress:
        if self._bars is not None:
            self._bars[0].start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bars is not None:
            self._bars[0].stop()

    # ------------------------------------------------------------ events
    def started(self, study: str, plan_hash: str, trainings: int) -> None:
        line = f"{study}: {self.total_steps} steps, {self.calls_to_make} model calls to make"
        line += f", {trainings} training{'s' if trainings > 1 else ''}" if trainings else ""
        self._emit(
            f"{line}, plan {plan_hash[:12]}",
            "run_started",
            study=study,
            plan=plan_hash,
            steps=self.total_steps,
            calls_to_make=self.calls_to_make,
            trainings=trainings,
        )

    def model_event(self, phase: str, model: str, source: str, seconds: float) -> None:
        """The pool's report on loading weights (runtime/engine/pool.py `LoadListener`)."""
        if phase == "loading":
            self.model_loading(model, source)
        elif phase == "converting":
            self.model_converting(model, source)
        else:
            self.model_loaded(model, seconds)

    def model_loading(self, model: str, source: str) -> None:
        self._emit(f"  loading model {model} ({source})", "model_loading", model=model, source=source)

    def model_converting(self, model: str, source: str) -> None:
        line = f"  converting {source} to float32 safetensors in the user cache (once per model)"
        self._emit(line, "model_converting", model=model, source=source)

    def model_loaded(self, model: str, seconds: float) -> None:
        self.eta.pause()
        line = f"  model {model} loaded in {seconds:.1f} s"
        self._emit(line, "model_loaded", console=False, model=model, seconds=round(seconds, 3))

    def step_started(self, step: Step) -> None:
        self._emit(f"  {step.id}: started", "step_started", console=False, step=step.id, kind=step.kind)

    def say(self, line: str) -> None:
        step, separator, text = line.strip().partition(": ")
        if separator and step in self.work:
            self._emit(line, "note", step=step, text=text)
        else:
            self._emit(line, "note", step=None, text=line.strip())

    def calls(self, step: Step, finished: int, total: int, counters: Counters) -> None:
        kind, units = self._work_of(step)
        # `finished` counts the step's cached calls too; the plan counted only the calls to make
        self._credit(step.id, kind, min(units, finished - (total - units)) - self._credited[step.id])
        eta = self.eta.seconds_left()
        if self._bars is not None:
            self._update_bars(counters, eta)
        line = f"  {step.id}: {finished}/{total} calls{_eta_text(eta)}"
        self._emit(
            line,
            "calls",
            console=self._bars is None,
            step=step.id,
            finished=finished,
            total=total,
            eta_s=_rounded(eta),
        )

    def step(self, step: Step, counters: Counters) -> None:
        kind, units = self._work_of(step)
        self._credit(step.id, kind, units - self._credited[step.id])
        eta = self.eta.seconds_left()
        if self._bars is not None:
            self._update_bars(counters, eta)
        line = f"[{counters.steps_done}/{self.total_steps}] {step.id} done{_eta_text(eta)}"
        self._emit(
            line,
            "step_finished",
            step=step.id,
            kind=kind,
            done=counters.steps_done,
            steps=self.total_steps,
            calls=counters.calls,
            eta_s=_rounded(eta),
        )

    # ------------------------------------------------------------ output
    def _work_of(self, step: Step) -> tuple[str, int]:
        return self.work.get(step.id, (step.kind, 0))

    def _credit(self, step_id: str, kind: str, units: int) -> None:
        units = max(units, 0)
        self.eta.finished(kind, units)
        self._credited[step_id] += units

    def _emit(self, line: str, event: str, *, console: bool = True, **fields: Any) -> None:
        self.log.write(line + "\n")
        self.log.flush()
        if self.mode == "json":
            emit_json(event, round(time.monotonic() - self._started, 3), **fields)
        elif self.mode == "text" and console:
            if self._bars is not None:
                self._bars[0].console.print(line, highlight=False, markup=False)
            else:
                print(line, file=sys.stderr, flush=True)

    def _update_bars(self, counters: Counters, eta: float | None) -> None:
        bars, steps_bar, calls_bar = self._bars
        tokens = counters.prompt_tokens + counters.completion_tokens
        left = f" {format_duration(eta)} left" if eta else ""
        bars.update(steps_bar, completed=counters.steps_done, description=f"steps{left}")
        bars.update(calls_bar, completed=counters.calls, description=f"calls ({tokens} tokens)")


def emit_json(event: str, t: float, **fields: Any) -> None:
    """One progress event as a line of JSON on stdout."""
    print(json.dumps({"event": event, "t": t, **fields}), flush=True)


def _eta_text(eta: float | None) -> str:
    return f", ~{format_duration(eta)} left" if eta else ""


def _rounded(eta: float | None) -> float | None:
    return None if eta is None else round(eta, 1)


def _rich_bars(total_steps: int, total_calls: int) -> tuple[Any, Any, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as RichProgress

    bars = RichProgress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=False,
    )
    steps = bars.add_task("steps", total=total_steps)
    calls = bars.add_task("calls", total=max(total_calls, 1))
    return bars, steps, calls
