"""Batch timings in the re-timing worker's units (``WorkerScales``).

A spread re-benchmark (``helion_remote.spread``, run by the backends) says how
each same-model GPU's timings compare with worker 0's.  Batch jobs land on
whichever GPU is free; the coordinator multiplies each batch timing by its
worker's recent factor so the search compares like with like.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable

SCALE_WINDOW = 3
"""Spread calls whose factors a worker's batch-timing factor is the median of."""


class WorkerScales:
    """Each worker's factor into worker 0's units, from recent spread re-benchmarks.

    Two same-model GPUs of one host measured 1-4% apart (docs/benchmarks.md,
    runs 11 and 12).  Between population re-benchmarks a batch timing from the
    faster GPU would beat its equal from GPU 0 by that much, and the search
    would step towards it; multiplied by the GPU's factor it compares like with like.
    The median of the last ``SCALE_WINDOW`` calls damps one noisy anchor set.
    A worker never anchored (GPU 0 itself, or none yet) keeps factor 1.
    """

    def __init__(self) -> None:
        self._recent: dict[str, deque[float]] = {}

    def observe(self, scales: Iterable[tuple[str, float]]) -> None:
        for worker, factor in scales:
            if math.isfinite(factor) and factor > 0:
                self._recent.setdefault(worker, deque(maxlen=SCALE_WINDOW)).append(factor)

    def factor(self, worker_id: str | None) -> float:
        recent = self._recent.get(worker_id or "")
        return statistics.median(recent) if recent else 1.0

    def current(self) -> dict[str, float]:
        """The factor each anchored worker's batch timings get now."""
        return {worker: self.factor(worker) for worker in sorted(self._recent)}
