"""Counters for one ``autotune`` run, filled by the provider and the dispatcher."""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter

from helion_remote.protocol import JobResult


@dataclasses.dataclass
class RunStats:
    configs_measured: int = 0
    failures: Counter[str] = dataclasses.field(default_factory=Counter)
    infra_retries: int = 0
    codegen_failures: int = 0
    deduplicated: int = 0
    """Configs answered with the result of a byte-identical generated module (not re-measured)."""
    budget_skipped: int = 0
    """Configs the search asked for after a time or cost budget was spent (never dispatched)."""
    budget_cancelled: int = 0
    """Configs dispatched but cancelled unanswered when a time or cost budget ran out."""
    configs_lost_to_infra: int = 0
    """Configs whose job failed on infrastructure every attempt: unmeasured, never counted in ``failures``."""
    blob_bytes_uploaded: int = 0
    blob_puts: int = 0
    blob_puts_skipped: int = 0
    sessions: int = 0
    session_open_s: float = 0.0
    """Wall time in ``open_session`` (worker start-up, argument fetch, baseline)."""
    retime_calls: int = 0
    retime_s: float = 0.0
    """Wall time the search spent waiting for finalist/population re-timing."""
    retimed_kernels: int = 0
    retime_workers: set[str] = dataclasses.field(default_factory=set)
    """Workers that re-timed finalists (one per session by design)."""
    population_retime_workers: set[str] = dataclasses.field(default_factory=set)
    """Workers that shared the population re-benchmarks (anchored spread)."""
    population_retime_scales: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    """Per other worker, the factor that put each spread re-benchmark into worker 0's units."""
    leaders_confirmed: int = 0
    """Kernels from other workers re-timed on worker 0 because they would have led."""
    batch_timing_scales: dict[str, float] = dataclasses.field(default_factory=dict)
    """The factor each anchored worker's batch timings get at the end of the run."""
    batch_timings_scaled: int = 0
    """Batch timings put in worker 0's units by their worker's factor (not 1)."""
    workers_used: set[str] = dataclasses.field(default_factory=set)
    devices_used: set[str] = dataclasses.field(default_factory=set)
    records: list[dict[str, object]] = dataclasses.field(default_factory=list)
    """One row per job result (retried infra failures included): the run's journal."""
    codegen_s: float = 0.0
    wall_s: float = 0.0
    batches: int = 0
    """Benchmark batches the search asked for; each journal row names its batch."""
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def record(self, result: JobResult) -> None:
        with self._lock:
            self.records.append(
                {
                    "job_id": result.job_id,
                    "batch": self.batches,
                    "status": result.status,
                    "perf_ms": result.perf_ms,
                    "compile_time_s": result.compile_time_s,
                    "worker_id": result.worker_id,
                    "started_at": result.started_at,
                    "finished_at": result.finished_at,
                    "stages": dict(result.stages),
                }
            )

    def to_dict(self) -> dict[str, object]:
        return {
            "configs_measured": self.configs_measured,
            "failures": dict(self.failures),
            "infra_retries": self.infra_retries,
            "codegen_failures": self.codegen_failures,
            "deduplicated": self.deduplicated,
            "budget_skipped": self.budget_skipped,
            "budget_cancelled": self.budget_cancelled,
            "configs_lost_to_infra": self.configs_lost_to_infra,
            "blob_bytes_uploaded": self.blob_bytes_uploaded,
            "blob_puts": self.blob_puts,
            "blob_puts_skipped": self.blob_puts_skipped,
            "sessions": self.sessions,
            "session_open_s": round(self.session_open_s, 3),
            "retime_calls": self.retime_calls,
            "retime_s": round(self.retime_s, 3),
            "retimed_kernels": self.retimed_kernels,
            "retime_workers": sorted(self.retime_workers),
            "population_retime_workers": sorted(self.population_retime_workers),
            "population_retime_scales": {w: [round(f, 4) for f in fs] for w, fs in sorted(self.population_retime_scales.items())},
            "leaders_confirmed": self.leaders_confirmed,
            "batch_timing_scales": {w: round(f, 4) for w, f in self.batch_timing_scales.items()},
            "batch_timings_scaled": self.batch_timings_scaled,
            "workers_used": sorted(self.workers_used),
            "devices_used": sorted(self.devices_used),
            "batches": self.batches,
            "codegen_s": round(self.codegen_s, 4),
            "wall_s": round(self.wall_s, 4),
        }
