"""Chunked dispatch and infrastructure retries, against the fake backend."""

from __future__ import annotations

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


def test_exhausted_retries_raise_with_the_last_cause() -> None:
    executor = FakeExecutor(seed=3, faults=[FaultRule("transport_error", rate=1.0, attempts="all")])
    session, digest = _session(executor)
    with pytest.raises(InfraRetriesExhausted, match="failed 3 times.*transport dropped"):
        run_jobs(session, [_jobs(digest, 1)], stats=RunStats(), max_infra_retries=2)


def test_giving_up_cancels_the_chunks_not_yet_read() -> None:
    """An exception while draining chunk 1 still closes (cancels) chunk 2, which was never read."""
    executor = FakeExecutor(seed=3, faults=[FaultRule("transport_error", when=lambda c: c["block_sizes"] == [16],
                                                      attempts="all")])
    session, digest = _session(executor)
    closed: list[list[str]] = []
    submit = session.submit

    class Recorded:
        def __init__(self, jobs: list[BenchmarkJob]) -> None:
            self.ids, self.inner = [j.job_id for j in jobs], iter(submit(jobs))

        def __iter__(self):  # type: ignore[no-untyped-def]
            return self

        def __next__(self):  # type: ignore[no-untyped-def]
            return next(self.inner)

        def close(self) -> None:
            closed.append(self.ids)

    session.submit = Recorded  # type: ignore[method-assign]
    jobs = _jobs(digest, 4)
    with pytest.raises(InfraRetriesExhausted):
        run_jobs(session, [jobs[:2], jobs[2:]], stats=RunStats(), max_infra_retries=0)
    assert ["j2", "j3"] in closed


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
