"""`intro run --executor ray`: the same plan, with in-process models on Ray actors across a cluster.

Only where model calls run changes. Each in-process root model gets actors (`ModelWorker`) that load its
weights once and keep them (finetuned variants switch their LoRA adapter there, as in one process); the
executor hands each actor whole batches of requests (`RayBackend`), several at once, and gets the results
back. The driver keeps everything else: API models on its async executor, training and vectors (they need
the weights in its process), measurements, and every write to the cache, the journal and the cubes, so the
store's atomicity, the cache keys and resume are those of the local executor.

A worker that dies mid-batch (killed, out of memory, its node lost) is restarted by Ray; the batch is sent
again to the next free actor (`RETRIES` times). Nothing a batch finished is lost: its results were cached
as they arrived, and requests are pure functions of their key.

Workers read the cache directory (steering vectors, adapters) and the model files at the paths the driver
sees: on a cluster of several machines those must be on storage every node mounts.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from intro.compiler.plan import Plan, Step
from intro.runtime.backends import precision
from intro.runtime.backends.requests import BackendError, Generation, GenerationRequest, Score, ScoreRequest
from intro.runtime.engine.pool import BackendPool, LoadListener
from intro.runtime.engine.ray_placement import Cluster, Placement, misfit, place, root_model
from intro.runtime.store.cache import Cache, default_cache_dir

INSTALL_HINT = "pip install 'intro[ray]'"
RETRIES = 3  # times a batch is sent again after its worker died
REVIVE_S = 600.0  # how long a dead actor may take to restart and reload its weights before it is given up


class ClusterError(Exception):
    """Ray is missing, or the cluster cannot be reached: one line for the user."""


def require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ClusterError(f"--executor ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


@contextmanager
def connected(address: str | None) -> Iterator[Cluster]:
    """A Ray session: the one this process already has, the cluster at `address` (`auto`, `ray://host:port`),
    or a new local cluster on 127.0.0.1 that ends with the run."""
    ray = require_ray()
    started = not ray.is_initialized()
    if started:
        _init(ray, address)
    try:
        resources = ray.cluster_resources()
        where = f"cluster at {address}" if address else "local cluster"
        yield Cluster(int(resources.get("CPU", 0)), int(resources.get("GPU", 0)), where)
    finally:
        if started:
            ray.shutdown()


def _init(ray: Any, address: str | None) -> None:
    options: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
    if address is None:
        options.update(include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ClusterError(f"cannot reach the Ray cluster at {address}: {first}") from None


def run_on_ray(plans: Sequence[Plan], *, address: str | None, workers: int | None, **options: Any) -> int:
    """`run_plans` with the Ray pool: same study directories, same cache, same exit statuses."""
    from intro.runtime.engine.run import run_plans

    with connected(address) as cluster:
        _check_fits(plans, cluster, workers, options)

        def pools(
            plan: Plan,
            cache: Cache,
            serving: Mapping[str, str],
            on_load: LoadListener,
            /,
            *,
            memory_budget: int | None = None,
        ) -> BackendPool:
            return RayPool(
                plan, cache, serving, on_load, cluster=cluster, workers=workers, memory_budget=memory_budget
            )

        return run_plans(plans, pools=pools, **options)


def _check_fits(
    plans: Sequence[Plan], cluster: Cluster, workers: int | None, options: Mapping[str, Any]
) -> None:
    cache = Cache(options.get("cache_dir") or default_cache_dir())
    for plan in plans:
        problem = misfit(place(plan, BackendPool(plan, cache, options.get("serving")), cluster, workers))
        if problem:
            raise ClusterError(f"{plan.study}: {problem}")


# ---------------------------------------------------------------------------------------------------------
# The worker


class ModelWorker:
    """A Ray actor holding one root model's weights (loaded on first use) and answering batches for it and
    for its finetuned variants. It never writes the cache: results go back to the driver."""

    def __init__(
        self,
        plan_json: str,
        cache_root: str,
        serving: Mapping[str, str],
        threads: int,
        dtypes: Mapping[str, str] | None = None,
    ):
        import torch

        from intro.runtime.backends import memory

        torch.set_num_threads(threads)
        memory.limit_arenas()
        # `dtypes`: what the driver keyed each root's answers by; the weights load in exactly that dtype.
        self.pool = BackendPool(Plan.loads(plan_json), Cache(Path(cache_root)), serving, dtypes=dtypes)

    def load(self, model_key: str) -> int:
        """Load the weights now (so the driver can report it); the worker's process id."""
        self.pool.loaded(model_key)
        return os.getpid()

    def generate(self, model_key: str, requests: list[GenerationRequest]) -> list[Generation]:
        return self._local(model_key).generate_now(requests)  # type: ignore[no-any-return]

    def score(self, model_key: str, requests: list[ScoreRequest]) -> list[Score]:
        return self._local(model_key).score_now(requests)  # type: ignore[no-any-return]

    def _local(self, model_key: str) -> Any:
        return self.pool.backend(model_key)  # a LocalBackend: the driver sends only in-process models


# ---------------------------------------------------------------------------------------------------------
# The driver's side


class Replicas:
    """The actors of one root model. Each call takes a free actor; a call whose actor died is sent again to
    the next free one, and the dead actor rejoins the free ones once Ray has restarted it and it has loaded
    the weights again (a restarting actor refuses calls instead of queueing them)."""

    def __init__(self, ray: Any, actors: list[Any], model: str, label: str, on_load: LoadListener):
        self.ray = ray
        self.actors = actors
        self.model = model
        self.label = label
        self.on_load = on_load
        self.retried = 0
        self._alive = len(actors)
        self._reviving: set[asyncio.Task[None]] = set()
        self._free: asyncio.Queue[Any] | None = None
        self._ready: asyncio.Lock | None = None
        self._loaded = False

    async def call(self, method: str, *args: Any) -> Any:
        await self._start()
        for attempt in range(RETRIES + 1):
            actor = await self._take()
            try:
                result = await getattr(actor, method).remote(*args)
            except self.ray.exceptions.RayActorError as error:
                self._revive(actor)
                if attempt == RETRIES:
                    raise BackendError(
                        f"the workers of {self.label} keep dying: {_first_line(error)}"
                    ) from None
                self.retried += 1
                print(
                    f"intro: a worker of {self.label} was lost mid-batch; sending the batch again",
                    file=sys.stderr,
                )
                continue
            except self.ray.exceptions.RayTaskError as error:
                self._queue().put_nowait(actor)
                raise _cause(error) from None
            self._queue().put_nowait(actor)
            return result
        raise AssertionError("unreachable")

    async def _take(self) -> Any:
        actor = await self._queue().get()
        if actor is None:  # every actor is gone for good
            self._queue().put_nowait(None)
            raise BackendError(f"every Ray worker of {self.label} has died and none could be restarted")
        return actor

    def _revive(self, actor: Any) -> None:
        task = asyncio.get_running_loop().create_task(self._rejoin(actor))
        self._reviving.add(task)
        task.add_done_callback(self._reviving.discard)

    async def _rejoin(self, actor: Any) -> None:
        """Back among the free actors once it has loaded the weights again; given up after `REVIVE_S`."""
        deadline = asyncio.get_running_loop().time() + REVIVE_S
        while asyncio.get_running_loop().time() < deadline:
            try:
                await actor.load.remote(self.model)
            except self.ray.exceptions.RayTaskError as error:
                raise _cause(error) from None  # the weights cannot load: no restart helps
            except self.ray.exceptions.ActorDiedError:
                break  # out of restarts, or its node is gone
            except self.ray.exceptions.RayActorError:
                await asyncio.sleep(0.5)  # still restarting
                continue
            self._queue().put_nowait(actor)
            return
        self._alive -= 1
        if self._alive == 0:
            self._queue().put_nowait(None)

    def _queue(self) -> asyncio.Queue[Any]:
        if self._free is None:  # created in the running loop, on first use
            self._free = asyncio.Queue()  # actors join it once their weights are loaded
        return self._free

    async def _start(self) -> None:
        """Load the weights on every actor before the first batch, telling progress as the pool does."""
        if self._ready is None:
            self._ready = asyncio.Lock()
        async with self._ready:
            if self._loaded:
                return
            loop = asyncio.get_running_loop()
            started = loop.time()
            source = f"{len(self.actors)} Ray worker(s)"
            self.on_load("loading", self.label, source, 0.0)
            await asyncio.gather(*(self._rejoin(actor) for actor in self.actors))
            self.on_load("loaded", self.label, source, loop.time() - started)
            self._loaded = True

    def kill(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)


class RayBackend:
    """The `Backend` protocol for one model over its root's actors. Each call runs whole on one free actor,
    batched there exactly as the local backend batches it, so results are those of one process; the
    executor makes `parallel_batches` calls at once (one chunk of a step's requests each)."""

    remote = True  # the executor takes no lock on the driver's processor for these calls

    def __init__(self, model_key: str, replicas: Replicas):
        self.model_key = model_key
        self.replicas = replicas
        self.name = f"ray:{model_key}"
        self.parallel_batches = len(replicas.actors)

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        return await self.replicas.call("generate", self.model_key, list(requests))  # type: ignore[no-any-return]

    async def score(self, requests: Sequence[ScoreRequest]) -> list[Score]:
        return await self.replicas.call("score", self.model_key, list(requests))  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        return None


class RayPool(BackendPool):
    """`BackendPool` whose in-process models answer from Ray actors; API models and `loaded()` (training,
    vectors, activations) stay in the driver."""

    def __init__(
        self,
        plan: Plan,
        cache: Cache,
        serving: Mapping[str, str] | None,
        on_load: LoadListener | None,
        *,
        cluster: Cluster,
        workers: int | None = None,
        memory_budget: int | None = None,  # for what the driver loads itself (training, vectors)
    ):
        super().__init__(plan, cache, serving, on_load, memory_budget=memory_budget)
        self.ray = require_ray()
        self.placement: Placement = place(plan, self, cluster, workers)
        self._replicas: dict[str, Replicas] = {}
        self._remote: dict[str, RayBackend] = {}

    def roots_computed_here(self, step: Step) -> frozenset[str]:
        # Model calls run on the actors, each model on its own: steps of different models run side by side.
        return frozenset()

    def backend(self, model_key: str) -> Any:
        entry = self.plan.models[model_key]
        if entry.kind == "steered":
            return self.backend(entry.params["base"])
        if not self.in_process(model_key):
            return super().backend(model_key)
        if model_key not in self._remote:
            self._remote[model_key] = RayBackend(
                model_key, self._replicas_of(root_model(self.plan, model_key))
            )
        return self._remote[model_key]

    def _resolve_dtype(self, root_key: str) -> str:
        """A root on GPU actors computes in bfloat16 (or `INTRO_DTYPE`'s dtype) whatever the driver has; its
        workers are told so (`ModelWorker`), so the answers' keys and the weights agree."""
        if self.planned_device(root_key) is not None or not self.in_process(root_key):
            return super()._resolve_dtype(root_key)
        gpus = self.placement.actors_of(
            root_key, self.plan.models[root_key].params.get("label", root_key)
        ).gpus
        return precision.choose_dtype(
            "cuda" if gpus else "cpu", native_bf16=True, override=self._dtype_override
        )

    def _replicas_of(self, root: str) -> Replicas:
        if root not in self._replicas:
            self._replicas[root] = self._start_actors(root)
        return self._replicas[root]

    def _start_actors(self, root: str) -> Replicas:
        placed = self.placement.actors_of(root, self.plan.models[root].params.get("label", root))
        worker = self.ray.remote(ModelWorker).options(
            num_cpus=placed.cpus,
            num_gpus=placed.gpus,
            max_restarts=-1,  # a killed worker comes back (without its weights: it reloads on its next batch)
            max_task_retries=0,  # Replicas sends a lost batch again itself, to another actor when one is free
        )
        plan_json, cache_root = self.plan.dumps(), str(self.cache.root.resolve())
        dtypes = {root: self.numerics(root) or "float32"}
        actors = [
            worker.remote(plan_json, cache_root, self.overrides, placed.cpus, dtypes)
            for _ in range(placed.actors)
        ]
        return Replicas(self.ray, actors, root, placed.label, self.on_load)

    def _release(self, model_key: str) -> None:
        """After the last step that needs a root model: its actors go too, freeing the cluster's slots."""
        super()._release(model_key)
        replicas = self._replicas.pop(model_key, None)
        if replicas is not None:
            for key in [k for k, backend in self._remote.items() if backend.replicas is replicas]:
                del self._remote[key]
            replicas.kill()

    async def aclose(self) -> None:
        await super().aclose()
        for replicas in self._replicas.values():
            replicas.kill()


def _cause(error: Any) -> BaseException:
    """What a worker raised: a `BackendError` as itself (one line for the user), anything else as Ray's
    error with the worker's traceback."""
    return error.cause if isinstance(error.cause, BackendError) else error  # type: ignore[no-any-return]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
