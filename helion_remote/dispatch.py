"""Run a batch of jobs on a session, retrying infrastructure failures elsewhere.

Kernel failures (``error``, ``timeout``, ``accuracy_error``) are final and go
back to the search.  ``infra_error`` (lost worker, broken transport) is not
the config's fault: the job is re-submitted with the failed worker excluded,
up to ``max_infra_retries`` times, and never reported to the search.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .protocol import BenchmarkJob, JobResult, RemoteSession
from .stats import RunStats


class InfraRetriesExhausted(RuntimeError):
    """A job kept failing for reasons that are not the kernel's fault."""


def run_jobs(
    session: RemoteSession,
    jobs: Sequence[BenchmarkJob],
    *,
    stats: RunStats,
    max_infra_retries: int = 3,
    on_result: Callable[[JobResult], None] | None = None,
) -> dict[str, JobResult]:
    """Return one final result per job id; streams each to ``on_result`` as it lands."""
    final: dict[str, JobResult] = {}
    by_id = {job.job_id: job for job in jobs}
    pending = list(jobs)
    while pending:
        retry: list[BenchmarkJob] = []
        for result in session.submit(pending):
            job = by_id.get(result.job_id)
            if job is None:
                raise RuntimeError(f"executor returned a result for unknown job id {result.job_id!r}")
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
        pending = retry
    missing = [job_id for job_id in by_id if job_id not in final]
    if missing:
        raise RuntimeError(f"executor lost jobs {missing[:5]} (of {len(missing)}) without a result")
    return final
