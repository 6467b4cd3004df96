"""`intro run` and `intro show`: execute plans into study directories and summarise their cubes.

A study directory `runs/<study>/` holds `plan.json`, `cube.zarr` (one group per measure), `journal.jsonl`
(one line per finished step, with counts and timings) and `run.log`. Model calls and artifacts live in
the shared content-addressed cache, so a re-run, a crashed run or another study reuses them.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import json
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TextIO

from intro.compiler.plan import Measure, Plan, PlanError, Step
from intro.runtime.backends import memory
from intro.runtime.backends.requests import BackendError
from intro.runtime.dataflow import cubes as dataflow_cubes
from intro.runtime.dataflow import steps as dataflow_steps
from intro.runtime.dataflow import vectors as dataflow_vectors
from intro.runtime.engine import planview
from intro.runtime.engine.console import libraries_to_log
from intro.runtime.engine.executor import Counters, Executor, StepHandler
from intro.runtime.engine.journal import open_for_append
from intro.runtime.engine.pool import BackendPool, LoadListener
from intro.runtime.engine.progress import Progress, emit_json, step_units
from intro.runtime.store import cube, training_cube
from intro.runtime.store.cache import Cache, default_cache_dir
from intro.runtime.training import training

OK, FAILED, LOCKED = 0, 1, 4
RESUME_HINT = "finished calls are cached; the same command resumes from them"


class PoolFactory(Protocol):
    """Opens a plan's backends: `BackendPool` in this process, or `RayPool` (runtime/engine/ray_executor.py)."""

    def __call__(
        self,
        plan: Plan,
        cache: Cache,
        serving: Mapping[str, str],
        on_load: LoadListener,
        /,
        *,
        memory_budget: int | None = None,
    ) -> BackendPool: ...


class StudyLockedError(Exception):
    pass


@contextmanager
def study_lock(directory: Path) -> Iterator[None]:
    """Only one run per study directory at a time; the lock dies with its process (even on kill -9)."""
    directory.mkdir(parents=True, exist_ok=True)
    handle = (directory / ".lock").open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StudyLockedError(f"another intro run is using {directory}; wait for it to finish") from None
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def run_plans(
    plans: Sequence[Plan],
    *,
    runs_dir: Path,
    cache_dir: Path | None = None,
    serving: Mapping[str, str] | None = None,
    mode: str = "text",
    pools: PoolFactory = BackendPool,
    max_memory: int | None = None,
) -> int:
    """Run each plan into `runs_dir/<study>/`; `mode` is how progress shows (see
    runtime/engine/progress.py); `pools` opens where the models answer (`RayPool` for `--executor ray`);
    `max_memory` is the in-process models' memory budget in bytes (default: what the machine has)."""
    memory.limit_arenas()
    if max_memory is not None:
        pools = functools.partial(pools, memory_budget=max_memory)
    cache = Cache(cache_dir or default_cache_dir())
    status = OK
    for plan in plans:
        directory = runs_dir / plan.study
        try:
            with study_lock(directory):
                counters = run_plan(plan, directory, cache, serving or {}, mode=mode, pools=pools)
        except StudyLockedError as error:
            return _failed(plan, mode, LOCKED, str(error))
        except BackendError as error:
            return _failed(plan, mode, FAILED, str(error), RESUME_HINT)
        _finished(plan, directory, counters, mode)
    return status


def _failed(plan: Plan, mode: str, status: int, *lines: str) -> int:
    for line in lines:
        print(f"intro: {line}", file=sys.stderr)
    if mode == "json":
        emit_json("run_failed", 0.0, study=plan.study, error=lines[0])
    return status


def _finished(plan: Plan, directory: Path, counters: Counters, mode: str) -> None:
    """The final summary: a line (and in text mode the tables) on stdout, or the run_finished event."""
    elapsed = time.monotonic() - counters.started
    results = directory / "cube.zarr"
    work = counters.model_work if counters.model_work and counters.model_work.kinds else None
    if mode == "json":
        counts: dict[str, Any] = {
            "calls": counters.calls,
            "cached": counters.cached,
            "trained": counters.trained,
        }
        counts |= {"model_work": work.as_dict(), "numerics": work.numerics} if work else {}
        seconds = round(elapsed, 3)
        emit_json("run_finished", seconds, study=plan.study, **counts, seconds=seconds, results=str(results))
        return
    print(
        f"\n{plan.study}: {counters.calls} model calls, {counters.cached} from cache, "
        f"{counters.trained} trained, {elapsed:.1f} s  (results: {results})"
    )
    if mode == "text":
        if work:
            print(f"{plan.study}: {work.summary()}")
        show_run(directory)


def run_plan(
    plan: Plan,
    directory: Path,
    cache: Cache,
    serving: Mapping[str, str],
    *,
    mode: str = "text",
    pools: PoolFactory = BackendPool,
) -> Counters:
    (directory / "plan.json").write_text(plan.dumps(), encoding="utf-8")
    cube.discard_if_damaged(directory / "cube.zarr", cache.report)
    log = (directory / "run.log").open("a", encoding="utf-8")
    journal = open_for_append(directory / "journal.jsonl")
    pool = pools(plan, cache, serving, lambda *event: study.progress.model_event(*event))
    study = _StudyRun(plan, directory, cache, pool, log, journal, mode)
    in_process = any(pool.in_process(key) for key in plan.models)
    try:
        with libraries_to_log(log, in_process_models=in_process):
            return asyncio.run(study.execute())
    finally:
        log.close()
        journal.close()


class _StudyRun:
    """One execution of one plan: the executor plus the handlers that turn results into cubes."""

    def __init__(
        self,
        plan: Plan,
        directory: Path,
        cache: Cache,
        pool: BackendPool,
        log: TextIO,
        journal: TextIO,
        mode: str,
    ):
        self.plan = plan
        self.directory = directory
        self.cache = cache
        self.pool = pool
        self.log = log
        self.journal = journal
        self.mode = mode
        self.cube_writer = cube.CubeWriter()
        self.point_of = {step: (m.name, coords) for m in plan.measures for coords, step in m.points}
        self._started = time.monotonic()
        self.progress: Progress
        self.executor = Executor(
            plan,
            cache,
            pool,
            handlers={
                **training.handlers(self),
                **dataflow_steps.handlers(self),
                **dataflow_vectors.handlers(self),
            },
            on_step=self.step_done,
            on_progress=self.calls_progress,
        )
        self.executor.handlers = {kind: self._announced(h) for kind, h in self.executor.handlers.items()}

    async def execute(self) -> Counters:
        summary = planview.plan_summary(self.plan, cache_dir=self.cache.root, numerics=self.pool.numerics)
        work = {s["id"]: (s["kind"], step_units(s)) for s in summary["steps"]}
        totals = summary["totals"]
        with Progress(self.log, work, totals["calls_to_make"], mode=self.mode) as progress:
            self.progress = progress
            progress.started(self.plan.study, self.plan.hash, totals["trainings"])
            try:
                counters = await self.executor.run()
                counters.model_work = self.pool.model_work()
                return counters
            finally:
                try:
                    await asyncio.to_thread(self.cube_writer.close)
                finally:
                    await self.pool.aclose()

    def say(self, line: str) -> None:
        self.progress.say(line)

    def _announced(self, handler: StepHandler) -> StepHandler:
        """`handler`, telling progress when its step starts."""

        def run(step: Step) -> Any:
            self.progress.step_started(step)
            return handler(step)

        return run

    def calls_progress(self, step: Step, finished: int, total: int) -> None:
        self.progress.calls(step, finished, total, self.executor.counters)

    def step_done(self, step: Step, counters: Counters) -> None:
        now = time.monotonic()
        entry = {
            "step": step.id,
            "hash": step.hash,
            "finished_after_s": round(now - self._started, 3),
            "calls": counters.calls,
        }
        self.journal.write(json.dumps(entry) + "\n")
        self.journal.flush()
        self.progress.step(step, counters)
        memory.release_free_memory()


# ---------------------------------------------------------------- intro show
def show_run(directory: Path) -> int:
    plan_path = directory / "plan.json"
    if not plan_path.is_file():
        print(f"intro: {directory} is not a run directory (no plan.json)", file=sys.stderr)
        return 2
    try:
        plan = Plan.loads(plan_path.read_text(encoding="utf-8"))
    except PlanError as error:
        print(f"intro: cannot read {plan_path}: {error}", file=sys.stderr)
        return 2
    try:
        return _show_plan(directory, plan)
    except cube.DamagedCubeError as error:
        print(f"intro: {error}; `intro run {plan.source}` rebuilds it from the cache", file=sys.stderr)
        return FAILED


def _show_plan(directory: Path, plan: Plan) -> int:
    for measure in plan.measures:
        try:
            dataset = cube.open_group(directory / "cube.zarr", measure.name)
        except (FileNotFoundError, KeyError, OSError):
            print(f"{measure.name}: no results yet")
            continue
        print(measure_table(dataset, measure))
    training_group = training_cube.training_group(plan)
    if (directory / "cube.zarr" / training_group).is_dir():
        training = cube.open_group(directory / "cube.zarr", training_group)
        print(_table("finetuning", *training_cube.training_rows(training)))
    return OK


def measure_table(dataset: Any, measure: Measure) -> str:
    """The summary of one measure's cube, by kind."""
    title = f"{measure.name} ({measure.kind})"
    return _table(title, *dataflow_cubes.table_rows(dataset, measure.kind))


def _table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [title, fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out.extend(fmt.format(*row) for row in rows)
    return "\n".join(out)
