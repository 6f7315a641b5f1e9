"""The ``local`` backend: worker processes on this machine's GPUs (or its CPU).

One long-lived device worker per visible GPU runs candidates; a pool of
compile workers (one per CPU core by default) compiles them ahead into a
shared per-session Triton cache, so a GPU only loads a ready binary and never
waits on a compiler while compiled candidates exist.  The pipeline admits at
most ``jobs_in_flight_per_worker`` jobs per GPU between "compile started" and
"timed", which bounds both wasted compiles at the end of a batch and the
staleness of the queue.

Without a GPU the pool is ``cpu_workers`` Triton-interpreter workers on CPU
tensors and no compile stage (the interpreter has none).  Interpreter timings
say nothing about GPU speed; the executor warns once.
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import functools
import logging
import math
import os
import queue
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

from helion_remote.errors import BackendUnavailableError
from helion_remote.blobs import BlobStore, DirectoryBlobStore, default_cache_dir
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


class MixedDevicesError(BackendUnavailableError):
    """The visible GPUs are not all one model: their timings would not compare."""


@dataclasses.dataclass(eq=False)
class _Task:
    job: BenchmarkJob
    session: _LocalSession
    results: queue.SimpleQueue[JobResult]
    compile_time_s: float | None = None
    cancelled: bool = False
    queued_at: float = dataclasses.field(default_factory=time.monotonic)
    compile_started_at: float | None = None
    compiled_at: float | None = None

    def stages(self, run_started_at: float) -> dict[str, float]:
        """Where the job waited before its device stage (the journal's ``stages``)."""
        if self.compile_started_at is None or self.compiled_at is None:
            return {"queue": run_started_at - self.queued_at}
        return {
            "queue": self.compile_started_at - self.queued_at,
            "compile_wall": self.compiled_at - self.compile_started_at,
            "ready_wait": run_started_at - self.compiled_at,
        }


class LocalExecutor:
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
        root = Path(work_dir) if work_dir is not None else default_cache_dir()
        self._blob_store = blob_store if blob_store is not None else DirectoryBlobStore(root / "blobs")
        self._work_dir = str(root / "local-worker")
        gpus = _visible_gpus(devices)
        self.interpreter = not gpus
        if gpus and not allow_mixed_devices:
            models = sorted({name for _, name, _ in gpus})
            if len(models) > 1:
                listing = ", ".join(f"cuda:{i}={name}" for i, name, _ in gpus)
                raise MixedDevicesError(
                    f"the local pool mixes GPU models ({listing}); timings across models do not compare. "
                    f"Pass devices=[...] to pick one model or allow_mixed_devices=True."
                )
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
            self._devices = [WorkerHandle(spec(f"local-{host}-cpu{i}", None)) for i in range(max(1, cpu_workers))]
            self._compilers: list[WorkerHandle] = []
        else:
            self._devices = [WorkerHandle(spec(f"local-{host}-gpu{i}", i)) for i, _, _ in gpus]
            n_compile = compile_workers if compile_workers is not None else (os.cpu_count() or 1)
            self._compilers = [
                WorkerHandle(spec(f"local-{host}-compile{j}", gpus[j % len(gpus)][0], nice=_COMPILE_NICE))
                for j in range(n_compile)
            ]
        # In flight per GPU: everything its share of the compile pool is
        # compiling, plus a buffer of compiled candidates so compile-time
        # variance never leaves the GPU waiting.
        compilers_per_gpu = math.ceil(len(self._compilers) / len(self._devices))
        per_worker = jobs_in_flight_per_worker or max(2, compilers_per_gpu + max(4, compilers_per_gpu // 2))
        self._capacity = per_worker * len(self._devices)
        self._cond = threading.Condition()
        self._pending: collections.deque[_Task] = collections.deque()
        self._ready: list[_Task] = []
        self._admitted = 0
        self._compile_slots = len(self._compilers)
        self._threads: list[threading.Thread] = []
        self._started = False
        self._closed = False
        _register_atexit(self)

    # ------------------------------------------------------------------ protocol

    @property
    def blob_store(self) -> BlobStore:
        return self._blob_store

    def workers(self) -> list[WorkerInfo]:
        self._start()
        return [handle.info() for handle in self._devices]

    def open_session(self, spec: SessionSpec) -> _LocalSession:
        """Open ``spec`` on every device worker now, so a broken reference fails here."""
        self._start()
        self._compile_slots = self._compile_slots_for(spec)
        for handle in self._compilers[: self._compile_slots]:
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
                reports[handle.worker_id] = getattr(summary, "space_report", None)
            except Exception as error:  # noqa: BLE001 - summarized below
                errors.append(f"{handle.worker_id}: {error}")

        threads = [threading.Thread(target=open_on, args=(h,)) for h in self._devices]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if not opened:
            raise RuntimeError(f"could not open session {spec.session_id} on any local worker: " + "; ".join(errors))
        for message in errors:
            log.warning("session %s not opened on %s", spec.session_id, message)
        # Re-time on the first device that holds the session (GPU 0 unless it failed to open).
        retime_worker = next(h for h in self._devices if h.worker_id in opened)
        session = _LocalSession(self, spec, retime_worker)
        session.space_report = next((r for r in reports.values() if r is not None), None)
        return session

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
        return {h.worker_id: dict(h.timings) for h in [*self._devices, *self._compilers] if h.timings}

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            for task in [*self._pending, *self._ready]:
                task.cancelled = True
            self._pending.clear()
            self._ready.clear()
            self._cond.notify_all()
        for handle in [*self._devices, *self._compilers]:
            handle.kill_now()
        for handle in [*self._devices, *self._compilers]:
            handle.close()

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ pipeline

    def _start(self) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("LocalExecutor is closed")
            if self._started:
                return
            self._started = True
        starters = [threading.Thread(target=h.start, daemon=True) for h in self._devices]
        for t in starters:
            t.start()
        # Compile workers start in the background (a compile request waits for
        # its worker), so the first batch does not pay 16 interpreter starts.
        for handle in self._compilers:
            threading.Thread(target=_quietly, args=(handle.start,), daemon=True).start()
        for t in starters:
            t.join()
        for handle in self._devices:
            self._spawn_thread(self._device_loop, handle)
        for index, handle in enumerate(self._compilers):
            self._spawn_thread(self._compile_loop, handle, index)

    def _spawn_thread(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name=f"helion-remote-{args[0]}")  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _compile_slots_for(self, spec: SessionSpec) -> int:
        """Compile workers hold the arguments on a GPU: cap them by GPU memory."""
        if not self._compilers:
            return 0
        try:
            from helion_remote.argcodec import load_manifest

            doc = load_manifest(self._blob_store.get(spec.args_digest))
            args_bytes = sum(int(ref["nbytes"]) for ref in doc["storages"])
        except Exception:  # noqa: BLE001 - the workers will report the real problem
            args_bytes = 0
        budget = self._gpu_memory * _COMPILE_MEMORY_FRACTION
        return max(1, min(len(self._compilers), int(budget // (args_bytes + _CONTEXT_BYTES))))

    def _enqueue(self, tasks: list[_Task]) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("LocalExecutor is closed")
            self._pending.extend(tasks)
            self._cond.notify_all()

    def _cancel(self, tasks: list[_Task]) -> None:
        with self._cond:
            for task in tasks:
                task.cancelled = True
            self._pending = collections.deque(t for t in self._pending if not t.cancelled)
            ready = [t for t in self._ready if not t.cancelled]
            self._admitted -= len(self._ready) - len(ready)  # compiled, never run: free their slots
            self._ready = ready
            self._cond.notify_all()

    def _compile_loop(self, handle: WorkerHandle, index: int) -> None:
        while True:
            with self._cond:
                while not self._closed and not (
                    self._pending and self._admitted < self._capacity and index < self._compile_slots
                ):
                    self._cond.wait()
                if self._closed:
                    return
                task = self._pending.popleft()
                self._admitted += 1
            task.compile_started_at = time.monotonic()
            outcome = handle.compile(task.session.spec, task.job)
            # A compile timeout, or an expected Triton compile failure (not "raise"
            # class), is final.  Anything else is confirmed by the device worker.
            final = outcome.status == "timeout" or (outcome.status == "error" and not outcome.fatal)
            if final or outcome.status == "ok":
                task.compiled_at = time.monotonic()
                task.compile_time_s = outcome.compile_time_s
            # else (worker lost, error to confirm): the device stage compiles and times it;
            # the failed attempt's seconds would teach the compile-order model nonsense.
            if final:
                result = _compile_result(task.job, outcome, handle)
                self._finish(task, result.with_stages(**task.stages(task.compiled_at)), admitted=True)
                continue
            with self._cond:
                if task.cancelled:
                    self._admitted -= 1
                    self._cond.notify_all()
                    continue
                self._ready.append(task)
                self._cond.notify_all()

    def _device_loop(self, handle: WorkerHandle) -> None:
        while True:
            with self._cond:
                while not self._closed and (task := self._take_for(handle)) is None:
                    self._cond.wait()
                if self._closed:
                    return
            run_started = time.monotonic()
            result = handle.run_job(task.session.spec, task.job, task.compile_time_s)
            self._finish(task, result.with_stages(**task.stages(run_started)), admitted=bool(self._compilers))

    def _take_for(self, handle: WorkerHandle) -> _Task | None:
        """The oldest task this worker may run (``avoid_workers`` holds if another worker exists)."""
        source: list[_Task] | collections.deque[_Task] = self._ready if self._compilers else self._pending
        ids = {h.worker_id for h in self._devices}
        for task in source:
            avoided = set(task.job.avoid_workers)
            if handle.worker_id not in avoided or ids <= avoided:
                source.remove(task)
                return task
        return None

    def _finish(self, task: _Task, result: JobResult, *, admitted: bool) -> None:
        with self._cond:
            if admitted:
                self._admitted -= 1
            self._cond.notify_all()
        if not task.cancelled:
            task.results.put(result)


class _LocalSession:
    """One search on a ``LocalExecutor``; ``retime`` always uses ``retime_worker``."""

    def __init__(self, executor: LocalExecutor, spec: SessionSpec, retime_worker: WorkerHandle) -> None:
        self.spec = spec
        self._executor = executor
        self._retime_worker = retime_worker
        self.space_report: dict[str, object] | None = None
        """Helion's config space on the worker's real arguments (drift guard)."""
        self.spread_covers_batch_workers = True
        """Every GPU times batch jobs and takes part in every spread re-benchmark."""
        self._closed = False

    def submit(self, jobs: Sequence[BenchmarkJob]) -> ResultStream:
        """Start every job now; the stream yields results as they complete (``close()`` cancels the rest)."""
        results: queue.SimpleQueue[JobResult] = queue.SimpleQueue()
        tasks = [_Task(job, self, results) for job in jobs]
        if self._closed:
            raise RuntimeError(f"session {self.spec.session_id} is closed")
        self._executor._enqueue(tasks)
        return ResultStream([t.job.job_id for t in tasks], results, lambda: self._executor._cancel(tasks),
                            gone=lambda: self._executor._closed)

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

    def close(self) -> None:
        self._closed = True


def _compile_result(job: BenchmarkJob, outcome: object, handle: WorkerHandle) -> JobResult:
    from helion_remote.worker.runtime import CompileOutcome

    assert isinstance(outcome, CompileOutcome)
    info = handle._info or WorkerInfo(handle.worker_id, "")
    now = time.time()
    return JobResult(
        job_id=job.job_id,
        status=outcome.status,
        compile_time_s=outcome.compile_time_s,
        error_class=outcome.error_class,
        error_message=outcome.error_message,
        fatal=outcome.fatal,
        worker_id=handle.worker_id,
        device_name=info.device_name,
        device_uuid=info.device_uuid,
        started_at=now - outcome.compile_time_s,
        finished_at=now,
        kernel_digest=job.kernel.digest,
    )


def _quietly(call: Callable[[], object]) -> None:
    """Run a warm-up step whose failure the next real request reports properly."""
    try:
        call()
    except Exception as error:  # noqa: BLE001
        log.debug("warm-up step %s failed: %s", call, error)


def _visible_gpus(devices: Sequence[int] | None) -> list[tuple[int, str, int]]:
    """``(index, model, total_memory)`` per GPU to use; empty means the interpreter."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return []
    import torch

    if not torch.cuda.is_available():
        # A coordinator may hide the GPUs from itself (CUDA_VISIBLE_DEVICES="")
        # and still drive workers on them: ask a probe process that sees them.
        return _probe_gpus(devices) if devices else []
    indices = list(devices) if devices is not None else list(range(torch.cuda.device_count()))
    out = []
    for i in indices:
        props = torch.cuda.get_device_properties(i)
        out.append((i, props.name, int(props.total_memory)))
    return out


def _probe_gpus(devices: Sequence[int]) -> list[tuple[int, str, int]]:
    """``_visible_gpus`` for physical ``devices`` the calling process cannot see."""
    import json
    import subprocess
    import sys

    code = (
        "import json, torch\n"
        "print(json.dumps([[torch.cuda.get_device_properties(i).name, torch.cuda.get_device_properties(i).total_memory]"
        " for i in range(torch.cuda.device_count())]))"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(str(d) for d in devices)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"could not probe GPUs {list(devices)}: {proc.stderr.strip()[-500:]}")
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    if len(found) != len(devices):
        raise ValueError(f"devices={list(devices)} asked for, but only {len(found)} of them exist on this host")
    return [(d, name, int(mem)) for d, (name, mem) in zip(devices, found)]


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
