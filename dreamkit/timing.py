"""Optional wall-clock sections of one training step (``dreamkit bench``); no-ops unless a timer is enabled.

The system and the guidance write ``with self._timer("render"): ...``. By default ``_timer`` is :data:`NULL_TIMER`,
whose sections cost one attribute lookup and enter nothing: no clock reads, no device synchronisation. A
:class:`StepTimer` records each section's *exclusive* time (a nested section's time is not counted again in its
parent), so the sections of one step never add up to more than the step. On CUDA it synchronises the device at each
section's boundaries — only then, since kernels run asynchronously and a clock read alone would time their launch.
"""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Callable, Iterator, Optional

__all__ = ["NULL_TIMER", "NullTimer", "StepTimer"]


class NullTimer:
    """The disabled timer: every section is the same reusable no-op context."""

    enabled = False
    _null = contextlib.nullcontext()

    def __call__(self, name: str) -> contextlib.AbstractContextManager:
        return self._null


NULL_TIMER = NullTimer()


class StepTimer:
    """Accumulates exclusive seconds per named section.

    Args:
        sync: called at every section boundary before the clock is read (``torch.cuda.synchronize`` on CUDA,
            None on the CPU where work is synchronous).

    Attributes:
        totals: section name → exclusive seconds summed over every entry since the last :meth:`reset`.
        counts: section name → number of entries.
    """

    enabled = True

    def __init__(self, sync: Optional[Callable[[], None]] = None):
        self.sync = sync
        self.totals: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self._children: list[float] = []  # time spent in nested sections, one entry per open section

    def reset(self) -> None:
        self.totals.clear()
        self.counts.clear()
        self._children.clear()

    def now(self) -> float:
        if self.sync is not None:
            self.sync()
        return time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = self.now()
        self._children.append(0.0)
        try:
            yield
        finally:
            elapsed = self.now() - start
            nested = self._children.pop()
            self.totals[name] += elapsed - nested
            self.counts[name] += 1
            if self._children:
                self._children[-1] += elapsed
