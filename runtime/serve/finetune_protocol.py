"""The request and reply shapes of OpenAI's files and fine-tuning endpoints, as `intro serve` reads and writes them.

Requests: multipart uploads (`parse_form`), job hyperparameters with "auto" resolved to this server's
defaults (`parse_hyperparameters`), and training files in OpenAI's chat JSONL (`read_training_file`, whose
errors name the line). Replies: list pages as OpenAI pages them (`after`, `limit`), a job's checkpoint,
404s and job errors. Everything a client sends is refused here with an `InvalidRequestError` before the
service (finetune.py) acts on it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from email.parser import BytesParser
from email.policy import HTTP
from http import HTTPStatus
from typing import Any, BinaryIO

from attrs import frozen

from intro.runtime.backends.requests import Message
from intro.runtime.serve.protocol import (
    InvalidRequestError,
    RequestHeaders,
    error_body,
    request_body_length,
)

DEFAULT_EPOCHS = 1
DEFAULT_BATCH_SIZE = 8

# A JSON body, or a file's bytes.
Reply = tuple[HTTPStatus, dict[str, Any] | bytes]
DEFAULT_PAGE = 20


class TrainingFileError(ValueError):
    """A training file line that is not a chat example; the message names the line."""


@frozen
class FormPart:
    value: bytes
    filename: str | None


def parse_form(content_type: str, body: bytes) -> dict[str, FormPart]:
    """The fields of a multipart/form-data body, by name."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise InvalidRequestError("uploads must be multipart/form-data")
    # The email package reads MIME multiparts; a form body is one once its Content-Type is put in front.
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise InvalidRequestError("the multipart body could not be read")
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            payload = part.get_payload(decode=True)  # a leaf part's bytes (None when it has no body)
            fields[str(name)] = FormPart(payload if isinstance(payload, bytes) else b"", part.get_filename())
    return fields


@frozen
class JobHyperparameters:
    """OpenAI's fine-tuning hyperparameters with "auto" resolved to this server's defaults."""

    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "n_epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "learning_rate_multiplier": self.learning_rate_multiplier,
        }


def parse_hyperparameters(raw: Any) -> JobHyperparameters:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidRequestError("'hyperparameters' must be an object")
    return JobHyperparameters(
        n_epochs=int(_positive(raw, "n_epochs", DEFAULT_EPOCHS, integer=True)),
        batch_size=int(_positive(raw, "batch_size", DEFAULT_BATCH_SIZE, integer=True)),
        learning_rate_multiplier=float(_positive(raw, "learning_rate_multiplier", 1.0, integer=False)),
    )


def _positive(raw: Mapping[str, Any], name: str, default: float, *, integer: bool) -> float:
    value = raw.get(name, "auto")
    if value == "auto" or value is None:
        return default
    kinds = int if integer else int | float
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        kind = "integer" if integer else "number"
        raise InvalidRequestError(f'hyperparameters.{name} must be a positive {kind} or "auto"')
    return value


def read_training_file(text: str) -> list[tuple[tuple[Message, ...], str]]:
    """Chat examples (conversation, assistant reply) from OpenAI fine-tuning JSONL.

    Each non-empty line is {"messages": [...]} whose last message is the assistant reply to learn.
    """
    examples = [_example(line, number) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not examples:
        raise TrainingFileError("the training file holds no examples")
    return examples


def _example(line: str, number: int) -> tuple[tuple[Message, ...], str]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise TrainingFileError(f"line {number}: not valid JSON ({error.msg})") from None
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list) or len(messages) < 2:
        raise TrainingFileError(f'line {number}: needs "messages", a list of at least two messages')
    chat = tuple(_message(item, number, index) for index, item in enumerate(messages))
    if chat[-1].role != "assistant" or not chat[-1].content.strip():
        raise TrainingFileError(f"line {number}: the last message must be a non-empty assistant reply")
    return chat[:-1], chat[-1].content


def _message(item: Any, number: int, index: int) -> Message:
    if not isinstance(item, dict) or item.get("role") not in ("system", "user", "assistant"):
        raise TrainingFileError(f"line {number}: messages[{index}] needs a role of system, user or assistant")
    if not isinstance(item.get("content"), str):
        raise TrainingFileError(f"line {number}: messages[{index}].content must be a string")
    return Message(item["role"], item["content"])


def read_body(headers: RequestHeaders, body: BinaryIO, limit: int) -> bytes:
    """A request's body, once its declared length passes `limit` (else `InvalidRequestError`)."""
    return body.read(request_body_length(headers, limit))


def list_page(items: Sequence[dict[str, Any]], query: Mapping[str, list[str]]) -> dict[str, Any]:
    """An OpenAI list page: the items after the one whose id is `after`, at most `limit` of them."""
    after = query.get("after", [None])[0]
    ids = [item["id"] for item in items]
    start = ids.index(after) + 1 if after in ids else 0
    limit = _limit(query.get("limit", [str(DEFAULT_PAGE)])[0])
    page = list(items[start : start + limit])
    return {"object": "list", "data": page, "has_more": start + limit < len(items)}


def _limit(raw: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= 10_000:
        raise InvalidRequestError(f"'limit' must be an integer between 1 and 10000, not {raw!r}")
    return int(raw)


def job_checkpoints(job: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A succeeded job's one checkpoint: its final adapter, which is its fine-tuned model."""
    if job["status"] != "succeeded":
        return []
    steps = job.get("trained_steps") or 0
    checkpoint = {
        "object": "fine_tuning.job.checkpoint",
        "id": f"ftckpt-{job['id'].removeprefix('ftjob-')}",
        "created_at": job["finished_at"],
        "fine_tuned_model_checkpoint": job["fine_tuned_model"],
        "fine_tuning_job_id": job["id"],
        "metrics": {"step": steps, "train_loss": job.get("train_loss")},
        "step_number": steps,
    }
    return [checkpoint]


def json_body(raw: bytes) -> Any:
    """A request body read as JSON; anything else is an `InvalidRequestError`."""
    try:
        return json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidRequestError("the request body is not valid JSON") from None


def found_reply(record: dict[str, Any] | None, missing: str) -> Reply:
    """200 with `record`, or OpenAI's 404 saying `missing` when there is none."""
    if record is None:
        return HTTPStatus.NOT_FOUND, error_body(missing, "invalid_request_error")
    return HTTPStatus.OK, record


def error_object(code: str, error: Exception) -> dict[str, Any]:
    """A failed job's `error` field, as OpenAI reports one."""
    return {"code": code, "message": f"{type(error).__name__}: {error}", "param": None}
