"""Finetuning API models: a `finetune` step whose root model is a litellm model runs as an OpenAI-style
fine-tuning job, through litellm's `acreate_file`, `acreate_fine_tuning_job` and `aretrieve_fine_tuning_job`,
on OpenAI (`openai/...`, or any OpenAI-compatible `api_base`) or Azure OpenAI (`azure/...`; the fine-tuned
model is then called by its name as a deployment, which Azure itself serves only once it is deployed).

The step's training examples (the data step's `examples.jsonl`) are uploaded as OpenAI chat JSONL, a job is
created, and its id is written to the step's artifact directory (`job.json`) *before* any polling: a run
killed while the provider trains resumes by polling the same job, never by paying for a second one. Only a
kill between the provider accepting the job and `job.json` landing (one HTTP round trip) can orphan a job.
A failed job's `job.json` is removed, so the next run starts afresh; so is one the provider no longer knows
(an `intro serve` restarted without its `--state`). On success the artifact is marked DONE with the model's
litellm name, which is what `BackendPool` opens the finetuned model by.

Hyperparameters: `epochs` -> `n_epochs`, `batch` -> `batch_size`, and `lr_multiplier` -> the provider's
own `learning_rate_multiplier`, as given. OpenAI applies the multiplier to a base rate of its own choosing,
so a paper's multiplier (Looking Inward: 2, and 1 for the behaviour shift; issue 11, item 3) is written as
`lr_multiplier: 2`, never as a rate. Without it, `lr` is converted: `learning_rate_multiplier = lr /
BASE_LEARNING_RATE` (1e-4, the language's default `lr`, so the default trains at multiplier 1), which is
exactly the rate `intro serve` trains at (runtime/serve/finetune.py) but on OpenAI only a multiplier.
`rank`, `alpha` have no field in OpenAI's API: the provider chooses them. `seed` is the job's seed.

The uploaded rows are shuffled with `seed` (where the step's identity says `shuffle`: every API finetune
compiled since it was introduced), as in-process training shuffles every epoch: the examples come grouped
by task and property, and a provider trains on the file in its order.

The API key is read from the model's `api_key_env` (or the provider's own variable) at call time, by the same
rules as `LiteLLMBackend`, handed to litellm and written nowhere; provider messages are redacted before they
leave this module. The cost is None: litellm's price table lists inference prices, not training prices.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from attrs import frozen

from intro.compiler import step_params as sp
from intro.compiler.plan import Plan, Step
from intro.runtime.backends.litellm_backend import (
    LiteLLMBackend,
    classify_error,
    import_litellm,
    stop_litellm_background_work,
)
from intro.runtime.backends.requests import BackendError
from intro.runtime.backends.retry import RetryPolicy, call_with_retries
from intro.runtime.store.cache import Cache, atomic_write
from intro.runtime.training.training import Lineage, TrainingExample, read_examples

JOB_FILE = "job.json"
TRAINING_FILE_NAME = "training.jsonl"
# `lr` 1e-4 (the language's default) is learning-rate multiplier 1.
BASE_LEARNING_RATE = 1e-4
# OpenAI keeps suffixes short (18 characters in its older docs): "intro-" and 12 hex digits of the step hash.
SUFFIX_PREFIX = "intro-"
# Providers whose files, job creation and job retrieval litellm implements alike (any OpenAI-compatible
# `api_base` included): OpenAI's API and Azure OpenAI's (its paths under /openai, `api-version` from
# AZURE_API_VERSION). litellm's third, vertex_ai, trains from Cloud Storage files through Vertex's own tuning
# API, which nothing here uploads to, so it is not offered.
FINETUNING_PROVIDERS = ("openai", "azure")
# Azure OpenAI wants an API version on every call; litellm reads it from these variables.
AZURE_VERSION_VARIABLES = ("AZURE_API_VERSION", "OPENAI_API_VERSION")

# What a poll reads of OpenAI's fine-tuning job object.
JOB_FIELDS = ("id", "status", "fine_tuned_model", "trained_tokens", "error", "created_at", "finished_at")

Say = Callable[[str], None]
Sleep = Callable[[float], Awaitable[None]]


class JobNotFoundError(BackendError):
    """The provider does not know the fine-tuning job a previous run recorded."""


@frozen
class PollPolicy:
    """How often a running job is asked about: a short first wait growing to `max_delay` (jobs take
    seconds on `intro serve`, hours on a commercial API)."""

    first_delay: float = 0.5
    multiplier: float = 1.5
    max_delay: float = 30.0


@frozen
class JobRecord:
    """What `job.json` holds: enough to poll the job again after a restart. No key, no address."""

    job_id: str
    file_id: str
    base_model: str
    suffix: str

    def to_json(self) -> str:
        return json.dumps(
            {
                "job_id": self.job_id,
                "file_id": self.file_id,
                "base_model": self.base_model,
                "suffix": self.suffix,
            }
        )

    @classmethod
    def load(cls, directory: Path) -> JobRecord | None:
        try:
            data = json.loads((directory / JOB_FILE).read_text(encoding="utf-8"))
            return cls(data["job_id"], data["file_id"], data["base_model"], data["suffix"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None  # no job recorded (a torn file cannot come from atomic writes)


# ---------------------------------------------------------------------------------------------------
# Pure conversions
# ---------------------------------------------------------------------------------------------------


def openai_training_jsonl(examples: Sequence[TrainingExample]) -> str:
    """OpenAI's chat fine-tuning format: one {"messages": [...]} per line, ending with the reply to learn."""
    lines = []
    for example in examples:
        messages = [{"role": role, "content": content} for role, content in example.messages]
        messages.append({"role": "assistant", "content": example.target})
        lines.append(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    return "".join(lines)


def job_hyperparameters(hparams: sp.Hparams) -> dict[str, Any]:
    """A finetune step's hyperparameters in OpenAI's terms (see the module docstring for `lr`)."""
    multiplier = hparams.lr_multiplier
    return {
        "n_epochs": hparams.epochs,
        "batch_size": hparams.batch,
        "learning_rate_multiplier": float(multiplier)
        if multiplier is not None
        else round(float(hparams.lr) / BASE_LEARNING_RATE, 9),
    }


def upload_order(examples: Sequence[TrainingExample], hparams: sp.Hparams) -> list[TrainingExample]:
    """The examples in the order they are uploaded: shuffled with the step's seed where its identity says
    so (the same order on every run and machine: `random.Random(seed)`), else as the data step wrote them."""
    rows = list(examples)
    if hparams.shuffle:
        random.Random(hparams.seed).shuffle(rows)
    return rows


def job_suffix(step: Step) -> str:
    return SUFFIX_PREFIX + step.hash[:12]


def without_provider(model_id: str, provider: str) -> str:
    """A litellm model name as the provider knows it ("openai/ft:x:y:z" -> "ft:x:y:z")."""
    prefix = f"{provider}/"
    return model_id[len(prefix) :] if model_id.startswith(prefix) else model_id


# ---------------------------------------------------------------------------------------------------
# The provider's fine-tuning API
# ---------------------------------------------------------------------------------------------------


class FineTuningClient:
    """The files and fine-tuning calls of one provider route (`model` is the root's litellm name).

    Keys and error redaction follow `LiteLLMBackend`'s rules, borrowed from one of its instances so that
    a model's calls and its training read the same variable. Uploads and polls are retried on transient
    failures; job creation is tried once, since a retried creation could start (and bill) a second job.
    """

    def __init__(
        self,
        model: str,
        *,
        api_base: str | None = None,
        api_key_env: str | None = None,
        timeout: float = 120.0,
        retry_policy: RetryPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
    ):
        self.route = LiteLLMBackend(model, api_base=api_base, api_key_env=api_key_env)
        self.api_base = api_base
        self.timeout = timeout
        self.retry_policy = retry_policy or RetryPolicy()
        self.sleep = sleep

    @property
    def provider(self) -> str:
        return self.route._provider[1]

    @property
    def base_model(self) -> str:
        """The root model's name as the provider knows it."""
        return self.route._provider[0]

    def check_provider(self) -> None:
        if self.provider not in FINETUNING_PROVIDERS:
            raise BackendError(
                f"{self.route.model}: finetuning through litellm is supported for OpenAI-style providers "
                f"({', '.join(FINETUNING_PROVIDERS)}, or any OpenAI-compatible api_base), not {self.provider!r}"
            )
        if self.provider == "azure" and not any(os.environ.get(v) for v in AZURE_VERSION_VARIABLES):
            raise BackendError(
                f"{self.route.model}: Azure OpenAI needs an API version: set {AZURE_VERSION_VARIABLES[0]}"
            )

    async def upload(self, jsonl: str) -> str:
        training_file = (TRAINING_FILE_NAME, jsonl.encode("utf-8"), "application/jsonl")
        created = await self._call("acreate_file", retry=True, file=training_file, purpose="fine-tune")
        return str(_field(created, "id"))

    async def create_job(
        self, file_id: str, base_model: str, hyperparameters: Mapping[str, Any], seed: int, suffix: str
    ) -> str:
        job = await self._call(
            "acreate_fine_tuning_job",
            retry=False,
            model=base_model,
            training_file=file_id,
            hyperparameters=dict(hyperparameters),
            seed=seed,
            suffix=suffix,
        )
        return str(_field(job, "id"))

    async def retrieve(self, job_id: str) -> dict[str, Any]:
        job = await self._call("aretrieve_fine_tuning_job", retry=True, fine_tuning_job_id=job_id)
        return {name: _field(job, name) for name in JOB_FIELDS}

    async def _call(self, operation: str, *, retry: bool, **arguments: Any) -> Any:
        litellm = import_litellm()
        key = self.route._api_key()  # read now, from the environment; kept in no attribute
        where = self.route._where()

        async def attempt() -> Any:
            try:
                return await getattr(litellm, operation)(**arguments, **self._route_arguments(), api_key=key)
            except Exception as error:
                failure = _failure(error, where, self.route._secrets(key), operation)
            # Raised outside the except block, so the provider's exception (which may quote the key)
            # is not kept as __context__.
            raise failure

        policy = self.retry_policy if retry else RetryPolicy(max_attempts=1)
        return await call_with_retries(attempt, policy, describe=f"{where} {operation}", sleep=self.sleep)

    def _route_arguments(self) -> dict[str, Any]:
        # The openai client's own retries are off: one layer (intro.runtime.backends.retry) decides.
        arguments: dict[str, Any] = {
            "custom_llm_provider": self.provider,
            "max_retries": 0,
            "timeout": self.timeout,
        }
        if self.api_base:
            arguments["api_base"] = self.api_base
        return arguments


def _failure(error: Exception, where: str, secrets: Sequence[str], operation: str) -> BackendError:
    classified = classify_error(error, where, secrets)
    if operation == "aretrieve_fine_tuning_job" and getattr(error, "status_code", None) == 404:
        return JobNotFoundError(str(classified))
    return classified


def _field(obj: Any, name: str) -> Any:
    """A field of a litellm/openai response, which may be a pydantic model or a plain dict."""
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


# ---------------------------------------------------------------------------------------------------
# The finetune step
# ---------------------------------------------------------------------------------------------------


@frozen
class ApiFinetune:
    """One finetune step of an API model: where its job goes, what it trains on, and how to report."""

    plan: Plan
    cache: Cache
    step: Step
    origin: Lineage
    say: Say

    @property
    def directory(self) -> Path:
        return self.cache.artifact_dir(self.step.hash)

    @property
    def params(self) -> sp.FinetuneParams:
        return self.step.params_as(sp.FinetuneParams)

    def client(self) -> FineTuningClient:
        root = self.plan.models[self.origin.root]
        serving = self.plan.serving.get(root.key, {})
        return FineTuningClient(
            root.params["locator"],
            api_base=serving.get("api_base"),
            api_key_env=serving.get("api_key_env"),
            timeout=float(serving.get("timeout", 120)),
        )

    def examples(self) -> list[TrainingExample]:
        data = self.plan.step(self.params.data)
        examples = read_examples(self.cache.artifact_dir(data.hash))
        if not examples:
            raise BackendError(
                f"{self.step.id}: no training examples (every answer in {data.id} was left out)"
            )
        return examples

    def base_model(self, client: FineTuningClient) -> str:
        """The model the job trains: the root, or the parent step's fine-tuned model (training it further)."""
        if self.origin.parent_step is None:
            return client.base_model
        parent = self.plan.step(self.origin.parent_step)
        if not self.cache.artifact_done(parent.hash):
            raise RuntimeError(
                f"{self.step.id} runs before its base model's finetuning ({parent.id}) has finished"
            )
        return without_provider(self.cache.artifact_info(parent.hash)["model_id"], client.provider)


async def finetune_api_model(
    plan: Plan, cache: Cache, step: Step, origin: Lineage, say: Say, *, poll: PollPolicy | None = None
) -> dict[str, Any]:
    """Run (or resume) `step`'s fine-tuning job and mark its artifact DONE; returns the DONE info."""
    run = ApiFinetune(plan, cache, step, origin, say)
    client = run.client()
    client.check_provider()
    client.route._api_key()  # a missing key fails here, before anything is uploaded
    examples = run.examples()
    try:
        job = await _finished_job(run, client, examples, poll or PollPolicy())
    finally:
        await stop_litellm_background_work()
    info = _done_info(run, client, job, len(examples))
    cache.mark_artifact_done(step.hash, info)
    say(f"  {step.id}: {info['model_id']} ({info['trained_tokens']} trained tokens)")
    return info


async def _finished_job(
    run: ApiFinetune, client: FineTuningClient, examples: Sequence[TrainingExample], poll: PollPolicy
) -> dict[str, Any]:
    record = JobRecord.load(run.directory)
    if record is not None:
        run.say(f"  {run.step.id}: resuming fine-tuning job {record.job_id}")
        try:
            return await wait_for_job(run, client, record, poll)
        except JobNotFoundError:
            run.say(f"  {run.step.id}: the provider no longer knows job {record.job_id}; starting a new one")
    record = await submit_job(run, client, examples)
    return await wait_for_job(run, client, record, poll)


async def submit_job(
    run: ApiFinetune, client: FineTuningClient, examples: Sequence[TrainingExample]
) -> JobRecord:
    """Upload the examples, create the job and record it in `job.json` before anything else happens."""
    base = run.base_model(client)
    run.say(f"  {run.step.id}: uploading {len(examples)} examples to finetune {base}")
    hparams = run.params.hparams
    file_id = await client.upload(openai_training_jsonl(upload_order(examples, hparams)))
    hyperparameters = job_hyperparameters(hparams)
    suffix = job_suffix(run.step)
    seed = hparams.seed
    job_id = await client.create_job(file_id, base, hyperparameters, seed, suffix)
    record = JobRecord(job_id, file_id, base, suffix)
    atomic_write(run.directory / JOB_FILE, record.to_json())
    run.say(f"  {run.step.id}: created fine-tuning job {job_id}")
    return record


async def wait_for_job(
    run: ApiFinetune, client: FineTuningClient, record: JobRecord, poll: PollPolicy
) -> dict[str, Any]:
    """Poll the job until it ends; a failed or cancelled job raises with the provider's message."""
    delay, last_status = poll.first_delay, None
    while True:
        job = await client.retrieve(record.job_id)
        status = job["status"]
        if status != last_status:
            run.say(f"  {run.step.id}: job {record.job_id} {status}")
            last_status = status
        if status == "succeeded":
            return _succeeded(run, record, job)
        if status in ("failed", "cancelled"):
            (run.directory / JOB_FILE).unlink(missing_ok=True)  # the next run starts a new job
            raise BackendError(f"{run.step.id}: fine-tuning job {record.job_id} {status}: {_job_error(job)}")
        await client.sleep(delay)
        delay = min(delay * poll.multiplier, poll.max_delay)


def _succeeded(run: ApiFinetune, record: JobRecord, job: dict[str, Any]) -> dict[str, Any]:
    if not job["fine_tuned_model"]:
        raise BackendError(f"{run.step.id}: job {record.job_id} succeeded but names no fine-tuned model")
    return job


def _job_error(job: Mapping[str, Any]) -> str:
    error = job.get("error")
    message = _field(error, "message") if error else None
    return str(message) if message else "the provider gave no reason"


def _done_info(
    run: ApiFinetune, client: FineTuningClient, job: Mapping[str, Any], examples: int
) -> dict[str, Any]:
    record = JobRecord.load(run.directory)
    started, finished = job.get("created_at"), job.get("finished_at")
    parent = run.origin.parent_step
    return {
        "kind": "finetune",
        "model_id": f"{client.provider}/{job['fine_tuned_model']}",
        "job_id": job["id"],
        "file_id": record.file_id if record else None,
        "base_model": record.base_model if record else None,
        "trained_tokens": job["trained_tokens"],
        "cost": None,  # litellm's price table has no training prices
        "examples": examples,
        "losses": [],  # OpenAI's job object carries no loss curve
        "hyperparameters": job_hyperparameters(run.params.hparams),
        "seed": run.params.hparams.seed,
        "root": run.plan.models[run.origin.root].identity,
        "parent": parent and run.plan.step(parent).hash,
        # The provider's wall time for the job, from its own clock; absent when it gives no times.
        **({"seconds": float(finished - started)} if started and finished else {}),
    }
