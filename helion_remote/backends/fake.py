"""The ``fake`` backend: an in-process executor with a cost model and faults.

A product feature, not a test double: a downstream project can run its real
Helion search (real config space, real codegen on the coordinator) in CI on
a machine with no GPU, with deterministic "timings" and injected failures, and
assert that its tuning pipeline survives compile errors, hangs, wrong answers,
lost workers and stragglers.

Semantics (documented in docs/fake-backend.md):

* Determinism: a job's outcome depends only on ``seed``, the config and the
  attempt number, never on thread timing or batch order.  Completion order
  may vary with ``latency_s``/stragglers; results carry job ids.  With
  unequal ``worker_speeds`` a timing also depends on which worker took it.
* Cost model: ``cost_model(config_dict) -> ms`` (default
  :func:`default_cost_model`), times a log-normal noise factor with
  ``noise`` standard deviation.  Re-timing uses ``noise / 4``.
* Faults: :class:`FaultRule` (a kind plus a ``rate`` and/or a predicate on the
  config dict).  Kernel faults (``compile_error``, ``runtime_error``,
  ``timeout``, ``accuracy_error``, ``sticky_error``) hit every attempt of a
  config they select, like a real broken kernel would; infrastructure faults
  (``worker_crash``, ``transport_error``) hit only the first attempt by
  default (``attempts``), so the coordinator's retry on another worker
  succeeds.  ``straggler`` multiplies the job's latency by ``slow_factor``.
  ``worker_crash`` and ``sticky_error`` replace the worker (new worker id).
* Compile time: ``compile_cost_model(config_dict) -> seconds`` is reported as
  each job's ``compile_time_s`` (not slept), e.g. to exercise the provider's
  longest-compile-first ordering; default 0.01 s.
* Re-timing is served only for kernels this executor measured ``ok``;
  anything else is an error, like a real worker that never compiled it.
* Several GPUs of one host: ``worker_speeds[i]`` multiplies worker ``i``'s
  timings (batch and re-timing), like same-model GPUs whose clocks differ;
  ``spread_retime=True`` shares population re-benchmarks over every worker,
  anchored, as the ``local`` backend does on 2+ GPUs (``retime_spread``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import queue
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ClassVar, Literal

from helion_remote.blobs import BlobStore, MemoryBlobStore
from helion_remote.executor import RemoteBenchmarkExecutor, RemoteSession
from helion_remote.result_stream import ResultStream
from helion_remote.spread import spread_groups, spread_retime
from helion_remote.protocol import (
    BenchmarkJob,
    JobResult,
    KernelSource,
    RetimeResult,
    RetimeTiming,
    SessionSpec,
    Status,
    WorkerInfo,
    config_key,
)

FaultKind = Literal[
    "compile_error",
    "runtime_error",
    "timeout",
    "accuracy_error",
    "sticky_error",
    "worker_crash",
    "transport_error",
    "straggler",
]
KERNEL_FAULTS = ("compile_error", "runtime_error", "timeout", "accuracy_error", "sticky_error")
INFRA_FAULTS = ("worker_crash", "transport_error")
FAULT_KINDS: tuple[str, ...] = (*KERNEL_FAULTS, *INFRA_FAULTS, "straggler")

ConfigPredicate = Callable[[dict[str, object]], bool]


@dataclasses.dataclass(frozen=True)
class FaultRule:
    """Inject ``kind`` into jobs selected by ``rate`` and/or ``when``.

    With both set, a job must match the predicate *and* win the rate draw.
    ``attempts`` limits which attempts are hit: a tuple of attempt numbers,
    ``"all"``, or ``None`` for the kind's default (kernel faults hit every
    attempt, infrastructure faults only the first, so a retry succeeds).
    """

    kind: FaultKind
    rate: float | None = None
    when: ConfigPredicate | None = None
    attempts: tuple[int, ...] | Literal["all"] | None = None
    slow_factor: float = 20.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; valid kinds: {', '.join(FAULT_KINDS)}")
        if self.rate is None and self.when is None:
            raise ValueError(f"FaultRule({self.kind!r}) needs rate= or when= (or both)")
        if self.rate is not None and not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"FaultRule rate must be in [0, 1], got {self.rate!r}")

    def effective_attempts(self) -> tuple[int, ...] | None:
        """Attempt numbers this rule may hit; ``None`` means every attempt."""
        if self.attempts == "all":
            return None
        if self.attempts is not None:
            return tuple(self.attempts)
        return (0,) if self.kind in INFRA_FAULTS else None


_INJECTED: dict[str, tuple[Status, str, str, bool, bool]] = {
    # kind: (status, error class, message, reports a compile time, replaces the worker)
    "worker_crash": ("infra_error", "worker_crash", "fake worker process died", False, True),
    "transport_error": ("infra_error", "transport_error", "fake transport dropped the reply", False, False),
    "compile_error": ("error", "CompilationError", "injected compile error", True, False),
    "runtime_error": ("error", "RuntimeError", "injected runtime error", True, False),
    "sticky_error": ("error", "RuntimeError",
                     "CUDA error: an illegal memory access was encountered (injected; worker replaced)", True, True),
    "timeout": ("timeout", "Timeout", "injected hang, cut off after {run_timeout_s}s", False, True),
    "accuracy_error": ("accuracy_error", "AssertionError",
                       "injected accuracy failure: output differs from the baseline", True, False),
}
"""What each injected fault answers, built by ``JobResult.failed`` like every real failure."""


def _unit(*parts: object) -> float:
    """A deterministic number in [0, 1) from ``parts``."""
    digest = hashlib.sha256("\0".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def default_cost_model(config: dict[str, object]) -> float:
    """A smooth, plausible latency landscape (ms) so searches make progress.

    Prefers mid-size power-of-two blocks, 4-8 warps and 2-4 stages, with a
    small deterministic per-config ruggedness term.
    """
    cost = 1.0
    blocks = config.get("block_sizes") or []
    for block in blocks if isinstance(blocks, list) else []:
        if isinstance(block, int) and block > 0:
            cost += 0.15 * (math.log2(block) - 6.0) ** 2
    warps = config.get("num_warps")
    if isinstance(warps, int) and warps > 0:
        cost += 0.1 * (math.log2(warps) - 2.5) ** 2
    stages = config.get("num_stages")
    if isinstance(stages, int):
        cost += 0.05 * (stages - 3) ** 2
    return cost * (1.0 + 0.1 * _unit("rugged", config_key(config)))


@dataclasses.dataclass
class _FakeWorker:
    slot: int
    generation: int = 0

    @property
    def worker_id(self) -> str:
        return f"fake-{self.slot}.{self.generation}"


class FakeExecutor(RemoteBenchmarkExecutor):
    """In-process executor; see the module docstring for its semantics."""

    name = "fake"

    def __init__(
        self,
        *,
        seed: int = 0,
        workers: int = 4,
        latency_s: float = 0.0,
        cost_model: Callable[[dict[str, object]], float] = default_cost_model,
        noise: float = 0.02,
        faults: Sequence[FaultRule] = (),
        blob_store: BlobStore | None = None,
        device_name: str = "Fake GPU",
        space_report: dict[str, object] | None = None,
        compile_cost_model: Callable[[dict[str, object]], float] | None = None,
        worker_speeds: Sequence[float] = (),
        spread_retime: bool = False,
    ) -> None:
        if workers < 1:
            raise ValueError(f"FakeExecutor needs workers >= 1, got {workers!r}")
        if worker_speeds and (len(worker_speeds) != workers or not all(
                isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in worker_speeds)):
            raise ValueError(
                f"worker_speeds needs one positive factor per worker ({workers}), got {tuple(worker_speeds)!r}; "
                "leave it empty for identical workers"
            )
        if latency_s < 0:
            raise ValueError(f"latency_s must be >= 0, got {latency_s!r}")
        super().__init__()
        self.seed = seed
        self.latency_s = latency_s
        self.cost_model = cost_model
        self.noise = noise
        self.faults = tuple(faults)
        self.device_name = device_name
        self.space_report = space_report
        """What the fake's "workers" report as Helion's config space on the real
        arguments (drift guard); None: they report nothing, the guard is skipped."""
        self.compile_cost_model = compile_cost_model
        """``config_dict -> seconds`` reported as each job's compile time (not slept); None: 0.01 s."""
        self.worker_speeds = tuple(float(v) for v in worker_speeds) or (1.0,) * workers
        """Worker ``i``'s timings are multiplied by ``worker_speeds[i]`` (a GPU whose clock differs)."""
        self.spread_retime = spread_retime
        """Population re-benchmarks are shared over every worker, anchored (``retime_spread``)."""
        self._blob_store = blob_store if blob_store is not None else MemoryBlobStore()
        self._workers = [_FakeWorker(i) for i in range(workers)]
        self._lock = threading.Lock()
        self._next_worker = 0
        self._measured: dict[str, dict[str, object]] = {}
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="fake-worker")  # threads start on first use
        self.sessions_opened = 0
        self.jobs_submitted = 0
        """Jobs handed to ``submit`` (retries included), whether or not they ran."""
        self.jobs_run = 0
        self.retime_calls = 0
        self.job_log: list[tuple[BenchmarkJob, JobResult]] = []
        """Every job that ran and the result it got, in completion order: which config met which fault."""

    @property
    def blob_store(self) -> BlobStore:
        return self._blob_store

    def workers(self) -> list[WorkerInfo]:
        return [WorkerInfo(w.worker_id, self.device_name, f"FAKE-{w.slot}") for w in self._workers]

    def _open_session(self, spec: SessionSpec) -> FakeSession:
        if not self._blob_store.contains(spec.args_digest):
            raise KeyError(
                f"args blob {spec.args_digest} is not in {self._blob_store.describe()}; "
                "upload the arguments before opening a session"
            )
        self.sessions_opened += 1
        return (FakeSpreadSession if self.spread_retime else FakeSession)(self, spec)

    def _close(self) -> None:
        """Jobs not started are cancelled (their streams answer ``infra_error``); running ones finish."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- internals used by FakeSession -------------------------------------------------

    def _start(self, job: BenchmarkJob, results: queue.SimpleQueue[JobResult]) -> Future[JobResult]:
        """Run ``job`` on the pool; its result (or a crash of the fake itself) lands in ``results``."""
        future = self._pool.submit(self._run, job)

        def deliver(done: Future[JobResult]) -> None:
            if done.cancelled():
                return  # the stream was closed (or the executor): nobody reads it
            error = done.exception()
            if error is None:
                results.put(done.result())
                return
            # A cost model or predicate that raised: the fake's own trouble, not the kernel's.
            text = "".join(traceback.format_exception(error))
            results.put(JobResult.failed(job, "infra_error", f"the fake executor failed running this job:\n{text}",
                                         error_class=type(error).__name__))

        future.add_done_callback(deliver)
        return future

    def _pick_worker(self, avoid: Sequence[str]) -> _FakeWorker:
        with self._lock:
            for offset in range(len(self._workers)):
                worker = self._workers[(self._next_worker + offset) % len(self._workers)]
                if worker.worker_id not in avoid:
                    self._next_worker = (self._next_worker + offset + 1) % len(self._workers)
                    return worker
            worker = self._workers[self._next_worker]
            self._next_worker = (self._next_worker + 1) % len(self._workers)
            return worker

    def _replace_worker(self, worker: _FakeWorker) -> None:
        with self._lock:
            worker.generation += 1

    def _fault_for(self, job: BenchmarkJob) -> FaultRule | None:
        key = config_key(job.config) if job.config else job.kernel.digest
        for index, rule in enumerate(self.faults):
            attempts = rule.effective_attempts()
            if attempts is not None and job.attempt not in attempts:
                continue
            if rule.when is not None and not rule.when(job.config):
                continue
            draw_attempt = job.attempt if rule.kind in INFRA_FAULTS else 0
            if rule.rate is not None and _unit(self.seed, index, key, draw_attempt) >= rule.rate:
                continue
            return rule
        return None

    def _perf(self, config: dict[str, object], salt: object, noise: float) -> float:
        base = self.cost_model(config)
        u1 = max(_unit(self.seed, "n1", config_key(config), salt), 1e-12)
        u2 = _unit(self.seed, "n2", config_key(config), salt)
        gauss = math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)
        return base * math.exp(noise * gauss)

    def _run(self, job: BenchmarkJob) -> JobResult:
        try:
            result = self._outcome(job)
        finally:  # a cost model that raised still ran the job (its stream answers infra_error)
            with self._lock:
                self.jobs_run += 1
        with self._lock:
            self.job_log.append((job, result))
        return result

    def _outcome(self, job: BenchmarkJob) -> JobResult:
        worker = self._pick_worker(job.avoid_workers)
        worker_id = worker.worker_id
        started = time.time()
        fault = self._fault_for(job)
        delay = self.latency_s * (fault.slow_factor if fault and fault.kind == "straggler" else 1.0)
        if delay:
            time.sleep(delay)
        common = dict(
            job_id=job.job_id,
            worker_id=worker_id,
            device_name=self.device_name,
            device_uuid=f"FAKE-{worker.slot}",
            started_at=started,
            kernel_digest=job.kernel.digest,
        )
        kind = fault.kind if fault else None
        compiled_s = self.compile_cost_model(job.config) if self.compile_cost_model is not None else 0.01
        injected = _INJECTED.get(kind)  # type: ignore[arg-type]
        if injected is not None:
            status, error_class, message, compiled, replaces_worker = injected
            if replaces_worker:
                self._replace_worker(worker)
            return JobResult.failed(
                job, status, message.format(run_timeout_s=job.run_timeout_s), error_class=error_class,
                worker=WorkerInfo(worker_id, self.device_name, f"FAKE-{worker.slot}"), started_at=started,
                compile_time_s=compiled_s if compiled else None,
            )
        perf = self._perf(job.config, ("job", job.attempt), self.noise) * self.worker_speeds[worker.slot]
        with self._lock:
            self._measured[job.kernel.digest] = job.config
        return JobResult(status="ok", perf_ms=perf, compile_time_s=compiled_s, finished_at=time.time(), **common)

    def _retime(self, kernels: Sequence[KernelSource], worker: _FakeWorker, call: object) -> RetimeResult:
        timings = []
        for kernel in kernels:
            with self._lock:
                config = self._measured.get(kernel.digest)
            if config is None:
                timings.append(RetimeTiming(kernel.digest, "error", error_message="kernel was never measured ok on this executor"))
            else:
                perf = self._perf(config, ("retime", call), self.noise / 4) * self.worker_speeds[worker.slot]
                timings.append(RetimeTiming(kernel.digest, "ok", perf))
        return RetimeResult(tuple(timings), worker.worker_id, self.device_name, f"FAKE-{worker.slot}")


class FakeSession(RemoteSession):
    """A search's session on the :class:`FakeExecutor`; finalists re-time on one worker."""

    def __init__(self, executor: FakeExecutor, spec: SessionSpec) -> None:
        super().__init__(executor, spec)
        self.space_report = executor.space_report
        self._executor = executor
        self._retime_worker: _FakeWorker | None = None
        self._retime_calls = 0

    def _submit(self, jobs: list[BenchmarkJob]) -> ResultStream:
        """Every job is on the pool when this returns, like a real backend; ``close()`` cancels the unstarted."""
        results: queue.SimpleQueue[JobResult] = queue.SimpleQueue()
        with self._executor._lock:
            self._executor.jobs_submitted += len(jobs)
        futures = [self._executor._start(job, results) for job in jobs]

        def cancel() -> None:
            for future in futures:
                future.cancel()  # only jobs no worker thread has taken yet

        return ResultStream([job.job_id for job in jobs], results, cancel, gone=lambda: self._executor.closed)

    def _worker_for_retime(self) -> _FakeWorker:
        if self._retime_worker is None:
            self._retime_worker = self._executor._pick_worker(())
        return self._retime_worker

    def retime(self, kernels: Sequence[KernelSource], *, warmup_ms: float, rep_ms: float, timeout_s: float) -> RetimeResult:
        worker = self._worker_for_retime()
        self._retime_calls += 1
        self._executor.retime_calls += 1
        return self._executor._retime(kernels, worker, self._retime_calls)


class FakeSpreadSession(FakeSession):
    """``spread_retime=True``: population re-benchmarks use every worker, anchored, as ``local`` on 2+ GPUs."""

    spread_covers_batch_workers: ClassVar[bool] = True
    """Every fake worker times batch jobs and takes part in each spread."""

    def retime_spread(
        self, kernels: Sequence[KernelSource], *, warmup_ms: float, rep_ms: float, timeout_s: float
    ) -> RetimeResult:
        """Population re-benchmark over every worker, in ``retime``'s worker's units."""
        first = self._worker_for_retime()
        workers = [first, *(w for w in self._executor._workers if w is not first)]
        groups = spread_groups(kernels, len(workers))
        if groups is None:
            return self.retime(kernels, warmup_ms=warmup_ms, rep_ms=rep_ms, timeout_s=timeout_s)
        self._retime_calls += 1
        self._executor.retime_calls += 1
        call = self._retime_calls
        return spread_retime(
            kernels, groups,
            run=lambda i, group: self._executor._retime(group, workers[i], call if i == 0 else (call, i)),
            redo=lambda group: self.retime(group, warmup_ms=warmup_ms, rep_ms=rep_ms, timeout_s=timeout_s),
        )


__all__ = [
    "FAULT_KINDS",
    "FakeExecutor",
    "FakeSession",
    "FakeSpreadSession",
    "FaultRule",
    "default_cost_model",
]
