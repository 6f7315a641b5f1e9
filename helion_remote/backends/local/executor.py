"""The ``local`` executor and its sessions: worker processes on this machine's GPUs (or its CPU).

One long-lived device worker per visible GPU runs candidates; a pool of
compile workers (one per CPU core by default) compiles them ahead (see
:mod:`.pipeline`).  Without a GPU the pool is ``cpu_workers``
Triton-interpreter workers on CPU tensors and no compile stage (the
interpreter has none).  Interpreter timings say nothing about GPU speed; the
executor warns once.
"""

from __future__ import annotations

import atexit
import functools
import logging
import math
import os
import queue
import threading
import warnings
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

from helion_remote.backends.local.devices import check_one_model
from helion_remote.backends.local.devices import visible_gpus as _visible_gpus
from helion_remote.backends.local.pipeline import Pipeline, Task
from helion_remote.blobs import BlobStore, DirectoryBlobStore, default_cache_dir
from helion_remote.errors import SessionOpenError, WorkerError
from helion_remote.executor import RemoteBenchmarkExecutor, RemoteSession
from helion_remote.protocol import BenchmarkJob, JobResult, KernelSource, RetimeResult, SessionSpec, WorkerInfo
from helion_remote.result_stream import ResultStream
from helion_remote.spread import spread_groups, spread_retime
from helion_remote.worker.process import WorkerHandle, WorkerSpec, start_worker_server

log = logging.getLogger(__name__)

INTERPRETER_WARNING = (
    "helion_remote local backend: no GPU visible, running kernels under the Triton "
    "interpreter on CPU. Timings are INTERPRETER timings and say nothing about GPU speed."
)
_CONTEXT_BYTES = 768 << 20
"""Rough CUDA context + allocator overhead of one compile worker on a GPU."""
_COMPILE_MEMORY_FRACTION = 0.25
_COMPILE_NICE = 10
"""Compile workers run niced: the device workers (and the coordinator) are the critical path."""


class LocalExecutor(RemoteBenchmarkExecutor):
    """A ``RemoteBenchmarkExecutor`` over local worker processes."""

    name = "local"

    def __init__(
        self,
        *,
        devices: Sequence[int] | None = None,
        cpu_workers: int = 1,
        compile_workers: int | None = None,
        blob_store: BlobStore | None = None,
        allow_mixed_devices: bool = False,
        jobs_in_flight_per_worker: int | None = None,
        work_dir: str | os.PathLike[str] | None = None,
        timeout_margin_s: float = 10.0,
        start_timeout_s: float = 300.0,
    ) -> None:
        super().__init__()
        root = Path(work_dir) if work_dir is not None else default_cache_dir()
        self._blob_store = blob_store if blob_store is not None else DirectoryBlobStore(root / "blobs")
        self._work_dir = str(root / "local-worker")
        gpus = _visible_gpus(devices)
        self.interpreter = not gpus
        if gpus and not allow_mixed_devices:
            check_one_model(gpus)
        self._gpu_memory = sum(mem for _, _, mem in gpus)
        if gpus:
            # The workers' forkserver imports torch/Triton/Helion while the caller binds its kernel.
            threading.Thread(target=_quietly, args=(start_worker_server,), daemon=True).start()

        def spec(worker_id: str, device: int | None, nice: int = 0) -> WorkerSpec:
            return WorkerSpec(
                worker_id, self._blob_store, self._work_dir, device,
                timeout_margin_s=timeout_margin_s, start_timeout_s=start_timeout_s, nice=nice,
            )

        host = os.uname().nodename
        if self.interpreter:
            warnings.warn(INTERPRETER_WARNING, RuntimeWarning, stacklevel=2)
            log.warning(INTERPRETER_WARNING)
            devices_ = [WorkerHandle(spec(f"local-{host}-cpu{i}", None)) for i in range(max(1, cpu_workers))]
            compilers: list[WorkerHandle] = []
        else:
            devices_ = [WorkerHandle(spec(f"local-{host}-gpu{i}", i)) for i, _, _ in gpus]
            n_compile = compile_workers if compile_workers is not None else (os.cpu_count() or 1)
            compilers = [
                WorkerHandle(spec(f"local-{host}-compile{j}", gpus[j % len(gpus)][0], nice=_COMPILE_NICE))
                for j in range(n_compile)
            ]
        # In flight per GPU: everything its share of the compile pool is
        # compiling, plus a buffer of compiled candidates so compile-time
        # variance never leaves the GPU waiting.
        compilers_per_gpu = math.ceil(len(compilers) / len(devices_))
        per_worker = jobs_in_flight_per_worker or max(2, compilers_per_gpu + max(4, compilers_per_gpu // 2))
        self._pipeline = Pipeline(devices_, compilers, per_worker * len(devices_))
        self._handles = [*devices_, *compilers]
        """Every worker, including those the pipeline left out (closed with the rest)."""
        self._start_lock = threading.Lock()
        self._started = False
        _register_atexit(self)

    @property
    def _devices(self) -> list[WorkerHandle]:
        return self._pipeline.devices

    @property
    def _compilers(self) -> list[WorkerHandle]:
        return self._pipeline.compilers

    # ------------------------------------------------------------------ contract

    @property
    def blob_store(self) -> BlobStore:
        return self._blob_store

    def workers(self) -> list[WorkerInfo]:
        self._start()
        return [handle.info() for handle in self._devices]

    def _open_session(self, spec: SessionSpec) -> LocalSession:
        """Open ``spec`` on every device worker now, so a broken reference fails here."""
        self._start()
        self._pipeline.compile_slots = self._compile_slots_for(spec)
        for handle in self._compilers[: self._pipeline.compile_slots]:
            # Load the arguments on the compile workers while the device workers
            # run the baseline; a failure here resurfaces on the first compile.
            warm = functools.partial(handle.ensure_session, spec, baseline=False)
            threading.Thread(target=_quietly, args=(warm,), daemon=True).start()
        errors: list[str] = []
        opened: list[str] = []
        reports: dict[str, dict[str, object] | None] = {}

        def open_on(handle: WorkerHandle) -> None:
            try:
                with handle.lock:
                    summary = handle.ensure_session(spec, baseline=True)
                opened.append(handle.worker_id)
                reports[handle.worker_id] = summary.space_report if summary is not None else None
            except Exception as error:  # noqa: BLE001 - summarized below
                errors.append(f"{handle.worker_id}: {error}")

        threads = [threading.Thread(target=open_on, args=(h,)) for h in self._devices]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if not opened:
            raise SessionOpenError(f"could not open session {spec.session_id} on any local worker: " + "; ".join(errors))
        for message in errors:
            log.warning("session %s not opened on %s", spec.session_id, message)
        # Re-time on the first device that holds the session (GPU 0 unless it failed to open).
        retime_worker = next(h for h in self._devices if h.worker_id in opened)
        space_report = next((r for r in reports.values() if r is not None), None)
        return LocalSession(self, spec, retime_worker, space_report)

    def target_profile(self) -> dict[str, object] | None:
        """The device workers' TargetProfile (captured by worker 0); None under the interpreter."""
        self._start()
        if self.interpreter:
            return None
        return self._devices[0].target_profile()

    def suggested_codegen_workers(self) -> int:
        """Codegen processes for ``autotune(codegen_workers=None)``: one per 8 CPUs, at most 4.

        The coordinator's one-thread code generation (~26 ms a config on an
        H200 host) feeds every batch.  Measured on 2x H200 (32 CPUs), a pool
        of 4 took 2-GPU batches from 16-19 to 24-27 configs/s and one-GPU
        batches from ~16 to ~18.  Fewer than 8 CPUs per process would take
        cores from the compile workers; the interpreter pool has none to spare.
        """
        if self.interpreter:
            return 0
        return min(4, (os.cpu_count() or 1) // 8)

    def startup_report(self) -> dict[str, dict[str, float]]:
        """Seconds each worker took to start and to open its last session."""
        return {h.worker_id: dict(h.timings) for h in self._handles if h.timings}

    def _close(self) -> None:
        self._pipeline.close()
        for handle in self._handles:
            handle.kill_now()
        for handle in self._handles:
            handle.close()

    # ------------------------------------------------------------------ internals

    def _start(self) -> None:
        """Start the worker processes and the pipeline's threads, once."""
        with self._start_lock:
            self._check_open()
            if self._started:
                return
            self._started = True
        failed: dict[str, str] = {}
        starters = [threading.Thread(target=_start_or_warn, args=(h, failed), daemon=True) for h in self._devices]
        for t in starters:
            t.start()
        # Compile workers start in the background (a compile request waits for
        # its worker), so the first batch does not pay 16 interpreter starts.
        for handle in self._compilers:
            threading.Thread(target=self._start_compiler, args=(handle,), daemon=True).start()
        for t in starters:
            t.join()
        if len(failed) == len(self._devices):
            with self._start_lock:
                self._started = False  # the next call tries again
            raise WorkerError("no local worker could start: " + "; ".join(f"{w}: {why}" for w, why in failed.items()))
        # The pool carries on without the workers that could not start (each was one warning).
        self._pipeline.devices = [h for h in self._devices if h.worker_id not in failed]
        self._pipeline.start()

    def _start_compiler(self, handle: WorkerHandle) -> None:
        """Start a compile worker in the background; one that cannot start leaves the pipeline
        (else every job would try to start it again)."""
        failed: dict[str, str] = {}
        _start_or_warn(handle, failed)
        if failed:
            self._pipeline.retire(handle)

    def _compile_slots_for(self, spec: SessionSpec) -> int:
        """Compile workers hold the arguments on a GPU: cap them by GPU memory."""
        if not self._compilers:
            return 0
        try:
            from helion_remote.args_manifest import load_manifest

            doc = load_manifest(self._blob_store.get(spec.args_digest))
            args_bytes = sum(int(ref["nbytes"]) for ref in doc["storages"])
        except Exception:  # noqa: BLE001 - the workers will report the real problem
            args_bytes = 0
        budget = self._gpu_memory * _COMPILE_MEMORY_FRACTION
        return max(1, min(len(self._compilers), int(budget // (args_bytes + _CONTEXT_BYTES))))


class LocalSession(RemoteSession):
    """One search on a ``LocalExecutor``; ``retime`` always uses ``retime_worker``."""

    spread_covers_batch_workers: ClassVar[bool] = True
    """Every device worker times batch jobs and takes part in every spread re-benchmark."""

    def __init__(self, executor: LocalExecutor, spec: SessionSpec, retime_worker: WorkerHandle,
                 space_report: dict[str, object] | None) -> None:
        super().__init__(executor, spec)
        self._executor = executor
        self._retime_worker = retime_worker
        self.space_report = space_report

    def _submit(self, jobs: list[BenchmarkJob]) -> ResultStream:
        """Queue every job now; the stream yields results as they complete (``close()`` cancels the rest)."""
        results: queue.SimpleQueue[JobResult] = queue.SimpleQueue()
        tasks = [Task(job, self.spec, results) for job in jobs]
        pipeline = self._executor._pipeline
        pipeline.enqueue(tasks)
        return ResultStream([t.job.job_id for t in tasks], results, lambda: pipeline.cancel(tasks),
                            gone=lambda: self._executor.closed)

    def retime(
        self, kernels: Sequence[KernelSource], *, warmup_ms: float, rep_ms: float, timeout_s: float
    ) -> RetimeResult:
        return self._retime_worker.retime(self.spec, kernels, warmup_ms, rep_ms, timeout_s)

    def retime_spread(
        self, kernels: Sequence[KernelSource], *, warmup_ms: float, rep_ms: float, timeout_s: float
    ) -> RetimeResult:
        """The population re-benchmark over every device worker, in ``retime``'s units
        (anchored; see :mod:`helion_remote.spread`).  One worker or few kernels: ``retime``."""
        workers = [self._retime_worker, *(h for h in self._executor._devices if h is not self._retime_worker)]
        groups = spread_groups(kernels, len(workers))
        if groups is None:
            return self.retime(kernels, warmup_ms=warmup_ms, rep_ms=rep_ms, timeout_s=timeout_s)
        return spread_retime(
            kernels, groups,
            run=lambda i, group: workers[i].retime(self.spec, group, warmup_ms, rep_ms, timeout_s),
            redo=lambda group: self.retime(group, warmup_ms=warmup_ms, rep_ms=rep_ms, timeout_s=timeout_s),
        )


def _start_or_warn(handle: WorkerHandle, failed: dict[str, str]) -> None:
    """Start one worker from a start-up thread: a failure is one warning line, never a thread traceback."""
    try:
        handle.start()
    except Exception as error:  # noqa: BLE001 - the pool carries on with the others
        failed[handle.worker_id] = str(error)
        log.warning("local worker %s could not start, carrying on without it: %s", handle.worker_id, error)


def _quietly(call: Callable[[], object]) -> None:
    """Run a warm-up step whose failure the next real request reports properly."""
    try:
        call()
    except Exception as error:  # noqa: BLE001
        log.debug("warm-up step %s failed: %s", call, error)


_LIVE: weakref.WeakSet[LocalExecutor] = weakref.WeakSet()
_ATEXIT_REGISTERED = False


def _register_atexit(executor: LocalExecutor) -> None:
    """Close every live executor at exit, so no worker process outlives the coordinator."""
    global _ATEXIT_REGISTERED
    if not _ATEXIT_REGISTERED:
        atexit.register(_close_all)
        _ATEXIT_REGISTERED = True
    _LIVE.add(executor)


def _close_all() -> None:
    for executor in list(_LIVE):
        executor.close()
