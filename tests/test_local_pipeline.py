"""The local executor's GPU pipeline (compile pool -> ready buffer -> device workers).

Compile workers exist only on a host with GPUs, so these tests drive the real
scheduler (``LocalExecutor``'s queues, slots and threads) with stand-in worker
handles in place of the GPU and compile processes; everything the worker
processes themselves do is covered under the interpreter in test_local_backend.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from helion_remote.argcodec import upload_args
from helion_remote.backends.local import LocalExecutor
from helion_remote.backends.local.pipeline import Pipeline
from helion_remote.protocol import BenchmarkJob, JobResult, KernelSource, SessionSpec, Tolerances, WorkerInfo
from helion_remote.worker.runtime import CompileOutcome

pytestmark = pytest.mark.filterwarnings("ignore:helion_remote local backend")


class StandInWorker:
    """What the scheduler asks of a ``WorkerHandle``, answered in-process."""

    def __init__(self, worker_id: str, *, run_s: float = 0.0, compile_outcome: CompileOutcome | None = None,
                 fail_open: bool = False) -> None:
        self.worker_id = worker_id
        self._info = None
        self.lock = threading.Lock()
        self.timings: dict[str, float] = {}
        self.run_s = run_s
        self.compile_outcome = compile_outcome or CompileOutcome("ok", 0.01)
        self.fail_open = fail_open
        self.compile_times_given: list[float | None] = []

    def start(self) -> None:
        pass

    def info_if_started(self) -> WorkerInfo:
        return WorkerInfo(self.worker_id, "")

    def ensure_session(self, spec: SessionSpec, baseline: bool) -> None:
        if self.fail_open:
            raise RuntimeError("CUDA out of memory running the reference")

    def compile(self, spec: SessionSpec, job: BenchmarkJob) -> CompileOutcome:
        time.sleep(0.01)
        return self.compile_outcome

    def run_job(self, spec: SessionSpec, job: BenchmarkJob, compile_time_s: float | None) -> JobResult:
        self.compile_times_given.append(compile_time_s)
        time.sleep(self.run_s)
        return JobResult(job.job_id, "ok", perf_ms=1.0, compile_time_s=compile_time_s, worker_id=self.worker_id)

    def kill_now(self) -> None:
        pass

    def close(self) -> None:
        pass


def _executor(tmp_path: Path, devices: list[StandInWorker], compilers: list[StandInWorker],
              per_worker: int = 4) -> LocalExecutor:
    ex = LocalExecutor(cpu_workers=1, work_dir=tmp_path)  # real scheduler; its interpreter handles never start
    ex._pipeline = Pipeline(devices, compilers, per_worker * len(devices))  # type: ignore[arg-type]
    ex._gpu_memory = 1 << 40  # room for every compile slot
    return ex


@pytest.fixture
def spec_for(tmp_path: Path) -> Iterator[object]:
    def make(ex: LocalExecutor) -> SessionSpec:
        upload = upload_args(ex.blob_store, [torch.zeros(4)])
        return SessionSpec("pipeline", "k", upload.digest, KernelSource("# ref\n", "k"), Tolerances())

    yield make


def _jobs(spec: SessionSpec, prefix: str, n: int) -> list[BenchmarkJob]:
    return [BenchmarkJob(f"{prefix}{i}", KernelSource(f"# {prefix}{i}\n", "k"), spec.args_digest,
                         spec.baseline_digest, spec.tolerances, 5.0, 5.0) for i in range(n)]


def _settles(predicate, timeout_s: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_a_stream_closed_early_frees_every_slot_it_held(tmp_path: Path, spec_for) -> None:  # type: ignore[no-untyped-def]
    gpu = StandInWorker("gpu0", run_s=0.2)
    ex = _executor(tmp_path, [gpu], [StandInWorker("c0"), StandInWorker("c1")])
    try:
        session = ex.open_session(spec_for(ex))
        stream = session.submit(_jobs(session.spec, "a", 8))
        next(stream)
        assert _settles(lambda: len(ex._pipeline.ready) > 0)  # compiled candidates wait for the GPU
        stream.close()  # the coordinator gave up (an error, Ctrl-C)
        pipeline = ex._pipeline
        assert _settles(lambda: pipeline.admitted == 0 and not pipeline.ready and not pipeline.pending), pipeline.admitted
        # The next batch gets the whole pipeline.
        assert sorted(r.job_id for r in session.submit(_jobs(session.spec, "b", 2))) == ["b0", "b1"]
    finally:
        ex.close()


def test_closing_the_executor_answers_a_waiting_reader(tmp_path: Path, spec_for) -> None:  # type: ignore[no-untyped-def]
    ex = _executor(tmp_path, [StandInWorker("gpu0", run_s=0.3)], [StandInWorker("c0")])
    session = ex.open_session(spec_for(ex))
    got: list[JobResult] = []
    reader = threading.Thread(target=lambda: got.extend(session.submit(_jobs(session.spec, "a", 6))), daemon=True)
    reader.start()
    time.sleep(0.4)
    ex.close()
    reader.join(10)
    assert not reader.is_alive(), "the reader still waits for results that will never come"
    assert sorted(r.job_id for r in got) == [f"a{i}" for i in range(6)]
    assert any(r.status == "infra_error" and r.error_class == "ExecutorClosed" for r in got)


def test_a_compile_worker_that_failed_reports_no_compile_time(tmp_path: Path, spec_for) -> None:  # type: ignore[no-untyped-def]
    """The device compiles it itself; the lost attempt's seconds must not reach the compile-cost model."""
    gpu = StandInWorker("gpu0")
    lost = CompileOutcome("infra_error", 7.0, "WorkerDied", "compile worker died")
    ex = _executor(tmp_path, [gpu], [StandInWorker("c0", compile_outcome=lost)])
    try:
        session = ex.open_session(spec_for(ex))
        (result,) = list(session.submit(_jobs(session.spec, "a", 1)))
        assert gpu.compile_times_given == [None]
        assert "compile_wall" not in result.stages
    finally:
        ex.close()


def test_a_compiled_candidate_carries_its_compile_time(tmp_path: Path, spec_for) -> None:  # type: ignore[no-untyped-def]
    gpu = StandInWorker("gpu0")
    ex = _executor(tmp_path, [gpu], [StandInWorker("c0", compile_outcome=CompileOutcome("ok", 0.75))])
    try:
        session = ex.open_session(spec_for(ex))
        (result,) = list(session.submit(_jobs(session.spec, "a", 1)))
        assert gpu.compile_times_given == [0.75]
        assert {"queue", "compile_wall", "ready_wait"} <= set(result.stages)
    finally:
        ex.close()


def test_retiming_moves_off_a_gpu_that_could_not_open_the_session(tmp_path: Path, spec_for) -> None:  # type: ignore[no-untyped-def]
    ex = _executor(tmp_path, [StandInWorker("gpu0", fail_open=True), StandInWorker("gpu1")], [StandInWorker("c0")])
    try:
        session = ex.open_session(spec_for(ex))
        assert session._retime_worker.worker_id == "gpu1"
    finally:
        ex.close()


class _BrokenHandle(StandInWorker):
    """A handle whose own code fails (not the worker's): say a request that cannot be pickled."""

    def run_job(self, spec: SessionSpec, job: BenchmarkJob, compile_time_s: float | None) -> JobResult:
        raise TypeError("cannot pickle '_thread.lock' object")


def test_a_handle_that_raises_answers_the_job_as_infra_and_keeps_serving(tmp_path: Path, spec_for) -> None:  # type: ignore[no-untyped-def]
    """Before: the device thread died with the exception and the job's reader waited forever."""
    ex = _executor(tmp_path, [_BrokenHandle("gpu0")], [])
    try:
        session = ex.open_session(spec_for(ex))
        got: list[JobResult] = []
        reader = threading.Thread(target=lambda: got.extend(session.submit(_jobs(session.spec, "b", 3))), daemon=True)
        reader.start()
        reader.join(10)
        assert not reader.is_alive(), "a job went unanswered after its handle raised"
        assert [r.status for r in got] == ["infra_error"] * 3
        assert all(r.error_class == "TypeError" and "pickle" in (r.error_message or "") for r in got)
    finally:
        ex.close()
