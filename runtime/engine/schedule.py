"""Which ready steps start now: one in-process model at a time, each model's work back to back.

The executor starts a step as soon as its dependencies are done. Steps that compute on in-process
weights would gain nothing from running side by side on different models (they share one processor and
take turns at the compute lock), yet each model they touch must stay loaded while they run. So steps
that compute on this process's weights start only with the *active* root's: while any of them runs, no
step of another root starts; when none is left running, the schedule picks the next root. It keeps the
one it had while that root still has ready steps, then prefers a root already loaded, then the root with
the most ready steps. A study of two models then holds both only where one step needs both, and under a
memory budget (`intro run --max-memory`) the pool releases the idle one once, at the switch, instead of
reloading both chunk by chunk. Steps that compute on no in-process weights (API calls, statistics) start
at once.

The order changes when steps run, never what they compute: every result is keyed by its request.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence

from intro.compiler.plan import Step

RootsOf = Callable[[Step], frozenset[str]]


class RootSchedule:
    """`roots_of(step)`: the in-process roots a step computes on (empty: it can start any time);
    `loaded()`: the roots whose weights are in memory now."""

    def __init__(self, roots_of: RootsOf, loaded: Callable[[], Iterable[str]]):
        self._roots_of = roots_of
        self._loaded = loaded
        self._running: Counter[str] = Counter()  # root -> steps on it running now
        self.active: frozenset[str] = frozenset()

    def startable(self, ready: Sequence[Step]) -> list[Step]:
        """The steps of `ready` (in plan order) that may start now; call `started` for each one started."""
        free = [s for s in ready if not self._roots_of(s)]
        computing = [s for s in ready if self._roots_of(s)]
        if computing and not +self._running:
            self.active = self._next_active(computing)
        return free + [s for s in computing if self._roots_of(s) <= self.active]

    def started(self, step: Step) -> None:
        self._running.update(self._roots_of(step))

    def finished(self, step: Step) -> None:
        self._running.subtract(self._roots_of(step))

    def _next_active(self, computing: Sequence[Step]) -> frozenset[str]:
        groups = [self._roots_of(s) for s in computing]
        if self.active and any(g <= self.active for g in groups):
            return self.active
        loaded = set(self._loaded())
        count = Counter(groups)
        # max keeps the first of equals: plan order breaks ties
        return max(count, key=lambda g: (g <= loaded, count[g]))
