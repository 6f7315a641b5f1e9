"""Where a Helion search spends its wall time: batches, re-benchmarks, the rest.

Wraps ``BaseSearch.benchmark_batch`` and ``PopulationBasedSearch.rebenchmark``
for the duration of a ``with`` block, for stock Helion and helion-remote alike
(both run the search in this process), so one run can compare the two phase by
phase.  Benchmark-script tooling only: the library never patches these.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable, Iterator
from typing import Any


@dataclasses.dataclass
class PhaseTotals:
    batches: int = 0
    batch_configs: int = 0
    evaluated: int = 0
    """Configs the search got an answer for (measured, failed, or deduplicated; not budget-skipped)."""
    batch_s: float = 0.0
    rebenchmarks: int = 0
    rebenchmark_members: int = 0
    rebenchmark_s: float = 0.0
    events: list[tuple[str, float, float, int]] = dataclasses.field(default_factory=list)
    """(phase, start offset s, duration s, size) in call order; offsets from ``origin_epoch``."""
    origin_epoch: float = dataclasses.field(default_factory=time.time)

    def summary(self, wall_s: float) -> dict[str, float]:
        return {
            "batches": self.batches,
            "batch_configs": self.batch_configs,
            "evaluated": self.evaluated,
            "evaluated_per_s": round(self.evaluated / wall_s, 3) if wall_s else float("nan"),
            "batch_s": round(self.batch_s, 2),
            "rebenchmarks": self.rebenchmarks,
            "rebenchmark_members": self.rebenchmark_members,
            "rebenchmark_s": round(self.rebenchmark_s, 2),
            "other_s": round(wall_s - self.batch_s - self.rebenchmark_s, 2),
            "batch_configs_per_s": round(self.batch_configs / self.batch_s, 2) if self.batch_s else float("nan"),
        }


@contextlib.contextmanager
def record_phases() -> Iterator[PhaseTotals]:
    from helion.autotuner.base_search import BaseSearch, PopulationBasedSearch

    origin = time.perf_counter()
    totals = PhaseTotals()
    depth = [0]

    def timed(original: Callable[..., Any], phase: str) -> Callable[..., Any]:
        @functools.wraps(original)
        def wrapper(self: Any, items: list[Any], *args: Any, **kwargs: Any) -> Any:
            if depth[0]:
                return original(self, items, *args, **kwargs)
            depth[0] += 1
            start = time.perf_counter()
            try:
                returned = original(self, items, *args, **kwargs)
                if phase == "batch":
                    totals.evaluated += sum(
                        1 for r in returned if getattr(r, "completed_at", None) is not None and r.status != "filtered"
                    )
                return returned
            finally:
                depth[0] -= 1
                spent = time.perf_counter() - start
                totals.events.append((phase, start - origin, spent, len(items)))
                if phase == "batch":
                    totals.batches += 1
                    totals.batch_configs += len(items)
                    totals.batch_s += spent
                elif len(items) >= 2:  # rebenchmark returns at once for fewer
                    totals.rebenchmarks += 1
                    totals.rebenchmark_members += len(items)
                    totals.rebenchmark_s += spent

        return wrapper

    saved = (BaseSearch.benchmark_batch, PopulationBasedSearch.rebenchmark)
    BaseSearch.benchmark_batch = timed(saved[0], "batch")  # type: ignore[method-assign]
    PopulationBasedSearch.rebenchmark = timed(saved[1], "rebenchmark")  # type: ignore[method-assign]
    try:
        yield totals
    finally:
        BaseSearch.benchmark_batch, PopulationBasedSearch.rebenchmark = saved  # type: ignore[method-assign]
