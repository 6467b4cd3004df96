"""Where the fine-tuning endpoints keep their files and jobs: one state directory, written atomically.

`files/<id>.jsonl` with `files/<id>.json` for each upload, `jobs/<id>.json` and `jobs/<id>.events.jsonl` for
each job, and each finished job's adapter in `jobs/<id>/adapter`. Every write replaces a whole file (or
appends one line), so a server stopped at any moment leaves state that a restarted one reads: it answers
for finished jobs and takes up again the jobs it had not finished.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from intro.runtime.serve.finetune_protocol import TrainingFileError
from intro.runtime.store.cache import atomic_write

TERMINAL = ("succeeded", "failed", "cancelled")
_ID = re.compile(r"^[A-Za-z0-9_-]+$")
# What each status a job enters says in its events, as OpenAI's events say it.
STATUS_EVENTS = {
    "validating_files": "Validating training file: {training_file}",
    "queued": "Files validated, moving job to queued state",
    "running": "Fine-tuning job started",
    "succeeded": "The job has successfully completed",
    "cancelled": "The job was cancelled",
}


class FineTuningState:
    """Files and jobs under one directory: `files/<id>.jsonl` with `files/<id>.json`, `jobs/<id>.json`,
    and each finished job's adapter in `jobs/<id>/adapter`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        (self.root / "files").mkdir(parents=True, exist_ok=True)
        (self.root / "jobs").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def save_file(self, meta: Mapping[str, Any], content: bytes) -> None:
        data = self.root / "files" / f"{meta['id']}.jsonl"
        scratch = data.with_name(f".tmp-{meta['id']}")
        scratch.write_bytes(content)
        os.replace(scratch, data)
        atomic_write(self.root / "files" / f"{meta['id']}.json", json.dumps(meta))

    def file(self, file_id: str) -> dict[str, Any] | None:
        return _read_json(self.root / "files" / f"{file_id}.json") if _ID.match(file_id) else None

    def file_text(self, file_id: str) -> str:
        try:
            return (self.root / "files" / f"{file_id}.jsonl").read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise TrainingFileError("the file is not UTF-8 text") from None

    def files(self) -> list[dict[str, Any]]:
        found = (_read_json(path) for path in (self.root / "files").glob("file-*.json"))
        return sorted((meta for meta in found if meta), key=lambda meta: (meta["created_at"], meta["id"]))

    def file_bytes(self, file_id: str) -> bytes | None:
        if self.file(file_id) is None:
            return None
        return (self.root / "files" / f"{file_id}.jsonl").read_bytes()

    def save_job(self, job: Mapping[str, Any]) -> None:
        with self._lock:
            atomic_write(self.root / "jobs" / f"{job['id']}.json", json.dumps(job))
            self._add_event(job["id"], "Created fine-tuning job", "info")

    def update_job(self, job_id: str, *, unless: tuple[str, ...] = (), **changes: Any) -> dict[str, Any]:
        """Apply `changes` to a job (and log its new status as an event), unless its status is in
        `unless`; returns the job as it then is."""
        with self._lock:
            path = self.root / "jobs" / f"{job_id}.json"
            job = json.loads(path.read_text(encoding="utf-8"))
            if job["status"] in unless:
                return job  # type: ignore[no-any-return]
            job = {**job, **changes}
            atomic_write(path, json.dumps(job))
            if "status" in changes:
                self._status_event(job)
        return job  # type: ignore[no-any-return]

    def _status_event(self, job: Mapping[str, Any]) -> None:
        if job["status"] == "failed":
            error = job.get("error") or {}
            self._add_event(job["id"], f"The job failed: {error.get('message', 'unknown error')}", "error")
        elif job["status"] in STATUS_EVENTS:
            self._add_event(job["id"], STATUS_EVENTS[job["status"]].format(**job), "info")

    def _add_event(self, job_id: str, message: str, level: str) -> None:
        event = {
            "object": "fine_tuning.job.event",
            "id": f"ftevent-{uuid.uuid4().hex[:24]}",
            "created_at": int(time.time()),
            "level": level,
            "message": message,
            "data": {},
            "type": "message",
        }
        # Appended line by line: a crash loses at most the line it was writing.
        with (self.root / "jobs" / f"{job_id}.events.jsonl").open("a", encoding="utf-8") as events:
            events.write(json.dumps(event) + "\n")

    def events(self, job_id: str) -> list[dict[str, Any]]:
        """A job's events, oldest first (a torn last line, from a crash, is skipped)."""
        path = self.root / "jobs" / f"{job_id}.events.jsonl"
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        return [event for event in map(_json_line, lines) if event is not None]

    def job(self, job_id: str) -> dict[str, Any] | None:
        return _read_json(self.root / "jobs" / f"{job_id}.json") if _ID.match(job_id) else None

    def jobs(self) -> list[dict[str, Any]]:
        found = (_read_json(path) for path in (self.root / "jobs").glob("*.json"))
        return sorted((job for job in found if job), key=lambda job: (job["created_at"], job["id"]))

    def adapter_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id / "adapter"


def _json_line(line: str) -> dict[str, Any] | None:
    try:
        return json.loads(line)  # type: ignore[no-any-return]
    except ValueError:
        return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]
    except (FileNotFoundError, ValueError):
        return None
