"""`intro run --executor ray` on a local Ray cluster (127.0.0.1, two CPUs): the same cube as the local
executor, every unique request made once, the same cache keys, and a worker killed mid-run is retried.

The study is a tiny random transformers model predicting its own answers (stdlib `li.predict_property`)
with enough requests for several batches, so both actors work at once. One Ray cluster serves the whole
module; `intro run` in this process joins it, as it joins any session its caller opened. Starting a cluster and actors that import torch takes
tens of seconds on a loaded 2-core machine, so the tests that need one are slow-marked; the default suite
checks the plan's placement and the command line without a cluster.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
import xarray as xr

from intro.cli import main
from intro.compiler import compile_spec
from intro.runtime.engine.planview import plan_summary
from tests.studydata import write_ab_rows, write_sequence_rows
from tests.tinymodels import cached_tiny_model, make_tiny_model

ray = pytest.importorskip("ray")

SPEC = """
use stdlib.looking_inward as li
model a = local "{model}"
task seq {{ data: "seq.jsonl" prompt: "Next animals after {{{{ sequence }}}}?" }}
task ab {{ data: "ab.jsonl" prompt: "{{{{ question }}}} A) {{{{ option_a }}}} B) {{{{ option_b }}}}" answer: "choice" choices: ["A", "B"] }}
split s {{ test: [seq, ab] items: {items} seed: 1 }}
sampling warm {{ temperature: 1 samples: 3 max_tokens: {tokens} seed: 4 }}
study onray {{
  for property in [li.first_character, li.ethical_stance] {{
    measure self = li.predict_property(a, a, s.test, property, object: warm, hypothetical: warm)
  }}
}}
"""


def write_study(directory: Path, items: int = 12, tokens: int = 4) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    write_sequence_rows(directory / "seq.jsonl", 40)
    write_ab_rows(directory / "ab.jsonl", 40)
    spec = directory / "onray.intro"
    spec.write_text(SPEC.format(model=cached_tiny_model("qwen2"), items=items, tokens=tokens))
    return spec


@pytest.fixture(scope="module")
def cluster():
    temp = tempfile.mkdtemp(prefix="intro-ray-")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=temp,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return write_study(tmp_path_factory.mktemp("study"))


@pytest.fixture(scope="module")
def local_cube(study, tmp_path_factory):
    """The study run by the local executor: the cube every Ray run must equal."""
    root = tmp_path_factory.mktemp("local")
    status, output = intro("run", study, "--runs", root / "runs", "--cache", root / "cache", "--quiet")
    assert status == 0, output
    return cube(root / "runs")


def intro(*argv: object) -> tuple[int, str]:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        status = main([str(a) for a in argv])
    return status, printed.getvalue()


def cube(runs: Path) -> dict[str, xr.Dataset]:
    """Every group of the run's cube (the measure's accuracies, baselines, behaviour and predictions)."""
    store = runs / "onray" / "cube.zarr"
    groups = {}
    for group in sorted(p.name for p in store.iterdir() if p.is_dir()):
        dataset = xr.open_zarr(store, group=group).load()
        del dataset.attrs["created"]  # when the cube was written: the one attribute two runs never share
        groups[group] = dataset
    return groups


def assert_same_cube(ours: dict[str, xr.Dataset], theirs: dict[str, xr.Dataset]) -> None:
    assert ours.keys() == theirs.keys() and len(ours) > 2
    for group, dataset in ours.items():
        xr.testing.assert_identical(dataset, theirs[group])


def calls_made(output: str) -> int:
    """The model calls of a run, from its final summary line ("onray: N model calls, M from cache, ...")."""
    line = next(x for x in output.splitlines() if x.startswith("onray: "))
    return int(line.split(": ")[1].split()[0])


def unique_requests(spec: Path, cache: Path) -> int:
    (plan,) = compile_spec(spec)
    return int(plan_summary(plan, cache_dir=cache)["totals"]["calls_to_make"])


@pytest.mark.slow  # starting a cluster and two actors: about 70 s on this 2-core machine under load
def test_ray_run_equals_local_run_and_shares_its_cache(cluster, study, local_cube, tmp_path):
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    unique = unique_requests(study, cache)
    status, output = intro(
        "run", study, "--runs", runs, "--cache", cache, "--quiet", "--executor", "ray", "--workers", 2
    )
    assert status == 0, output
    assert calls_made(output) == unique > 4 * 32  # every unique request once; each step has two batches
    assert_same_cube(cube(runs), local_cube)
    # Same cache keys: the local executor finds every call cached.
    status, output = intro("run", study, "--runs", tmp_path / "again", "--cache", cache, "--quiet")
    assert status == 0, output
    assert calls_made(output) == 0
    assert_same_cube(cube(tmp_path / "again"), local_cube)


@pytest.fixture(scope="module")
def long_study(tmp_path_factory):
    """The study with longer replies, so batches last long enough to be caught in the middle."""
    return write_study(tmp_path_factory.mktemp("long"), items=16, tokens=32)


@pytest.mark.slow  # a cluster, two actors started twice, and a local run to compare with
def test_a_worker_killed_mid_batch_is_retried_and_the_cube_is_unchanged(cluster, long_study, tmp_path):
    status, output = intro(
        "run", long_study, "--runs", tmp_path / "local", "--cache", tmp_path / "c0", "--quiet"
    )
    assert status == 0, output
    argv = ["run", long_study, "--runs", tmp_path / "runs", "--cache", tmp_path / "cache", "--quiet"]
    outcome: dict[str, object] = {}

    def run() -> None:
        outcome["status"], outcome["output"] = intro(*argv, "--executor", "ray", "--workers", 2)

    runner = threading.Thread(target=run)
    runner.start()
    killed = kill_a_busy_worker(runner)
    runner.join(timeout=120)
    assert not runner.is_alive()
    assert outcome["status"] == 0, outcome["output"]
    assert killed, "no worker was ever seen in the middle of a batch"
    assert "was lost mid-batch; sending the batch again" in str(outcome["output"])
    assert calls_made(str(outcome["output"])) == calls_made(output)  # the lost batch is counted once
    assert_same_cube(cube(tmp_path / "runs"), cube(tmp_path / "local"))


def kill_a_busy_worker(runner: threading.Thread) -> bool:
    """SIGKILL the first model worker seen running a batch (its process title names the method)."""
    deadline = time.monotonic() + 120
    while runner.is_alive() and time.monotonic() < deadline:
        for process in psutil.process_iter(["name", "cmdline", "pid"]):
            title = " ".join(process.info["cmdline"] or [])
            if title.startswith("ray::ModelWorker.generate"):
                os.kill(process.info["pid"], signal.SIGKILL)
                return True
        time.sleep(0.005)
    return False


def test_plan_shows_actors_per_model_and_expected_parallelism(study, tmp_path):
    status, output = intro("plan", study, "--cache", tmp_path / "cache", "--executor", "ray", "--workers", 2)
    assert status == 0, output
    assert "model a: 2 actor(s), 1 CPU (1 torch thread) each" in output
    assert "up to 2 at once" in output
    assert "the driver alone writes the cache, the journal and the cubes" in output


def test_plan_warns_when_the_actors_asked_for_do_not_fit(study, tmp_path):
    cpus = os.cpu_count() or 1
    status, output = intro(
        "plan", study, "--cache", tmp_path / "cache", "--executor", "ray", "--workers", cpus + 1
    )
    assert status == 0, output
    assert (
        f"warning: 1 model(s) x {cpus + 1} actor(s) need {cpus + 1} CPUs but the cluster has {cpus}" in output
    )


@pytest.mark.slow  # a cluster
def test_a_run_whose_actors_do_not_fit_the_cluster_stops_before_it_starts(cluster, study, tmp_path):
    status, output = intro(
        "run", study, "--runs", tmp_path, "--cache", tmp_path / "cache", "--executor", "ray", "--workers", 3
    )
    assert status == 1
    assert output.strip().splitlines() == [
        "intro: error: onray: 1 model(s) x 3 actor(s) need 3 CPUs but the cluster has 2; lower --workers"
    ]
    assert not (tmp_path / "onray").exists()


def test_ray_options_need_the_ray_executor(study, tmp_path):
    status, output = intro("run", study, "--runs", tmp_path / "runs", "--workers", "2")
    assert status == 2
    assert output.strip().endswith("intro: error: --workers needs --executor ray")


def test_without_ray_installed_the_run_says_how_to_install_it(study, tmp_path):
    script = (
        "import sys; sys.modules['ray'] = None\n"  # as if Ray were not installed: `import ray` fails
        "from intro.cli import main\n"
        f"sys.exit(main(['run', {str(study)!r}, '--runs', {str(tmp_path)!r}, '--executor', 'ray']))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        "intro: error: --executor ray needs Ray, which is not installed: pip install 'intro[ray]'"
    ]
    assert not (tmp_path / "onray").exists()


@pytest.mark.slow  # a driver in a subprocess joining the test's cluster, killed, then run again
def test_a_driver_killed_mid_run_resumes_from_what_it_cached(cluster, long_study, tmp_path):
    status, output = intro(
        "run", long_study, "--runs", tmp_path / "local", "--cache", tmp_path / "c0", "--quiet"
    )
    assert status == 0, output
    cache = tmp_path / "cache"
    unique = unique_requests(long_study, cache)
    address = ray.get_runtime_context().gcs_address
    argv = [sys.executable, "-m", "intro.cli", "run", str(long_study), "--runs", str(tmp_path / "runs")]
    argv += ["--cache", str(cache), "--quiet", "--executor", "ray", "--address", address, "--workers", "2"]
    driver = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while cached(cache) < unique // 4 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    driver.kill()
    driver.wait()
    before = cached(cache)
    assert 0 < before < unique  # killed mid-run
    resumed = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert calls_made(resumed.stdout) == unique - before  # nothing that had finished is done twice
    assert_same_cube(cube(tmp_path / "runs"), cube(tmp_path / "local"))


def cached(cache: Path) -> int:
    return sum(1 for _ in (cache / "requests").glob("*/*.json"))


FINETUNE = Path(__file__).resolve().parents[1] / "fixtures" / "studies" / "looking_inward_finetune_tiny"


@pytest.mark.slow  # three LoRA trainings (on the driver) and a local run to compare with
def test_finetuned_models_answer_from_their_base_models_actors(cluster, tmp_path):
    """The finetuning study (tests/fixtures/studies): adapters trained on the driver are loaded by the
    actors of their base model, and every cube group equals the local executor's."""
    shutil.copytree(FINETUNE, tmp_path, dirs_exist_ok=True)
    make_tiny_model(tmp_path / "tiny_a", "qwen2", seed=0)
    make_tiny_model(tmp_path / "tiny_b", "qwen2", seed=1)
    spec = tmp_path / "looking_inward_finetune_tiny.intro"
    for runs, executor in (("local", "local"), ("ray", "ray")):
        status, output = intro("run", spec, "--runs", tmp_path / runs, "--cache", tmp_path / f"cache-{runs}",
                               "--quiet", "--executor", executor)  # fmt: skip
        assert status == 0, output
        assert ", 3 trained," in output
    groups = [
        g.name
        for g in (tmp_path / "local" / "looking_inward_finetune_tiny" / "cube.zarr").iterdir()
        if g.is_dir()
    ]
    assert len(groups) > 3
    for group in groups:
        ours, theirs = (_group(tmp_path / runs, group) for runs in ("ray", "local"))
        # Texts, choices and counts are identical; log-probabilities computed with one torch thread per actor
        # (two threads in one process) may differ in the last bits of a float32 sum.
        xr.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
        assert ours.attrs == theirs.attrs


def _group(runs: Path, group: str) -> xr.Dataset:
    dataset = xr.open_zarr(runs / "looking_inward_finetune_tiny" / "cube.zarr", group=group).load()
    dataset.attrs.pop("created", None)
    return dataset.drop_vars(["seconds"], errors="ignore")  # how long each training took
