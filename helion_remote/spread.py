"""Anchored re-timing spread over several same-model GPUs (any backend).

After every generation Helion re-times the population members near the best
(~200 ms each); on one GPU that serializes.  ``spread_retime`` shares the
members out: the first ``SPREAD_ANCHORS`` kernels (the caller puts its
best-known first) are timed by every worker, each worker's timings are scaled
by the median over anchors of ``anchor on worker 0 / anchor on that worker``,
so every number is in worker 0's units and the leading candidates are compared
on worker 0 itself.  A worker whose anchors fail has its share re-timed by
``redo`` (worker 0), and any kernel from another worker that would lead is
re-timed on worker 0 (:func:`confirm_leaders`).  Finalists never come here:
they stay on one worker.  The coordinator keeps each worker's recent factor
(``helion_remote.coordinator.unit_scales``) so batch timings, made on
whichever GPU a job landed on, can be put in worker 0's units too.
"""

from __future__ import annotations

import dataclasses
import statistics
import threading
from collections.abc import Callable, Sequence

from helion_remote.protocol import KernelSource, RetimeResult, RetimeTiming, usable_ms

SPREAD_ANCHORS = 3
"""Kernels every worker times, to put all workers on one scale."""
LEADER_MARGIN = 0.01
"""Kernels timed elsewhere within this fraction of worker 0's best are confirmed on worker 0."""


def spread_groups(kernels: Sequence[KernelSource], workers: int) -> list[list[KernelSource]] | None:
    """Anchors plus a round-robin share per worker; None when spreading is not worth it."""
    anchors, rest = list(kernels[:SPREAD_ANCHORS]), list(kernels[SPREAD_ANCHORS:])
    if workers < 2 or len(rest) < 2 * workers:
        return None
    return [[*anchors, *rest[i::workers]] for i in range(workers)]


def spread_retime(
    kernels: Sequence[KernelSource],
    groups: list[list[KernelSource]],
    run: Callable[[int, list[KernelSource]], RetimeResult],
    redo: Callable[[list[KernelSource]], RetimeResult],
) -> RetimeResult:
    """Run ``run(i, groups[i])`` for every worker at once and merge in worker 0's units."""
    results: list[RetimeResult] = [RetimeResult(())] * len(groups)

    def one(index: int) -> None:
        results[index] = run(index, groups[index])

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(groups))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    anchors = [k.digest for k in kernels[:SPREAD_ANCHORS]]
    timings = {t.kernel_digest: t for t in results[0].timings}
    used = [results[0].worker_id]
    again: list[KernelSource] = []
    elsewhere: set[str] = set()
    scales: list[tuple[str, float]] = []
    for index in range(1, len(groups)):
        factor = anchor_factor(results[0], results[index], anchors)
        if factor is None:
            again.extend(groups[index][len(anchors):])  # no common scale
            continue
        used.append(results[index].worker_id)
        scales.append((results[index].worker_id, factor))
        for timing in results[index].timings:
            if timing.kernel_digest not in timings:
                timings[timing.kernel_digest] = scaled(timing, factor)
                elsewhere.add(timing.kernel_digest)
    if again:
        timings.update({t.kernel_digest: t for t in redo(again).timings})
    confirmed = confirm_leaders(kernels, timings, elsewhere, results[0], redo)
    timings.update(confirmed)
    first = results[0]
    return RetimeResult(
        tuple(timings[k.digest] for k in kernels if k.digest in timings),
        first.worker_id, first.device_name, first.device_uuid, workers=tuple(w for w in used if w),
        scales=tuple(scales), confirmed=len(confirmed),
    )


def confirm_leaders(
    kernels: Sequence[KernelSource],
    timings: dict[str, RetimeTiming],
    elsewhere: set[str],
    base: RetimeResult,
    redo: Callable[[list[KernelSource]], RetimeResult],
) -> dict[str, RetimeTiming]:
    """Worker 0's own timings for kernels timed elsewhere that would lead.

    A scaled timing carries the anchor ratio's error (~1%), enough to crown
    the wrong kernel among near-equals.  Any kernel timed on another worker
    that comes within ``LEADER_MARGIN`` of worker 0's best is re-timed on
    worker 0 beside that best (the reference that carries the new call onto
    the first call's scale), so the search's leader is always a worker-0
    measurement.  Typically 0-2 kernels: one short call.
    """
    own = {t.kernel_digest: t.perf_ms for t in base.timings if _usable(t)}
    if not own:
        return {}
    reference = min(own, key=own.__getitem__)
    limit = own[reference] * (1.0 + LEADER_MARGIN)
    leaders = [k for k in kernels if k.digest in elsewhere and _usable(timings[k.digest])
               and timings[k.digest].perf_ms <= limit]
    if not leaders:
        return {}
    confirm = redo([next(k for k in kernels if k.digest == reference), *leaders])
    factor = anchor_factor(base, confirm, [reference]) or 1.0
    return {t.kernel_digest: scaled(t, factor) for t in confirm.timings
            if t.kernel_digest != reference and t.status != "infra_error"}


def anchor_factor(ours: RetimeResult, theirs: RetimeResult, anchors: Sequence[str]) -> float | None:
    """Median of ``ours / theirs`` over the anchors both timed; None if none did."""
    mine = {t.kernel_digest: t.perf_ms for t in ours.timings if _usable(t)}
    other = {t.kernel_digest: t.perf_ms for t in theirs.timings if _usable(t)}
    ratios = sorted(mine[d] / other[d] for d in anchors if d in mine and d in other)
    return statistics.median(ratios) if ratios else None


def scaled(timing: RetimeTiming, factor: float) -> RetimeTiming:
    if timing.status != "ok":
        return timing
    return dataclasses.replace(timing, perf_ms=timing.perf_ms * factor)


def _usable(timing: RetimeTiming) -> bool:
    return timing.status == "ok" and usable_ms(timing.perf_ms)
