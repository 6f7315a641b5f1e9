"""One benchmark batch: code generated as a stream, identical sources measured once, results in Helion's order.

Jobs leave in growing chunks while code for the rest of the batch is still
being generated (``dispatch.growing_chunks``), longest predicted compile
first (``compile_order``).  A config whose module is byte-identical to one
already measured or in flight in this session is answered with that result.
Once a budget is spent, nothing more is generated and the jobs in flight are
cancelled; their configs stay unmeasured (``perf=inf``), as Helion's provider
leaves the configs it skips.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from helion_remote.coordinator.codegen import config_to_dict, kernel_source
from helion_remote.coordinator.compile_order import compile_seconds
from helion_remote.coordinator.dispatch import growing_chunks, run_jobs
from helion_remote.coordinator.helion_results import RemoteKernel, record_codegen_failure, to_helion, unmeasured
from helion_remote.coordinator.session_opener import OpenedSession
from helion_remote.protocol import BenchmarkJob, JobResult, KernelSource

if TYPE_CHECKING:
    from helion_remote.coordinator.seam import RemoteBenchmarkProvider


class Batch:
    """The state of one ``benchmark`` call, from code generation to Helion's results."""

    def __init__(self, provider: RemoteBenchmarkProvider, opened: OpenedSession, configs: Sequence[Any], desc: str) -> None:
        self._provider = provider
        self._context = provider.context
        self._opened = opened
        self._configs = list(configs)
        self._desc = desc
        self._results = [unmeasured(c) for c in self._configs]
        self._jobs: dict[str, tuple[int, BenchmarkJob, RemoteKernel]] = {}
        self._copies: list[tuple[int, str, RemoteKernel]] = []
        """(index, digest, handle) of configs whose source is already measured or in flight."""
        self._in_flight: set[str] = set()
        self._handled = 0
        self._measured = self._failed = 0
        self._finals: dict[str, JobResult] = {}
        self._spent = False
        self.no_viable_error: Exception | None = None
        """The codegen error of the batch's last config when nothing was dispatched and nothing
        measured so far: Helion raises it, or reports it later (``raise_if_no_viable_config``)."""

    def dispatch(self) -> None:
        """Generate, submit and wait for every job of the batch."""
        self._context.stats.batches += 1
        compile_cost = self._context.state.compile_cost
        order = compile_cost.order(self._configs) if compile_cost is not None else range(len(self._configs))
        self._finals = run_jobs(
            self._opened.session,
            growing_chunks(self._new_jobs(order)),
            stats=self._context.stats,
            max_infra_retries=self._context.options.max_infra_retries,
            on_result=self._report,
            budget_spent=self._budget_spent,
        )
        cancelled = len(self._jobs) - len(self._finals)
        if cancelled and self._context.progress is not None:
            self._context.progress(
                f"{self._desc.rstrip(': ')}: budget spent, {cancelled} job(s) cancelled, "
                f"{self._measured}/{len(self._jobs)} measured", final=True,
            )

    def helion_results(self) -> list[Any]:
        """Helion's ``BenchmarkResult`` per config, in the order the search asked."""
        state, measured_sources = self._context.state, self._opened.measured_sources
        answered: dict[str, JobResult] = {}
        for job_id, (index, job, handle) in self._jobs.items():
            final = self._finals.get(job_id)
            if final is None:  # cancelled: the budget was spent first
                state.stats.budget_cancelled += 1
                continue
            answered[job.kernel.digest] = final
            self._results[index] = to_helion(self._provider, self._configs[index], handle, final)
            if final.status == "infra_error":
                continue  # lost, not measured: a later config with this source is measured again
            measured_sources[job.kernel.digest] = final
            if state.compile_cost is not None:
                state.compile_cost.observe(self._configs[index], compile_seconds(final.stages, final.compile_time_s))
        for index, digest, handle in self._copies:
            original = measured_sources.get(digest) or answered.get(digest)
            if original is None:  # a copy of a job the budget cancelled
                state.stats.budget_cancelled += 1
                continue
            state.stats.deduplicated += original.status != "infra_error"  # a lost one's copy is lost, not answered
            self._results[index] = to_helion(self._provider, self._configs[index], handle, original, measured=False)
        return self._results

    def _sources(self, order: Sequence[int]) -> Iterator[tuple[int, KernelSource | Exception]]:
        """``(index, source or codegen error)`` in dispatch ``order``: a pool's processes, else here."""
        configs = self._configs
        pool = self._context.codegen_pool
        if pool is not None and pool.size and len(configs) >= 2 * pool.size:
            for position, item in pool.generate([configs[i] for i in order]):
                yield order[position], item
            return
        for index in order:
            try:
                yield index, kernel_source(self._provider.kernel, configs[index])
            except Exception as error:  # noqa: BLE001 - a codegen failure is the config's
                yield index, error

    def _new_jobs(self, order: Sequence[int]) -> Iterator[BenchmarkJob]:
        """Jobs as their code is generated, so early chunks reach workers sooner."""
        stats = self._context.stats
        stream = self._sources(order)
        try:
            while not self._budget_spent():
                started = time.perf_counter()
                item = next(stream, None)
                stats.codegen_s += time.perf_counter() - started
                if item is None:
                    return
                self._handled += 1
                index, source = item
                if isinstance(source, Exception):
                    self._codegen_failed(index, source)
                elif self._already_measured(source):
                    self._copies.append((index, source.digest, RemoteKernel(source, self._configs[index])))
                else:
                    yield self._new_job(index, source)
            # Like Helion's own provider: configs not handled once a budget is spent stay perf=inf.
            stats.budget_skipped += len(self._configs) - self._handled
        finally:
            stream.close()  # a pool stops feeding its processes and waits for their replies

    def _budget_spent(self) -> bool:
        """Helion's wall-clock budget or the backend's spending budget; once spent, spent for the batch
        (Helion's check logs each time it answers yes)."""
        self._spent = self._spent or self._provider.budget_exceeded_fn() or self._context.executor.budget_exceeded()
        return self._spent

    def _codegen_failed(self, index: int, error: Exception) -> None:
        self._results[index] = record_codegen_failure(self._provider, self._results[index], error)
        if not self._jobs and self._handled == len(self._configs) and self._nothing_measured():
            self.no_viable_error = error

    def _already_measured(self, source: KernelSource) -> bool:
        return self._context.options.deduplicate_sources and (
            source.digest in self._in_flight or source.digest in self._opened.measured_sources
        )

    def _new_job(self, index: int, source: KernelSource) -> BenchmarkJob:
        config, settings = self._configs[index], self._provider.settings
        job = BenchmarkJob(
            job_id=self._context.state.next_job_id(),
            kernel=source,
            args_digest=self._context.args_digest,
            baseline_digest=self._opened.session.spec.baseline_digest,
            tolerances=self._opened.session.spec.tolerances,
            compile_timeout_s=float(settings.autotune_compile_timeout),
            run_timeout_s=float(settings.autotune_benchmark_timeout),
            config=config_to_dict(config),
        )
        self._in_flight.add(source.digest)
        self._jobs[job.job_id] = (index, job, RemoteKernel(source, config))
        return job

    def _nothing_measured(self) -> bool:
        return self._provider._autotune_metrics.num_successful_candidate_measurements == 0

    def _report(self, result: JobResult) -> None:
        self._measured += 1
        self._failed += result.status != "ok"
        if self._context.progress is not None:
            total = len(self._jobs)
            self._context.progress(
                f"{self._desc.rstrip(': ')}: {self._measured}/{total} measured, {self._failed} failed",
                final=self._measured == total,
            )
