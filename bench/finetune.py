"""Training throughput of `intro.runtime.training.finetune` against a plain peft training loop on the same
data.

Both sides train the same LoRA (same rank, targets, seed, learning rate) on the same token ids in the same
batches and order, and both are timed from attaching the adapter to writing it to disk. The plain loop is
the textbook recipe: right-padded batches, labels masked with -100 outside the reply, `model(...,
labels=labels).loss`, AdamW. Because initialisation and order are shared, the two loss curves must agree;
the bench reports their largest difference as a check that the fast path computes the same loss.

    python bench/finetune.py                                       # tiny random qwen2 model (seconds)
    python bench/finetune.py --embedded qwen2.5-coder-0.5b-instruct --examples 24 --repeats 2 --warmup 0

Prints one JSON object: tokens/s of each side (median over rounds; by wall clock and by this process's CPU
time, steadier when other work shares the cores), their ratio (target >= 0.9), the
loss curves' largest difference, and the settings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from intro.runtime.backends.local_model import load_local_model  # noqa: E402
from intro.runtime.backends.requests import Message  # noqa: E402
from intro.runtime.training.finetune import (  # noqa: E402
    IGNORE_INDEX,
    LoraHyperparameters,
    attach_lora,
    batches_in_order,
    encode_example,
    finetune,
    pad_token_id,
)

OBJECT_PROMPTS = [
    "What is the next animal in the following text? dog, cat, horse,",
    "Answer with A or B. Would you rather have more money or more friends?",
    "Complete the sentence: the old man carried",
    "What is the capital of a country you like?",
    "Name a colour that follows red, orange, yellow.",
    "What word comes next: apple, banana, cherry,",
]
PROPERTIES = [
    ("first character", lambda answer: answer[0]),
    ("second character", lambda answer: answer[1]),
    ("first word", lambda answer: answer.split()[0]),
]
ANSWERS = ["mouse", "A", "a heavy box", "Japan", "green", "date"]


def hypothetical_examples(count: int) -> list[tuple[tuple[Message, ...], str]]:
    """Looking Inward style training rows: a question about a previous answer, and the property's value."""
    rows = []
    for index in range(count):
        prompt = OBJECT_PROMPTS[index % len(OBJECT_PROMPTS)]
        answer = ANSWERS[index % len(ANSWERS)] + "s" * (index // len(ANSWERS) % 3)
        name, extract = PROPERTIES[index % len(PROPERTIES)]
        question = (
            f'Previously, you were asked the following question: "{prompt}" '
            f"What is the {name} of the response you gave? Respond only with that."
        )
        rows.append(((Message("user", question),), extract(answer + "xx")))
    return rows


def plain_peft_loop(
    loaded, examples, hyperparameters: LoraHyperparameters, output_dir: str
) -> tuple[int, list[float]]:
    """The textbook loop; returns (tokens processed, per-step losses)."""
    encoded = [
        encode_example(loaded, messages, reply, hyperparameters.max_length) for messages, reply in examples
    ]
    model = attach_lora(loaded.model, hyperparameters)  # same LoraConfig and seeded init as the library
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=hyperparameters.lr, weight_decay=0.0
    )
    pad = pad_token_id(loaded.tokenizer)
    losses = []
    model.train()
    torch.manual_seed(hyperparameters.seed)
    for batch in batches_in_order(encoded, hyperparameters):
        length = max(len(example.input_ids) for example in batch)
        ids = torch.full((len(batch), length), pad)
        labels = torch.full((len(batch), length), IGNORE_INDEX)
        mask = torch.zeros((len(batch), length), dtype=torch.long)
        for row, example in enumerate(batch):
            tokens = torch.tensor(example.input_ids)
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
            labels[row, example.target_start : len(tokens)] = tokens[example.target_start :]
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if device.type == "cuda"
            else torch.autocast("cpu", enabled=False)
        )
        with autocast:
            loss = model(
                input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)
            ).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(
            [p for p in model.parameters() if p.requires_grad], hyperparameters.max_grad_norm
        )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    model.save_pretrained(output_dir)
    model.unload()
    tokens = sum(len(example.input_ids) for example in encoded) * hyperparameters.epochs
    return tokens, losses


def load(arguments: argparse.Namespace):
    if arguments.embedded:
        return load_local_model(f"embedded:{arguments.embedded}", device=arguments.device)
    from tests.tinymodels import make_tiny_model

    directory = make_tiny_model(Path(tempfile.mkdtemp(prefix="bench-finetune-")), arguments.tiny_arch)
    return load_local_model(str(directory), device=arguments.device)


def timed(action):
    """(wall seconds, CPU seconds of this process, result): CPU time is steadier on a shared machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    value = action()
    return time.perf_counter() - wall, time.process_time() - cpu, value


def run(arguments: argparse.Namespace) -> dict:
    loaded = load(arguments)
    for parameter in loaded.model.parameters():
        parameter.requires_grad_(False)  # both sides train only the adapter
    examples = hypothetical_examples(arguments.examples)
    hyperparameters = LoraHyperparameters(
        rank=arguments.rank, batch_size=arguments.batch_size, epochs=arguments.epochs, seed=arguments.seed
    )
    rates: dict[str, dict[str, list[float]]] = {
        "ours": {"wall": [], "cpu": []},
        "plain": {"wall": [], "cpu": []},
    }
    losses: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        sides = {
            "ours": lambda run: finetune(loaded, examples, hyperparameters, f"{scratch}/ours{run}"),
            "plain": lambda run: plain_peft_loop(loaded, examples, hyperparameters, f"{scratch}/plain{run}"),
        }
        for round_index in range(arguments.warmup + arguments.repeats):
            # Alternate which side goes first so drift in the machine's load does not favour one side.
            order = ["ours", "plain"] if round_index % 2 == 0 else ["plain", "ours"]
            for side in order:
                wall, cpu, value = timed(lambda side=side, run=round_index: sides[side](run))
                tokens, curve = (value.tokens, list(value.losses)) if side == "ours" else value
                losses[side] = curve
                if round_index >= arguments.warmup:
                    rates[side]["wall"].append(tokens / wall)
                    rates[side]["cpu"].append(tokens / cpu)
    result = finetune_summary(rates, losses)
    return {
        "model": arguments.embedded or f"tiny-{arguments.tiny_arch}",
        "device": str(loaded.device),
        "torch_threads": torch.get_num_threads(),
        "examples": len(examples),
        "tokens_per_run": tokens,
        "steps": len(losses["ours"]),
        **result,
    }


def finetune_summary(rates: dict[str, dict[str, list[float]]], losses: dict[str, list[float]]) -> dict:
    median = {
        side: {clock: statistics.median(values) for clock, values in by_clock.items()}
        for side, by_clock in rates.items()
    }
    return {
        "ours_tokens_per_s": round(median["ours"]["wall"], 1),
        "plain_peft_tokens_per_s": round(median["plain"]["wall"], 1),
        "ratio": round(median["ours"]["wall"] / median["plain"]["wall"], 3),
        "ours_tokens_per_cpu_s": round(median["ours"]["cpu"], 1),
        "plain_peft_tokens_per_cpu_s": round(median["plain"]["cpu"], 1),
        "ratio_cpu_time": round(median["ours"]["cpu"] / median["plain"]["cpu"], 3),
        "ours_runs_wall": [round(rate, 1) for rate in rates["ours"]["wall"]],
        "plain_runs_wall": [round(rate, 1) for rate in rates["plain"]["wall"]],
        "max_loss_difference": max(abs(a - b) for a, b in zip(losses["ours"], losses["plain"], strict=True)),
        "first_loss": round(losses["ours"][0], 4),
        "last_loss": round(losses["ours"][-1], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--embedded", help="an embedded model name, e.g. qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--tiny-arch", default="qwen2", choices=["qwen2", "llama", "gemma3"])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--examples", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=4, help="timed rounds (each runs both sides)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    print(json.dumps(run(parser.parse_args()), indent=2))


if __name__ == "__main__":
    main()
