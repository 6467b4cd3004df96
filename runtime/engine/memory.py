"""Keep a long run's resident memory close to what it uses.

PyTorch on the CPU allocates and frees many large, differently sized buffers from several threads
(generation and training run in worker threads). glibc gives each thread its own malloc arena and keeps
freed memory in it, so a run that alternates models, adapters and training grows far past its working
set (a mini study reached 20 GB RSS with about 5 GB live). Two arenas and a trim after each step keep it
near the live size. Elsewhere than glibc both calls are skipped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

M_ARENA_MAX = -8  # mallopt parameter number, from glibc's malloc.h


@functools.cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt  # noqa: B018 - only glibc has these
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def limit_arenas(count: int = 2) -> None:
    """Cap the number of malloc arenas for threads created from now on."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(M_ARENA_MAX, count)


def release_free_memory() -> None:
    """Return freed heap memory to the operating system."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
