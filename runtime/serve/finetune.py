"""OpenAI-style files and fine-tuning endpoints for `intro serve`: LoRA training of the served model.

With them a served in-process model (say an embedded model on a GPU box) is finetuned exactly as an API
model is, through litellm's `acreate_file` / `acreate_fine_tuning_job` / `aretrieve_fine_tuning_job`:

- `POST /v1/files` (multipart form: `file`, `purpose` "fine-tune") stores the JSONL and returns a file object;
  `GET /v1/files/{id}` returns it again.
- `POST /v1/fine_tuning/jobs` (`training_file`, `model`, `hyperparameters` {n_epochs, batch_size,
  learning_rate_multiplier}, `seed`, `suffix`) queues a LoRA training job; `GET /v1/fine_tuning/jobs/{id}`
  reports it: validating_files -> queued -> running -> succeeded | failed.
- `GET /v1/files` lists the files, `GET /v1/files/{id}/content` returns one's bytes; `GET
  /v1/fine_tuning/jobs` lists the jobs (newest first, `after` and `limit` as OpenAI pages them),
  `.../jobs/{id}/events` a job's events, `.../jobs/{id}/checkpoints` its one checkpoint (the finished
  adapter), and `POST .../jobs/{id}/cancel` cancels it. A job cancelled while training trains to the end
  (training cannot be interrupted), and its adapter is then thrown away.
- Azure OpenAI's paths for the same endpoints (`/openai/files`, `/openai/fine_tuning/jobs`, ...) are
  answered alike, so litellm's `azure/` fine-tuning route works here too.
- A chat completion addressed to a job's `fine_tuned_model` ("ft:<base>:<suffix>:<job id>") is answered by
  the served weights with that job's adapter switched on. A job whose `model` is itself a fine-tuned model
  trains on top of that model's adapter (`adapters.train_adapter(parent=...)`).

Jobs run one at a time on one worker thread, since they share the served weights. The learning rate is
`learning_rate_multiplier * BASE_LEARNING_RATE` (1e-4, the language's default `lr`), the unit intro's client
(`runtime/training/api_finetune.py`) converts to. Every file and job lives in a state directory, written
atomically, so a restarted server still answers for finished jobs, and takes up again the jobs it had not
finished.

Request and reply shapes are `finetune_protocol.py`; the state directory is `finetune_state.py`.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from pathlib import Path
from typing import Any, BinaryIO

from intro.runtime.backends.requests import Message
from intro.runtime.serve.batching import DEFAULT_TURN_TOKENS, BatchingRunner, context_tokens_of
from intro.runtime.serve.finetune_protocol import (
    FormPart,
    Reply,
    TrainingFileError,
    error_object,
    found_reply,
    job_checkpoints,
    json_body,
    list_page,
    parse_form,
    parse_hyperparameters,
    read_body,
    read_training_file,
)
from intro.runtime.serve.finetune_state import TERMINAL, FineTuningState
from intro.runtime.serve.protocol import (
    InvalidRequestError,
    ModelNotFoundError,
    RequestHeaders,
    error_body,
    model_object,
)
from intro.runtime.serve.server import ChatServer

log = logging.getLogger(__name__)

# `learning_rate_multiplier` 1 trains at this rate: the language's default `lr`.
BASE_LEARNING_RATE = 1e-4
MAX_UPLOAD_BYTES = 512 * 1024 * 1024  # OpenAI's limit for one file


class FineTuningService:
    """Files, fine-tuning jobs and fine-tuned models of one served `LoadedModel`.

    `jobs_created` counts job creations since this service started (what a client that resumes a job
    instead of creating a second one must leave unchanged). `rank` and `alpha` are the LoRA settings of
    every job: OpenAI's API has no field for them.
    """

    def __init__(
        self,
        loaded: Any,
        state_dir: str | Path,
        *,
        rank: int = 8,
        alpha: float = 16.0,
        max_batch: int = 32,
        batch_window: float = 0.005,
        turn_tokens: int | None = DEFAULT_TURN_TOKENS,
    ):
        self.loaded = loaded
        self.state = FineTuningState(Path(state_dir))
        self.rank, self.alpha = rank, alpha
        self.max_batch, self.batch_window = max_batch, batch_window
        self.turn_tokens = turn_tokens
        # The served model's names (the server sets them); jobs may finetune it by any of them.
        self.serves: Callable[[str], bool] = lambda model: True
        self.served_name = ""
        self.jobs_created = 0
        self._count_lock = threading.Lock()
        self._runners: dict[str, BatchingRunner] = {}
        self._runners_lock = threading.Lock()
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="intro-finetune-worker", daemon=True)
        self._worker.start()
        for job in self.state.jobs():
            if job["status"] not in TERMINAL:  # left unfinished by a server that stopped: take it up again
                self._validate_and_queue(job["id"])

    # ------------------------------------------------------------ HTTP routing
    def handle(self, method: str, path: str, headers: RequestHeaders, body: BinaryIO) -> Reply | None:
        """Answer a files or fine-tuning request, or None when `path` is not one of these endpoints."""
        route, _, query = path.partition("?")
        parts = [p for p in route.strip("/").split("/") if p]
        if parts[:1] in (["v1"], ["openai"]):  # OpenAI's prefix, or Azure OpenAI's (`?api-version=` ignored)
            parts = parts[1:]
        try:
            if method == "GET":
                return self._get(parts, urllib.parse.parse_qs(query))
            return self._post(parts, headers, body) if method == "POST" else None
        except InvalidRequestError as error:
            return error.status, error_body(str(error), "invalid_request_error")
        except Exception as error:
            log.exception("fine-tuning request failed")
            return HTTPStatus.INTERNAL_SERVER_ERROR, error_body(str(error), "server_error")

    def _post(self, parts: list[str], headers: RequestHeaders, body: BinaryIO) -> Reply | None:
        if parts == ["files"]:
            form = parse_form(headers.get("Content-Type", ""), read_body(headers, body, MAX_UPLOAD_BYTES))
            return HTTPStatus.OK, self.upload(form)
        if parts == ["fine_tuning", "jobs"]:
            request = json_body(read_body(headers, body, MAX_UPLOAD_BYTES))
            return HTTPStatus.OK, self.create_job(request)
        if len(parts) == 4 and parts[:2] == ["fine_tuning", "jobs"] and parts[3] == "cancel":
            read_body(
                headers, body, MAX_UPLOAD_BYTES
            )  # whatever the client sent, so the connection stays usable
            return self.cancel_job(parts[2])
        return None

    def _get(self, parts: list[str], query: Mapping[str, list[str]]) -> Reply | None:
        if parts == ["files"]:
            return HTTPStatus.OK, list_page(self.state.files()[::-1], query)
        if len(parts) == 2 and parts[0] == "files":
            return found_reply(self.state.file(parts[1]), f"no file {parts[1]}")
        if len(parts) == 3 and parts[0] == "files" and parts[2] == "content":
            content = self.state.file_bytes(parts[1])
            return (
                (HTTPStatus.OK, content) if content is not None else found_reply(None, f"no file {parts[1]}")
            )
        if parts[:2] != ["fine_tuning", "jobs"]:
            return None
        if len(parts) == 2:
            return HTTPStatus.OK, list_page(self.state.jobs()[::-1], query)
        job = self.state.job(parts[2]) if len(parts) in (3, 4) else None
        if job is None:
            return found_reply(None, f"no fine-tuning job {parts[2]}")
        if len(parts) == 3:
            return HTTPStatus.OK, job
        return self._job_part(job, parts[3], query)

    def _job_part(self, job: Mapping[str, Any], part: str, query: Mapping[str, list[str]]) -> Reply | None:
        if part == "events":
            return HTTPStatus.OK, list_page(self.state.events(job["id"])[::-1], query)
        if part == "checkpoints":
            return HTTPStatus.OK, list_page(job_checkpoints(job), query)
        return None

    # ------------------------------------------------------------ files
    def upload(self, form: Mapping[str, FormPart]) -> dict[str, Any]:
        if "file" not in form:
            raise InvalidRequestError("the upload has no 'file' field")
        purpose = form["purpose"].value.decode() if "purpose" in form else ""
        if purpose != "fine-tune":
            raise InvalidRequestError(f"only purpose 'fine-tune' is supported, not {purpose!r}")
        content = form["file"].value
        meta = {
            "id": f"file-{uuid.uuid4().hex[:24]}",
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": form["file"].filename or "upload.jsonl",
            "purpose": purpose,
            "status": "processed",
            "status_details": None,
        }
        self.state.save_file(meta, content)
        return meta

    # ------------------------------------------------------------ jobs
    def create_job(self, request: Any) -> dict[str, Any]:
        """Record a job and queue it; its training file is validated by the worker, as OpenAI does."""
        if not isinstance(request, dict):
            raise InvalidRequestError("the request body must be a JSON object")
        training_file, model = request.get("training_file"), request.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequestError("'model' must name the model to finetune")
        if not model.startswith("ft:") and not self.serves(model):
            raise InvalidRequestError(f"model {model!r} is not served here; finetune {self.served_name!r}")
        if not isinstance(training_file, str) or self.state.file(training_file) is None:
            raise InvalidRequestError(f"training_file {training_file!r} is not an uploaded file")
        job = self._new_job(request, model, training_file)
        self.state.save_job(job)
        with self._count_lock:
            self.jobs_created += 1
        return self._validate_and_queue(job["id"])

    def _validate_and_queue(self, job_id: str) -> dict[str, Any]:
        """Check the job's training file (cheap: JSON lines) and queue the job, or fail it naming the line."""
        job = self.state.update_job(job_id, status="validating_files")
        try:
            read_training_file(self.state.file_text(job["training_file"]))
        except TrainingFileError as error:
            message = f"training file {job['training_file']}: {error}"
            invalid = {"code": "invalid_training_file", "message": message, "param": "training_file"}
            return self.state.update_job(job_id, status="failed", finished_at=int(time.time()), error=invalid)
        job = self.state.update_job(job_id, status="queued", unless=TERMINAL)
        if job["status"] == "queued":
            self._queue.put(job_id)
        return job

    def cancel_job(self, job_id: str) -> Reply:
        """Cancel a job that has not finished; OpenAI answers 400 for one that has."""
        job = self.state.job(job_id)
        if job is None:
            return found_reply(None, f"no fine-tuning job {job_id}")
        if job["status"] not in TERMINAL:
            job = self.state.update_job(
                job_id, status="cancelled", finished_at=int(time.time()), unless=TERMINAL
            )
            if job["status"] == "cancelled":
                return HTTPStatus.OK, job
        raise InvalidRequestError(f"job {job_id} has already {job['status']}; only an unfinished job cancels")

    def _new_job(self, request: Mapping[str, Any], model: str, training_file: str) -> dict[str, Any]:
        parent = self._job_of_model(model)
        if model.startswith("ft:") and parent is None:
            raise InvalidRequestError(f"model {model!r} is not a fine-tuned model of this server")
        seed = request.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise InvalidRequestError("'seed' must be an integer")
        suffix = request.get("suffix")
        if suffix is not None and (not isinstance(suffix, str) or ":" in suffix):
            raise InvalidRequestError("'suffix' must be a string without ':'")
        return {
            "id": f"ftjob-{uuid.uuid4().hex[:24]}",
            "object": "fine_tuning.job",
            "created_at": int(time.time()),
            "finished_at": None,
            "model": model,
            "fine_tuned_model": None,
            "organization_id": "intro",
            "result_files": [],
            "status": "validating_files",
            "training_file": training_file,
            "validation_file": None,
            "hyperparameters": parse_hyperparameters(request.get("hyperparameters")).as_dict(),
            "seed": 0 if seed is None else seed,
            "suffix": suffix,
            "trained_tokens": None,
            "error": None,
            "integrations": [],
            "estimated_finish": None,
            # The root model's name and the job whose adapter this one trains on (fine-tuning a fine-tune).
            "base_model": parent["base_model"] if parent else model,
            "parent_job": parent["id"] if parent else None,
        }

    def _job_of_model(self, model: str) -> dict[str, Any] | None:
        if not model.startswith("ft:"):
            return None
        job = self.state.job(model.rsplit(":", 1)[-1])
        return job if job and job["fine_tuned_model"] == model and job["status"] == "succeeded" else None

    def _work(self) -> None:
        while (job_id := self._queue.get()) is not None:
            try:
                self._run_job(job_id)
            except Exception as error:  # a job's failure must never stop the worker
                self.state.update_job(
                    job_id,
                    status="failed",
                    finished_at=int(time.time()),
                    error=error_object("training_error", error),
                    unless=TERMINAL,
                )

    def _run_job(self, job_id: str) -> None:
        job = self.state.update_job(job_id, status="running", unless=TERMINAL)
        if job["status"] != "running":  # cancelled while it waited
            return
        examples = read_training_file(self.state.file_text(job["training_file"]))
        result = self._train(job, examples)
        name = f"ft:{job['base_model']}:{job['suffix'] or 'intro'}:{job_id}"
        job = self.state.update_job(
            job_id,
            status="succeeded",
            finished_at=int(time.time()),
            fine_tuned_model=name,
            trained_tokens=int(result.tokens),
            trained_steps=len(result.losses),
            train_loss=result.losses[-1] if result.losses else None,
            unless=TERMINAL,
        )
        if job["status"] == "cancelled":  # cancelled while it trained: its adapter must not be served
            shutil.rmtree(self.state.adapter_dir(job_id), ignore_errors=True)

    def _train(self, job: Mapping[str, Any], examples: Sequence[tuple[tuple[Message, ...], str]]) -> Any:
        from intro.runtime.training.adapters import train_adapter
        from intro.runtime.training.finetune import LoraHyperparameters

        hyper = job["hyperparameters"]
        hyperparameters = LoraHyperparameters(
            rank=self.rank,
            alpha=self.alpha,
            lr=hyper["learning_rate_multiplier"] * BASE_LEARNING_RATE,
            epochs=hyper["n_epochs"],
            batch_size=hyper["batch_size"],
            seed=job["seed"],
        )
        parent = self.state.adapter_dir(job["parent_job"]) if job["parent_job"] else None
        target = self.state.adapter_dir(job["id"])
        target.parent.mkdir(parents=True, exist_ok=True)
        # Trained into scratch and moved into place: a server stopped mid-training leaves no half adapter.
        scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-adapter-"))
        try:
            result = train_adapter(self.loaded, examples, hyperparameters, scratch, parent=parent)
            if target.exists():
                shutil.rmtree(target)
            os.replace(scratch, target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return result

    # ------------------------------------------------------------ fine-tuned models
    def runner_for(self, model: str) -> BatchingRunner | None:
        """The runner answering for fine-tuned model `model`, or None for a name that is not one ("ft:...")."""
        if not model.startswith("ft:"):
            return None
        job = self._job_of_model(model)
        if job is None:
            raise ModelNotFoundError(model)
        with self._runners_lock:
            if model not in self._runners:
                backend = self._adapter_backend(job["id"])
                self._runners[model] = BatchingRunner(
                    backend,
                    max_batch=self.max_batch,
                    batch_window=self.batch_window,
                    batches_in_flight=1,
                    turn_tokens=self.turn_tokens,
                    context_tokens=context_tokens_of(backend),
                )
            return self._runners[model]

    def models(self) -> list[dict[str, Any]]:
        """The fine-tuned models made here, as `/v1/models` lists them."""
        done = [job for job in self.state.jobs() if job["status"] == "succeeded" and job["fine_tuned_model"]]
        return [
            model_object(job["fine_tuned_model"], job["finished_at"] or 0, job["organization_id"])
            for job in done
        ]

    def _adapter_backend(self, job_id: str) -> Any:
        from intro.runtime.backends.local import LocalBackend

        # Loading an adapter rewrites the shared model's layers: never in the middle of a batch or training.
        with self.loaded.lock:
            return LocalBackend(self.loaded, adapter=str(self.state.adapter_dir(job_id)))

    def close(self) -> None:
        """Stop the worker (after the job it is training, if any) and the fine-tuned models' runners."""
        self._queue.put(None)
        with self._runners_lock:
            for runner in self._runners.values():
                runner.close()
            self._runners.clear()


def enable_finetuning(
    server: ChatServer, loaded: Any, state_dir: str | Path | None = None
) -> FineTuningService:
    """Give `server` the files and fine-tuning endpoints for `loaded` (the model its backend serves).

    Without `state_dir` the state lives in a fresh temporary directory, forgotten with the server."""
    directory = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="intro-serve-state-"))
    runner = server.runner
    service = FineTuningService(
        loaded,
        directory,
        max_batch=runner.max_batch,
        batch_window=runner.batch_window,
        turn_tokens=runner.turn_tokens,
    )
    if server.known_models_only:
        service.serves, service.served_name = server.serves, server.model_name
    server.finetuning = service
    return service
