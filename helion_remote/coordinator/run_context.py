"""What every provider of one ``autotune`` run shares: fixed choices plus mutable run state.

Helion instantiates the provider class itself (once per search, best-of-K
trial and rebench round), so the run's shared pieces travel on the class
(``seam.bind_provider``).  :class:`RemoteContext` is built once, complete,
after the kernel is bound; what changes during the run lives in
:class:`RunState`.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from helion_remote.coordinator.compile_order import CompileCostModel
from helion_remote.coordinator.stats import RunStats
from helion_remote.coordinator.unit_scales import WorkerScales
from helion_remote.protocol import SourceModule

if TYPE_CHECKING:
    from helion_remote.coordinator.codegen_pool import CodegenPool
    from helion_remote.executor import RemoteBenchmarkExecutor


@dataclasses.dataclass(frozen=True)
class TargetCheck:
    """An emulated target, and what the worker needs to check its config space against ours."""

    fingerprint: str
    space_report: dict[str, object] | None = None
    """The coordinator's (emulated) config space; None: the kernel cannot be shipped, no drift guard."""
    kernel_definition: SourceModule | None = None
    kernel_attr: str | None = None
    settings: tuple[tuple[str, object], ...] = ()
    """The user's Helion setting overrides, for the worker's own bind."""


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """The caller's choices for how batches are dispatched."""

    max_infra_retries: int = 3
    deduplicate_sources: bool = True
    """Configs whose generated module is byte-identical are measured once per session."""


class RunState:
    """What the run learns as it goes: counters, latest timings, unit scales, job ids."""

    def __init__(self, stats: RunStats, *, order_by_compile_cost: bool = True) -> None:
        self.stats = stats
        self.compile_cost: CompileCostModel | None = CompileCostModel() if order_by_compile_cost else None
        """Orders each batch longest-compile-first from this search's compiles; None keeps Helion's order."""
        self.last_perf_ms: dict[str, float] = {}
        """Latest timing per generated-source digest: batch timings, overwritten by re-timing."""
        self.unit_scales = WorkerScales()
        """Each GPU's factor into worker 0's units, from spread re-benchmarks; applied to batch timings."""
        self._job_counter = itertools.count()
        self._lock = threading.Lock()

    def next_job_id(self) -> str:
        with self._lock:
            return f"job-{next(self._job_counter)}"


@dataclasses.dataclass(frozen=True)
class RemoteContext:
    """One run: its executor and uploaded arguments, its options, and its state."""

    executor: RemoteBenchmarkExecutor
    args_digest: str
    state: RunState
    options: RunOptions = RunOptions()
    target: TargetCheck | None = None
    """None: the arguments' own device is searched (no emulation, no drift guard)."""
    progress: Callable[..., None] | None = None
    codegen_pool: CodegenPool | None = None
    """Processes generating code in parallel with the coordinator, or None."""

    @property
    def stats(self) -> RunStats:
        return self.state.stats
