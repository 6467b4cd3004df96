"""What the in-process models computed in a run: seconds of raw model work and tokens, by kind of work.

Kinds:
- "prefill": prompts run through the model (generation's first pass, scoring's pass and its choice tails);
- "decode": generation's later passes, one token per row of the batch;
- "train": LoRA training steps (forward, backward and the optimiser step).

For each kind, `seconds` is the time inside those model calls alone (on CUDA the device is waited for
before the clock stops, so queued kernels are not credited to whatever runs next), `computed` the token
positions the model ran (padding and rows already finished included) and `needed` those the requests
strictly need (prompt tokens without padding, one decode position per generated token that another
token follows, training tokens without padding). Everything else a run spends (loading weights,
tokenising, the decode loop's bookkeeping, the cache, the cubes) is its wall time minus `seconds`.

Counting is always on: a clock read and a few integer sums per model call. `numerics` says, per model,
the dtype and device its weights computed in ("bfloat16 on cuda:0"; runtime/backends/precision.py).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from attrs import define, field

if TYPE_CHECKING:
    import torch

KINDS = ("prefill", "decode", "train")


@define
class Tally:
    """One kind of work: seconds in model calls, token positions computed and needed, model calls."""

    seconds: float = 0.0
    computed: int = 0
    needed: int = 0
    calls: int = 0

    def add(self, other: Tally) -> None:
        self.seconds += other.seconds
        self.computed += other.computed
        self.needed += other.needed
        self.calls += other.calls

    def as_dict(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 3), "computed": self.computed, "needed": self.needed,
                "calls": self.calls}  # fmt: skip


@define
class ModelWork:
    """The tallies of one model (a `LoadedModel` keeps one) or of a whole run (the pool merges them)."""

    kinds: dict[str, Tally] = field(factory=dict)
    numerics: dict[str, str] = field(factory=dict)  # model name -> "<dtype> on <device>"

    def record(self, kind: str, seconds: float, computed: int, needed: int) -> None:
        tally = self.kinds.setdefault(kind, Tally())
        tally.add(Tally(seconds, int(computed), int(needed), 1))

    @contextlib.contextmanager
    def timed(self, kind: str, device: torch.device, computed: int, needed: int) -> Iterator[None]:
        """Time the model call inside the block as `kind` work over `computed` / `needed` token positions."""
        started = time.perf_counter()
        yield
        if device.type == "cuda":
            import torch  # only here: the pool and the run's summary use this module without torch

            torch.cuda.synchronize(device)
        self.record(kind, time.perf_counter() - started, computed, needed)

    def merge(self, other: ModelWork) -> None:
        for kind, tally in other.kinds.items():
            self.kinds.setdefault(kind, Tally()).add(tally)
        self.numerics.update(other.numerics)

    def total(self) -> Tally:
        whole = Tally()
        for tally in self.kinds.values():
            whole.add(tally)
        return whole

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """kind -> its tally, and "total"; the form of `intro run --json-progress`'s run_finished event."""
        ordered = sorted(self.kinds, key=lambda k: KINDS.index(k) if k in KINDS else len(KINDS))
        return {**{kind: self.kinds[kind].as_dict() for kind in ordered}, "total": self.total().as_dict()}

    def summary(self) -> str:
        """One line: raw model seconds by kind, and tokens computed / needed."""
        total = self.total()
        parts = ", ".join(f"{kind} {tally.seconds:.1f} s" for kind, tally in self.as_tallies())
        ratio = total.computed / total.needed if total.needed else float("nan")
        numerics = "; ".join(f"{name} in {how}" for name, how in sorted(self.numerics.items()))
        return (
            f"model work {total.seconds:.1f} s ({parts}); tokens computed {total.computed}, "
            f"needed {total.needed} ({ratio:.2f}x)" + (f"; {numerics}" if numerics else "")
        )

    def as_tallies(self) -> list[tuple[str, Tally]]:
        return [(kind, self.kinds[kind]) for kind in self.as_dict() if kind != "total"]
