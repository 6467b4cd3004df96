"""Live progress of a run: rich bars (steps, calls, tokens, ETA) on a terminal, plain lines otherwise.

Every line also goes to the run's log, so a run in CI or under nohup leaves the same story behind.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from intro.compiler.plan import Step

from .executor import Counters


class Progress:
    def __init__(self, total_steps: int, total_calls: int, log: TextIO, *, quiet: bool = False):
        self.log = log
        self.quiet = quiet
        self.total_steps = total_steps
        self.total_calls = total_calls
        self._started = time.monotonic()
        self._bars: Any = None
        if not quiet and sys.stderr.isatty():
            self._bars = _rich_bars(total_steps, total_calls)

    def __enter__(self) -> Progress:
        if self._bars is not None:
            self._bars[0].start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bars is not None:
            self._bars[0].stop()

    def say(self, line: str) -> None:
        self.log.write(line + "\n")
        self.log.flush()
        if self._bars is not None:
            self._bars[0].console.print(line, highlight=False, markup=False)
        elif not self.quiet:
            print(line, file=sys.stderr, flush=True)

    def calls(self, step: Step, finished: int, total: int, counters: Counters) -> None:
        if self._bars is not None:
            bars, _, calls_bar = self._bars
            tokens = counters.prompt_tokens + counters.completion_tokens
            bars.update(calls_bar, completed=counters.calls, description=f"calls ({tokens} tokens)")
            return
        elapsed = time.monotonic() - self._started
        rate = counters.calls / elapsed if elapsed > 0 else 0.0
        left = self.total_calls - counters.calls
        eta = f", ~{left / rate:.0f} s left" if rate > 0 and left > 0 else ""
        self.say(f"  {step.id}: {finished}/{total} calls ({rate:.2f}/s overall{eta})")

    def step(self, step: Step, counters: Counters) -> None:
        if self._bars is not None:
            self._bars[0].update(self._bars[1], completed=counters.steps_done)
        self.say(f"[{counters.steps_done}/{self.total_steps}] {step.id} done")


def _rich_bars(total_steps: int, total_calls: int) -> tuple[Any, Any, Any]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import (
        Progress as RichProgress,
    )

    bars = RichProgress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    )
    steps = bars.add_task("steps", total=total_steps)
    calls = bars.add_task("calls", total=max(total_calls, 1))
    return bars, steps, calls
