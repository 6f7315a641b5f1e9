"""``RemoteBenchmarkProvider``: Helion's benchmark seam, answered by remote workers.

It subclasses ``LocalBenchmarkProvider`` (without running its ``__init__``)
because Helion's full-effort final selection only routes finalist windows to
the provider when ``isinstance(provider, LocalBenchmarkProvider)``; every
method the search calls is overridden, so nothing local is ever compiled or
launched.  The ``fn`` it returns is a :class:`RemoteKernel` handle: the search
only passes it back to ``benchmark_isolated``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from helion_remote.coordinator import _helion_compat as compat
from helion_remote.coordinator.codegen import config_to_dict, kernel_source
from helion_remote.coordinator.compile_order import CompileCostModel, compile_seconds
from helion_remote.coordinator.dispatch import growing_chunks, run_jobs
from helion_remote.errors import SearchError
from helion_remote.executor import RemoteBenchmarkExecutor, RemoteSession
from helion_remote.protocol import (
    BenchmarkJob,
    JobResult,
    KernelSource,
    SessionSpec,
    SourceModule,
    Tolerances,
    usable_ms,
)
from helion_remote.spread import WorkerScales
from helion_remote.coordinator.stats import RunStats

_STATUS_TO_HELION = {"ok": "ok", "error": "error", "timeout": "timeout", "accuracy_error": "accuracy_error"}


class RemoteFatalKernelError(SearchError):
    """A worker classified a failure as fatal for the search (Helion's ``raise``)."""


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


@dataclasses.dataclass
class RemoteContext:
    """What every provider of one ``autotune`` run shares."""

    executor: RemoteBenchmarkExecutor
    args_digest: str
    stats: RunStats
    max_infra_retries: int = 3
    target_fingerprint: str | None = None
    space_report: dict[str, object] | None = None
    """The coordinator's (emulated) config space; checked against the worker's."""
    kernel_definition: SourceModule | None = None
    kernel_attr: str | None = None
    settings: tuple[tuple[str, object], ...] = ()
    progress: Callable[..., None] | None = None
    codegen_pool: Any = None
    """A :class:`~helion_remote.coordinator.codegen_pool.CodegenPool` generating code in parallel, or None."""
    deduplicate_sources: bool = True
    """Configs whose generated module is byte-identical are measured once per session."""
    compile_cost: CompileCostModel | None = dataclasses.field(default_factory=CompileCostModel)
    """Orders each batch longest-compile-first from this search's compiles; None keeps Helion's order."""
    last_perf_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    """Latest timing per config key: batch timings, overwritten by finalist re-timing."""
    worker_scales: WorkerScales = dataclasses.field(default_factory=WorkerScales)
    """Each GPU's factor into GPU 0's units, from spread re-benchmarks; applied to batch timings."""
    _job_counter: itertools.count = dataclasses.field(default_factory=itertools.count)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def next_job_id(self) -> str:
        with self._lock:
            return f"job-{next(self._job_counter)}"


class RemoteBenchmarkProvider(compat.LocalBenchmarkProvider):
    """Benchmark provider that sends every measurement to ``context.executor``."""

    context: RemoteContext  # set on the subclass made by bind_provider()

    def __init__(  # noqa: PLR0913 - Helion's constructor contract
        self,
        kernel: Any,
        settings: Any,
        config_spec: Any,
        args: Sequence[object],
        log: Any,
        autotune_metrics: Any,
    ) -> None:
        # Deliberately no super().__init__: it compiles and runs the baseline locally.
        self.kernel = kernel
        self.settings = settings
        self.config_spec = config_spec
        self.args = args
        self.log = log
        self._autotune_metrics = autotune_metrics
        self.mutated_arg_indices: Sequence[int] = ()
        self._accuracy_failure_config_ids: list[int] = []
        self._compile_failure_config_ids: list[int] = []
        self._worker_failure_config_ids: list[int] = []
        self._last_benchmark_failure_status = None
        self._no_viable_config_error: Exception | None = None
        self._effective_source_repairs: dict[Any, Any] = {}
        self._compiler_seed_configs: set[Any] = set()
        self._session: RemoteSession | None = None
        self._source_results: dict[str, JobResult] = {}
        """Final result per generated-source digest in this session (source dedup)."""
        _reject_local_only_settings(settings)

    # -- lifecycle ----------------------------------------------------------------

    def setup(self) -> None:
        self._ensure_session()

    def cleanup(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
        # Break the search -> provider -> bound-method cycle, as Helion's own provider does.
        self.budget_exceeded_fn = compat.LocalBenchmarkProvider.budget_exceeded_fn

    def _ensure_session(self) -> RemoteSession:
        if self._session is None:
            ctx = self.context
            reference = kernel_source(self.kernel, compat.reference_config(self.config_spec))
            spec = SessionSpec(
                session_id=uuid.uuid4().hex,
                kernel_name=reference.entry_name,
                args_digest=ctx.args_digest,
                reference=reference,
                tolerances=self._tolerances(),
                compile_timeout_s=float(self.settings.autotune_compile_timeout),
                run_timeout_s=float(self.settings.autotune_benchmark_timeout),
                target_fingerprint=ctx.target_fingerprint,
                kernel_definition=ctx.kernel_definition if ctx.space_report is not None else None,
                kernel_attr=ctx.kernel_attr,
                settings=ctx.settings,
            )
            opened = time.perf_counter()
            self._session = ctx.executor.open_session(spec)
            ctx.stats.session_open_s += time.perf_counter() - opened
            ctx.stats.sessions += 1
            self._check_drift(self._session)
        return self._session

    def _check_drift(self, session: RemoteSession) -> None:
        """Stop before any candidate is timed if the worker's space is not ours."""
        ctx = self.context
        if ctx.space_report is None:
            return
        worker_report = getattr(session, "space_report", None)
        if worker_report is None:
            self.log.warning(
                f"backend {getattr(ctx.executor, 'name', '?')} did not report the worker's config space; "
                "the target drift guard was skipped"
            )
            return
        if "error" in worker_report:
            session.close()
            self._session = None
            raise RuntimeError(
                f"the worker could not bind the kernel on the real arguments to check the target "
                f"({worker_report['error']}); the search was not started"
            )
        from helion_remote.target import check_drift

        try:
            check_drift(ctx.space_report, worker_report)
        except Exception:
            session.close()
            self._session = None
            raise

    def _tolerances(self) -> Tolerances:
        atol = self.settings.autotune_baseline_atol
        rtol = self.settings.autotune_baseline_rtol
        return Tolerances(
            atol=1e-2 if atol is None else float(atol),
            rtol=1e-2 if rtol is None else float(rtol),
            scale_atol=atol is None,
        )

    # -- the search's batch call ---------------------------------------------------

    def benchmark(
        self,
        configs: list[Any],
        *,
        desc: str = "Benchmarking",
        raise_if_no_viable_config: bool = True,
        **_: object,
    ) -> list[Any]:
        ctx = self.context
        session = self._ensure_session()
        self._no_viable_config_error = None
        results = [
            compat.BenchmarkResult(config=c, fn=compat._unset_fn, perf=math.inf, status="error", compile_time=None)
            for c in configs
        ]
        jobs: dict[str, tuple[int, BenchmarkJob, RemoteKernel]] = {}
        copies: list[tuple[int, str, RemoteKernel]] = []
        """(index, digest, handle) of configs whose source is already measured or in flight."""
        in_flight: set[str] = set()
        state = {"raise": None}

        ctx.stats.batches += 1
        order = ctx.compile_cost.order(configs) if ctx.compile_cost is not None else range(len(configs))

        def sources() -> Iterator[tuple[int, KernelSource | Exception]]:
            """``(index, source or codegen error)`` in dispatch order: a pool's processes, else here."""
            pool = ctx.codegen_pool
            if pool is not None and pool.size and len(configs) >= 2 * pool.size:
                for position, item in pool.generate([configs[i] for i in order]):
                    yield order[position], item
                return
            for index in order:
                try:
                    yield index, kernel_source(self.kernel, configs[index])
                except Exception as error:  # noqa: BLE001 - a codegen failure is the config's
                    yield index, error

        def generate() -> Iterator[BenchmarkJob]:
            """Jobs as their code is generated, so early chunks reach workers sooner."""
            stream = sources()
            handled = 0
            try:
                while True:
                    if self.budget_exceeded_fn() or _executor_budget_spent(ctx.executor):
                        # Like Helion's own provider: unhandled configs stay perf=inf.
                        ctx.stats.budget_skipped += len(configs) - handled
                        return
                    started = time.perf_counter()
                    item = next(stream, None)
                    ctx.stats.codegen_s += time.perf_counter() - started
                    if item is None:
                        return
                    handled += 1
                    index, source = item
                    config = configs[index]
                    if isinstance(source, Exception):
                        error = source
                        ctx.stats.codegen_failures += 1
                        ctx.stats.failures["error"] += 1
                        self._record_compile_failure(config)
                        self.log.warning(f"Skipping config that failed code generation: {config!r}: {error}")
                        results[index] = results[index]._replace(completed_at=time.perf_counter())
                        if not jobs and handled == len(configs) and self._nothing_measured():
                            if raise_if_no_viable_config:
                                state["raise"] = error
                                return
                            self._no_viable_config_error = error
                        continue
                    if ctx.deduplicate_sources and (source.digest in in_flight or source.digest in self._source_results):
                        copies.append((index, source.digest, RemoteKernel(source, config)))
                        continue
                    in_flight.add(source.digest)
                    job = self._job(session, source, config)
                    jobs[job.job_id] = (index, job, RemoteKernel(source, config))
                    yield job
            finally:
                stream.close()  # a pool stops feeding its processes and waits for their replies

        done = failed = 0

        def report(result: JobResult) -> None:
            nonlocal done, failed
            done += 1
            failed += result.status != "ok"
            if ctx.progress is not None:
                ctx.progress(f"{desc.rstrip(': ')}: {done}/{len(jobs)} measured, {failed} failed", final=done == len(jobs))

        finals = run_jobs(
            session,
            growing_chunks(generate()),
            stats=ctx.stats,
            max_infra_retries=ctx.max_infra_retries,
            on_result=report,
        )
        if state["raise"] is not None:
            raise state["raise"]
        for job_id, (index, job, handle) in jobs.items():
            results[index] = self._to_helion(configs[index], handle, finals[job_id])
            self._source_results[job.kernel.digest] = finals[job_id]
            if ctx.compile_cost is not None:
                ctx.compile_cost.observe(configs[index], compile_seconds(finals[job_id].stages, finals[job_id].compile_time_s))
        for index, digest, handle in copies:
            ctx.stats.deduplicated += 1
            results[index] = self._to_helion(configs[index], handle, self._source_results[digest], measured=False)
        return results

    def _job(self, session: RemoteSession, source: KernelSource, config: Any) -> BenchmarkJob:
        return BenchmarkJob(
            job_id=self.context.next_job_id(),
            kernel=source,
            args_digest=self.context.args_digest,
            baseline_digest=session.spec.baseline_digest,
            tolerances=session.spec.tolerances,
            compile_timeout_s=float(self.settings.autotune_compile_timeout),
            run_timeout_s=float(self.settings.autotune_benchmark_timeout),
            config=config_to_dict(config),
        )

    def _nothing_measured(self) -> bool:
        return self._autotune_metrics.num_successful_candidate_measurements == 0

    def _to_helion(self, config: Any, handle: RemoteKernel, result: JobResult, *, measured: bool = True) -> Any:
        """Helion's ``BenchmarkResult`` for ``result``; ``measured=False`` reuses a same-source result."""
        reference_ms = self._in_reference_units(result)
        if measured:
            self._count_measurement(handle, result, reference_ms)
        if reference_ms is not None:
            status, perf = "ok", reference_ms
        else:
            status, perf = _STATUS_TO_HELION.get(result.status, "error"), math.inf
            if status == "ok":  # ok but no usable (finite, positive) time: treat as an error
                status = "error"
            if result.status == "accuracy_error":
                self._record_accuracy_failure(config)
            elif result.status == "timeout":
                self._record_worker_failure(config, "timeout")
            else:
                self._record_worker_failure(config, "error")
            if result.fatal and not self.settings.autotune_ignore_errors:
                raise RemoteFatalKernelError(
                    f"worker {result.worker_id} hit an error Helion treats as fatal for the search "
                    f"({result.error_class}: {result.error_message}); set autotune_ignore_errors=True "
                    "to skip such configs instead"
                )
            self.log.debug(
                f"remote {result.status} for {config!r} on {result.worker_id}: "
                f"{result.error_class}: {result.error_message}"
            )
        helion_result = compat.BenchmarkResult(
            config=config,
            fn=handle if status == "ok" else compat._unset_fn,
            perf=perf,
            status=status,
            compile_time=result.compile_time_s,
            completed_at=time.perf_counter(),
        )
        self._log_entry(helion_result)
        return helion_result

    def _count_measurement(self, handle: RemoteKernel, result: JobResult, reference_ms: float | None) -> None:
        """Counters for a measurement actually made (a same-source copy is not one)."""
        self.context.stats.configs_measured += 1
        self._autotune_metrics.num_configs_tested += 1
        if reference_ms is not None:
            self._autotune_metrics.num_successful_candidate_measurements += 1
            self.context.last_perf_ms[handle.source.digest] = reference_ms
            if reference_ms != result.perf_ms:
                self.context.stats.batch_timings_scaled += 1
        else:
            self.context.stats.failures["error" if result.status == "ok" else result.status] += 1

    def _in_reference_units(self, result: JobResult) -> float | None:
        """A usable batch timing in the re-timing worker's units (factor 1 until its GPU is
        anchored); None for a failure or an unusable (non-finite, non-positive) timing."""
        if result.status != "ok" or not usable_ms(result.perf_ms):
            return None
        return result.perf_ms * self.context.worker_scales.factor(result.worker_id)

    def _log_entry(self, result: Any) -> None:
        try:
            config_id = self.log.register_config(result.config)
            self.log.record_autotune_entry(
                compat.AutotuneLogEntry(
                    generation=self._autotune_metrics.num_generations,
                    status=result.status,
                    perf_ms=result.perf if math.isfinite(result.perf) else None,
                    compile_time=result.compile_time,
                    config_id=config_id,
                    config=result.config,
                    completed_at=result.completed_at,
                )
            )
        except Exception as error:  # logging must never break a search
            self.log.debug(f"could not record autotune log entry: {error}")

    # -- finalist re-timing --------------------------------------------------------

    def benchmark_isolated(
        self,
        fns: list[Callable[..., object]],
        *,
        warmup: int,
        rep: int,
        desc: str = "Benchmarking",
        fresh_process: bool = False,
        args_slots: Sequence[int | None] | None = None,
        timeout: float | None = None,
        **_: object,
    ) -> list[Any]:
        handles = [fn if isinstance(fn, RemoteKernel) else None for fn in fns]
        timings: list[Any] = [None] * len(fns)
        known = [h for h in handles if h is not None]
        if not known:
            return timings
        session = self._ensure_session()
        started = time.perf_counter()
        # One timing per distinct module, best-known first (the anchor of a spread re-time).
        sources = sorted({h.source.digest: h.source for h in known}.values(),
                         key=lambda k: self.context.last_perf_ms.get(k.digest, math.inf))
        # The population re-benchmark may spread over same-model GPUs; finalist
        # windows (fresh processes, pinned argument slots) stay on one worker.
        spread = getattr(session, "retime_spread", None) if not fresh_process and args_slots is None else None
        result = (spread or session.retime)(
            sources,
            warmup_ms=float(warmup),
            rep_ms=float(rep),
            timeout_s=retime_call_timeout_s(
                float(timeout if timeout is not None else self.settings.autotune_benchmark_timeout),
                len(sources), float(warmup), float(rep),
            ),
        )
        stats = self.context.stats
        stats.retime_calls += 1
        stats.retime_s += time.perf_counter() - started
        stats.retimed_kernels += len(sources)
        if spread is not None:
            stats.population_retime_workers.update(result.workers or (result.worker_id,))
            for worker, factor in result.scales:
                stats.population_retime_scales.setdefault(worker, []).append(factor)
            if getattr(session, "spread_covers_batch_workers", False):
                self.context.worker_scales.observe(result.scales)
                stats.batch_timing_scales = self.context.worker_scales.current()
            stats.leaders_confirmed += result.confirmed
        elif result.worker_id:
            stats.retime_workers.add(result.worker_id)
        by_digest = {t.kernel_digest: t for t in result.timings}
        for index, handle in enumerate(handles):
            if handle is None:
                continue
            timing = by_digest.get(handle.source.digest)
            if timing is None or timing.status == "infra_error":
                timings[index] = None  # keep the prior timing; not the kernel's fault
            elif timing.status == "ok" and usable_ms(timing.perf_ms):
                timings[index] = timing.perf_ms
                self.context.last_perf_ms[handle.source.digest] = timing.perf_ms
            else:
                status = "timeout" if timing.status == "timeout" else "error"
                timings[index] = compat.IsolatedBenchmarkFailure(status)
        return timings

    def steady_window_benchmark_available(self) -> bool:
        return True

    def private_argument_copies_affordable(self, count: int) -> bool:
        return False

    def release_private_argument_copies(self) -> None:
        return None

    def set_compiler_seed_configs(self, configs: Sequence[Any]) -> None:
        self._compiler_seed_configs = set(configs)

    def has_measured_source_hash(self, source_hash: str) -> bool:
        return False

    def take_effective_source_repairs(self) -> dict[Any, Any]:
        return {}

    def take_no_viable_config_error(self) -> Exception | None:
        error, self._no_viable_config_error = self._no_viable_config_error, None
        return error

    def invalidate_effective_source_hash(self, source_hash: str) -> None:
        return None


def retime_call_timeout_s(per_kernel_timeout_s: float, count: int, warmup_ms: float, rep_ms: float) -> float:
    """The limit for one re-timing call of ``count`` kernels.

    Helion's timeout is per kernel, but one call re-times a whole population
    (130 members at its ~200 ms window took 30 s on an H200, so a flat 30 s
    limit cut a healthy worker off).  Each kernel gets its window twice over
    plus 50 ms to load, and the call Helion's timeout once on top for a hang.
    """
    return per_kernel_timeout_s + count * (2.0 * (warmup_ms + rep_ms) / 1000.0 + 0.05)


def _executor_budget_spent(executor: object) -> bool:
    """Backends with a cost budget (Modal's ``max_cost_usd``) say when it is spent."""
    check = getattr(executor, "budget_exceeded", None)
    return bool(check()) if callable(check) else False


def bind_provider(context: RemoteContext) -> type[RemoteBenchmarkProvider]:
    """A provider class bound to one run's context (Helion instantiates classes)."""
    return type("BoundRemoteBenchmarkProvider", (RemoteBenchmarkProvider,), {"context": context})


def _reject_local_only_settings(settings: Any) -> None:
    for name, why in (
        ("autotune_benchmark_fn", "it times kernels in the coordinator process"),
        ("autotune_baseline_fn", "the baseline is computed on the worker from the reference config"),
        ("autotune_baseline_accuracy_check_fn", "accuracy is checked on the worker"),
    ):
        if getattr(settings, name, None) is not None:
            raise ValueError(
                f"helion_remote does not support the {name} setting ({why}); remove it, "
                "or tune locally with stock Helion"
            )
