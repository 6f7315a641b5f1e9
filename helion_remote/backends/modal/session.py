"""A search's session on Modal: job dispatch, waits, re-timing and the dollar budget.

``submit()`` spawns one call per job (``run_job.spawn``) before it returns; a
waiter thread per call blocks on ``FunctionCall.get`` in slices of
``BUDGET_POLL_S`` and feeds a queue, so results stream in completion order,
each with its job id.  :mod:`helion_remote.backends.modal.executor` says how
failures map to statuses, how re-timing is pinned and how the budget stops work.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from helion_remote.backends.modal.wire import job_to_dict, kernel_to_dict, result_from_dict, retime_from_dict
from helion_remote.errors import ExecutorClosedError
from helion_remote.executor import RemoteSession
from helion_remote.protocol import BenchmarkJob, JobResult, KernelSource, RetimeResult, RetimeTiming, SessionSpec, WorkerInfo
from helion_remote.result_stream import ResultStream
from helion_remote.spread import spread_groups, spread_retime

if TYPE_CHECKING:
    from helion_remote.backends.modal.executor import ModalExecutor

log = logging.getLogger(__name__)

BUDGET_EXCEEDED = "BudgetExceeded"
BUDGET_POLL_S = 5.0
"""How often a job's wait re-checks the dollar budget: Modal runs every queued call it was
given, so once the estimate passes the budget the calls still out are cancelled."""


class ModalSession(RemoteSession):
    """One search on a :class:`ModalExecutor`.

    ``spread_covers_batch_workers`` stays False: job containers come and go
    unanchored, so batch timings are never put in the re-timing container's units.
    """

    def __init__(self, executor: ModalExecutor, spec: SessionSpec, payload: dict[str, Any], jobs: Any, retimer: Any,
                 space_report: dict[str, object] | None) -> None:
        super().__init__(executor, spec)
        self._executor = executor
        self._payload = payload
        self._jobs = jobs
        self._retimer = retimer
        self._in_flight = 0
        self._lock = threading.Lock()
        self.retime_containers: list[str] = []
        """The re-timing container of each pinned ``retime`` call (a change means it was lost)."""
        self.space_report = space_report

    def _busy(self) -> tuple[bool, int]:
        with self._lock:
            n = self._in_flight
        return n > 0, min(n, self._executor.settings.job_containers)

    def _over_budget(self, extra: int = 1) -> bool:
        busy, _ = self._busy()
        with self._lock:
            expected = min(self._in_flight + extra, self._executor.settings.job_containers)
        return self._executor.meter.exceeded(busy=busy, expected_containers=expected)

    def _submit(self, jobs: list[BenchmarkJob]) -> ResultStream:
        """Spawn every job now (or answer it at once); the stream yields in completion order
        and ``close()`` before the end cancels the calls still running."""
        ex = self._executor
        results: queue.SimpleQueue[JobResult] = queue.SimpleQueue()
        calls: list[Any] = []
        spawns: list[tuple[BenchmarkJob, concurrent.futures.Future[Any]]] = []
        for job in jobs:
            if self._over_budget():
                results.put(_budget_result(job, ex.meter.max_cost_usd))
                continue
            with self._lock:
                self._in_flight += 1
            spawns.append((job, ex._spawner.submit(self._jobs.run_job.spawn, self._payload, job_to_dict(job))))
        deadline = time.monotonic() + ex.settings.wait_timeout_s
        for job, future in spawns:  # every spawn has returned before submit() does
            try:
                call = future.result()
            except Exception as error:  # noqa: BLE001 - a failed spawn is a transport failure
                self._finished()
                results.put(ex._classify(job, error))
                continue
            calls.append(call)
            with ex._lock:
                ex._outstanding.add(call)
            ex._waiters.submit(self._wait, job, call, deadline, results)
        return ResultStream([job.job_id for job in jobs], results, lambda: _cancel_calls(calls),
                            gone=lambda: ex.closed)

    def _finished(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _wait(self, job: BenchmarkJob, call: Any, deadline: float, results: queue.SimpleQueue[JobResult]) -> None:
        ex = self._executor
        result = JobResult.failed(job, "infra_error", "the wait for this job's reply failed", error_class="WaitFailed")
        try:
            reply = self._reply_within_budget(call, deadline)
            if reply is None:
                _cancel_calls([call])
                result = _budget_result(job, ex.meter.max_cost_usd, cancelled=True)
                return
            ex.meter.observe(reply.get("container"))
            result = result_from_dict(reply["result"])
            if result.job_id != job.job_id:
                result = JobResult.failed(
                    job, "infra_error", f"worker answered job {result.job_id!r} for {job.job_id!r}",
                    error_class="WrongJobId", worker=WorkerInfo(result.worker_id, result.device_name, result.device_uuid),
                )
        except BaseException as error:  # noqa: BLE001 - never lose a job
            result = ex._classify(job, error)
            if isinstance(error, TimeoutError):  # our deadline, not Modal's: stop the orphaned call
                _cancel_calls([call])
        finally:
            self._finished()
            with ex._lock:
                ex._outstanding.discard(call)
            results.put(result)

    def _reply_within_budget(self, call: Any, deadline: float) -> Any:
        """The call's reply, or None once the budget is spent first (TimeoutError at the deadline).

        Waits in slices of ``BUDGET_POLL_S``: between them it checks the budget and
        whether the executor was closed (a waiter blocked on a closed executor's
        call would keep the interpreter from exiting for up to ``wait_timeout_s``).
        """
        while True:
            left = deadline - time.monotonic()
            try:
                return call.get(timeout=max(0.0, min(left, BUDGET_POLL_S)))
            except TimeoutError:
                if left <= BUDGET_POLL_S:
                    raise
                if self._executor.closed:
                    raise ExecutorClosedError("the Modal executor was closed before this job answered") from None
                if self._executor.meter.max_cost_usd is not None and self._over_budget(extra=0):
                    return None

    def retime(
        self, kernels: Sequence[KernelSource], *, warmup_ms: float, rep_ms: float, timeout_s: float
    ) -> RetimeResult:
        """All finalists on this session's one re-timing container; failures keep earlier timings."""
        return self._retime_on(self._retimer, kernels, warmup_ms, rep_ms, timeout_s, pinned=True)

    def retime_spread(
        self, kernels: Sequence[KernelSource], *, warmup_ms: float, rep_ms: float, timeout_s: float
    ) -> RetimeResult:
        """The population re-benchmark over the re-timing container and the job containers,
        in the re-timing container's units (anchored; see :mod:`helion_remote.spread`)."""
        groups = None
        if self._retimer is not self._jobs:  # with no dedicated re-timing container, one call is as good
            groups = spread_groups(kernels, 1 + self._executor.settings.job_containers)
        if groups is None or self._over_budget(extra=len(groups) - 1):
            return self.retime(kernels, warmup_ms=warmup_ms, rep_ms=rep_ms, timeout_s=timeout_s)
        return spread_retime(
            kernels, groups,
            run=lambda i, group: self._retime_on(self._retimer if i == 0 else self._jobs, group, warmup_ms,
                                                 rep_ms, timeout_s, pinned=i == 0),
            redo=lambda group: self.retime(group, warmup_ms=warmup_ms, rep_ms=rep_ms, timeout_s=timeout_s),
        )

    def _retime_on(
        self, target: Any, kernels: Sequence[KernelSource], warmup_ms: float, rep_ms: float, timeout_s: float,
        *, pinned: bool,
    ) -> RetimeResult:
        """One ``retime`` call on ``target``'s containers; ``pinned`` tracks the session's re-timing container."""
        ex = self._executor
        digests = [k.digest for k in kernels]

        def failed(message: str) -> RetimeResult:
            return RetimeResult(tuple(RetimeTiming(d, "infra_error", error_message=message) for d in digests))

        if self._over_budget(extra=0):
            return failed(f"{BUDGET_EXCEEDED}: the ${ex.meter.max_cost_usd} Modal budget is spent")
        s = ex.settings
        # ``timeout_s`` already bounds the whole call (the provider sizes it to the kernels);
        # on top: a container's cold start and session load.
        wait = s.startup_timeout_s + s.session_load_s + max(timeout_s, 1.0)
        call = None
        try:
            call = target.retime.spawn(self._payload, [kernel_to_dict(k) for k in kernels], warmup_ms, rep_ms)
            reply = call.get(timeout=wait)
        except Exception as error:  # noqa: BLE001
            if call is not None:  # a re-timing left running would hold the re-timing container
                _cancel_calls([call])
            if isinstance(error, TimeoutError):
                return failed(f"no re-timing reply within {wait:.0f}s; the call was cancelled")
            return failed(f"{type(error).__name__}: {error}")
        stamp = reply.get("container") or {}
        ex.meter.observe(stamp, job=not pinned)
        if pinned and stamp.get("id"):
            if self.retime_containers and self.retime_containers[-1] != stamp["id"]:
                log.warning("re-timing container for session %s changed (%s -> %s): it was lost; timings of "
                            "different calls may not compare", self.spec.session_id, self.retime_containers[-1],
                            stamp["id"])
            self.retime_containers.append(stamp["id"])
        if "retime" not in reply:
            return failed(str(reply.get("error", "no retime result")))
        return retime_from_dict(reply["retime"])

    def _close(self) -> None:
        ex = self._executor
        if ex.settings.print_cost and ex.meter.report().containers:
            ex._say(str(ex.meter.report()))


def _cancel_calls(calls: Sequence[Any]) -> None:
    """Stop paying for calls nobody will read (best effort: a call may have finished)."""
    for call in calls:
        with contextlib.suppress(Exception):
            call.cancel(terminate_containers=False)


def _budget_result(job: BenchmarkJob, budget: float | None, *, cancelled: bool = False) -> JobResult:
    what = "cancelled while queued or running" if cancelled else "not run"
    return JobResult.failed(
        job, "error", f"{what}: the ${budget} Modal budget (max_cost_usd) is spent; the search keeps its best so far",
        error_class=BUDGET_EXCEEDED,
    )


__all__ = ["BUDGET_EXCEEDED", "BUDGET_POLL_S", "ModalSession"]
