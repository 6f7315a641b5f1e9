"""A worker's ``JobResult`` as Helion's ``BenchmarkResult``, with the counters Helion's provider keeps.

The search reads more than the timing: the provider's failure lists
(``_record_*_failure``), ``AutotuneMetrics`` and the autotune log.  These
functions keep them as Helion's own provider would, so its summaries and
"no viable config" checks work unchanged.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from helion_remote.coordinator import _helion_compat as compat
from helion_remote.errors import RemoteFatalKernelError, with_remote_cause
from helion_remote.protocol import JobResult, KernelSource, usable_ms

if TYPE_CHECKING:
    from helion_remote.coordinator.seam import RemoteBenchmarkProvider

_STATUS_TO_HELION = {"ok": "ok", "error": "error", "timeout": "timeout", "accuracy_error": "accuracy_error"}


class RemoteKernel:
    """The ``fn`` of a remotely measured config: a handle, never called locally."""

    def __init__(self, source: KernelSource, config: Any) -> None:
        self.source = source
        self.config = config
        self.__name__ = source.entry_name

    def __call__(self, *args: object, **kwargs: object) -> object:
        raise RuntimeError(
            f"{self.__name__} was measured on a remote worker and cannot run on the "
            "coordinator; use the returned config instead"
        )

    def __repr__(self) -> str:
        return f"RemoteKernel({self.__name__}, {self.source.digest[:12]})"


def unmeasured(config: Any) -> Any:
    """The result of a config not (yet) measured: Helion's ``perf=inf`` error."""
    return compat.BenchmarkResult(config=config, fn=compat._unset_fn, perf=math.inf, status="error", compile_time=None)


def record_codegen_failure(provider: RemoteBenchmarkProvider, result: Any, error: Exception) -> Any:
    """Count a config whose code could not be generated; its result stays an error."""
    stats = provider.context.stats
    stats.codegen_failures += 1
    stats.failures["error"] += 1
    compat.record_compile_failure(provider, result.config)
    provider.log.warning(f"Skipping config that failed code generation: {result.config!r}: {error}")
    return result._replace(completed_at=time.perf_counter())


def to_helion(
    provider: RemoteBenchmarkProvider, config: Any, handle: RemoteKernel, result: JobResult, *, measured: bool = True
) -> Any:
    """Helion's ``BenchmarkResult`` for ``result``; ``measured=False`` reuses a same-source result."""
    if result.status == "infra_error":
        return lost_to_infrastructure(provider, config, result)
    reference_ms = in_reference_units(provider, result)
    if measured:
        _count_measurement(provider, handle, result, reference_ms)
    if reference_ms is not None:
        status, perf = "ok", reference_ms
    else:
        status, perf = _failure_status(result), math.inf
        _record_failure(provider, config, result)
    helion_result = compat.BenchmarkResult(
        config=config,
        fn=handle if status == "ok" else compat._unset_fn,
        perf=perf,
        status=status,
        compile_time=result.compile_time_s,
        completed_at=time.perf_counter(),
    )
    _log_entry(provider, helion_result)
    return helion_result


def lost_to_infrastructure(provider: RemoteBenchmarkProvider, config: Any, result: JobResult) -> Any:
    """A config whose job failed on infrastructure every attempt: unmeasured, and not blamed.

    Helion gets what its own provider gives a config it skipped (``perf=inf``,
    status ``error``, no failure recorded), so the search moves on without
    picking it and without counting a kernel failure; ``stats.failures`` stays
    the kernels' and ``stats.configs_lost_to_infra`` counts it.
    """
    provider.context.stats.configs_lost_to_infra += 1
    provider.log.warning(
        f"Config lost to infrastructure (every attempt failed; last: {result.error_class}: "
        f"{result.error_message} on worker {result.worker_id or '?'}); left unmeasured: {config!r}"
    )
    return unmeasured(config)._replace(completed_at=time.perf_counter())


def in_reference_units(provider: RemoteBenchmarkProvider, result: JobResult) -> float | None:
    """A usable batch timing in the re-timing worker's units (factor 1 until its GPU is
    anchored); None for a failure or an unusable (non-finite, non-positive) timing."""
    if result.status != "ok" or not usable_ms(result.perf_ms):
        return None
    return result.perf_ms * provider.context.state.unit_scales.factor(result.worker_id)


def _failure_status(result: JobResult) -> str:
    status = _STATUS_TO_HELION.get(result.status, "error")
    return "error" if status == "ok" else status  # ok but no usable (finite, positive) time


def _record_failure(provider: RemoteBenchmarkProvider, config: Any, result: JobResult) -> None:
    if result.status == "accuracy_error":
        compat.record_accuracy_failure(provider, config)
    elif result.status == "timeout":
        compat.record_worker_failure(provider, config, "timeout")
    else:
        compat.record_worker_failure(provider, config, "error")
    if result.fatal and not provider.settings.autotune_ignore_errors:
        raise with_remote_cause(RemoteFatalKernelError(
            f"worker {result.worker_id} hit an error Helion treats as fatal for the search "
            f"({result.error_class}: {result.error_message}); set autotune_ignore_errors=True "
            "to skip such configs instead"
        ), result.traceback)
    provider.log.debug(
        f"remote {result.status} for {config!r} on {result.worker_id}: {result.error_class}: {result.error_message}"
    )


def _count_measurement(
    provider: RemoteBenchmarkProvider, handle: RemoteKernel, result: JobResult, reference_ms: float | None
) -> None:
    """Counters for a measurement actually made (a same-source copy is not one)."""
    state = provider.context.state
    state.stats.configs_measured += 1
    provider._autotune_metrics.num_configs_tested += 1
    if reference_ms is not None:
        provider._autotune_metrics.num_successful_candidate_measurements += 1
        state.last_perf_ms[handle.source.digest] = reference_ms
        if reference_ms != result.perf_ms:
            state.stats.batch_timings_scaled += 1
    else:
        state.stats.failures["error" if result.status == "ok" else result.status] += 1


def _log_entry(provider: RemoteBenchmarkProvider, result: Any) -> None:
    try:
        config_id = provider.log.register_config(result.config)
        provider.log.record_autotune_entry(
            compat.AutotuneLogEntry(
                generation=provider._autotune_metrics.num_generations,
                status=result.status,
                perf_ms=result.perf if math.isfinite(result.perf) else None,
                compile_time=result.compile_time,
                config_id=config_id,
                config=result.config,
                completed_at=result.completed_at,
            )
        )
    except Exception as error:  # logging must never break a search
        provider.log.debug(f"could not record autotune log entry: {error}")
