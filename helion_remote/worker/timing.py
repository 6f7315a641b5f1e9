"""How a worker times a kernel, and how it compiles one without running it.

On a GPU the timing is Helion's own ``do_bench`` (so a remote number means
what a local one means); under the interpreter it is a short, capped
perf_counter loop, because the interpreter is ~1000x slower and its numbers
only need to rank configs in CI.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from helion_remote.worker import _helion_worker_compat as hc

CPU_MAX_REPS_ENV = "HELION_REMOTE_CPU_MAX_REPS"
CPU_MAX_REPS_DEFAULT = 5
"""The interpreter is ~1000x slower than a GPU: cap timed calls so CI stays fast."""


def cpu_max_reps(value: int | None = None) -> int:
    return value or int(os.environ.get(CPU_MAX_REPS_ENV, CPU_MAX_REPS_DEFAULT))


def median_ms(device: str, call: Callable[[], object], warmup_ms: float, rep_ms: float, max_reps: int) -> float:
    """Median ms of ``call``: Helion's ``do_bench`` on a GPU, a capped loop on CPU."""
    if device.startswith("cuda"):
        return float(hc.do_bench(call, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    return _cpu_median_ms(call, warmup_ms, rep_ms, max_reps)


def _cpu_median_ms(call: Callable[[], object], warmup_ms: float, rep_ms: float, max_reps: int) -> float:
    t0 = time.perf_counter()
    call()
    estimate_ms = max((time.perf_counter() - t0) * 1000.0, 1e-6)
    for _ in range(min(max(0, int(warmup_ms / estimate_ms)), 2)):
        call()
    times = []
    for _ in range(min(max(1, int(rep_ms / estimate_ms)), max(1, max_reps))):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def compile_only_launcher(triton_kernel: Any, grid: tuple[int, ...], *args: object, **kwargs: Any) -> None:
    """A ``_launcher`` that compiles exactly what ``default_launcher`` would run.

    The options must match ``default_launcher``'s (``launch_cooperative_grid``
    included), or the device worker misses the cache and compiles again.
    """
    kwargs.setdefault("launch_cooperative_grid", False)
    run_args, run_kwargs = hc.compile_only_launch_args(*args, **kwargs)
    run_kwargs.pop("_minimum_resident_programs", None)
    triton_kernel.run(*run_args, grid=grid, warmup=True, **run_kwargs)
