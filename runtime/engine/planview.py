"""`intro plan`: what a run would do, step by step, without loading any model.

For each step: will it run, or is it already in the cache (from an earlier run of this study, or from
another study sharing the cache)? Totals of model calls, estimated tokens and, where litellm's price
table knows the model, cost. Only the standard library and the plan; litellm is imported only when the
plan has API models to price.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from intro.compiler import step_params as sp
from intro.compiler.plan import Plan, Step
from intro.runtime.dataflow.tables import CALLING as CALLS
from intro.runtime.dataflow.tables import NotReady, Tables
from intro.runtime.engine import journal
from intro.runtime.store.cache import Cache, default_cache_dir

Numerics = Callable[[str], str | None]  # model key -> the dtype it computes in (None: not in this process)
CHARS_PER_TOKEN = 4  # a rough, provider-independent estimate for prompts not yet tokenised


def plan_summary(
    plan: Plan,
    cache_dir: Path | None = None,
    runs_dir: Path | None = None,
    numerics: Numerics | None = None,
) -> dict[str, Any]:
    """`numerics`: the dtype each model computes in (a run's `pool.numerics`; by default as a run on this
    machine would resolve it), which the keys of its cached answers name."""
    cache = Cache(cache_dir or default_cache_dir())
    own = _own_steps(plan, runs_dir)
    seen: set[str] = set()  # calls that measure steps share (a control readout) count once
    tables = Tables(plan, cache, numerics or planned_numerics(plan, cache))
    steps = [_step_summary(plan, step, cache, own, seen, tables) for step in plan.steps]
    totals: Counter[str] = Counter()
    for s in steps:
        totals["steps"] += 1
        totals["steps_to_run"] += s["status"] == "will run"
        totals["calls"] += s.get("calls", 0)
        totals["calls_to_make"] += s.get("to_run", 0)
        totals["prompt_tokens"] += s.get("prompt_tokens", 0)
        totals["completion_tokens"] += s.get("completion_tokens", 0)
        totals["trainings"] += s["kind"] == "finetune" and s["status"] == "will run"
    cost = _cost(plan, steps)
    by_kind = Counter(s["kind"] for s in steps)
    return {
        "study": plan.study,
        "plan_hash": plan.hash,
        "steps": steps,
        "by_kind": dict(by_kind),
        "totals": {**totals, "cost_usd": cost},
    }


def calls_to_make(plan: Plan, cache: Cache, numerics: Numerics | None = None) -> int:
    """Model calls a run of the plan will make: sample steps' missing requests and measure steps' own calls."""
    seen: set[str] = set()
    tables = Tables(plan, cache, numerics or planned_numerics(plan, cache))
    return sum(_step_summary(plan, step, cache, set(), seen, tables).get("to_run", 0) for step in plan.steps)


def planned_numerics(plan: Plan, cache: Cache) -> Numerics:
    """The dtype each model would compute in, resolved as a run's pool resolves it, without loading it."""
    from intro.runtime.engine.pool import BackendPool

    return BackendPool(plan, cache).numerics


def _own_steps(plan: Plan, runs_dir: Path | None) -> set[str]:
    """Hashes of steps this study finished before (from its journal), to tell 'cached' from 'from another study'."""
    if runs_dir is None:
        return set()
    return journal.finished_hashes(runs_dir / plan.study / "journal.jsonl")


def _step_summary(
    plan: Plan, step: Step, cache: Cache, own: set[str], seen: set[str], tables: Tables
) -> dict[str, Any]:
    summary: dict[str, Any] = {"id": step.id, "kind": step.kind}
    if step.kind in CALLS:
        done = _calls_summary(step, tables, summary, seen)
    elif step.kind in ("finetune", "vector"):
        done = cache.artifact_done(step.hash)
    else:
        done = False  # measurements and data steps are recomputed from cached results every run
        summary["status"] = "computed"
        return summary
    if not done:
        summary["status"] = "will run"
    elif step.hash not in own:
        summary["status"] = "from another study"
    else:
        summary["status"] = "cached"
    return summary


def _calls_summary(step: Step, tables: Tables, summary: dict[str, Any], seen: set[str]) -> bool:
    """A primitive's calls, from the same `Tables` a run uses. Prompts rendered from results not yet in the
    cache are counted from their source's size: exact, or at most that many after a filter."""
    p = step.params_as(sp.CallParams)
    tokens = p.max_tokens if isinstance(p, sp.GenerateParams) else 0  # scoring and readings generate none
    try:
        calls = list({c.key: c for c in tables.calls(step)}.values())
    except NotReady:
        assert isinstance(p, sp.GenerateParams) and p.count is not None  # only a render step can be not ready
        summary.update(calls=p.count, to_run=p.count, prompt_tokens=0, model=p.model)
        summary.update(completion_tokens=p.count * tokens, exact=p.exact)
        return False
    missing = [c for c in calls if not tables.cache.has(c.key) and c.key not in seen]
    seen.update(c.key for c in calls)
    chars = sum(_chars(tables.prompt(c.prompt).messages) for c in missing)
    summary.update(calls=len(calls), to_run=len(missing), prompt_tokens=chars // CHARS_PER_TOKEN)
    summary.update(completion_tokens=len(missing) * tokens, model=p.model)
    return not missing


def _chars(messages: Any) -> int:
    return sum(len(content) for _, content in messages)


def _cost(plan: Plan, steps: list[dict[str, Any]]) -> float | None:
    api = {k: m for k, m in plan.models.items() if m.kind == "litellm"}
    pending = [s for s in steps if s.get("model") in api and s.get("to_run")]
    if not pending:
        return 0.0 if not api else None
    from intro.runtime.backends.litellm_backend import estimate_cost

    total = 0.0
    for s in pending:
        cost = estimate_cost(api[s["model"]].params["locator"], s["prompt_tokens"], s["completion_tokens"])
        if cost is None:
            return None
        total += cost
    return total


def render_summary(summary: dict[str, Any]) -> str:
    lines = [f"study {summary['study']} (plan {summary['plan_hash'][:12]})"]
    for s in summary["steps"]:
        detail = ""
        if "calls" in s:
            detail = f"  {s['to_run']}/{s['calls']} calls to make"
            if s.get("exact") is False:
                detail = f"  at most {s['calls']} calls to make (after a filter)"
        lines.append(f"  {s['status']:<19} {s['id']}{detail}")
    t = summary["totals"]
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(summary["by_kind"].items()))
    cost = "unknown" if t["cost_usd"] is None else f"${t['cost_usd']:.2f}"
    lines.append(f"steps: {t['steps']} ({kinds}); {t['steps_to_run']} will run")
    lines.append(
        f"model calls: {t['calls_to_make']} to make of {t['calls']}; "
        f"~{t['prompt_tokens']} prompt + <= {t['completion_tokens']} completion tokens; "
        f"trainings: {t['trainings']}; estimated cost: {cost}"
    )
    return "\n".join(lines)
