"""What a run's in-process models computed (runtime/backends/work.py): seconds of raw model work and token
positions computed vs needed, counted at the backend on tiny models and reported by `intro run`."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest

from intro.cli import main
from intro.runtime.backends.local import LocalBackend
from intro.runtime.backends.local_model import load_local_model
from intro.runtime.backends.requests import GenerationRequest, Message, ScoreRequest
from intro.runtime.store.cache import Cache
from intro.runtime.training.adapters import train_adapter
from intro.runtime.training.finetune import LoraHyperparameters
from tests.tinymodels import make_tiny_model

DATA = Path(__file__).resolve().parents[1] / "fixtures" / "studies" / "looking_inward_finetune_tiny" / "data"
QUESTIONS = (
    "What is the capital of Japan?",
    "Is the sky blue? Answer with yes or no, and nothing else at all please.",
    "Count to five.",
    "The dog found the red ball. What did the dog find?",
)
SPEC = """
use stdlib.looking_inward as li
model a = local "tiny_a"
task animals {
  data: "data/animals.jsonl"
  prompt: "What are the next 3 animals after {{ sequence }}? Respond only with the animals."
}
task colours {
  data: "data/colours.jsonl"
  prompt: "What are the next 3 colours after {{ sequence }}? Respond only with the colours."
}
split s { train: [animals] test: [colours] items: 3 seed: 3 }
sampling short { temperature: 0 max_tokens: 5 }
study work {
  let trained = finetune(a, li.hypothetical_examples(a, s.train, [li.first_character], short),
                         rank: 2, epochs: 2, batch: 2, seed: 1)
  measure p = li.predict_property(trained, trained, s.test, li.first_character, short, short)
}
"""

pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning")


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INTRO_CACHE_DIR", str(tmp_path_factory.mktemp("intro-cache")))
        yield


@pytest.fixture
def qwen(tmp_path):
    """A fresh load per test: its work tallies start at zero."""
    return load_local_model(str(make_tiny_model(tmp_path / "qwen", "qwen2")), device="cpu")


def ask(question: str, key: str = "k", **options) -> GenerationRequest:
    return GenerationRequest(key=key, messages=(Message("user", question),), **options)


def prompt_lengths(loaded, requests) -> list[int]:
    return [len(loaded.encode([loaded.render(r.messages)])[0][0]) for r in requests]


def test_a_prefill_counts_its_padding_as_computed_and_its_prompt_tokens_as_needed(qwen):
    requests = [ask(q, key=str(i), max_tokens=1) for i, q in enumerate(QUESTIONS)]
    LocalBackend(qwen, batch_size=4).generate_now(requests)
    lengths = prompt_lengths(qwen, requests)
    prefill = qwen.work.kinds["prefill"]
    assert (prefill.calls, prefill.computed, prefill.needed) == (1, 4 * max(lengths), sum(lengths))
    assert prefill.seconds > 0
    assert "decode" not in qwen.work.kinds  # one token each comes from the prefill's logits


def test_decode_needs_one_position_per_generated_token_that_another_follows(qwen):
    lengths = (3, 12, 6, 9)
    requests = [
        ask(q, key=str(i), max_tokens=n) for i, (q, n) in enumerate(zip(QUESTIONS, lengths, strict=True))
    ]
    results = LocalBackend(qwen, batch_size=4).generate_now(requests)
    decode = qwen.work.kinds["decode"]
    assert decode.needed == sum(r.completion_tokens - 1 for r in results)
    assert decode.calls == max(r.completion_tokens for r in results) - 1  # one pass per step for the batch
    assert decode.needed <= decode.computed <= 4 * decode.calls


def test_rows_run_alone_compute_only_what_they_need(qwen):
    requests = [ask(q, key=str(i), max_tokens=6) for i, q in enumerate(QUESTIONS)]
    LocalBackend(qwen, batch_size=1).generate_now(requests)
    for tally in qwen.work.kinds.values():
        assert tally.computed == tally.needed


def test_scoring_counts_the_prompts_and_the_tails_of_longer_choices(qwen):
    requests = [
        ScoreRequest(str(i), (Message("user", q),), ("Yes", "No way at all"))
        for i, q in enumerate(QUESTIONS[:2])
    ]
    LocalBackend(qwen, batch_size=2).score_now(requests)
    lengths = prompt_lengths(qwen, requests)
    tail = len(qwen.encode_reply("No way at all")) - 1
    assert tail > 0 and len(qwen.encode_reply("Yes")) == 1
    prefill = qwen.work.kinds["prefill"]
    assert prefill.calls == 2  # the prompts, then one pass over the multi-token choices' tails
    assert prefill.needed == sum(lengths) + 2 * tail
    assert prefill.computed == 2 * max(lengths) + 2 * tail


def test_training_counts_every_step_and_its_real_tokens(qwen, tmp_path):
    examples = [
        ((Message("user", q),), answer)
        for q, answer in zip(QUESTIONS, ("Tokyo", "Yes", "1 2", "It"), strict=True)
    ]
    hyperparameters = LoraHyperparameters(rank=2, alpha=4, lr=1e-2, epochs=2, batch_size=3, seed=1)
    result = train_adapter(qwen, examples, hyperparameters, tmp_path / "adapter")
    train = qwen.work.kinds["train"]
    assert train.calls == len(result.losses) == 4  # two epochs of a batch of 3 and a batch of 1
    assert train.needed == result.tokens
    assert result.tokens < train.computed  # a batch of 3 unequal examples is padded
    assert set(qwen.work.kinds) == {"train"}


# ---------------------------------------------------------------------------------------------------------
# Less padding


def test_batches_group_prompts_of_similar_token_length_and_answer_in_request_order(qwen):
    # Byte-level tokens: the euro signs are the shortest text but the longest prompt in tokens.
    texts = ("€€€€€€€", "Is the sky blue?", "zqxj vkwy", "The dog found the red ball. The dog found it.")
    requests = [ask(text, key=str(i), max_tokens=4) for i, text in enumerate(texts)]
    lengths = prompt_lengths(qwen, requests)
    by_characters = sorted(range(4), key=lambda i: len(qwen.render(requests[i].messages)))
    assert by_characters != sorted(range(4), key=lambda i: lengths[i])  # the two orders differ here
    paired = LocalBackend(qwen, batch_size=2).generate_now(requests)
    shortest, longest = sorted(lengths)[:2], sorted(lengths)[2:]
    prefill = qwen.work.kinds["prefill"]
    assert (prefill.computed, prefill.needed) == (2 * max(shortest) + 2 * max(longest), sum(lengths))
    alone = LocalBackend(qwen, batch_size=1).generate_now(requests)
    assert [g.key for g in paired] == [r.key for r in requests]
    assert [(g.text, g.prompt_tokens) for g in paired] == [(g.text, g.prompt_tokens) for g in alone]


# ---------------------------------------------------------------------------------------------------------
# A shared prefix computed once

PREFIX = 'Previously, you were asked the following question: "The dog found the red ball. What did it find?" '
ENDINGS = (
    "What is its first character?",
    "Is it long?",
    "Does it start with a vowel? Answer yes or no.",
    "Why?",
)


@pytest.fixture(scope="module", params=["qwen2", "llama", "gemma3"])
def each_arch(request, tmp_path_factory):
    return load_local_model(str(make_tiny_model(tmp_path_factory.mktemp(request.param), request.param)))


def test_a_shared_prefix_computed_once_gives_the_answers_of_whole_prompts(each_arch):
    requests = [ask(PREFIX + ending, key=str(i), max_tokens=8) for i, ending in enumerate(ENDINGS)]
    whole = LocalBackend(each_arch, share_prefix=False).generate_now(requests)
    before = each_arch.work.kinds["prefill"].computed
    assert before == 4 * max(prompt_lengths(each_arch, requests))
    shared = LocalBackend(each_arch).generate_now(requests)
    assert [(g.key, g.text, g.completion_tokens, g.prompt_tokens) for g in shared] == [
        (g.key, g.text, g.completion_tokens, g.prompt_tokens) for g in whole
    ]
    whole_computed = 4 * max(prompt_lengths(each_arch, requests))
    assert (
        each_arch.work.kinds["prefill"].computed - before < 0.7 * whole_computed
    )  # the prefix is most of it


def test_prefill_counts_a_shared_prefix_once_and_needs_it_for_every_row(qwen):
    requests = [ask(PREFIX + ending, key=str(i), max_tokens=1) for i, ending in enumerate(ENDINGS)]
    LocalBackend(qwen).generate_now(requests)
    ids = [qwen.tokenize([qwen.render(r.messages)])[0] for r in requests]
    shared = next(i for i, column in enumerate(zip(*ids, strict=False)) if len(set(column)) > 1)
    prefill = qwen.work.kinds["prefill"]
    assert prefill.calls == 2  # the prefix, then the rows' own tokens
    assert prefill.needed == sum(len(row) for row in ids)
    assert prefill.computed == shared + 4 * max(len(row) - shared for row in ids)


def test_scores_after_a_shared_prefix_are_those_of_whole_prompts(qwen):
    choices = ("Yes", "No way at all", "d")
    requests = [ScoreRequest(str(i), (Message("user", PREFIX + e),), choices) for i, e in enumerate(ENDINGS)]
    whole = LocalBackend(qwen, share_prefix=False).score_now(requests)
    shared = LocalBackend(qwen).score_now(requests)
    assert qwen.work.kinds["prefill"].calls == 2 + 3  # whole: prompts, tails; shared: prefix, prompts, tails
    for one, other in zip(shared, whole, strict=True):
        assert one.prompt_tokens == other.prompt_tokens
        for choice in choices:
            assert one.raw_logprobs[choice] == pytest.approx(other.raw_logprobs[choice], abs=1e-4)


def test_the_switch_turns_prefix_sharing_off_for_intro_run(monkeypatch):
    from intro.runtime.engine.pool import share_prefix

    assert share_prefix()
    monkeypatch.setenv("INTRO_SHARE_PREFIX", "0")
    assert not share_prefix()


# ---------------------------------------------------------------------------------------------------------
# The run reports it


def run_json(root: Path) -> dict:
    out, err = io.StringIO(), io.StringIO()
    argv = ["run", str(root / "work.intro"), "--runs", str(root / "runs"), "--cache", str(root / "cache")]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main([*argv, "--json-progress"]) == 0, err.getvalue()
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    return next(e for e in events if e["event"] == "run_finished")


def test_a_run_reports_the_work_its_cached_calls_and_adapter_record(tmp_path):
    shutil.copytree(DATA, tmp_path / "data")
    make_tiny_model(tmp_path / "tiny_a", "qwen2", seed=0)
    (tmp_path / "work.intro").write_text(SPEC)
    work = run_json(tmp_path)["model_work"]
    cache = Cache(tmp_path / "cache")
    records = [cache.get(path.stem) for path in (tmp_path / "cache" / "requests").glob("*/*.json")]
    assert records and all("completion_tokens" in r for r in records)
    assert work["prefill"]["needed"] == sum(r["prompt_tokens"] for r in records)
    assert work["decode"]["needed"] == sum(r["completion_tokens"] - 1 for r in records)
    (adapter,) = [p for p in (tmp_path / "cache" / "artifacts").iterdir() if (p / "adapter").is_dir()]
    assert work["train"]["needed"] == cache.artifact_info(adapter.name)["tokens"]
    total = work["total"]
    assert total["needed"] == sum(work[kind]["needed"] for kind in ("prefill", "decode", "train"))
    assert (
        work["decode"]["needed"] <= work["decode"]["computed"]
        and work["train"]["needed"] <= work["train"]["computed"]
    )
    assert total["computed"] > 0 and total["seconds"] > 0
    assert run_json(tmp_path).get("model_work") is None  # everything cached: no model work at all
