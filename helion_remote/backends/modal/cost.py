"""Dollar metering for Modal containers: what a search costs, and a budget.

Modal bills a container from the moment it starts until it stops, busy or
idle: cold start, every job, and the idle ``scaledown_window`` tail after
the last job.  The coordinator cannot see Modal's bill, so it meters what
it can observe: every result carries its container's id, the worker-clock
time the container's Python started (``boot``) and the time of the reply
(``now``).  Per container::

    billed_s = cold_start_s (estimate, before our code runs)
             + (last reply - boot)               (observed)
             + scaledown_window_s                (idle tail, always billed)

times ``gpu $/s x count + cpu cores x $/core-s + memory GiB x $/GiB-s``.
It is an estimate: ``cold_start_s`` is a guess, containers that died before
replying are missed, and a warm container reused by a later search is
counted by both.  Modal's dashboard has the real bill.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Mapping

from helion_remote.errors import ConfigurationError

PRICE_SOURCE = (
    "Modal list prices, https://modal.com/pricing, as transcribed on 2026-07-01 "
    "(cross-checked against a May 2026 third-party copy); per second, no region multiplier"
)
GPU_USD_PER_S: dict[str, float] = {
    "B200": 0.001736,
    "H200": 0.001261,
    "H100": 0.001097,
    "RTX-PRO-6000": 0.000842,
    "A100-80GB": 0.000694,
    "A100-40GB": 0.000583,
    "A100": 0.000583,
    "L40S": 0.000542,
    "A10": 0.000306,
    "A10G": 0.000306,
    "L4": 0.000222,
    "T4": 0.000164,
}
CPU_CORE_USD_PER_S = 0.0000131
MEMORY_GIB_USD_PER_S = 0.00000222


class UnknownGpuPrice(ConfigurationError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def gpu_price_usd_per_s(gpu_type: str, table: Mapping[str, float] = GPU_USD_PER_S) -> float:
    key = gpu_type.upper().rstrip("!")
    if key not in table:
        raise UnknownGpuPrice(
            f"no price for GPU type {gpu_type!r}; known: {', '.join(sorted(table))}. "
            "Pass price_usd_per_s= to the ModalExecutor to meter it."
        )
    return table[key]


@dataclasses.dataclass(frozen=True)
class CostReport:
    gpu: str
    usd_per_container_s: float
    containers: int
    active_s: float
    """Observed container time, from Python start to last reply."""
    cold_start_s: float
    idle_tail_s: float
    estimated_usd: float
    budget_usd: float | None
    jobs: int
    source: str = PRICE_SOURCE

    @property
    def container_s(self) -> float:
        return self.active_s + self.cold_start_s + self.idle_tail_s

    def __str__(self) -> str:
        budget = f" of a ${self.budget_usd:.2f} budget" if self.budget_usd is not None else ""
        return (
            f"estimated Modal cost ${self.estimated_usd:.4f}{budget}: {self.containers} x {self.gpu} "
            f"container(s), {self.container_s:.0f} container-s (active {self.active_s:.0f} + cold start "
            f"{self.cold_start_s:.0f} + idle scale-down {self.idle_tail_s:.0f}) at "
            f"${self.usd_per_container_s * 3600:.2f}/h, {self.jobs} job(s). Prices: {self.source}"
        )


@dataclasses.dataclass
class _Container:
    boot: float
    """Coordinator clock."""
    last: float
    jobs: int = 0


class CostMeter:
    """Container-seconds x price, from the container stamps on results.  Thread-safe."""

    def __init__(
        self,
        *,
        gpu_type: str,
        gpu_count: int = 1,
        cpu: float = 0.125,
        memory_mib: int = 128,
        scaledown_window_s: float = 60.0,
        cold_start_s: float = 20.0,
        max_cost_usd: float | None = None,
        price_usd_per_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        gpu_rate = price_usd_per_s if price_usd_per_s is not None else gpu_price_usd_per_s(gpu_type)
        self.gpu = f"{gpu_type}:{gpu_count}" if gpu_count != 1 else gpu_type
        self.rate = gpu_rate * gpu_count + cpu * CPU_CORE_USD_PER_S + memory_mib / 1024 * MEMORY_GIB_USD_PER_S
        self.scaledown_window_s = float(scaledown_window_s)
        self.cold_start_s = float(cold_start_s)
        self.max_cost_usd = max_cost_usd
        self._clock = clock
        self._containers: dict[str, _Container] = {}
        self._lock = threading.Lock()
        self.jobs = 0

    def observe(self, stamp: Mapping[str, object] | None, *, job: bool = True) -> None:
        """Record one reply's container stamp ``{"id", "boot", "now"}`` (worker clock)."""
        if not stamp or not stamp.get("id"):
            return
        now = self._clock()
        offset = now - float(stamp.get("now", now))  # worker clock -> coordinator clock (skew + latency)
        boot = float(stamp.get("boot", stamp.get("now", now))) + offset
        with self._lock:
            entry = self._containers.get(str(stamp["id"]))
            if entry is None:
                entry = self._containers[str(stamp["id"])] = _Container(boot=boot, last=now)
            entry.boot = min(entry.boot, boot)
            entry.last = max(entry.last, now)
            if job:
                entry.jobs += 1
                self.jobs += 1

    def estimate_usd(self, *, busy: bool = False, expected_containers: int = 0) -> float:
        """Cost so far plus what is already committed.

        ``busy``: jobs are in flight, so the ``expected_containers`` most recently
        seen containers (at least one) run until now; the others stopped after
        their last reply and tail (billing every container ever seen until now
        doubled a three-hour estimate).  ``expected_containers``: containers the
        in-flight jobs will occupy; those not yet seen will cost at least a cold
        start and an idle tail.
        """
        now = self._clock()
        with self._lock:
            seconds = 0.0
            recent = sorted(self._containers.values(), key=lambda e: e.last, reverse=True)
            running = max(1, expected_containers) if busy else 0
            for rank, entry in enumerate(recent):
                end = max(entry.last, now) if rank < running else entry.last
                seconds += self.cold_start_s + max(0.0, end - entry.boot) + self.scaledown_window_s
            unseen = max(0, expected_containers - len(self._containers))
        seconds += unseen * (self.cold_start_s + self.scaledown_window_s)
        return seconds * self.rate

    def exceeded(self, *, busy: bool = False, expected_containers: int = 0) -> bool:
        if self.max_cost_usd is None:
            return False
        return self.estimate_usd(busy=busy, expected_containers=expected_containers) >= self.max_cost_usd

    def report(self) -> CostReport:
        with self._lock:
            active = sum(max(0.0, e.last - e.boot) for e in self._containers.values())
            n = len(self._containers)
        cold, tail = n * self.cold_start_s, n * self.scaledown_window_s
        usd = (active + cold + tail) * self.rate
        return CostReport(self.gpu, self.rate, n, active, cold, tail, usd if math.isfinite(usd) else 0.0,
                          self.max_cost_usd, self.jobs)
