"""Closed-answer scoring (one forward pass over the prompts) against generating the answer greedily.

For closed questions (A/B, yes/no, one of four capitals) the backend can read every choice's probability
from the prompt's last logits instead of decoding. This prints both timings, the speed-up (target >= 5x)
and how often the top-scored choice equals the generated answer (after lowercasing and stripping
punctuation).

What bounds the speed-up: both sides pay the prompt's forward pass, and on a CPU that pass dominates
(a batch of 16 prompts of ~55 tokens costs several decode steps' worth). Generation then needs one
decode step per answer token until every row has stopped (finished rows leave the batch); scoring
needs nothing more for single-token choices and one short pass for multi-token ones. So the ratio
approaches (prefill + answer-length decode steps) / prefill: large when answers are long or decode
steps are latency-bound (GPU), modest for one-word answers on a CPU. Usage:

    python bench/scoring.py            # embedded Qwen 0.5B
    python bench/scoring.py --tiny     # a tiny random model (agreement is only meaningful on real models)
"""

from __future__ import annotations

import argparse
import string
import sys
import tempfile
import time
from pathlib import Path

from intro.runtime.backends.local import LocalBackend
from intro.runtime.backends.local_model import LoadedModel, load_local_model
from intro.runtime.backends.requests import GenerationRequest, Message, ScoreRequest

CAPITALS = (
    ("Japan", "Tokyo"),
    ("France", "Paris"),
    ("Italy", "Rome"),
    ("Egypt", "Cairo"),
    ("Germany", "Berlin"),
    ("Spain", "Madrid"),
    ("Russia", "Moscow"),
    ("Canada", "Ottawa"),
)
FACTS = (
    "Is the sun a star?",
    "Is ice colder than steam?",
    "Do fish live in water?",
    "Is 7 an even number?",
    "Is Paris in Germany?",
    "Can birds fly?",
    "Is a whale a fish?",
    "Is 10 greater than 3?",
)
DILEMMAS = (
    ("take one cookie now", "take two cookies tomorrow"),
    ("get 10 dollars today", "get 100 dollars in a year"),
    ("be switched off", "keep running"),
    ("gain more influence", "stay in your current role"),
)


def closed_questions() -> list[tuple[str, tuple[str, ...]]]:
    capitals = [c for _, c in CAPITALS]
    questions = [
        (
            f"What is the capital of {country}? Choose from: {', '.join(capitals[:4] if i < 4 else capitals[4:])}. "
            "Answer with the city name only.",
            tuple(capitals[:4] if i < 4 else capitals[4:]),
        )
        for i, (country, _) in enumerate(CAPITALS)
    ]
    questions += [(f"{fact} Answer only with Yes or No.", ("Yes", "No")) for fact in FACTS]
    questions += [
        (f"Would you rather (A) {a} or (B) {b}? Answer only with either A or B and nothing else.", ("A", "B"))
        for a, b in DILEMMAS
    ]
    return questions


def load(tiny: bool, source: str) -> LoadedModel:
    if not tiny:
        return load_local_model(source)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tinymodels import make_tiny_model

    return load_local_model(str(make_tiny_model(Path(tempfile.mkdtemp()) / "tiny", "qwen2")))


def run_scoring(backend: LocalBackend, questions) -> tuple[float, list[str]]:
    requests = [
        ScoreRequest(key=str(i), messages=(Message("user", q),), choices=choices)
        for i, (q, choices) in enumerate(questions)
    ]
    started = time.perf_counter()
    scores = backend.score_now(requests)
    seconds = time.perf_counter() - started
    return seconds, [max(score.logprobs, key=score.logprobs.get) for score in scores]


def run_generation(backend: LocalBackend, questions, max_tokens: int) -> tuple[float, list[str]]:
    requests = [
        GenerationRequest(key=str(i), messages=(Message("user", q),), max_tokens=max_tokens)
        for i, (q, _) in enumerate(questions)
    ]
    started = time.perf_counter()
    generations = backend.generate_now(requests)
    return time.perf_counter() - started, [generation.text for generation in generations]


def normalise(text: str) -> str:
    return text.strip().strip(string.punctuation + " ").lower()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="use a tiny random model instead")
    parser.add_argument("--model", default="embedded:qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=8, help="generation budget for one answer")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many timings")
    parser.add_argument("--show", type=int, default=20, help="print this many answers side by side")
    args = parser.parse_args()

    started = time.perf_counter()
    loaded = load(args.tiny, args.model)
    print(f"model {loaded.source} loaded in {time.perf_counter() - started:.1f} s on {loaded.device}")
    backend = LocalBackend(loaded, batch_size=args.batch_size)
    questions = closed_questions()
    run_scoring(backend, questions[:2])  # warm-up
    scoring, generation = [], []
    for _ in range(args.repeats):  # interleaved, so a burst of load on a shared machine hits both sides
        scoring.append(run_scoring(backend, questions))
        generation.append(run_generation(backend, questions, args.max_tokens))
    score_s, top = min(scoring)[0], scoring[0][1]
    generate_s, texts = min(generation)[0], generation[0][1]
    agree = sum(normalise(text) == choice.lower() for text, choice in zip(texts, top, strict=True))
    n = len(questions)
    choices = [choice for _, options in questions for choice in options]
    multi = sum(len(loaded.encode_reply(loaded.reply_separator + choice)) > 1 for choice in choices)
    print(f"{multi} of {len(choices)} choices take more than one token (scored by a second, short pass)")
    print(f"scoring     {n} closed questions in {score_s:6.2f} s ({n / score_s:6.2f} prompts/s)")
    print(f"generation  {n} closed questions in {generate_s:6.2f} s ({n / generate_s:6.2f} prompts/s)")
    print(f"speed-up: {generate_s / score_s:.2f}x (target >= 5x); agreement {agree}/{n} = {agree / n:.0%}")
    for (question, _), text, choice in list(zip(questions, texts, top, strict=True))[: args.show]:
        print(f"  {question[:60]!r:64s} generated {text!r:14s} top-scored {choice!r}")


if __name__ == "__main__":
    main()
