"""``benchmark_isolated``: re-timing already-measured kernels together, as Helion's finalists need.

Helion re-times the population near the best after each generation, and its
finalists in windows (fresh processes, pinned argument slots) at the end.
The population goes to ``session.retime_spread`` (shared over same-model
workers where the backend can, anchored; by default it is ``retime``); the
finalist windows go to ``session.retime``, one worker for the whole session,
so windows compare like with like.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from helion_remote.coordinator import _helion_compat as compat
from helion_remote.coordinator.helion_results import RemoteKernel
from helion_remote.coordinator.run_context import RemoteContext
from helion_remote.executor import RemoteSession
from helion_remote.protocol import KernelSource, RetimeResult, RetimeTiming, usable_ms


def retime_call_timeout_s(per_kernel_timeout_s: float, count: int, warmup_ms: float, rep_ms: float) -> float:
    """The limit for one re-timing call of ``count`` kernels.

    Helion's timeout is per kernel, but one call re-times a whole population
    (130 members at its ~200 ms window took 30 s on an H200, so a flat 30 s
    limit cut a healthy worker off).  Each kernel gets its window twice over
    plus 50 ms to load, and the call Helion's timeout once on top for a hang.
    """
    return per_kernel_timeout_s + count * (2.0 * (warmup_ms + rep_ms) / 1000.0 + 0.05)


def retime_isolated(
    context: RemoteContext,
    session: RemoteSession,
    fns: Sequence[Callable[..., object]],
    *,
    warmup: int,
    rep: int,
    timeout_s: float,
    finalist_window: bool,
) -> list[Any]:
    """Helion's timings for ``fns``: ms, an ``IsolatedBenchmarkFailure``, or None (keep the prior one).

    ``fns`` holds at least one :class:`RemoteKernel` (anything else gets None).
    ``timeout_s`` is Helion's per-kernel limit; ``finalist_window`` keeps the
    call on the session's one re-timing worker.
    """
    handles = [fn if isinstance(fn, RemoteKernel) else None for fn in fns]
    started = time.perf_counter()
    sources = _best_known_first(context, [h for h in handles if h is not None])
    retime = session.retime if finalist_window else session.retime_spread
    result = retime(
        sources,
        warmup_ms=float(warmup),
        rep_ms=float(rep),
        timeout_s=retime_call_timeout_s(timeout_s, len(sources), float(warmup), float(rep)),
    )
    _count_call(context, session, result, len(sources), time.perf_counter() - started, finalist_window)
    by_digest = {t.kernel_digest: t for t in result.timings}
    return [None if handle is None else _helion_timing(context, handle, by_digest.get(handle.source.digest))
            for handle in handles]


def _best_known_first(context: RemoteContext, handles: Sequence[RemoteKernel]) -> list[KernelSource]:
    """One source per distinct module, best-known first (the anchor of a spread re-time)."""
    last_perf_ms = context.state.last_perf_ms
    return sorted({h.source.digest: h.source for h in handles}.values(),
                  key=lambda k: last_perf_ms.get(k.digest, math.inf))


def _count_call(
    context: RemoteContext, session: RemoteSession, result: RetimeResult, kernels: int, seconds: float,
    finalist_window: bool,
) -> None:
    """Stats for one call; a population re-benchmark also updates the batch-timing unit scales."""
    stats = context.stats
    stats.retime_calls += 1
    stats.retime_s += seconds
    stats.retimed_kernels += kernels
    if finalist_window:
        if result.worker_id:
            stats.retime_workers.add(result.worker_id)
        return
    stats.population_retime_workers.update(w for w in (result.workers or (result.worker_id,)) if w)
    for worker, factor in result.scales:
        stats.population_retime_scales.setdefault(worker, []).append(factor)
    if session.spread_covers_batch_workers:
        context.state.unit_scales.observe(result.scales)
        stats.batch_timing_scales = context.state.unit_scales.current()
    stats.leaders_confirmed += result.confirmed


def _helion_timing(context: RemoteContext, handle: RemoteKernel, timing: RetimeTiming | None) -> Any:
    if timing is None or timing.status == "infra_error":
        return None  # keep the prior timing; not the kernel's fault
    if timing.status == "ok" and usable_ms(timing.perf_ms):
        context.state.last_perf_ms[handle.source.digest] = timing.perf_ms
        return timing.perf_ms
    return compat.IsolatedBenchmarkFailure("timeout" if timing.status == "timeout" else "error")
