"""`intro serve` as a drop-in for the official `openai` client: models, chat with logprobs, files, and a
whole fine-tuning job (list, events, checkpoints, cancel) against a real server over a tiny model."""

from __future__ import annotations

import json
import time

import openai
import pytest

from intro.runtime.backends.local import LocalBackend
from intro.runtime.backends.local_model import load_local_model
from intro.runtime.serve.finetune import enable_finetuning
from intro.runtime.serve.server import make_server
from tests.tinymodels import make_tiny_model

pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning")

KEY = "sk-local-test-key"
SERVED = "tiny-served"
EXAMPLES = [
    {"messages": [{"role": "user", "content": f"Say {word}"}, {"role": "assistant", "content": word}]}
    for word in ("yes", "no", "maybe", "red")
]
TRAINING = "".join(json.dumps(example) + "\n" for example in EXAMPLES).encode()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    loaded = load_local_model(str(make_tiny_model(tmp_path_factory.mktemp("tiny"))), device="cpu")
    server = make_server(LocalBackend(loaded), model_name=SERVED, known_models_only=True, api_key=KEY)
    enable_finetuning(server.start_in_thread(), loaded, tmp_path_factory.mktemp("state"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.url, api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def tuned(client):
    """A finished fine-tuning job on the served model, made through the client alone."""
    upload = client.files.create(file=("train.jsonl", TRAINING), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        training_file=upload.id, model=SERVED, hyperparameters={"n_epochs": 1, "batch_size": 2}, suffix="t"
    )
    return wait_until_finished(client, job.id)


def wait_until_finished(client: openai.OpenAI, job_id: str, seconds: float = 120):
    deadline = time.monotonic() + seconds
    while (job := client.fine_tuning.jobs.retrieve(job_id)).status not in (
        "succeeded",
        "failed",
        "cancelled",
    ):
        assert time.monotonic() < deadline, f"job {job_id} still {job.status}"
        time.sleep(0.1)
    return job


def test_models_lists_and_retrieves_the_served_name(client):
    assert [model.id for model in client.models.list()][:1] == [SERVED]
    assert client.models.retrieve(SERVED).id == SERVED
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-4o")
    assert missing.value.code == "model_not_found"


def test_chat_with_logprobs_and_an_unknown_model(client):
    reply = client.chat.completions.create(
        model=SERVED,
        messages=[{"role": "user", "content": "Is the sky blue?"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    assert reply.model == SERVED and reply.usage.completion_tokens == len(reply.choices[0].logprobs.content)
    assert all(len(entry.top_logprobs) == 3 for entry in reply.choices[0].logprobs.content)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.code == "model_not_found"


def test_a_wrong_key_is_refused(served):
    wrong = openai.OpenAI(base_url=served.url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


def test_files_list_retrieve_and_content(client):
    upload = client.files.create(file=("more.jsonl", TRAINING), purpose="fine-tune")
    assert client.files.retrieve(upload.id).bytes == len(TRAINING)
    assert upload.id in [file.id for file in client.files.list()]
    assert client.files.content(upload.id).read() == TRAINING


def test_a_finished_job_is_listed_with_its_events_checkpoint_and_model(client, tuned):
    assert tuned.status == "succeeded" and tuned.fine_tuned_model.startswith(f"ft:{SERVED}:t:")
    assert tuned.id in [job.id for job in client.fine_tuning.jobs.list(limit=10)]
    messages = [event.message for event in client.fine_tuning.jobs.list_events(tuned.id)]
    assert messages[0] == "The job has successfully completed"  # newest first, as OpenAI lists them
    assert messages[-1] == "Created fine-tuning job" and "Fine-tuning job started" in messages
    (checkpoint,) = client.fine_tuning.jobs.checkpoints.list(tuned.id)
    assert checkpoint.fine_tuned_model_checkpoint == tuned.fine_tuned_model and checkpoint.step_number == 2
    assert tuned.fine_tuned_model in [model.id for model in client.models.list()]
    assert client.models.retrieve(tuned.fine_tuned_model).id == tuned.fine_tuned_model
    reply = client.chat.completions.create(
        model=tuned.fine_tuned_model, messages=[{"role": "user", "content": "Say yes"}], max_tokens=3
    )
    assert reply.model == tuned.fine_tuned_model and reply.choices[0].message.content is not None


def test_a_cancelled_job_stays_cancelled_and_makes_no_model(client, tuned):
    upload = client.files.create(file=("cancel.jsonl", TRAINING), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(training_file=upload.id, model=tuned.fine_tuned_model)
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(job.id)
    # The worker trains one job at a time: once a later job is done, the cancelled one was passed over.
    later = client.fine_tuning.jobs.create(training_file=upload.id, model=SERVED)
    assert wait_until_finished(client, later.id).status == "succeeded"
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "cancelled" and job.fine_tuned_model is None
    assert "The job was cancelled" in [event.message for event in client.fine_tuning.jobs.list_events(job.id)]


def test_a_job_for_a_model_not_served_here_is_refused(client):
    upload = client.files.create(file=("x.jsonl", TRAINING), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.create(training_file=upload.id, model="gpt-4o-mini")
