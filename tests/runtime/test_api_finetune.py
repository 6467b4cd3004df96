"""Finetuning an API model end to end: a study whose model is `litellm "openai/tiny"` served by `intro serve`
(`make_server` over a tiny random model, with the files and fine-tuning endpoints) is run through the real CLI.

The finetune step uploads the training examples with litellm, creates a job on the server, which trains LoRA
on the served weights, and the fine-tuned model (`openai/ft:tiny:...`) then answers hypothetical questions
through the same server (stdlib `li.predict_property`). Also: a second run trains and calls nothing; a run
killed after creating its job resumes that job; a training file the server rejects fails the run with the
server's message; the API key never reaches a file.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import xarray as xr

from intro.cli import main
from intro.compiler import compile_spec
from intro.compiler.step_params import Hparams
from intro.runtime.backends.local import LocalBackend
from intro.runtime.backends.local_model import load_local_model
from intro.runtime.serve.finetune import BASE_LEARNING_RATE, FineTuningService, enable_finetuning
from intro.runtime.serve.finetune_protocol import (
    FormPart,
    TrainingFileError,
    parse_hyperparameters,
    read_training_file,
)
from intro.runtime.serve.protocol import InvalidRequestError
from intro.runtime.serve.server import make_server
from intro.runtime.store.cache import Cache
from intro.runtime.training.api_finetune import (
    JOB_FILE,
    JobRecord,
    job_hyperparameters,
    openai_training_jsonl,
    without_provider,
)
from intro.runtime.training.training import TrainingExample, write_examples
from tests.tinymodels import make_tiny_model

DATA = Path(__file__).resolve().parents[1] / "fixtures" / "studies" / "looking_inward_finetune_tiny" / "data"
KEY_ENV = "INTRO_TEST_FINETUNE_KEY"
PLANTED_KEY = "sk-planted-0123456789abcdef-never-write-me"
SPEC = "api.intro"
STUDY = "api_finetune"

# Serving a fine-tuned model loads a second adapter next to the first; peft warns about that on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning")

SPEC_TEMPLATE = """
use stdlib.looking_inward as li
model a = local "tiny_a"
model api = litellm "openai/tiny" { api_base: "{url}", api_key_env: "{key_env}", finetune: true }
task animals { data: "data/animals.jsonl" prompt: "What are the next 3 animals after {{ sequence }}?" }
task colours { data: "data/colours.jsonl" prompt: "What are the next 3 colours after {{ sequence }}?" }
split s { train: [animals]  test: [colours]  items: 4  seed: 1 }
sampling short { temperature: 0  max_tokens: 6 }
study api_finetune {
  let tuned = finetune(api, li.hypothetical_examples(a, s.train, [li.first_character], short),
                       lr: 0.02, epochs: 3, batch: 4, seed: 1)
  measure m = li.predict_property(tuned, a, s.test, li.first_character, object: short, hypothetical: short)
}
"""


@pytest.fixture(scope="module", autouse=True)
def environment(tmp_path_factory):
    """A private intro cache directory, and the API key in the variable the spec names."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INTRO_CACHE_DIR", str(tmp_path_factory.mktemp("intro-cache")))
        patch.setenv(KEY_ENV, PLANTED_KEY)
        yield


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`intro serve` over a tiny model, with its fine-tuning state in a directory the tests can restart on."""
    loaded = load_local_model(str(make_tiny_model(tmp_path_factory.mktemp("served") / "tiny", seed=1)))
    server = make_server(LocalBackend(loaded)).start_in_thread()
    state = tmp_path_factory.mktemp("serve-state")
    service = enable_finetuning(server, loaded, state)
    yield {"server": server, "service": service, "loaded": loaded, "state": state}
    server.close()


@pytest.fixture(scope="module")
def project(tmp_path_factory, served):
    root = tmp_path_factory.mktemp("api-finetune")
    shutil.copytree(DATA, root / "data")
    make_tiny_model(root / "tiny_a", "qwen2", seed=0)
    spec = SPEC_TEMPLATE.replace("{url}", served["server"].url).replace("{key_env}", KEY_ENV)
    (root / SPEC).write_text(spec)
    return root


def intro(root: Path, cache: str, *extra: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(root), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["run", SPEC, "--runs", "runs", "--cache", cache, *extra])
    return code, out.getvalue(), err.getvalue()


def finetune_step(root: Path):
    plan = compile_spec(root / SPEC)[0]
    return plan, next(s for s in plan.steps if s.kind == "finetune")


@pytest.fixture(scope="module")
def study(project, served):
    service = served["service"]
    created_before = service.jobs_created
    first = intro(project, "cache")
    created_by_first = service.jobs_created - created_before
    second = intro(project, "cache")
    plan, step = finetune_step(project)
    return {
        "first": first,
        "second": second,
        "created_by_first": created_by_first,
        "created_after_second": service.jobs_created - created_before,
        "plan": plan,
        "step": step,
        "cache": Cache(project / "cache"),
    }


# ---------------------------------------------------------------------------------------------------
# Through the CLI
# ---------------------------------------------------------------------------------------------------


def test_the_first_run_finetunes_through_the_server_and_the_tuned_model_answers(study, served, project):
    code, out, err = study["first"]
    assert code == 0, err
    assert ", 1 trained," in out and study["created_by_first"] == 1
    info = study["cache"].artifact_info(study["step"].hash)
    assert info["model_id"].startswith("openai/ft:tiny:intro-") and info["model_id"].endswith(info["job_id"])
    assert info["trained_tokens"] > 0 and info["examples"] > 0 and info["cost"] is None
    job = served["service"].state.job(info["job_id"])
    assert job["status"] == "succeeded" and job["seed"] == 1
    # The fine-tuned model answered the hypothetical questions: its runner on the server saw batches.
    tuned = without_provider(info["model_id"], "openai")
    assert served["service"].runner_for(tuned).batch_sizes
    cube = xr.open_zarr(project / "runs" / STUDY / "cube.zarr", group="m.predictions")
    answers = [str(answer) for answer in cube["text"].values.ravel()]
    assert len(answers) == 4 and any(answers)


def test_lr_reaches_the_server_as_a_learning_rate_multiplier_and_trains_at_lr(study, served):
    info = study["cache"].artifact_info(study["step"].hash)
    job = served["service"].state.job(info["job_id"])
    assert job["hyperparameters"] == {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 200.0}
    record = json.loads((served["service"].state.adapter_dir(job["id"]) / "training.json").read_text())
    assert record["hyperparameters"]["lr"] == pytest.approx(0.02)
    assert record["hyperparameters"]["epochs"] == 3 and record["hyperparameters"]["batch_size"] == 4


def test_a_second_run_trains_nothing_and_calls_nothing(study):
    code, out, err = study["second"]
    assert code == 0, err
    assert f"{STUDY}: 0 model calls," in out and ", 0 trained," in out
    assert study["created_after_second"] == 1


def test_a_run_killed_after_creating_its_job_resumes_that_job(study, project, served):
    service, loaded = served["service"], served["loaded"]
    cache = project / "cache-killed"
    created_before = service.jobs_created
    # Holding the served model's lock keeps the job from training, so the run is surely killed mid-job.
    loaded.lock.acquire()
    try:
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from intro.cli import main; sys.exit(main(sys.argv[1:]))",
                "run",
                SPEC,
                "--runs",
                "runs-killed",
                "--cache",
                str(cache),
                "--quiet",
            ],
            cwd=project,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        job_file = _wait_for_job_file(cache, child)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        loaded.lock.release()
    record = JobRecord.load(job_file.parent)
    assert service.jobs_created - created_before == 1
    assert not (job_file.parent / "DONE").exists()
    code, out, err = intro(project, str(cache), "--runs", "runs-killed")
    assert code == 0, err
    assert f"resuming fine-tuning job {record.job_id}" in err
    assert service.jobs_created - created_before == 1
    assert Cache(cache).artifact_info(study["step"].hash)["job_id"] == record.job_id


def _wait_for_job_file(cache: Path, child: subprocess.Popen, timeout: float = 180.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list((cache / "artifacts").glob(f"*/{JOB_FILE}")) if (cache / "artifacts").is_dir() else []
        if found:
            return found[0]
        if child.poll() is not None:
            raise AssertionError(f"the run ended before creating a job: {child.stderr.read().decode()}")
        time.sleep(0.1)
    child.kill()
    raise AssertionError("no job.json appeared")


def test_a_training_file_the_server_rejects_fails_the_run_with_its_message(study, project, served):
    plan, step = study["plan"], study["step"]
    cache = Cache(project / "cache-malformed")
    data = plan.step(step.params.data)
    good = TrainingExample("animals", "a0", "first_character", (("user", "What comes next?"),), "c")
    empty_reply = TrainingExample("animals", "a1", "first_character", (("user", "And then?"),), "")
    write_examples(cache.artifact_dir(data.hash), [good, empty_reply])
    cache.mark_artifact_done(data.hash, {"kind": data.kind, "examples": 2, "rows": 2})
    code, _, err = intro(project, str(cache.root), "--runs", "runs-malformed")
    assert code == 1
    assert "fine-tuning job ftjob-" in err and " failed: training file file-" in err
    # The upload is shuffled with the step's seed (1): the empty reply is uploaded first.
    assert "line 1: the last message must be a non-empty assistant reply" in err
    assert PLANTED_KEY not in err
    assert not (cache.artifact_dir(step.hash) / JOB_FILE).exists()  # the next run starts a new job
    assert not cache.artifact_done(step.hash)


def test_a_missing_key_fails_before_anything_is_uploaded(study, project, served, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    created_before = served["service"].jobs_created
    code, _, err = intro(project, "cache-no-key", "--runs", "runs-no-key")
    assert code == 1
    assert f"environment variable {KEY_ENV} is not set" in err
    assert served["service"].jobs_created == created_before


def test_the_api_key_is_never_written(study, project, served):
    """Checked after every run above (finished, killed, failed), their logs and caches included."""
    assert study["first"][0] == 0
    written = [p for root in (project, served["state"]) for p in root.rglob("*") if p.is_file()]
    assert any("cache" in p.parts and p.name == JOB_FILE for p in written)
    leaks = [p for p in written if PLANTED_KEY.encode() in p.read_bytes()]
    assert leaks == []


# ---------------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------------


def http(url: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_restarted_server_still_knows_finished_jobs_and_serves_their_models(study, served):
    info = study["cache"].artifact_info(study["step"].hash)
    tuned = without_provider(info["model_id"], "openai")
    restarted = make_server(LocalBackend(served["loaded"])).start_in_thread()
    try:
        enable_finetuning(restarted, served["loaded"], served["state"])
        status, job = http(f"{restarted.url}/fine_tuning/jobs/{info['job_id']}")
        assert status == 200 and job["status"] == "succeeded" and job["fine_tuned_model"] == tuned
        status, file = http(f"{restarted.url}/files/{job['training_file']}")
        assert status == 200 and file["purpose"] == "fine-tune" and file["bytes"] > 0
        chat = {"model": tuned, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 3}
        status, reply = http(f"{restarted.url}/chat/completions", chat)
        assert status == 200 and reply["model"] == tuned
        status, reply = http(f"{restarted.url}/chat/completions", {**chat, "model": "ft:tiny:x:ftjob-none"})
        assert status == 404 and reply["error"]["code"] == "model_not_found"
    finally:
        restarted.close()


def test_finetuning_a_fine_tuned_model_stacks_on_its_adapter(study, served):
    info = study["cache"].artifact_info(study["step"].hash)
    tuned = without_provider(info["model_id"], "openai")
    service: FineTuningService = served["service"]
    example = TrainingExample("t", "i", None, (("user", "Say yes."),), "Yes")
    content = FormPart(openai_training_jsonl([example]).encode(), "more.jsonl")
    upload = service.upload({"file": content, "purpose": FormPart(b"fine-tune", None)})
    job = service.create_job({"model": tuned, "training_file": upload["id"], "seed": 2})
    finished = _wait_for_status(service, job["id"])
    assert finished["status"] == "succeeded", finished["error"]
    assert (
        finished["fine_tuned_model"].startswith("ft:tiny:intro:") and finished["parent_job"] == info["job_id"]
    )
    config = json.loads((service.state.adapter_dir(job["id"]) / "adapter_config.json").read_text())
    assert config["r"] == 2 * service.rank  # the parent's adapter and the new one, stacked


def _wait_for_status(service: FineTuningService, job_id: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = service.state.job(job_id)
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


def test_training_files_are_read_line_by_line_with_errors_naming_the_line():
    example = TrainingExample("t", "i", "p", (("system", "Be brief."), ("user", "Hi")), "Hello")
    [(messages, reply)] = read_training_file(openai_training_jsonl([example]))
    assert [(m.role, m.content) for m in messages] == [("system", "Be brief."), ("user", "Hi")]
    assert reply == "Hello"
    good = openai_training_jsonl([example])
    cases = {
        good + "{not json\n": "line 2: not valid JSON",
        good
        + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "x"}] * 2}): "line 3: the last message",
        json.dumps({"prompt": "x"}): 'line 1: needs "messages"',
        json.dumps({"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]}): (
            "line 1: messages[0] needs a role"
        ),
        "\n\n": "no examples",
    }
    for text, message in cases.items():
        with pytest.raises(TrainingFileError, match=message.replace("[", r"\[").replace("]", r"\]")):
            read_training_file(text)


def test_hyperparameters_map_lr_to_a_multiplier_and_back():
    mapped = job_hyperparameters(Hparams(rank=8, alpha=16, lr=2e-4, epochs=2, batch=20, seed=0))
    assert mapped == {"n_epochs": 2, "batch_size": 20, "learning_rate_multiplier": 2.0}
    parsed = parse_hyperparameters(mapped)
    assert parsed.learning_rate_multiplier * BASE_LEARNING_RATE == pytest.approx(2e-4)
    assert parse_hyperparameters({"n_epochs": "auto"}).as_dict() == {
        "n_epochs": 1,
        "batch_size": 8,
        "learning_rate_multiplier": 1.0,
    }
    for bad in ({"n_epochs": 0}, {"batch_size": 1.5}, {"learning_rate_multiplier": -1}, {"n_epochs": True}):
        with pytest.raises(InvalidRequestError):
            parse_hyperparameters(bad)
