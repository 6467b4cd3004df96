"""`intro diff A.intro B.intro`: what changed in meaning between two specs, which plan steps that changes,
and what B still needs to run (model calls and trainings not in the cache)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def diff_specs(a: Path, b: Path, allow_outside: bool, cache_dir: Path | None, as_json: bool) -> int:
    """Exit 0: the same meaning; 2: differences; 1: a spec does not compile."""
    from intro.compiler import CompileError, check
    from intro.compiler.diagnostics import render_all
    from intro.compiler.diff import plan_changes, spec_changes
    from intro.compiler.lower import lower

    try:
        checked_a = check(a, allow_outside=allow_outside)
        checked_b = check(b, allow_outside=allow_outside)
    except CompileError as error:
        print(render_all(error, getattr(error, "sources", {})), file=sys.stderr)
        return 1
    studies_b = {s.name: s for s in checked_b.studies}
    report = []
    for study_a in checked_a.studies:
        study_b = studies_b.get(study_a.name) or (
            checked_b.studies[0] if len(checked_b.studies) == 1 else None
        )
        if study_b is None:
            report.append({"study": study_a.name, "error": "no study of that name in B"})
            continue
        plan_a, plan_b = lower(study_a, str(a)), lower(study_b, str(b))
        report.append(
            _study_diff(
                plan_a, plan_b, spec_changes(study_a, study_b), plan_changes(plan_a, plan_b), cache_dir
            )
        )
    print(json.dumps(report, indent=1) if as_json else "\n".join(render_study_diff(r) for r in report))
    different = any(r.get("error") or r["spec"] or r["plan"] for r in report)
    return 2 if different else 0


def _study_diff(plan_a, plan_b, spec, steps, cache_dir) -> dict:  # type: ignore[no-untyped-def]
    from intro.runtime.engine.planview import plan_summary

    summary = plan_summary(plan_b, cache_dir=cache_dir)
    totals = summary["totals"]
    trainings = sum(1 for s in summary["steps"] if s["kind"] == "finetune")
    return {
        "study": plan_b.study,
        "spec": [c.to_json() for c in spec],
        "plan": [c.to_json() for c in steps],
        "b_needs": {
            "calls": totals["calls_to_make"],
            "calls_total": totals["calls"],
            "calls_cached": totals["calls"] - totals["calls_to_make"],
            "trainings": totals["trainings"],
            "trainings_total": trainings,
        },
    }


def render_study_diff(r: dict) -> str:  # type: ignore[type-arg]
    if "error" in r:
        return f"study {r['study']}: {r['error']}"
    marks = {"added": "+", "removed": "-", "changed": "~", "modified": "~"}
    lines = [f"study {r['study']}"]
    lines.append("  meaning: " + ("unchanged" if not r["spec"] else f"{len(r['spec'])} change(s)"))
    for c in r["spec"]:
        lines.append(f"    {marks[c['kind']]} {c['what']} {c['name']}")
        lines += ["        " + d.replace("\n", "\n        ") for d in c["details"]]
    counts = {k: sum(1 for c in r["plan"] if c["kind"] == k) for k in ("added", "removed", "modified")}
    lines.append("  plan: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    for c in r["plan"]:
        reasons = f": {'; '.join(c['reasons'])}" if c["reasons"] else ""
        lines.append(f"    {marks[c['kind']]} {c['step']}{reasons}")
    need = r["b_needs"]
    lines.append(
        f"  B needs {need['calls']} model calls of {need['calls_total']} ({need['calls_cached']} already cached) "
        f"and {need['trainings']} training runs of {need['trainings_total']}"
    )
    return "\n".join(lines)
