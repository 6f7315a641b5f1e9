"""The ``local`` backend's scheduler: compile pool -> ready buffer -> device workers.

Compile workers compile candidates ahead into a shared per-session Triton
cache, so a GPU only loads a ready binary and never waits on a compiler while
compiled candidates exist.  At most ``capacity`` jobs are admitted between
"compile started" and "timed", which bounds both wasted compiles at the end
of a batch and the staleness of the queue.  Without compile workers (the
interpreter pool) device workers take jobs straight from the queue.
"""

from __future__ import annotations

import collections
import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Sequence

from helion_remote.errors import ExecutorClosedError
from helion_remote.protocol import BenchmarkJob, JobResult, SessionSpec
from helion_remote.worker.process import WorkerHandle
from helion_remote.worker.service import CompileOutcome


@dataclasses.dataclass(eq=False)
class Task:
    """One submitted job on its way through the pipeline."""

    job: BenchmarkJob
    spec: SessionSpec
    results: queue.SimpleQueue[JobResult]
    compile_time_s: float | None = None
    cancelled: bool = False
    queued_at: float = dataclasses.field(default_factory=time.monotonic)
    compile_started_at: float | None = None
    compiled_at: float | None = None
    admitted: bool = False
    """Counted in ``Pipeline.admitted`` (taken by a compile worker) until it finishes."""

    def stages(self, run_started_at: float) -> dict[str, float]:
        """Where the job waited before its device stage (the journal's ``stages``)."""
        if self.compile_started_at is None or self.compiled_at is None:
            return {"queue": run_started_at - self.queued_at}
        return {
            "queue": self.compile_started_at - self.queued_at,
            "compile_wall": self.compiled_at - self.compile_started_at,
            "ready_wait": run_started_at - self.compiled_at,
        }


class Pipeline:
    """The queues, slots and threads shared by every session of one executor."""

    def __init__(self, devices: Sequence[WorkerHandle], compilers: Sequence[WorkerHandle], capacity: int) -> None:
        self.devices = list(devices)
        self.compilers = list(compilers)
        self.capacity = capacity
        """Jobs admitted at once (compiling, compiled, or running)."""
        self.compile_slots = len(self.compilers)
        """Compile workers in use (``LocalExecutor`` caps them by GPU memory per session)."""
        self.cond = threading.Condition()
        self.pending: collections.deque[Task] = collections.deque()
        self.ready: list[Task] = []
        self.admitted = 0
        self.closed = False
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """One thread per device worker and per compile worker (their processes are started)."""
        for handle in self.devices:
            self._spawn(self._device_loop, handle)
        for handle in self.compilers:
            self._spawn(self._compile_loop, handle)

    def _spawn(self, target: Callable[..., None], handle: WorkerHandle, *args: object) -> None:
        thread = threading.Thread(target=target, args=(handle, *args), daemon=True,
                                  name=f"helion-remote-{handle.worker_id}")
        thread.start()
        self._threads.append(thread)

    def close(self) -> None:
        """Stop the loops; tasks not yet run are dropped (their streams answer ``infra_error``)."""
        with self.cond:
            self.closed = True
            for task in [*self.pending, *self.ready]:
                task.cancelled = True
            self.pending.clear()
            self.ready.clear()
            self.cond.notify_all()

    def retire(self, handle: WorkerHandle) -> None:
        """Leave out a compile worker that could not start: its loop ends, the others (or,
        with none left, the device workers) compile its share."""
        with self.cond:
            if handle in self.compilers:
                self.compilers.remove(handle)
            self.cond.notify_all()

    def enqueue(self, tasks: list[Task]) -> None:
        with self.cond:
            if self.closed:
                raise ExecutorClosedError("the local executor is closed; create a new one")
            self.pending.extend(tasks)
            self.cond.notify_all()

    def cancel(self, tasks: list[Task]) -> None:
        """Drop ``tasks`` that have not reached a device worker (a stream closed early)."""
        with self.cond:
            for task in tasks:
                task.cancelled = True
            self.pending = collections.deque(t for t in self.pending if not t.cancelled)
            for task in self.ready:
                if task.cancelled and task.admitted:  # compiled, never run: free their slots
                    task.admitted = False
                    self.admitted -= 1
            self.ready = [t for t in self.ready if not t.cancelled]
            self.cond.notify_all()

    def _compile_loop(self, handle: WorkerHandle) -> None:
        while True:
            with self.cond:
                while not self.closed and handle in self.compilers and not (
                    self.pending and self.admitted < self.capacity and self.compilers.index(handle) < self.compile_slots
                ):
                    self.cond.wait()
                if self.closed or handle not in self.compilers:
                    return
                task = self.pending.popleft()
                self.admitted += 1
                task.admitted = True
            task.compile_started_at = time.monotonic()
            try:
                outcome = handle.compile(task.spec, task.job)
            except Exception as error:  # noqa: BLE001 - the handle's own bug must not strand the job
                self._finish(task, JobResult.failed(task.job, "infra_error", error, worker=handle.info_if_started()))
                continue
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
                self._finish(task, result.with_stages(**task.stages(task.compiled_at)))
                continue
            with self.cond:
                if task.cancelled:
                    self.admitted -= 1
                    task.admitted = False
                    self.cond.notify_all()
                    continue
                self.ready.append(task)
                self.cond.notify_all()

    def _device_loop(self, handle: WorkerHandle) -> None:
        while True:
            with self.cond:
                while not self.closed and (task := self._take_for(handle)) is None:
                    self.cond.wait()
                if self.closed:
                    return
            run_started = time.monotonic()
            try:
                result = handle.run_job(task.spec, task.job, task.compile_time_s)
            except Exception as error:  # noqa: BLE001 - a thread that dies here would leave the job unanswered
                result = JobResult.failed(task.job, "infra_error", error, worker=handle.info_if_started())
            self._finish(task, result.with_stages(**task.stages(run_started)))

    def _take_for(self, handle: WorkerHandle) -> Task | None:
        """The oldest task this worker may run (``avoid_workers`` holds if another worker exists).

        Compiled tasks first; queued ones straight from the queue only when no compile worker is left.
        """
        sources: list[list[Task] | collections.deque[Task]] = [self.ready]
        if not self.compilers:
            sources.append(self.pending)
        ids = {h.worker_id for h in self.devices}
        for source in sources:
            for task in source:
                avoided = set(task.job.avoid_workers)
                if handle.worker_id not in avoided or ids <= avoided:
                    source.remove(task)
                    return task
        return None

    def _finish(self, task: Task, result: JobResult) -> None:
        with self.cond:
            if task.admitted:
                self.admitted -= 1
                task.admitted = False
            self.cond.notify_all()
        if not task.cancelled:
            task.results.put(result)


def _compile_result(job: BenchmarkJob, outcome: CompileOutcome, handle: WorkerHandle) -> JobResult:
    """A compile that settled the job (timeout, non-fatal compile error) as its result."""
    return JobResult.failed(
        job, outcome.status, outcome.error_message or outcome.status, error_class=outcome.error_class,
        worker=handle.info_if_started(), started_at=time.time() - outcome.compile_time_s,
        compile_time_s=outcome.compile_time_s, fatal=outcome.fatal, traceback=outcome.traceback,
    )
