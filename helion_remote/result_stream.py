"""The iterator a session's ``submit`` returns: results in completion order, cancellable.

A generator cannot be this: closing a generator that never started skips its
``finally``, so a coordinator that gives up before reading a chunk's results
(an error while draining an earlier chunk, Ctrl-C) could not cancel that
chunk's jobs, which would keep the GPUs (or the bill) busy.  ``close()`` here
always cancels what has not been yielded.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator, Sequence

from helion_remote.protocol import JobResult


class ResultStream(Iterator[JobResult]):
    """One result per job id of a ``submit`` call, as they land in ``results``.

    ``cancel`` runs once, on ``close()`` before every result was yielded.
    ``gone`` (optional) says the executor was closed: results still missing
    then come back as ``infra_error`` instead of blocking forever.
    """

    def __init__(
        self,
        job_ids: Sequence[str],
        results: queue.SimpleQueue[JobResult],
        cancel: Callable[[], None],
        *,
        gone: Callable[[], bool] | None = None,
        poll_s: float = 0.5,
    ) -> None:
        self._waiting = dict.fromkeys(job_ids)
        self._remaining = len(job_ids)
        self._results = results
        self._cancel: Callable[[], None] | None = cancel
        self._gone = gone
        self._poll_s = poll_s

    def __iter__(self) -> ResultStream:
        return self

    def __next__(self) -> JobResult:
        if self._remaining <= 0:
            self._cancel = None
            raise StopIteration
        while True:
            try:
                result = self._results.get(timeout=self._poll_s if self._gone is not None else None)
            except queue.Empty:
                if self._gone is not None and self._gone():
                    result = self._lost()
                else:
                    continue
            if result is _CLOSED:  # close() from another thread: a reader waiting here leaves too
                raise StopIteration
            self._remaining -= 1
            self._waiting.pop(result.job_id, None)
            return result

    def _lost(self) -> JobResult:
        job_id = next(iter(self._waiting), "?")
        return JobResult.failed(job_id, "infra_error", "the executor was closed before this job finished",
                                error_class="ExecutorClosed")

    def close(self) -> None:
        """Cancel every job whose result has not been yielded (no-op once all were)."""
        cancel, self._cancel = self._cancel, None
        if cancel is not None and self._remaining > 0:
            self._remaining = 0
            self._results.put(_CLOSED)  # type: ignore[arg-type]  # wakes a reader blocked in __next__
            cancel()


_CLOSED = object()
"""Put on the queue by ``close()``: cancelled jobs may never answer, so a waiting reader is told."""
