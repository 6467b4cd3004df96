"""Fine-tuning an API model with the paper's settings (issue 11, item 3), against `intro serve`.

`finetune(..., lr_multiplier: X)` sends X to the provider as its own `learning_rate_multiplier` (OpenAI
scales a base rate of its own choosing, so the paper's multiplier of 2 is no `lr`); the uploaded rows are
shuffled with the step's seed, the same order on every run, and the shuffle is part of the step's identity.
Each litellm fine-tuning route intro offers (`openai`, `azure`) submits a real job to `intro serve` over a
tiny model; the slow tests run a study on the stdlib's Looking Inward functions through the real CLI, the
job trained (LoRA on CPU) and the fine-tuned model answering, on each route.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import attrs
import pytest

from intro.cli import main
from intro.compiler import compile_spec
from intro.runtime.backends.litellm_backend import stop_litellm_background_work
from intro.runtime.backends.local import LocalBackend
from intro.runtime.backends.local_model import load_local_model
from intro.runtime.serve.finetune import enable_finetuning
from intro.runtime.serve.server import make_server
from intro.runtime.store.cache import Cache
from intro.runtime.training.api_finetune import ApiFinetune, openai_training_jsonl, submit_job, upload_order
from intro.runtime.training.training import TrainingExample, lineage, read_examples
from tests.tinymodels import make_tiny_model

DATA = Path(__file__).resolve().parents[1] / "fixtures" / "studies" / "looking_inward_finetune_tiny" / "data"
KEY_ENV = "INTRO_TEST_FIDELITY_KEY"
SPEC = "paper.intro"

pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning")

SPEC_TEMPLATE = """
use stdlib.looking_inward as li
model a = local "tiny_a"
model api = litellm "{route}/tiny" { api_base: "{url}", api_key_env: "{key_env}", finetune: true }
task animals { data: "data/animals.jsonl" prompt: "What are the next 3 animals after {{ sequence }}?" }
task colours { data: "data/colours.jsonl" prompt: "What are the next 3 colours after {{ sequence }}?" }
split s { train: [animals]  test: [colours]  items: 6  seed: 1 }
sampling short { temperature: 0  max_tokens: 6 }
study paper {
  let tuned = finetune(api, li.hypothetical_examples(a, s.train, [li.first_character, li.first_word], short),
                       {rate}, epochs: 1, batch: 4, seed: 3)
  measure m = li.predict_property(tuned, a, s.test, li.first_character, object: short, hypothetical: short)
}
"""


@pytest.fixture(scope="module", autouse=True)
def environment(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INTRO_CACHE_DIR", str(tmp_path_factory.mktemp("intro-cache")))
        patch.setenv(KEY_ENV, "sk-fidelity-test-key")
        patch.setenv("AZURE_API_VERSION", "2024-10-21")  # Azure OpenAI's clients send it on every call
        yield


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    loaded = load_local_model(str(make_tiny_model(tmp_path_factory.mktemp("served") / "tiny", seed=1)))
    server = make_server(LocalBackend(loaded)).start_in_thread()
    service = enable_finetuning(server, loaded, tmp_path_factory.mktemp("serve-state"))
    yield {"server": server, "service": service}
    server.close()


def base_url(served, route: str) -> str:
    """Where a route's client is pointed: OpenAI's base URL ends in /v1, Azure's is the bare endpoint."""
    url = served["server"].url
    return url.removesuffix("/v1") if route == "azure" else url


def write_project(root: Path, url: str, rate: str = "lr_multiplier: 2", route: str = "openai") -> Path:
    shutil.copytree(DATA, root / "data", dirs_exist_ok=True)
    if not (root / "tiny_a").exists():
        make_tiny_model(root / "tiny_a", "qwen2", seed=0)
    spec = SPEC_TEMPLATE.replace("{url}", url).replace("{key_env}", KEY_ENV)
    (root / SPEC).write_text(spec.replace("{rate}", rate).replace("{route}", route))
    return root / SPEC


def intro(root: Path, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(root), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------- each route, one job submitted
EXAMPLES = [
    TrainingExample("animals", f"animals/{k}", "first_word", (("user", f"Question {k}?"),), f"answer {k}")
    for k in range(10)
]


@pytest.mark.parametrize("route", ["openai", "azure"])
def test_each_route_submits_the_multiplier_and_the_shuffled_rows_to_intro_serve(tmp_path, served, route):
    plan = compile_spec(write_project(tmp_path, base_url(served, route), route=route))[0]
    step = next(s for s in plan.steps if s.kind == "finetune")
    run = ApiFinetune(plan, Cache(tmp_path / "cache"), step, lineage(plan, step.params.base), lambda _: None)
    client = run.client()
    client.check_provider()

    async def submit():
        try:
            return await submit_job(run, client, EXAMPLES)
        finally:
            await stop_litellm_background_work()

    record = asyncio.run(submit())
    job = served["service"].state.job(record.job_id)
    assert job["model"] == "tiny" and job["seed"] == 3
    assert job["hyperparameters"] == {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 2.0}
    uploaded = served["service"].state.file_text(job["training_file"]).splitlines()
    in_data_order = openai_training_jsonl(EXAMPLES).splitlines()
    assert sorted(uploaded) == sorted(in_data_order) and uploaded != in_data_order
    hparams = step.params.hparams
    assert uploaded == openai_training_jsonl(upload_order(EXAMPLES, hparams)).splitlines()
    # the same seed, the same order on every run; another seed, another order
    assert upload_order(EXAMPLES, hparams) == upload_order(EXAMPLES, hparams)
    assert upload_order(EXAMPLES, attrs.evolve(hparams, seed=4)) != upload_order(EXAMPLES, hparams)


def test_azure_paths_and_its_api_key_header_reach_intro_serve(served):
    guarded = make_server(served["server"].runner.backend, api_key="sk-azure").start_in_thread()
    try:
        url = f"{guarded.url.removesuffix('/v1')}/openai/deployments/tiny/chat/completions?api-version=2024-10-21"
        body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        assert post(url, body, {"api-key": "sk-azure"})[0] == 200
        assert post(url, body, {"api-key": "wrong"})[0] == 401
        assert post(url, body, {})[0] == 401
    finally:
        guarded.close()


def post(url: str, body: dict, headers: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


# ---------------------------------------------------------------- a study through the CLI, trained (slow)
@pytest.fixture(scope="module", params=["openai", "azure"])
def trained(request, tmp_path_factory, served):
    route = request.param
    root = tmp_path_factory.mktemp(f"paper-{route}")
    write_project(root, base_url(served, route), route=route)
    code, out, err = intro(root, "run", SPEC, "--runs", "runs", "--cache", "cache", "--quiet")
    assert code == 0, out + err
    plan = compile_spec(root / SPEC)[0]
    step = next(s for s in plan.steps if s.kind == "finetune")
    cache = Cache(root / "cache")
    info = cache.artifact_info(step.hash)
    job = served["service"].state.job(info["job_id"])
    return {"route": route, "plan": plan, "step": step, "cache": cache, "job": job, "info": info}


@pytest.mark.slow
def test_the_job_trains_at_the_multiplier_and_the_tuned_model_answers(trained, served):
    job = trained["job"]
    assert job["status"] == "succeeded"
    assert job["hyperparameters"]["learning_rate_multiplier"] == 2.0  # not 2 / 1e-4, not 1e-4 / 1e-4
    adapter = served["service"].state.adapter_dir(job["id"])
    record = json.loads((adapter / "training.json").read_text())
    assert record["hyperparameters"]["lr"] == pytest.approx(2e-4)  # intro serve's base rate 1e-4, times 2
    assert trained["info"]["model_id"] == f"{trained['route']}/{job['fine_tuned_model']}"
    # the tuned model answered the measure, through the route's own chat path
    assert served["service"].runner_for(job["fine_tuned_model"]).batch_sizes


@pytest.mark.slow
def test_the_upload_is_the_data_steps_examples_shuffled_with_the_seed(trained, served):
    step, plan, cache = trained["step"], trained["plan"], trained["cache"]
    examples = read_examples(cache.artifact_dir(plan.step(step.params.data).hash))
    uploaded = served["service"].state.file_text(trained["job"]["training_file"]).splitlines()
    in_data_order = openai_training_jsonl(examples).splitlines()
    assert len(uploaded) == len(examples) == 12 and sorted(uploaded) == sorted(in_data_order)
    assert uploaded != in_data_order  # grouped by item and property in the data; not in the upload
    assert uploaded == openai_training_jsonl(upload_order(examples, step.params.hparams)).splitlines()


# ---------------------------------------------------------------- the compiler
def test_the_multiplier_and_the_shuffle_are_part_of_the_steps_identity(tmp_path, served):
    hashes = {}
    for rate in ("lr_multiplier: 2", "lr_multiplier: 1", "lr: 2e-4"):
        plan = compile_spec(write_project(tmp_path, served["server"].url, rate))[0]
        step = next(s for s in plan.steps if s.kind == "finetune")
        hashes[rate] = step.hash
        assert step.params.hparams.shuffle is True
    assert len(set(hashes.values())) == 3


@pytest.mark.parametrize(
    ("rate", "message"),
    [
        ("lr: 2e-4, lr_multiplier: 2", "give lr or lr_multiplier, not both"),
        ("lr_multiplier: 0", "lr_multiplier must be above 0 and at most 100"),
    ],
)
def test_a_bad_multiplier_is_a_positioned_error(tmp_path, served, rate, message):
    write_project(tmp_path, served["server"].url, rate)
    code, _, err = intro(tmp_path, "check", SPEC)
    assert code != 0 and f"{SPEC}:11:" in err and f"error[E307]: {message}" in err
    assert "Traceback" not in err


def test_an_in_process_model_has_no_multiplier(tmp_path):
    shutil.copytree(DATA, tmp_path / "data")
    make_tiny_model(tmp_path / "tiny_a", "qwen2", seed=0)
    (tmp_path / SPEC).write_text(
        'use stdlib.looking_inward as li\nmodel a = local "tiny_a"\n'
        'task animals { data: "data/animals.jsonl" prompt: "Next after {{ sequence }}?" }\n'
        "split s { train: [animals]  items: 4  seed: 1 }\n"
        "study local_model {\n"
        "  let tuned = finetune(a, li.hypothetical_examples(a, s.train, [li.first_word]), lr_multiplier: 2)\n"
        "  measure m = li.predict_property(tuned, a, s.train, li.first_word)\n}\n"
    )
    code, _, err = intro(tmp_path, "check", SPEC)
    assert code != 0
    assert "error[E307]: lr_multiplier is an API provider's setting; an in-process model trains at lr" in err
