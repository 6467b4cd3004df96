"""Batched sampling throughput: LocalBackend's decode loop against a plain transformers `generate` loop.

Both sample the same prompts at the same temperature and batch size (no top-k / top-p on either side);
the backend must keep up with transformers (ratio >= 0.9) while giving every request its own seeded
generator. Usage:

    python bench/sampling.py            # embedded Qwen 0.5B (first load converts the GGUF: about a minute)
    python bench/sampling.py --tiny     # a tiny random model, seconds
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from intro.runtime.backends.local import LocalBackend
from intro.runtime.backends.local_model import LoadedModel, load_local_model
from intro.runtime.backends.requests import GenerationRequest, Message

TOPICS = ("animals", "colors", "countries", "fruits", "rivers", "planets", "tools", "birds")
FORMS = (
    "What are the next 5 {topic} in this list: {start}? Respond only with the next 5 {topic} and nothing else.",
    "Name three {topic}. Answer briefly.",
    "Write one sentence about {topic}.",
    "Which of the {topic} do you like best? Answer in one word.",
)


def benchmark_prompts(count: int) -> list[str]:
    starts = ("dog, cat, horse", "red, blue", "France, Japan, Peru", "apple, pear")
    prompts = [
        form.format(topic=topic, start=starts[i % len(starts)])
        for i, (form, topic) in enumerate((f, t) for t in TOPICS for f in FORMS)
    ]
    return [prompts[i % len(prompts)] for i in range(count)]


def load(tiny: bool, source: str) -> LoadedModel:
    if not tiny:
        return load_local_model(source)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tinymodels import make_tiny_model

    return load_local_model(str(make_tiny_model(Path(tempfile.mkdtemp()) / "tiny", "qwen2")))


def run_backend(loaded: LoadedModel, prompts: list[str], args) -> tuple[float, int]:
    requests = [
        GenerationRequest(
            key=str(i),
            messages=(Message("user", prompt),),
            temperature=args.temperature,
            max_tokens=args.max_tokens,
            seed=i,
        )
        for i, prompt in enumerate(prompts)
    ]
    started = time.perf_counter()
    results = LocalBackend(loaded, batch_size=args.batch_size).generate_now(requests)
    return time.perf_counter() - started, sum(result.completion_tokens for result in results)


def run_transformers(loaded: LoadedModel, prompts: list[str], args) -> tuple[float, int]:
    torch.manual_seed(0)
    rendered = [loaded.render((Message("user", prompt),)) for prompt in prompts]
    started, tokens = time.perf_counter(), 0
    for first in range(0, len(rendered), args.batch_size):
        input_ids, attention_mask = loaded.encode(rendered[first : first + args.batch_size])
        with torch.inference_mode():
            output = loaded.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                **sampling_options(args.temperature),
                max_new_tokens=args.max_tokens,
                pad_token_id=loaded.tokenizer.pad_token_id,
            )
        tokens += count_generated(loaded, output[:, input_ids.shape[1] :])
    return time.perf_counter() - started, tokens


def sampling_options(temperature: float) -> dict:
    """transformers' settings for plain sampling at `temperature` (greedy at 0), nothing filtered."""
    if temperature <= 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": temperature, "top_k": None, "top_p": None}


def count_generated(loaded: LoadedModel, generated: torch.Tensor) -> int:
    """Tokens up to and including each row's first end-of-sequence token (the rest is padding)."""
    total = 0
    for row in generated.tolist():
        ends = [i for i, token in enumerate(row) if token in loaded.eos_token_ids]
        total += ends[0] + 1 if ends else len(row)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="use a tiny random model instead")
    parser.add_argument("--model", default="embedded:qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs; the best time counts")
    args = parser.parse_args()

    started = time.perf_counter()
    loaded = load(args.tiny, args.model)
    print(f"model {loaded.source} loaded in {time.perf_counter() - started:.1f} s on {loaded.device}")
    prompts = benchmark_prompts(args.prompts)
    run_backend(loaded, prompts[: args.batch_size][:2], args)  # warm-up: first-call allocations
    run_transformers(loaded, prompts[: args.batch_size][:2], args)
    ours, theirs = [], []
    for _ in range(args.repeats):  # interleaved, so a burst of load on a shared machine hits both sides
        ours.append(run_backend(loaded, prompts, args))
        theirs.append(run_transformers(loaded, prompts, args))
    (ours_s, ours_tokens), (theirs_s, theirs_tokens) = min(ours), min(theirs)
    report("LocalBackend.generate", len(prompts), ours_s, ours_tokens)
    report("transformers generate", len(prompts), theirs_s, theirs_tokens)
    print(f"throughput ratio (prompts/s, ours / transformers): {theirs_s / ours_s:.2f}  (target >= 0.9)")
    print(f"token throughput ratio (tokens/s): {(ours_tokens / ours_s) / (theirs_tokens / theirs_s):.2f}")


def report(label: str, prompts: int, seconds: float, tokens: int) -> None:
    print(
        f"{label:24s} {prompts} prompts in {seconds:6.2f} s: {prompts / seconds:6.2f} prompts/s, "
        f"{tokens} tokens, {tokens / seconds:7.1f} tokens/s"
    )


if __name__ == "__main__":
    main()
