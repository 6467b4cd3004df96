"""Reading the files a spec names: bounded, regular files only, and inside the spec's folder.

A spec, its `use`d modules and its data files are user input like any other. A path may name a FIFO
(opening it would block `intro check` forever), a device such as /dev/zero (reading it never ends), a
file far larger than any spec or data set, or a symlink that leads out of the project. So every read goes
through `read_bytes`: it stats the path first and refuses anything but a regular file, opens with
O_NONBLOCK so a file swapped for a FIFO in between cannot block either, and reads at most the size limit
plus one byte. `Confinement` says which folders a spec may read from.

The limits come from the environment: INTRO_MAX_SPEC_BYTES (specs and modules, default 8 MiB) and
INTRO_MAX_DATA_BYTES (data files, default 256 MiB).
"""

from __future__ import annotations

import os
import stat
from importlib import resources
from pathlib import Path

from attrs import frozen

SPEC_LIMIT_ENV = "INTRO_MAX_SPEC_BYTES"
DATA_LIMIT_ENV = "INTRO_MAX_DATA_BYTES"
_DEFAULT_LIMITS = {SPEC_LIMIT_ENV: 8 << 20, DATA_LIMIT_ENV: 256 << 20}
_CHUNK = 1 << 20


class FileProblem(Exception):
    """A file that cannot be read; the message says why and completes "cannot read the file: ..."."""

    def __init__(self, message: str):
        self.message = message
        super().__init__(message)


def size_limit(env: str) -> int:
    """The byte limit named by `env` (SPEC_LIMIT_ENV or DATA_LIMIT_ENV), from the environment or the default."""
    raw = os.environ.get(env, "").strip()
    if not raw:
        return _DEFAULT_LIMITS[env]
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = -1
    if value < 1:
        raise FileProblem(f"{env} must be a positive whole number of bytes, not {raw!r}")
    return value


def read_bytes(path: Path, limit_env: str) -> bytes:
    """The contents of a regular file, refusing other kinds of file and files over the size limit."""
    limit = size_limit(limit_env)
    try:
        _require_regular(os.stat(path).st_mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise FileProblem(str(err.strerror)) from None
    try:
        _require_regular(os.fstat(fd).st_mode)  # the path may have changed since the stat above
        data = _read_at_most(fd, limit + 1)
    except OSError as err:
        raise FileProblem(str(err.strerror)) from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise FileProblem(f"it is larger than {limit:,} bytes (the limit {limit_env} sets)")
    return data


def _require_regular(mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    kinds = {
        stat.S_ISDIR: "a directory",
        stat.S_ISFIFO: "a FIFO (named pipe)",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISSOCK: "a socket",
    }
    kind = next((name for test, name in kinds.items() if test(mode)), "not a regular file")
    raise FileProblem(f"it is {kind}, not a regular file")


def _read_at_most(fd: int, count: int) -> bytes:
    parts: list[bytes] = []
    remaining = count
    while remaining > 0:
        chunk = os.read(fd, min(remaining, _CHUNK))
        if not chunk:
            break
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


def utf8_error_position(data: bytes, offset: int) -> tuple[int, int]:
    """1-based line and column (in characters, as an editor counts) of the byte at `offset`."""
    line_start = data.rfind(b"\n", 0, offset) + 1
    column = len(data[line_start:offset].decode("utf-8", errors="replace")) + 1
    return data.count(b"\n", 0, offset) + 1, column


# ---------------------------------------------------------------------------------------------------
# Which folders a spec may read from


def stdlib_dir() -> Path:
    return Path(str(resources.files("intro.stdlib"))).resolve()


@frozen
class Confinement:
    """The folders a compilation may read files from; `roots` None means anywhere (--allow-outside)."""

    roots: tuple[Path, ...] | None

    @classmethod
    def for_spec(cls, spec: Path, allow_outside: bool = False) -> Confinement:
        if allow_outside:
            return cls(None)
        return cls((spec.parent.resolve(), stdlib_dir()))

    def outside(self, path: Path) -> bool:
        """Whether `path`, with every symlink followed, leads out of the allowed folders."""
        if self.roots is None:
            return False
        real = path.resolve()
        return not any(real.is_relative_to(root) for root in self.roots)


OUTSIDE_NOTE = "data and modules must lie inside the spec's folder; `--allow-outside` lifts this"
