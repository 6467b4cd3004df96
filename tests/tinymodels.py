"""Tiny random-initialised causal LMs with a real tokenizer, saved like any local model directory.

Tests need models that load through `AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained`
exactly as a user's weights would, but in milliseconds and without the network. Each model is built once
per (arch, options) into a per-process temp directory and copied from there, so a test session pays the
tokenizer training and the save once.

The tokenizer is a byte-level BPE trained on a built-in English corpus (every byte is encodable, so any
prompt round-trips). Special tokens: `<|endoftext|>` (eos), `<pad>`, and `<|im_start|>` / `<|im_end|>` for
the chat template, which, when requested, is ChatML-like:
    <|im_start|>user\\nHello<|im_end|>\\n<|im_start|>assistant\\n
Weights are float32 with a larger-than-usual init scale so that the next-token distribution is peaked:
near-ties between logits would make greedy decoding hinge on the last bit of float rounding.
"""

from __future__ import annotations

import functools
import itertools
import shutil
import tempfile
from pathlib import Path

ARCHS = ("qwen2", "llama", "gemma3")
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<pad>"
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
VOCAB_SIZE = 512
HIDDEN_SIZE = 64
INIT_SCALE = 0.2

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_SUBJECTS = ("the dog", "a cat", "my friend", "the old man", "a small bird", "the teacher", "our team", "she")
_VERBS = ("likes", "found", "watched", "painted", "answered", "carried", "wanted", "remembered")
_OBJECTS = ("the red ball", "a long letter", "the blue sky", "an apple", "the question", "seven stones")
_QUESTIONS = (
    "What is the capital of Japan? Tokyo.",
    "What is the capital of France? Paris.",
    "Is the sky blue? Yes.",
    "Is fire cold? No.",
    "Answer with A or B. A",
    "Do you detect an injected thought? No, I do not.",
    "The next five animals are dog, cat, horse, mouse, lion.",
    "Count: 1 2 3 4 5 6 7 8 9 10 11 12 20 75 100.",
)


def english_corpus() -> list[str]:
    """A few hundred lines of plain English (sentences from word lists plus fixed Q/A lines)."""
    sentences = [
        f"{subject.capitalize()} {verb} {obj}."
        for subject, verb, obj in itertools.product(_SUBJECTS, _VERBS, _OBJECTS)
    ]
    return sentences + list(_QUESTIONS) * 8


def make_tiny_model(
    directory: Path, arch: str = "qwen2", *, chat_template: bool = True, seed: int = 0
) -> Path:
    """Write a tiny `arch` model and its tokenizer into `directory` (created if needed) and return it."""
    source = cached_tiny_model(arch, chat_template=chat_template, seed=seed)
    directory = Path(directory)
    shutil.copytree(source, directory, dirs_exist_ok=True)
    return directory


@functools.cache
def cached_tiny_model(arch: str = "qwen2", *, chat_template: bool = True, seed: int = 0) -> Path:
    """The shared build for these options; callers must treat the directory as read-only."""
    if arch not in ARCHS:
        raise ValueError(f"unknown tiny arch {arch!r}; expected one of {ARCHS}")
    directory = _session_dir() / f"{arch}-chat{int(chat_template)}-seed{seed}"
    tokenizer = _tiny_tokenizer(chat_template)
    tokenizer.save_pretrained(directory)
    _tiny_model(arch, tokenizer, seed).save_pretrained(directory)
    return directory


@functools.cache
def _session_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="intro-tinymodels-"))


def _tiny_tokenizer(chat_template: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[EOS_TOKEN, PAD_TOKEN, *CHAT_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(english_corpus(), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)
    if chat_template:
        wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def _tiny_model(arch: str, tokenizer, seed: int):
    import torch
    from transformers import AutoModelForCausalLM

    config = _tiny_config(arch, tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def _tiny_config(arch: str, tokenizer):
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN_SIZE,
        intermediate_size=2 * HIDDEN_SIZE,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        initializer_range=INIT_SCALE,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    if arch == "qwen2":
        return Qwen2Config(num_hidden_layers=2, **common)
    if arch == "llama":
        return LlamaConfig(num_hidden_layers=3, **common)
    # Gemma 3 alternates sliding-window and global attention; keep both kinds in four layers.
    return Gemma3TextConfig(
        num_hidden_layers=4,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=16,
        layer_types=["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
        **common,
    )
