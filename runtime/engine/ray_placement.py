"""Where `--executor ray` puts a plan's steps: which models get actors, how many, and what stays on the driver.

Pure planning over the plan and `intro plan`'s step summary (no Ray import), shared by `intro plan --executor
ray` and the Ray executor itself, so the plan shows exactly the placement a run uses:

- model calls of in-process models (sample, generate, choose and score steps) go to the model's actors, a
  batch of at most `CHUNK` requests per actor at a time; the calls of measure steps (calibration readouts,
  injections, judges) go to the same actors, one batch at a time;
- everything else stays on the driver: API models (its async executor), training and vectors (they need
  the weights in the driver's process), measurements and pure data steps, and every write to the store.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from attrs import frozen

from intro.compiler.plan import Plan
from intro.runtime.dataflow.tables import CALLING
from intro.runtime.engine.executor import CHUNK
from intro.runtime.engine.pool import BackendPool
from intro.runtime.store.cache import Cache, default_cache_dir

PARALLEL_KINDS = CALLING  # steps whose calls the executor spreads over a model's actors
DRIVER_KINDS = ("finetune", "vector")  # in-process work that needs the weights in the driver


@frozen
class Cluster:
    """The resources actors are placed on (a live cluster's, or this machine's when planning offline)."""

    cpus: int
    gpus: int
    described: str  # how these numbers were obtained, for the plan's reader


@frozen
class ModelActors:
    model: str  # the root model's key in the plan
    label: str
    actors: int
    cpus: int  # per actor; also its torch threads
    gpus: int  # per actor


@frozen
class Placement:
    models: tuple[ModelActors, ...]
    cluster: Cluster
    actors: int  # per model
    gpus: int  # per actor

    def actors_of(self, model: str, label: str = "") -> ModelActors:
        """The placed model's actors; a model only a measure calls (a judge, say) gets as many."""
        placed = [m for m in self.models if m.model == model]
        return placed[0] if placed else ModelActors(model, label or model, self.actors, 1, self.gpus)


def root_model(plan: Plan, model_key: str) -> str:
    """The embedded/local/API model whose weights answer for `model_key` (through finetunes and steering)."""
    entry = plan.models[model_key]
    while entry.kind in ("steered", "finetuned"):
        entry = plan.models[entry.params["base"]]
    return entry.key


def actor_models(plan: Plan, pool: BackendPool) -> list[str]:
    """Root models (in plan order) whose calls run on actors: in-process models that some step calls."""
    called = {step.params.reads for step in plan.steps}
    roots = {root_model(plan, key) for key in called if key is not None}
    return [key for key in plan.models if key in roots and pool.in_process(key)]


def place(plan: Plan, pool: BackendPool, cluster: Cluster, workers: int | None = None) -> Placement:
    """Actors per model: `workers` each, or the cluster shared out evenly (one GPU, else one CPU, each)."""
    models = actor_models(plan, pool)
    share = max(1, len(models))
    gpus = 1 if cluster.gpus >= 1 else 0
    default = max(1, (cluster.gpus if gpus else cluster.cpus) // share)
    count = workers or default
    labels = {key: plan.models[key].params.get("label", key) for key in models}
    placed = tuple(ModelActors(key, labels[key], count, 1, gpus) for key in models)
    return Placement(placed, cluster, count, gpus)


def misfit(placement: Placement) -> str | None:
    """Why the actors cannot all start on the cluster (Ray would wait for them for ever), or None."""
    for unit, have in (("CPUs", placement.cluster.cpus), ("GPUs", placement.cluster.gpus)):
        need = sum(m.actors * (m.cpus if unit == "CPUs" else m.gpus) for m in placement.models)
        if need > have:
            models = len(placement.models)
            return (
                f"{models} model(s) x {placement.actors} actor(s) need {need} {unit} but the cluster "
                f"has {have}; lower --workers"
            )
    return None


def plan_placement(
    plan: Plan,
    summary: Mapping[str, Any],
    cluster: Cluster,
    *,
    cache_dir: Any = None,
    workers: int | None = None,
    serving: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """`intro plan --executor ray`: the placement and, per wave of the DAG, how many batches run at once."""
    pool = BackendPool(plan, Cache(cache_dir or default_cache_dir()), serving)  # asked, never opened
    placement = place(plan, pool, cluster, workers)
    by_id = {s["id"]: s for s in summary["steps"]}
    waves = [_wave(plan, placement, [by_id[step] for step in wave]) for wave in dag_waves(plan)]
    driver = _driver_steps(plan, placement, summary["steps"])
    most = max((w["at_once"] for w in waves), default=0)
    return {
        "cluster": {"cpus": cluster.cpus, "gpus": cluster.gpus, "described": cluster.described},
        "models": [_model_json(m) for m in placement.models],
        "waves": [w for w in waves if w["actor_steps"]],
        "driver": driver,
        "most_batches_at_once": most,
        "problem": misfit(placement),
    }


def dag_waves(plan: Plan) -> list[list[str]]:
    """Step ids in the waves the executor runs them in: each wave's steps depend only on earlier waves."""
    done: set[str] = set()
    pending = list(plan.steps)
    waves = []
    while pending:
        wave = [s.id for s in pending if all(d in done for d in s.deps)]
        if not wave:
            break  # lowering never produces a cycle; the executor reports one
        waves.append(wave)
        done.update(wave)
        pending = [s for s in pending if s.id not in done]
    return waves


def _wave(plan: Plan, placement: Placement, steps: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Steps of one wave with calls to make on actors, their batches, and how many of them run at once."""
    names = {m.model for m in placement.models}
    batches: dict[str, int] = {}
    calls = 0
    actor_steps = 0
    for s in steps:
        model = s.get("model")
        if not model or root_model(plan, model) not in names or not s.get("to_run"):
            continue
        root = root_model(plan, model)
        actor_steps += 1
        calls += s["to_run"]
        parallel = s["kind"] in PARALLEL_KINDS
        batches[root] = batches.get(root, 0) + (math.ceil(s["to_run"] / CHUNK) if parallel else 1)
    at_once = sum(min(n, placement.actors_of(root).actors) for root, n in batches.items())
    return {"actor_steps": actor_steps, "calls": calls, "batches": sum(batches.values()), "at_once": at_once}


def _driver_steps(plan: Plan, placement: Placement, steps: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    names = {m.model for m in placement.models}
    counts = {"training and vectors": 0, "API-model calls": 0, "measurements and data": 0}
    for s in steps:
        model = s.get("model")
        if s["kind"] in DRIVER_KINDS:
            counts["training and vectors"] += 1
        elif model and root_model(plan, model) not in names:
            counts["API-model calls"] += 1
        elif not model or s["kind"] not in PARALLEL_KINDS:
            counts["measurements and data"] += 1
    return counts


def _model_json(m: ModelActors) -> dict[str, Any]:
    return {"model": m.model, "label": m.label, "actors": m.actors, "cpus": m.cpus, "gpus": m.gpus}


def render_placement(placement: Mapping[str, Any]) -> str:
    c = placement["cluster"]
    lines = [f"placement on Ray ({c['described']}: {c['cpus']} CPUs, {c['gpus']} GPUs)"]
    for m in placement["models"]:
        unit = f"{m['gpus']} GPU + {m['cpus']} CPU" if m["gpus"] else f"{m['cpus']} CPU (1 torch thread)"
        lines.append(
            f"  model {m['label']}: {m['actors']} actor(s), {unit} each, weights loaded once per actor"
        )
    if not placement["models"]:
        lines.append("  no in-process model: every step runs on the driver")
    for index, w in enumerate(placement["waves"], 1):
        lines.append(
            f"  wave {index}: {w['actor_steps']} step(s) on actors, {w['calls']} calls in {w['batches']} "
            f"batch(es) of <= {CHUNK}: up to {w['at_once']} at once"
        )
    driver = ", ".join(f"{n} {what}" for what, n in placement["driver"].items() if n) or "nothing else"
    lines.append(f"  on the driver: {driver}; the driver alone writes the cache, the journal and the cubes")
    lines.append(f"expected parallelism: up to {placement['most_batches_at_once']} batch(es) at once")
    if placement["problem"]:
        lines.append(f"warning: {placement['problem']}")
    return "\n".join(lines)
