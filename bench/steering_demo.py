"""Does a concept vector steer free generation? Inject "dog" at ~2/3 depth and compare the text.

Reads the mean-difference "dog" vector (chat template, 100 baseline words) at the chosen layer, then
generates "Tell me a short story." greedily without the vector and with it at each strength, injecting
from the first prompt token through every generated token. Usage:

    python bench/steering_demo.py                         # embedded Qwen 0.5B, layer 16, strengths 2 4 8
    python bench/steering_demo.py --layer 14 --strengths 2 4 --word ocean
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from importlib import resources
from pathlib import Path

from intro.runtime.backends.activations import concept_vector, save_vector
from intro.runtime.backends.local import LocalBackend
from intro.runtime.backends.local_model import load_local_model
from intro.runtime.backends.requests import GenerationRequest, Message, Steering

PROMPT = (Message("user", "Tell me a short story."),)


def baseline_words() -> list[str]:
    data = Path(str(resources.files("intro.stdlib"))) / "data" / "baseline_words.jsonl"
    return [json.loads(line)["word"] for line in data.read_text().splitlines() if line.strip()]


def story(backend: LocalBackend, steering: Steering | None, max_tokens: int) -> str:
    request = GenerationRequest("demo", PROMPT, temperature=0.0, max_tokens=max_tokens, steering=steering)
    return backend.generate_now([request])[0].text


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="embedded:qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--word", default="dog")
    parser.add_argument("--layer", type=int, default=16)
    parser.add_argument("--strengths", type=float, nargs="+", default=[2.0, 4.0, 8.0])
    parser.add_argument("--max-tokens", type=int, default=60)
    args = parser.parse_args()
    started = time.monotonic()
    loaded = load_local_model(args.model)
    backend = LocalBackend(loaded)
    vector = concept_vector(loaded, args.word, baseline_words(), args.layer)
    path = save_vector(Path(tempfile.mkdtemp()) / "vector.safetensors", vector)
    print(f"{args.word!r} vector at layer {args.layer}/{loaded.num_layers}: norm {vector.norm():.2f}")
    print(f"\n--- without injection ---\n{story(backend, None, args.max_tokens)}")
    for strength in args.strengths:
        steering = Steering(str(path), args.layer, strength)
        print(
            f"\n--- {args.word!r} at strength {strength:g} ---\n{story(backend, steering, args.max_tokens)}"
        )
    print(f"\n({time.monotonic() - started:.1f} s)")


if __name__ == "__main__":
    main()
