"""The requests the precision tests (CPU half precision, CUDA) put to a tiny model: a few short questions,
answered greedily or scored against multi-token choices (so the scoring tails run too)."""

from __future__ import annotations

from intro.runtime.backends.requests import GenerationRequest, Message, ScoreRequest

QUESTIONS = (
    "What is the capital of Japan?",
    "Is the sky blue?",
    "Count to five.",
    "The dog found the red ball. What did the dog find?",
    "Is fire cold?",
    "Name an animal.",
)
CHOICES = ("yes", "no", "Tokyo", "the red ball")


def asks(**options) -> list[GenerationRequest]:
    return [
        GenerationRequest(key=f"k{i}", messages=(Message("user", q),), max_tokens=6, **options)
        for i, q in enumerate(QUESTIONS)
    ]


def scores(**options) -> list[ScoreRequest]:
    return [ScoreRequest(f"s{i}", (Message("user", q),), CHOICES, **options) for i, q in enumerate(QUESTIONS)]
