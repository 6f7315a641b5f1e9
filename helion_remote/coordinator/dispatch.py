"""Run a batch of jobs on a session, retrying infrastructure failures elsewhere.

Kernel failures (``error``, ``timeout``, ``accuracy_error``) are final and go
back to the search.  ``infra_error`` (lost worker, broken transport) is not
the config's fault: the job is re-submitted with the failed worker excluded,
up to ``max_infra_retries`` times, and never reported to the search.

Jobs arrive in chunks (see :func:`growing_chunks`): each chunk is submitted as
soon as it exists, so workers start compiling the first candidates while the
coordinator is still generating code for the rest of the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

from helion_remote.errors import SearchError
from helion_remote.executor import RemoteSession
from helion_remote.protocol import BenchmarkJob, JobResult
from helion_remote.coordinator.stats import RunStats

T = TypeVar("T")


class InfraRetriesExhausted(SearchError):
    """A job kept failing for reasons that are not the kernel's fault."""


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
) -> dict[str, JobResult]:
    """Return one final result per job id; streams each to ``on_result`` as it lands.

    ``session.submit`` starts its jobs when called, so every chunk is running
    before the first result is awaited.
    """
    final: dict[str, JobResult] = {}
    by_id: dict[str, BenchmarkJob] = {}
    opened: list[Iterator[JobResult]] = []
    try:
        for chunk in job_chunks:
            if not chunk:
                continue
            for job in chunk:
                by_id[job.job_id] = job
            opened.append(iter(session.submit(list(chunk))))
        streams = list(opened)
        while streams:
            retry: list[BenchmarkJob] = []
            for stream in streams:
                for result in stream:
                    job = by_id.get(result.job_id)
                    if job is None:
                        raise RuntimeError(f"executor returned a result for unknown job id {result.job_id!r}")
                    stats.record(result)
                    if result.status == "infra_error":
                        if job.attempt >= max_infra_retries:
                            raise InfraRetriesExhausted(
                                f"job {job.job_id} failed {job.attempt + 1} times on infrastructure "
                                f"(last: {result.error_class}: {result.error_message} on worker "
                                f"{result.worker_id or '?'}); the workers are unhealthy. Check the "
                                "backend, or raise max_infra_retries."
                            )
                        stats.infra_retries += 1
                        again = job.retry(result.worker_id)
                        by_id[job.job_id] = again
                        retry.append(again)
                        continue
                    final[job.job_id] = result
                    if result.worker_id:
                        stats.workers_used.add(result.worker_id)
                    if result.device_name:
                        stats.devices_used.add(result.device_name)
                    if on_result is not None:
                        on_result(result)
            streams = [iter(session.submit(retry))] if retry else []
            opened.extend(streams)
    finally:
        # Leaving early (an exception, Ctrl-C): cancel every job not yet answered,
        # including chunks never read (a stream's close() is a no-op once drained).
        for stream in opened:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
    missing = [job_id for job_id in by_id if job_id not in final]
    if missing:
        raise RuntimeError(f"executor lost jobs {missing[:5]} (of {len(missing)}) without a result")
    return final
