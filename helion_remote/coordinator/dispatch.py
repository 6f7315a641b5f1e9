"""Run a batch of jobs on a session: infrastructure failures retried elsewhere, a spent budget obeyed.

Kernel failures (``error``, ``timeout``, ``accuracy_error``) are final and go
back to the search.  ``infra_error`` (lost worker, broken transport) is not
the config's fault: the job is re-submitted with the failed worker excluded,
up to ``max_infra_retries`` times.  A job that fails on infrastructure every
time is *lost*: its last ``infra_error`` is its final result, and the batch
reports the config to Helion as unmeasured without blaming it.  One unlucky
job must not end a search that other jobs are feeding; only when every job
of the run so far is lost (no worker can run anything) does
:class:`InfraRetriesExhausted` stop it.

A budget (Helion's wall-clock budget, a backend's spending budget) is watched
while results are awaited: once spent, every stream is closed, which cancels
queued and running work, and the jobs without a result are left out of the
returned results; the batch reports them unmeasured, as Helion's own
provider does for the configs it skips.

Jobs arrive in chunks (see :func:`growing_chunks`): each chunk is submitted as
soon as it exists, so workers start compiling the first candidates while the
coordinator is still generating code for the rest of the batch.  Each stream
is read by a thread of its own into one inbox (a ``ResultStream`` blocks), so
results are handled in completion order across chunks and the wait can stop
to look at the budget.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import TypeVar

from helion_remote.errors import InfraRetriesExhausted, with_remote_cause
from helion_remote.executor import RemoteSession
from helion_remote.protocol import BenchmarkJob, JobResult
from helion_remote.result_stream import ResultStream
from helion_remote.coordinator.stats import RunStats

T = TypeVar("T")

BUDGET_POLL_S = 0.1
"""How often a wait for results looks at the budget: a spent budget is obeyed within this."""


def growing_chunks(items: Iterable[T], first: int = 2, largest: int = 32) -> Iterator[list[T]]:
    """Chunks of 2, 4, 8, ... items: the first jobs leave early, later ones batch up."""
    size, chunk = first, []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk, size = [], min(size * 2, largest)
    if chunk:
        yield chunk


def run_jobs(
    session: RemoteSession,
    job_chunks: Iterable[Sequence[BenchmarkJob]],
    *,
    stats: RunStats,
    max_infra_retries: int = 3,
    on_result: Callable[[JobResult], None] | None = None,
    budget_spent: Callable[[], bool] | None = None,
    poll_s: float = BUDGET_POLL_S,
) -> dict[str, JobResult]:
    """One final result per job id, each streamed to ``on_result`` as it lands.

    A final ``infra_error`` means the job was lost to infrastructure (every
    attempt failed).  Jobs cut off by ``budget_spent`` have no entry.
    ``session.submit`` starts its jobs when called, so every chunk is running
    before the first result is awaited.
    """
    run = _Run(session, stats, max_infra_retries, on_result, budget_spent or _never, poll_s)
    chunks = iter(job_chunks)
    try:
        for chunk in chunks:
            run.submit(chunk)
            run.handle_waiting()  # retries leave while code for later chunks is generated
        run.wait()
    finally:
        # Done, cut by the budget, or leaving early (an exception, Ctrl-C): cancel every
        # job not yet answered (a stream's close() is a no-op once drained), and stop
        # generating code for chunks that will not be sent.
        run.close()
        if isinstance(chunks, Generator):
            chunks.close()
    return run.finals()


def _never() -> bool:
    return False


_Item = JobResult | BaseException


class _Run:
    """The state of one ``run_jobs`` call: jobs, final results, open streams, the inbox."""

    def __init__(
        self, session: RemoteSession, stats: RunStats, max_infra_retries: int,
        on_result: Callable[[JobResult], None] | None, budget_spent: Callable[[], bool], poll_s: float,
    ) -> None:
        self._session = session
        self._stats = stats
        self._max_infra_retries = max_infra_retries
        self._on_result = on_result
        self._budget_spent = budget_spent
        self._poll_s = poll_s
        self._inbox: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._jobs: dict[str, BenchmarkJob] = {}
        self._final: dict[str, JobResult] = {}
        self._opened: list[ResultStream] = []
        self._cut = False

    def submit(self, jobs: Sequence[BenchmarkJob]) -> None:
        if not jobs:
            return
        for job in jobs:
            self._jobs[job.job_id] = job
        stream = self._session.submit(list(jobs))
        self._opened.append(stream)
        threading.Thread(target=_pump, args=(stream, self._inbox), daemon=True,
                         name="helion-remote-results").start()

    def handle_waiting(self) -> None:
        """Handle the results already in, without waiting."""
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            self._handle(item)

    def wait(self) -> None:
        """Handle results until every job has a final one, or the budget is spent."""
        while len(self._final) < len(self._jobs):
            if self._budget_spent():
                self._cut = True
                return
            deadline = time.monotonic() + self._poll_s
            while len(self._final) < len(self._jobs) and (left := deadline - time.monotonic()) > 0:
                try:
                    item = self._inbox.get(timeout=left)
                except queue.Empty:
                    break
                self._handle(item)

    def _handle(self, item: _Item) -> None:
        if isinstance(item, BaseException):
            raise item  # the backend's stream failed (not a job's result)
        result = item
        job = self._jobs.get(result.job_id)
        if job is None:
            raise RuntimeError(f"executor returned a result for unknown job id {result.job_id!r}")
        stats = self._stats
        stats.record(result)
        if result.status == "infra_error" and job.attempt < self._max_infra_retries:
            stats.infra_retries += 1
            self.submit([job.retry(result.worker_id)])
            return
        self._final[job.job_id] = result
        if result.status != "infra_error":
            if result.worker_id:
                stats.workers_used.add(result.worker_id)
            if result.device_name:
                stats.devices_used.add(result.device_name)
        if self._on_result is not None:
            self._on_result(result)

    def close(self) -> None:
        for stream in self._opened:
            stream.close()

    def finals(self) -> dict[str, JobResult]:
        """The final results; raise if jobs vanished, or if no worker can run anything."""
        missing = [job_id for job_id in self._jobs if job_id not in self._final]
        if missing and not self._cut:
            raise RuntimeError(f"executor lost jobs {missing[:5]} (of {len(missing)}) without a result")
        lost = [r for r in self._final.values() if r.status == "infra_error"]
        if lost and all(row["status"] == "infra_error" for row in self._stats.records):
            last = lost[-1]
            raise with_remote_cause(InfraRetriesExhausted(
                f"every job of this run failed {self._max_infra_retries + 1} times on infrastructure "
                f"({len(lost)} job(s); last: {last.error_class}: {last.error_message} on worker "
                f"{last.worker_id or '?'}); no worker can run anything. Check the backend, or raise "
                "max_infra_retries."
            ), last.traceback)
        return self._final


def _pump(stream: ResultStream, inbox: queue.SimpleQueue[_Item]) -> None:
    """Move ``stream``'s results into ``inbox`` until it is drained or closed.

    A stream closed with jobs unanswered keeps this thread until one more
    result lands or the executor closes (its stream then answers the rest).
    """
    try:
        for result in stream:
            inbox.put(result)
    except BaseException as error:  # noqa: BLE001 - handed to the waiting thread
        inbox.put(error)
