"""Chunked dispatch and infrastructure retries, against the fake backend."""

from __future__ import annotations

import time

import pytest

from helion_remote.backends.fake import FakeExecutor, FaultRule
from helion_remote.blobs import MemoryBlobStore
from helion_remote.coordinator.dispatch import InfraRetriesExhausted, growing_chunks, run_jobs
from helion_remote.protocol import BenchmarkJob, KernelSource, SessionSpec, Tolerances
from helion_remote.coordinator.stats import RunStats


def test_growing_chunks_double_up_to_the_cap() -> None:
    sizes = [len(c) for c in growing_chunks(range(100), first=2, largest=16)]
    assert sizes == [2, 4, 8, 16, 16, 16, 16, 16, 6]
    assert sum(sizes) == 100
    assert list(growing_chunks([])) == []


def _session(executor: FakeExecutor):  # type: ignore[no-untyped-def]
    digest = executor.blob_store.put(b"args").digest
    spec = SessionSpec("s", "k", digest, KernelSource("ref", "k"))
    return executor.open_session(spec), digest


def _jobs(digest: str, n: int) -> list[BenchmarkJob]:
    return [
        BenchmarkJob(f"j{i}", KernelSource(f"src{i}", "k"), digest, "b", Tolerances(), 1.0, 1.0,
                     config={"block_sizes": [16 * (i + 1)], "num_warps": 4})
        for i in range(n)
    ]


def test_every_job_gets_exactly_one_final_result_across_chunks() -> None:
    executor = FakeExecutor(seed=1, blob_store=MemoryBlobStore(), faults=[FaultRule("worker_crash", rate=0.5)])
    session, digest = _session(executor)
    stats = RunStats()
    seen: list[str] = []
    finals = run_jobs(session, growing_chunks(_jobs(digest, 20)), stats=stats, on_result=lambda r: seen.append(r.job_id))
    assert sorted(finals) == sorted(f"j{i}" for i in range(20))
    assert sorted(seen) == sorted(finals)
    assert all(r.status == "ok" for r in finals.values())
    assert stats.infra_retries > 0
    # The journal keeps the failed attempts too.
    assert sum(r["status"] == "infra_error" for r in stats.records) == stats.infra_retries


def test_retry_goes_to_another_worker() -> None:
    executor = FakeExecutor(seed=2, workers=2, faults=[FaultRule("transport_error", rate=1.0)])
    session, digest = _session(executor)
    stats = RunStats()
    finals = run_jobs(session, [_jobs(digest, 1)], stats=stats)
    failed_on = stats.records[0]["worker_id"]
    assert stats.records[0]["status"] == "infra_error"
    assert finals["j0"].worker_id != failed_on


def test_exhausted_retries_raise_with_the_last_cause_when_every_job_is_lost() -> None:
    executor = FakeExecutor(seed=3, faults=[FaultRule("transport_error", rate=1.0, attempts="all")])
    session, digest = _session(executor)
    with pytest.raises(InfraRetriesExhausted, match="failed 3 times.*transport dropped"):
        run_jobs(session, [_jobs(digest, 2)], stats=RunStats(), max_infra_retries=2)


def _lose_block_16() -> FakeExecutor:
    """j0 (block 16) fails on infrastructure every attempt; the other jobs are fine."""
    return FakeExecutor(seed=3, faults=[FaultRule("transport_error", when=lambda c: c["block_sizes"] == [16],
                                                  attempts="all")])


def test_a_job_lost_to_infrastructure_is_its_final_result_not_the_end_of_the_run() -> None:
    session, digest = _session(_lose_block_16())
    stats = RunStats()
    seen: list[str] = []
    finals = run_jobs(session, growing_chunks(_jobs(digest, 6)), stats=stats, max_infra_retries=2,
                      on_result=lambda r: seen.append(r.job_id))
    assert sorted(finals) == sorted(seen) == [f"j{i}" for i in range(6)]
    assert finals["j0"].status == "infra_error" and finals["j0"].error_class == "transport_error"
    assert all(finals[f"j{i}"].status == "ok" for i in range(1, 6))
    assert stats.infra_retries == 2  # attempts 0 and 1 retried; attempt 2 was the last
    assert [r["status"] for r in stats.records].count("infra_error") == 3


def test_a_batch_all_lost_after_the_run_had_answers_does_not_raise() -> None:
    session, digest = _session(_lose_block_16())
    stats = RunStats()
    run_jobs(session, [_jobs(digest, 3)[1:]], stats=stats)  # an earlier batch, answered
    finals = run_jobs(session, [_jobs(digest, 1)], stats=stats)
    assert finals["j0"].status == "infra_error"


def test_an_error_while_waiting_closes_every_stream() -> None:
    """Leaving early (here: the result callback raises) cancels every chunk's unanswered jobs."""
    executor = FakeExecutor(seed=3, workers=1, latency_s=0.2)
    session, digest = _session(executor)
    closed: list[list[str]] = []
    submit = session.submit

    class Recorded:
        def __init__(self, jobs: list[BenchmarkJob]) -> None:
            self.ids, self.inner = [j.job_id for j in jobs], submit(jobs)

        def __iter__(self):  # type: ignore[no-untyped-def]
            return self

        def __next__(self):  # type: ignore[no-untyped-def]
            return next(self.inner)

        def close(self) -> None:
            closed.append(self.ids)
            self.inner.close()

    def stop(result: object) -> None:
        raise KeyboardInterrupt

    session.submit = Recorded  # type: ignore[method-assign]
    jobs = _jobs(digest, 6)
    with pytest.raises(KeyboardInterrupt):
        run_jobs(session, [jobs[:2], jobs[2:]], stats=RunStats(), on_result=stop)
    assert sorted(closed) == [["j0", "j1"], ["j2", "j3", "j4", "j5"]]
    time.sleep(0.5)
    assert executor.jobs_run <= 2  # the queued jobs were cancelled, not run


def test_a_budget_spent_while_waiting_cancels_the_rest() -> None:
    """8 jobs of 0.5 s on 2 workers take 2 s; a budget spent after the first results ends the wait at once."""
    executor = FakeExecutor(seed=3, workers=2, latency_s=0.5)
    session, digest = _session(executor)
    seen: list[str] = []
    started = time.perf_counter()
    finals = run_jobs(session, growing_chunks(_jobs(digest, 8)), stats=RunStats(),
                      on_result=lambda r: seen.append(r.job_id), budget_spent=lambda: len(seen) >= 2)
    elapsed = time.perf_counter() - started
    assert elapsed < 1.2, f"run_jobs took {elapsed:.2f}s after its budget was spent"
    assert 2 <= len(finals) < 8 and sorted(finals) == sorted(seen)
    assert all(r.status == "ok" for r in finals.values())  # the cut jobs have no result at all
    time.sleep(1.0)
    assert executor.jobs_run <= 4  # at most the jobs running at the cut finish; the queued never start


def test_a_spent_budget_with_nothing_answered_returns_nothing() -> None:
    executor = FakeExecutor(seed=3, workers=1, latency_s=0.3)
    session, digest = _session(executor)
    started = time.perf_counter()
    assert run_jobs(session, [_jobs(digest, 4)], stats=RunStats(), budget_spent=lambda: True) == {}
    assert time.perf_counter() - started < 0.3


def test_fake_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="unknown fault kind 'explode'"):
        FaultRule("explode", rate=0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs rate= or when="):
        FaultRule("timeout")
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\]"):
        FaultRule("timeout", rate=2.0)
    with pytest.raises(ValueError, match="workers >= 1"):
        FakeExecutor(workers=0)


def test_fake_refuses_a_session_without_uploaded_args() -> None:
    executor = FakeExecutor()
    with pytest.raises(KeyError, match="upload the arguments"):
        executor.open_session(SessionSpec("s", "k", "0" * 64, KernelSource("ref", "k")))


def test_fake_is_deterministic_for_a_seed() -> None:
    def perfs(seed: int) -> dict[str, float]:
        executor = FakeExecutor(seed=seed, workers=3)
        session, digest = _session(executor)
        return {k: r.perf_ms for k, r in run_jobs(session, [_jobs(digest, 8)], stats=RunStats()).items()}

    assert perfs(5) == perfs(5)
    assert perfs(5) != perfs(6)


def test_retime_is_served_only_for_measured_kernels_on_one_worker() -> None:
    executor = FakeExecutor(seed=4, workers=4)
    session, digest = _session(executor)
    jobs = _jobs(digest, 4)
    run_jobs(session, [jobs], stats=RunStats())
    unknown = KernelSource("never-measured", "k")
    first = session.retime([jobs[0].kernel, unknown], warmup_ms=1, rep_ms=10, timeout_s=5)
    second = session.retime([jobs[1].kernel], warmup_ms=1, rep_ms=10, timeout_s=5)
    assert first.timings[0].status == "ok" and first.timings[1].status == "error"
    assert first.worker_id == second.worker_id
