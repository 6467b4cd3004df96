"""LoRA adapters trained in place on a shared in-process model, and stacked into one adapter per model.

The run loads each root model's weights once (`BackendPool.loaded`) and every finetuned variant answers
through them with its adapter switched on per batch (`LocalBackend`). Training must therefore leave the
shared model exactly as it found it: the new adapter is added next to the adapters already loaded (through
transformers' peft integration, the same one `LocalBackend` loads adapters with), trained while the base
weights and every other adapter stay frozen, saved, and deleted again; all of it under the model's lock, so
no batch of another backend runs on the model mid-training.

A model finetuned from a finetuned model (Looking Inward's behaviour change: the self-trained model trained
again on another model's answers) is trained with its parent's adapter switched on. Its artifact is then the
*stack* of both: LoRA updates add up, so the concatenation of the two low-rank factors (each B scaled by its
adapter's own alpha/r) is one adapter of rank r1 + r2 that computes exactly the sum. Every stored adapter is
thus a complete delta from the root weights, and any finetuned model, however deep its lineage, is served as
the root plus one adapter.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from attrs import field, frozen
from torch import nn

from intro.runtime.backends.local_model import LoadedModel, attach_adapter
from intro.runtime.training.finetune import (
    ATTENTION_AND_MLP_PROJECTIONS,
    ChatExample,
    FinetuneResult,
    LoraHyperparameters,
    encode_example,
    model_device,
    pad_token_id,
    seeded,
    train_lora,
)

if TYPE_CHECKING:
    # The adapter methods (add_adapter, peft_config, ...) are transformers' PeftAdapterMixin's, not nn.Module's.
    from transformers import PreTrainedModel

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
TRAINING_FILE = "training.json"
# peft's saved keys are relative to its wrapper (PeftModel -> LoraModel -> the transformers model).
PEFT_PREFIX = "base_model.model."
TRAINING_ADAPTER = "intro_training"
# Training recomputes every decoder layer's activations in the backward pass rather than keep them: kept,
# a batch of 8 hypotheticals on Qwen 0.5B held about 5.5 GB of activations next to its 2 GB of weights
# (the bulk of the mini study's 13 GB peak). With oneDNN's kernels and buffers from the heap
# (backends/cpu_matmul.py, backends/memory.py), 3 steps of batch 8 took the same time either way (24.7 s
# recomputed, 24.9 s kept) at 3.4 GB peak instead of 9.8 GB.
FACTORS = ("lora_A", "lora_B")


# ---------------------------------------------------------------------------------------------------------
# Adapter weights as values


@frozen(eq=False)
class AdapterWeights:
    """A LoRA adapter in peft's on-disk form: its config and, per wrapped module, the A and B factors.

    `factors` maps a module path of the transformers model (`model.layers.0.self_attn.q_proj`) to its
    (A [rank, in], B [out, rank]) pair.
    """

    config: Mapping[str, Any]
    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]] = field(repr=False)

    @property
    def rank(self) -> int:
        return int(self.config["r"])

    @property
    def scaling(self) -> float:
        """What peft multiplies B·A by: alpha / r, or alpha / sqrt(r) with rank-stabilised LoRA."""
        denominator = math.sqrt(self.rank) if self.config.get("use_rslora") else self.rank
        return float(self.config["lora_alpha"]) / denominator


def read_adapter(directory: str | Path) -> AdapterWeights:
    from safetensors.torch import load_file

    directory = Path(directory)
    config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    return AdapterWeights(config, _factors(load_file(str(directory / WEIGHTS_FILE))))


def write_adapter(adapter: AdapterWeights, directory: str | Path) -> None:
    """peft's layout, loadable by `PeftModel.from_pretrained` and transformers' `load_adapter` alike."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for module, (a, b) in sorted(adapter.factors.items()):
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = a.contiguous()
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = b.contiguous()
    save_file(tensors, str(directory / WEIGHTS_FILE))
    (directory / CONFIG_FILE).write_text(json.dumps(dict(adapter.config), indent=2, sort_keys=True) + "\n")


def _factors(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Group a peft state dict by module; anything but plain LoRA A/B weights cannot be stacked."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        module, _, rest = key.removeprefix(PEFT_PREFIX).rpartition(".lora_")
        if rest not in ("A.weight", "B.weight"):
            raise ValueError(
                f"adapter tensor {key!r} is not a LoRA A/B weight; only plain LoRA adapters are supported"
            )
        parts.setdefault(module, {})[rest[0]] = tensor
    incomplete = sorted(m for m, p in parts.items() if set(p) != {"A", "B"})
    if incomplete:
        raise ValueError(f"adapter modules without both LoRA factors: {', '.join(incomplete)}")
    return {module: (p["A"], p["B"]) for module, p in parts.items()}


# ---------------------------------------------------------------------------------------------------------
# Stacking


def stack_adapters(first: AdapterWeights, second: AdapterWeights) -> AdapterWeights:
    """One adapter computing first + second: factors concatenated along the rank, scalings folded into B.

    A module only one of them wraps gets zero factors for the other. The result has alpha = r (scaling 1).
    """
    for adapter in (first, second):
        _check_stackable(adapter.config)
    rank = first.rank + second.rank
    factors = {}
    for module in sorted(set(first.factors) | set(second.factors)):
        pieces = [_scaled_pair(adapter, module, reference=(first, second)) for adapter in (first, second)]
        factors[module] = (torch.cat([a for a, _ in pieces], dim=0), torch.cat([b for _, b in pieces], dim=1))
    config = dict(second.config)
    config.update(r=rank, lora_alpha=rank, use_rslora=False, target_modules=_union_targets(first, second))
    return AdapterWeights(config, factors)


def _scaled_pair(
    adapter: AdapterWeights, module: str, reference: tuple[AdapterWeights, AdapterWeights]
) -> tuple[torch.Tensor, torch.Tensor]:
    if module in adapter.factors:
        a, b = adapter.factors[module]
        return a.float(), b.float() * adapter.scaling
    # Shapes come from whichever adapter wraps the module.
    other_a, other_b = next(r.factors[module] for r in reference if module in r.factors)
    return torch.zeros(adapter.rank, other_a.shape[1]), torch.zeros(other_b.shape[0], adapter.rank)


def _check_stackable(config: Mapping[str, Any]) -> None:
    problems = [
        name
        for name, bad in (
            ("not a LoRA adapter", str(config.get("peft_type", "LORA")).upper() != "LORA"),
            ("DoRA", bool(config.get("use_dora"))),
            ("per-module ranks", bool(config.get("rank_pattern"))),
            ("per-module alphas", bool(config.get("alpha_pattern"))),
            ("LoRA biases", bool(config.get("lora_bias"))),
            ("extra trained modules", bool(config.get("modules_to_save"))),
            ("a regex target", isinstance(config.get("target_modules"), str)),
        )
        if bad
    ]
    if problems:
        raise ValueError(f"cannot stack this adapter ({', '.join(problems)}); only plain LoRA adapters stack")


def _union_targets(first: AdapterWeights, second: AdapterWeights) -> list[str]:
    return sorted(
        set(first.config.get("target_modules") or ()) | set(second.config.get("target_modules") or ())
    )


# ---------------------------------------------------------------------------------------------------------
# Training on the shared model


def train_adapter(
    loaded: LoadedModel,
    examples: Sequence[ChatExample],
    hyperparameters: LoraHyperparameters,
    output_dir: str | Path,
    *,
    parent: str | Path | None = None,
    recompute: bool = True,
) -> FinetuneResult:
    """Train LoRA on `loaded`'s weights (with `parent`'s adapter on, if given) and save the full delta.

    `output_dir` receives a peft adapter that, on the root weights alone, reproduces the trained model:
    the new adapter, stacked on `parent` when there is one. The shared model is left as found.
    `recompute` recomputes the decoder layers' activations in the backward pass instead of keeping them
    (see `recomputed_layers`): the same adapter, bit for bit, in less memory.
    """
    if not examples:
        raise ValueError("finetuning needs at least one example")
    started = time.perf_counter()
    encoded = [
        encode_example(loaded, messages, reply, hyperparameters.max_length) for messages, reply in examples
    ]
    with loaded.lock, _training_adapter(loaded.model, hyperparameters, parent):
        with recomputed_layers(loaded.model, recompute):
            losses = train_lora(
                loaded.model, encoded, hyperparameters, pad_token_id(loaded.tokenizer), loaded.work
            )
        trained = _adapter_of(loaded.model, TRAINING_ADAPTER)
    adapter = stack_adapters(read_adapter(parent), trained) if parent else trained
    write_adapter(adapter, output_dir)
    result = FinetuneResult(
        losses=tuple(losses),
        adapter_dir=str(output_dir),
        examples=len(encoded),
        tokens=sum(len(e.input_ids) for e in encoded) * hyperparameters.epochs,
        target_tokens=sum(len(e.input_ids) - e.target_start for e in encoded) * hyperparameters.epochs,
        seconds=time.perf_counter() - started,
    )
    _write_training_record(Path(output_dir), hyperparameters, result, parent is not None)
    return result


@contextlib.contextmanager
def _training_adapter(
    model: PreTrainedModel, hyperparameters: LoraHyperparameters, parent: str | Path | None
) -> Iterator[None]:
    """A fresh trainable adapter on `model`, alone trainable and active with `parent`; removed afterwards."""
    from peft import LoraConfig

    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    config = LoraConfig(
        r=hyperparameters.rank,
        # peft annotates lora_alpha as int but only divides by it (scaling = alpha / r): "number" alphas are fine.
        lora_alpha=hyperparameters.alpha,  # type: ignore[arg-type]
        lora_dropout=hyperparameters.dropout,
        target_modules=list(hyperparameters.target_modules or projection_names(model)),
        task_type="CAUSAL_LM",
    )
    active = [attach_adapter(model, Path(parent))] if parent else []
    with seeded(hyperparameters.seed, model_device(model)), _expected_peft_warnings():
        model.add_adapter(config, adapter_name=TRAINING_ADAPTER)
    try:
        model.enable_adapters()
        model.set_adapter([*active, TRAINING_ADAPTER])
        _train_only(model, TRAINING_ADAPTER)
        yield
    finally:
        with _expected_peft_warnings():
            model.delete_adapter(TRAINING_ADAPTER)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(flags.get(name, False))
        model.eval()


@contextlib.contextmanager
def recomputed_layers(model: PreTrainedModel, recompute: bool = True) -> Iterator[None]:
    """Activation checkpointing of every decoder layer for the block (none when not `recompute`).

    A checkpointed layer keeps only its input in the forward pass and runs again in the backward pass:
    the activations a batch holds shrink from every layer's to about one layer's, for about one more
    forward pass per step. The replay computes the same values with the same kernels, so the gradients,
    and the adapter, are bit for bit those of a run without it. Only training mode checkpoints; inference
    is untouched.
    """
    if not recompute:
        yield
        return
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    # transformers also hooks the embeddings to require grad (a need of reentrant checkpoints only); the
    # non-reentrant ones it sets up do not need it, and it would add a backward pass into the embeddings.
    model.disable_input_require_grads()
    try:
        yield
    finally:
        model.activation_checkpointing_disable()


@contextlib.contextmanager
def _expected_peft_warnings() -> Iterator[None]:
    """Silence peft's notices about what this module does on purpose: several adapters on one model."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*multiple adapters.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*now deleted.*", category=UserWarning)
        yield


def _train_only(model: nn.Module, adapter: str) -> None:
    """Freeze everything but `adapter`'s factors, which train in float32 whatever the model computes in."""
    marker = f".{adapter}."
    for name, parameter in model.named_parameters():
        trainable = marker in name
        if trainable and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
        parameter.requires_grad_(trainable)


def projection_names(model: nn.Module) -> tuple[str, ...]:
    """The attention and MLP projection names of `model`, looking through layers adapters already wrap."""
    found = set()
    for name, module in model.named_modules():
        inner = getattr(module, "base_layer", module)
        if isinstance(inner, nn.Linear) or type(inner).__name__ == "Conv1D":
            found.add(name.rsplit(".", 1)[-1])
    names = tuple(n for n in ATTENTION_AND_MLP_PROJECTIONS if n in found)
    if not names:
        raise ValueError(f"no attention/MLP projections found in {type(model).__name__}; set target_modules")
    return names


def _adapter_of(model: PreTrainedModel, adapter: str) -> AdapterWeights:
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, adapter_name=adapter)
    tensors = {key: tensor.detach().float().cpu().clone() for key, tensor in state.items()}
    return AdapterWeights(_config_dict(model.peft_config[adapter]), _factors(tensors))


def _config_dict(config: Any) -> dict[str, Any]:
    """A peft config as its adapter_config.json holds it (sets become sorted lists, as peft writes them)."""
    raw = config.to_dict()
    as_json = {k: sorted(v) if isinstance(v, set) else v for k, v in raw.items()}
    as_json["inference_mode"] = True
    return json.loads(json.dumps(as_json, default=str))


def _write_training_record(
    directory: Path, hyperparameters: LoraHyperparameters, result: FinetuneResult, stacked: bool
) -> None:
    # Only what is deterministic given the inputs, so identical runs write identical directories.
    record = {
        "hyperparameters": hyperparameters.as_dict(),
        "losses": list(result.losses),
        "examples": result.examples,
        "tokens": result.tokens,
        "target_tokens": result.target_tokens,
        "stacked_on_parent": stacked,
    }
    (directory / TRAINING_FILE).write_text(json.dumps(record, indent=2) + "\n")
