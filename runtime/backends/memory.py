"""Keep a long run's resident memory close to what it uses.

PyTorch on the CPU allocates and frees many large, differently sized buffers from several threads
(generation and training run in worker threads). glibc gives each thread its own malloc arena and keeps
freed memory in it, so a run that alternates models, adapters and training grows far past its working
set (a mini study reached 20 GB RSS with about 5 GB live). Two arenas, large buffers mapped on their own
and a trim after each step keep it near the live size. Elsewhere than glibc these calls are skipped.

Large means from 32 MiB up (`HEAP_BUFFER`). Smaller buffers come from the heap and are reused from one
forward pass, or one training layer, to the next; a fresh mapping would be zero-filled by the kernel a 4 KiB
page at a time (a mini study that mapped every buffer from 1 MiB up took 188 million page faults and 330 s
of system time). Torch backs its large buffers with transparent huge pages when `THP_MEM_ALLOC_ENABLE` is
set, 2 MiB a fault; `prefer_huge_pages` sets it for `intro run` and `intro serve` (before torch is
imported, which is when torch reads it; `THP_MEM_ALLOC_ENABLE=0` turns it off).

A run's memory budget (`intro run --max-memory`, `parse_size`) defaults to the memory the machine has
available when the run starts (`machine_memory`); `resident_bytes` is what this process holds now.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import re
import sys
from typing import Any

M_ARENA_MAX = -8  # mallopt parameter numbers, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
# Buffers from this size up get their own mapping, returned to the system when freed (glibc's own threshold
# starts at 128 KiB and rises as large blocks are freed, up to this size). Measured on Qwen 0.5B against
# mapping from 1 MiB up: 3 rounds of 32 prompts' prefill in batches of 16 took 6.0 s instead of 8.2 s at
# the same 2.5 GB peak, and 24-token generations 23.0 s instead of 25.2 s; 3 LoRA steps of batch 8 (every
# layer's activations recomputed) took 24.7 s instead of 36.2 s, at 3.4 GB peak instead of 2.8 GB. A
# training that keeps every layer's activations is what fragments the heap at this size (3 steps: 9.8 GB
# peak against 7.0 GB from 4 MiB up), and training recomputes them (training/adapters.py).
HEAP_BUFFER = 32 * 2**20


# Torch's switch (c10/core/alloc_cpu.cpp): buffers from 2 MiB up are aligned to 2 MiB and advised as huge pages.
HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"


def prefer_huge_pages() -> bool:
    """Have torch back its large CPU buffers with transparent huge pages, unless the environment already
    says otherwise; returns False when torch is imported already and will not read the setting."""
    os.environ.setdefault(HUGE_PAGES_ENV, "1")
    return "torch" not in sys.modules


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
    """Cap the number of malloc arenas for threads created from now on, and map buffers from `HEAP_BUFFER`
    up on their own, so that freeing them gives the memory back at once."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(M_ARENA_MAX, count)
        libc.mallopt(M_MMAP_THRESHOLD, HEAP_BUFFER)


def release_free_memory() -> None:
    """Return freed heap memory to the operating system."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from a size such as `4G`, `4GB`, `4GiB`, `3.5g`, `512M` or `2147483648` (units are powers of 1024).

    Raises ValueError with a one-line reason for anything else, zero included.
    """
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a memory size; write it like 4G, 512M or 3.5GiB")
    size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size <= 0:
        raise ValueError(f"{text!r} is no memory at all; give a size above zero, like 4G")
    return size


def machine_memory() -> int:
    """The memory this machine has available now (MemAvailable in /proc/meminfo), in bytes."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def resident_bytes() -> int:
    """This process's resident set size now, in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0
