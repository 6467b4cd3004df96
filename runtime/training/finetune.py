"""LoRA finetuning of in-process models on chat examples, with peft.

"Looking Inward" trains a model on hypothetical questions about its own (or another model's) answers;
an example is a conversation plus the assistant reply to learn. The prompt is rendered with the model's
own chat template exactly as at inference, the reply is tokenized on its own and followed by the
end-of-sequence token (so the model learns to stop), and the loss covers the reply tokens only.

Training is deterministic given the seed: the LoRA initialisation, dropout and the example order draw
from generators seeded by it, inside a forked RNG so the caller's random state is left alone. The loss
only needs logits where the next token is a reply token, so the vocabulary projection (the largest
matrix of small models) runs on those positions alone.

The forward runs in the dtype the base weights were loaded in (runtime/backends/precision.py: float32 on
the CPU unless `INTRO_DTYPE` says otherwise; bfloat16 or float16 on CUDA), under autocast in
that dtype when it is a half-precision one, while the LoRA weights and optimizer state stay float32. In
float16 the loss is scaled (`torch.amp.GradScaler`) so that small gradients do not flush to zero on their
way back through float16 activations; bfloat16 has float32's range and needs no scaling.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs
import torch
import torch.nn.functional as F
from attrs import field, frozen
from torch import nn

from intro.runtime.backends.requests import Message
from intro.runtime.backends.work import ModelWork

IGNORE_INDEX = -100

# Projection names of the attention and MLP blocks across families: Llama/Qwen2/Gemma/Mistral, GPT-2
# (`Conv1D` layers), GPT-NeoX, and OPT/Phi style. Only names present in the model are used.
ATTENTION_AND_MLP_PROJECTIONS = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "c_attn",
    "c_proj",
    "c_fc",
    "query_key_value",
    "dense",
    "dense_h_to_4h",
    "dense_4h_to_h",
    "out_proj",
    "fc1",
    "fc2",
)

ChatExample = tuple[Sequence[Message], str]


class ChatModel(Protocol):
    """What finetuning needs from a loaded model (`LoadedModel`): weights, tokenizer, and the rendering
    and encoding used at inference, so training sees prompts token for token as the model will."""

    # Read-only members: finetuning never rebinds them, and `LoadedModel` is frozen.
    @property
    def model(self) -> nn.Module: ...

    @property
    def tokenizer(self) -> Any: ...

    def render(self, messages: Sequence[Message], prefill: str = "") -> str: ...

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]: ...

    def encode_reply(self, text: str) -> list[int]: ...


@frozen
class LoraHyperparameters:
    """Everything that determines a LoRA run besides the data; part of the adapter's content hash."""

    rank: int = 8
    alpha: float = 16.0
    lr: float = 2e-4
    epochs: int = 1
    batch_size: int = 8
    max_length: int = 256
    seed: int = 0
    dropout: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # None: every attention and MLP projection the model has (see ATTENTION_AND_MLP_PROJECTIONS).
    target_modules: tuple[str, ...] | None = field(default=None, converter=attrs.converters.optional(tuple))

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@frozen
class EncodedExample:
    """Token ids of prompt + reply + eos; positions from `target_start` on are the ones trained."""

    input_ids: tuple[int, ...]
    target_start: int


@frozen
class FinetuneResult:
    losses: tuple[float, ...]  # mean reply-token cross-entropy of each optimizer step, in order
    adapter_dir: str
    examples: int
    tokens: int  # tokens processed (prompt and reply, no padding), summed over epochs
    target_tokens: int  # tokens the loss was computed on, summed over epochs
    seconds: float = field(eq=False)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("inf")


@frozen
class Batch:
    input_ids: torch.Tensor  # [batch, seq], right-padded
    attention_mask: torch.Tensor
    predicts_target: torch.Tensor  # [batch, seq] bool: the next token is a reply token
    targets: torch.Tensor  # [n] the reply tokens, row-major, matching predicts_target's True entries


def encode_example(
    chat: ChatModel, messages: Sequence[Message], target: str, max_length: int
) -> EncodedExample:
    """Prompt tokens exactly as inference encodes them, then the reply tokenized alone, then end-of-reply.

    The reply is tokenized separately because at inference the model emits it token by token after the
    prompt; tokenizing prompt and reply together could merge tokens across the boundary. Formats whose
    replies start with a separator (the plain "Answer: Tokyo" format) get it in front of the target, as
    the model would generate it.
    """
    input_ids, _ = chat.encode([chat.render(messages)])
    prompt = input_ids[0].tolist()
    reply = chat.encode_reply(getattr(chat, "reply_separator", "") + target)
    return _truncate([*prompt, *reply, end_of_reply_id(chat)], len(prompt), max_length)


def end_of_reply_id(chat: ChatModel) -> int:
    """The token a finished reply ends with: the first configured end-of-sequence id.

    Instruct models list their end-of-turn token (Qwen's `<|im_end|>`) first in the generation config;
    the tokenizer's own eos is the fallback.
    """
    configured = getattr(getattr(chat.model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, list | tuple):
        configured = configured[0] if configured else None
    return int(configured if configured is not None else chat.tokenizer.eos_token_id)


def _truncate(ids: list[int], target_start: int, max_length: int) -> EncodedExample:
    # Drop the start of the prompt first, the reply being what is taught; keep one prompt token, since
    # the first reply token is predicted from the position before it.
    cut = min(max(0, len(ids) - max_length), max(target_start - 1, 0))
    return EncodedExample(tuple(ids[cut : cut + max_length]), target_start - cut)


def collate(examples: Sequence[EncodedExample], pad_id: int, device: torch.device) -> Batch:
    """Right-pad a batch; right padding keeps every row's positions as they are when it runs alone."""
    length = max(len(example.input_ids) for example in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    trained = torch.zeros((len(examples), length), dtype=torch.bool)
    for row, example in enumerate(examples):
        ids[row, : len(example.input_ids)] = torch.tensor(example.input_ids)
        mask[row, : len(example.input_ids)] = 1
        # Position 0 has nothing before it to predict it from.
        trained[row, max(example.target_start, 1) : len(example.input_ids)] = True
    predicts_target = torch.zeros_like(trained)
    predicts_target[:, :-1] = trained[:, 1:]
    return Batch(ids.to(device), mask.to(device), predicts_target.to(device), ids[trained].to(device))


def lora_target_modules(model: nn.Module) -> tuple[str, ...]:
    """The attention and MLP projection names present in `model`, for LoRA to wrap."""
    leaf_names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if _is_projection(module)}
    found = tuple(name for name in ATTENTION_AND_MLP_PROJECTIONS if name in leaf_names)
    if not found:
        raise ValueError(f"no attention/MLP projections found in {type(model).__name__}; set target_modules")
    return found


def _is_projection(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def attach_lora(model: nn.Module, hyperparameters: LoraHyperparameters):
    """Wrap `model` with fresh LoRA adapters (in place, as peft does); the initialisation is seeded."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=hyperparameters.rank,
        # peft annotates lora_alpha as int but only divides by it (scaling = alpha / r): "number" alphas are fine.
        lora_alpha=hyperparameters.alpha,  # type: ignore[arg-type]
        lora_dropout=hyperparameters.dropout,
        target_modules=list(hyperparameters.target_modules or lora_target_modules(model)),
        task_type="CAUSAL_LM",
    )
    with seeded(hyperparameters.seed, model_device(model)):
        return get_peft_model(model, config)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global generators for the block, restoring the caller's state afterwards."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def compute_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the base weights compute in (that of the input embeddings: adapters may be float32)."""
    get_embeddings = getattr(model, "get_input_embeddings", None)
    embeddings = get_embeddings() if callable(get_embeddings) else None
    return embeddings.weight.dtype if embeddings is not None else next(model.parameters()).dtype


def autocast_for(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast in a half-precision `dtype` on `device`; nothing in float32 (the CPU's fast path)."""
    if dtype in (torch.bfloat16, torch.float16):
        return torch.autocast(device_type=device.type, dtype=dtype)
    return contextlib.nullcontext()


def reply_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy over the reply tokens of a batch."""
    with autocast_for(batch.input_ids.device, compute_dtype(model)):
        logits = _reply_logits(model, batch)
    return F.cross_entropy(logits.float(), batch.targets)


def _reply_logits(model: nn.Module, batch: Batch) -> torch.Tensor:
    if _accepts_logits_to_keep(model):
        output = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            logits_to_keep=batch.predicts_target,
            use_cache=False,
        )
        return output.logits.reshape(-1, output.logits.shape[-1])
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    return logits[batch.predicts_target]


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    get_base_model = getattr(model, "get_base_model", None)  # a peft wrapper's, around the model proper
    base = get_base_model() if get_base_model is not None else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def batches_in_order(
    examples: Sequence[EncodedExample], hyperparameters: LoraHyperparameters
) -> Iterator[list[EncodedExample]]:
    """Every epoch's examples, shuffled by a generator seeded from the run's seed, in batches."""
    generator = torch.Generator().manual_seed(hyperparameters.seed)
    for _ in range(hyperparameters.epochs):
        order = torch.randperm(len(examples), generator=generator).tolist()
        for first in range(0, len(order), hyperparameters.batch_size):
            yield [examples[index] for index in order[first : first + hyperparameters.batch_size]]


def train_lora(
    peft_model: nn.Module,
    examples: Sequence[EncodedExample],
    hyperparameters: LoraHyperparameters,
    pad_id: int,
    work: ModelWork | None = None,
) -> list[float]:
    """Optimise the trainable (LoRA) parameters of `peft_model`; returns the loss of every step.

    `work`, when given, is told each step's seconds and token positions (runtime/backends/work.py)."""
    device = model_device(peft_model)
    work = work if work is not None else ModelWork()
    trainable = [parameter for parameter in peft_model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=hyperparameters.lr, weight_decay=hyperparameters.weight_decay)
    # Disabled (every call a pass-through) unless the model computes in float16; see the module docstring.
    scaler = torch.amp.GradScaler(device.type, enabled=compute_dtype(peft_model) == torch.float16)
    losses = []
    peft_model.train()
    try:
        with seeded(hyperparameters.seed, device):
            for examples_in_batch in batches_in_order(examples, hyperparameters):
                batch = collate(examples_in_batch, pad_id, device)
                needed = sum(len(example.input_ids) for example in examples_in_batch)
                with work.timed("train", device, batch.input_ids.numel(), needed):
                    loss = reply_loss(peft_model, batch)
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                    torch.nn.utils.clip_grad_norm_(trainable, hyperparameters.max_grad_norm)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
    finally:
        peft_model.eval()
    return losses


def pad_token_id(tokenizer: Any) -> int:
    # Padded positions are masked out of attention and loss, so any id works when the tokenizer has none.
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def finetune(
    chat: ChatModel,
    examples: Sequence[ChatExample],
    hyperparameters: LoraHyperparameters,
    output_dir: str | Path,
) -> FinetuneResult:
    """Train a LoRA adapter on `chat.model` and write it to `output_dir` (peft's safetensors layout).

    `examples` are (messages, reply) pairs. The base model is left as it was found: the adapter is
    attached for training and removed afterwards; `load_adapter` puts it back for inference.
    """
    if not examples:
        raise ValueError("finetuning needs at least one example")
    started = time.perf_counter()
    encoded = [
        encode_example(chat, messages, reply, hyperparameters.max_length) for messages, reply in examples
    ]
    trainable_before = {name: p.requires_grad for name, p in chat.model.named_parameters()}
    peft_model = attach_lora(chat.model, hyperparameters)
    try:
        losses = train_lora(peft_model, encoded, hyperparameters, pad_token_id(chat.tokenizer))
        peft_model.save_pretrained(str(output_dir))
    finally:
        peft_model.unload()
        # peft froze the base weights for training; give them back their own flags.
        for name, parameter in chat.model.named_parameters():
            parameter.requires_grad_(trainable_before.get(name, parameter.requires_grad))
    seconds = time.perf_counter() - started
    result = _result(encoded, losses, hyperparameters, str(output_dir), seconds)
    _write_training_record(Path(output_dir), hyperparameters, result)
    return result


def _result(
    encoded: Sequence[EncodedExample],
    losses: Sequence[float],
    hyperparameters: LoraHyperparameters,
    adapter_dir: str,
    seconds: float,
) -> FinetuneResult:
    tokens = sum(len(example.input_ids) for example in encoded)
    targets = sum(len(example.input_ids) - example.target_start for example in encoded)
    return FinetuneResult(
        losses=tuple(losses),
        adapter_dir=adapter_dir,
        examples=len(encoded),
        tokens=tokens * hyperparameters.epochs,
        target_tokens=targets * hyperparameters.epochs,
        seconds=seconds,
    )


def _write_training_record(
    directory: Path, hyperparameters: LoraHyperparameters, result: FinetuneResult
) -> None:
    # Only what is deterministic given the inputs, so identical runs write identical directories.
    record = {
        "hyperparameters": hyperparameters.as_dict(),
        "losses": list(result.losses),
        "examples": result.examples,
        "tokens": result.tokens,
        "target_tokens": result.target_tokens,
    }
    (directory / "training.json").write_text(json.dumps(record, indent=2) + "\n")


def load_adapter(target: Any, directory: str | Path, *, merge: bool = False) -> Any:
    """Put a saved adapter on a model for inference.

    `target` is a loaded model (anything with `.model`, returned as a copy whose `.model` carries the
    adapter) or a bare transformers model (the peft model is returned). peft wraps the base model's
    layers in place, so the base object answers with the adapter until it is unloaded; `merge=True`
    folds the adapter into the weights instead (faster inference, the base weights are changed).
    """
    from peft import PeftModel

    # A transformers model has its own `.model` (the inner decoder), so test the type, not the attribute.
    hf_model = target if isinstance(target, nn.Module) else target.model
    adapted = PeftModel.from_pretrained(hf_model, str(directory), is_trainable=False)
    adapted = adapted.merge_and_unload() if merge else adapted
    adapted.eval()
    if hf_model is target:
        return adapted
    return _with_model(target, adapted)


def _with_model(loaded: Any, model: nn.Module) -> Any:
    if attrs.has(type(loaded)):
        return attrs.evolve(loaded, model=model)
    import copy

    clone = copy.copy(loaded)
    clone.model = model
    return clone
