"""``ResultStream``: what every backend's ``submit`` returns; cancellable even before it is read."""

from __future__ import annotations

import queue

from helion_remote.protocol import JobResult
from helion_remote.result_stream import ResultStream


def _stream(ids: list[str], *, gone: bool | None = None) -> tuple[ResultStream, queue.SimpleQueue[JobResult], list[int]]:
    results: queue.SimpleQueue[JobResult] = queue.SimpleQueue()
    cancelled: list[int] = []
    stream = ResultStream(ids, results, lambda: cancelled.append(1),
                          gone=(lambda: bool(gone)) if gone is not None else None, poll_s=0.01)
    return stream, results, cancelled


def test_yields_one_result_per_job_in_arrival_order() -> None:
    stream, results, cancelled = _stream(["a", "b"])
    results.put(JobResult("b", "ok", perf_ms=1.0))
    results.put(JobResult("a", "ok", perf_ms=2.0))
    assert [r.job_id for r in stream] == ["b", "a"]
    stream.close()
    assert cancelled == []  # nothing left to cancel


def test_close_before_reading_cancels_once() -> None:
    stream, _, cancelled = _stream(["a", "b"])
    stream.close()
    stream.close()
    assert cancelled == [1]
    assert list(stream) == []


def test_close_after_a_partial_read_cancels_the_rest() -> None:
    stream, results, cancelled = _stream(["a", "b"])
    results.put(JobResult("a", "ok", perf_ms=1.0))
    assert next(stream).job_id == "a"
    stream.close()
    assert cancelled == [1]


def test_a_closed_executor_answers_the_missing_jobs_as_infra_errors() -> None:
    stream, results, _ = _stream(["a", "b", "c"], gone=True)
    results.put(JobResult("b", "ok", perf_ms=1.0))
    got = list(stream)
    assert [r.job_id for r in got] == ["b", "a", "c"]
    assert [r.status for r in got] == ["ok", "infra_error", "infra_error"]
    assert got[1].error_class == "ExecutorClosed"


def test_close_from_another_thread_releases_a_waiting_reader() -> None:
    """Cancelled jobs may never answer: a reader blocked in next() must leave when the stream is closed."""
    import threading

    stream, _, cancelled = _stream(["a", "b"], gone=False)
    got: list[JobResult] = []
    reader = threading.Thread(target=lambda: got.extend(stream), daemon=True)
    reader.start()
    reader.join(0.2)
    assert reader.is_alive()  # waiting for results
    stream.close()
    reader.join(2)
    assert not reader.is_alive(), "the reader still waits for cancelled jobs"
    assert got == [] and cancelled == [1]
