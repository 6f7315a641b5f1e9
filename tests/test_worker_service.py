"""The worker's operations exist once (service.OPERATIONS) and both transports serve them;
a failure becomes a result in one place, with one message limit and the worker's traceback."""

from __future__ import annotations

import dataclasses
import inspect
import json
import traceback
from pathlib import Path
from typing import Any

import pytest

from helion_remote import protocol
from helion_remote.errors import RemoteTraceback, SearchError, with_remote_cause
from helion_remote.protocol import (
    BenchmarkJob,
    JobResult,
    KernelSource,
    RetimeResult,
    RetimeTiming,
    SessionSpec,
    Tolerances,
    WorkerInfo,
)
from helion_remote.worker import pipe
from helion_remote.worker.service import OPERATIONS, CompileOutcome, SessionSummary, WorkerService, serve

KERNEL = KernelSource("def k(x):\n    return x\n", "k")
SPEC = SessionSpec("s1", "k", "0" * 64, KERNEL)
JOB = BenchmarkJob("j1", KERNEL, SPEC.args_digest, SPEC.baseline_digest, Tolerances(), 5, 5)


class RecordingService:
    """A WorkerService that records which operation ran, with which arguments."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.session_id: str | None = None
        self.sticky = False

    def _record(self, name: str, **args: Any) -> None:
        self.calls.append((name, args))

    def info(self) -> WorkerInfo:
        return WorkerInfo("w", "dev", "uuid")

    def target_profile(self) -> dict[str, object] | None:
        self._record("target_profile")
        return {"name": "dev"}

    def open_session(self, spec: SessionSpec, *, baseline: bool = True) -> SessionSummary:
        self._record("open_session", spec=spec, baseline=baseline)
        self.session_id = spec.session_id
        return SessionSummary(spec.session_id, (), 0.0)

    def run_job(self, job: BenchmarkJob, *, compile_time_s: float | None = None) -> JobResult:
        self._record("run_job", job=job, compile_time_s=compile_time_s)
        return JobResult(job.job_id, "ok", 1.0)

    def compile(self, kernel: KernelSource, args_digest: str) -> CompileOutcome:
        self._record("compile", kernel=kernel, args_digest=args_digest)
        return CompileOutcome("ok", 0.1)

    def retime(self, kernels: list[KernelSource], warmup_ms: float, rep_ms: float) -> RetimeResult:
        self._record("retime", kernels=kernels, warmup_ms=warmup_ms, rep_ms=rep_ms)
        return RetimeResult(tuple(RetimeTiming(k.digest, "ok", 1.0) for k in kernels))


def test_the_operation_table_is_the_service_interface() -> None:
    """Each row names a WorkerService method and its parameters in order; WorkerRuntime implements them all."""
    from helion_remote.worker.runtime import WorkerRuntime

    interface = {n for n, v in vars(WorkerService).items() if callable(v) and not n.startswith("_")}
    assert set(OPERATIONS) == interface
    for name, op in OPERATIONS.items():
        expected = list(inspect.signature(getattr(WorkerService, name)).parameters)[1:]
        assert list(op.params) == expected, name
        assert list(inspect.signature(getattr(WorkerRuntime, name)).parameters)[1:] == expected, name
    assert isinstance(RecordingService(), WorkerService)


def test_serve_dispatches_every_operation_and_refuses_unknown_ones() -> None:
    service = RecordingService()
    serve(service, "open_session", (SPEC, False))
    assert service.calls[-1] == ("open_session", {"spec": SPEC, "baseline": False})
    assert serve(service, "run_job", (JOB, 2.0)).job_id == "j1"  # type: ignore[attr-defined]
    assert service.calls[-1] == ("run_job", {"job": JOB, "compile_time_s": 2.0})
    with pytest.raises(ValueError, match="unknown worker operation"):
        serve(service, "shutdown", ())
    with pytest.raises(ValueError, match="takes"):
        serve(service, "retime", ([KERNEL],))


def test_the_pipe_child_serves_through_the_table() -> None:
    """The child loop has no list of its own: it calls service.serve."""
    source = inspect.getsource(pipe.child_main)
    assert "serve(runtime, op, args)" in source
    for name in OPERATIONS:
        assert f'"{name}"' not in source


def _wire_args() -> dict[str, tuple[Any, ...]]:
    from helion_remote.backends.modal.wire import job_to_dict, kernel_to_dict

    return {"info": (), "target_profile": (), "open_session": (), "run_job": (job_to_dict(JOB),),
            "compile": (kernel_to_dict(KERNEL), SPEC.args_digest), "retime": ([kernel_to_dict(KERNEL)], 1.0, 5.0)}


def _container(tmp_path: Path) -> Any:
    from helion_remote.backends.modal.worker import ContainerWorker

    worker = ContainerWorker("jobs", blob_root=str(tmp_path))
    worker.runtime = RecordingService()
    return worker


def test_the_modal_container_serves_every_operation_of_the_table(tmp_path: Path) -> None:
    from helion_remote.backends.modal.wire import spec_to_dict

    worker = _container(tmp_path)
    session = {"spec": spec_to_dict(SPEC), "volume_name": "", "environment": None}
    args = _wire_args()
    assert set(args) == set(OPERATIONS)
    replies = {}
    for name in OPERATIONS:
        worker.runtime.calls.clear()
        replies[name] = json.loads(json.dumps(worker.call(name, session, *args[name])))
        assert "container" in replies[name] and "error" not in replies[name], (name, replies[name])
        served = [n for n, _ in worker.runtime.calls]
        assert name in served or name == "info", (name, served)
    assert replies["info"]["worker"]["worker_id"] == "w"
    assert replies["open_session"]["ok"] is True
    assert replies["run_job"]["result"]["job_id"] == "j1"
    assert replies["compile"]["compile"]["status"] == "ok"
    assert replies["retime"]["retime"]["timings"][0][1] == "ok"


def test_a_container_failure_is_the_operations_failure_reply_with_the_traceback(tmp_path: Path) -> None:
    from helion_remote.backends.modal.wire import result_from_dict, spec_to_dict

    worker = _container(tmp_path)
    session = {"spec": spec_to_dict(SPEC), "volume_name": "", "environment": None}

    def broken(job: BenchmarkJob, *, compile_time_s: float | None = None) -> JobResult:
        raise KeyError("lost the baseline")

    worker.runtime.run_job = broken
    reply = worker.call("run_job", session, *_wire_args()["run_job"])
    result = result_from_dict(reply["result"])
    assert result.status == "infra_error" and result.job_id == "j1" and result.error_class == "KeyError"
    assert result.worker_id == "w" and "lost the baseline" in (result.error_message or "")
    assert "in broken" in (result.traceback or "") and "KeyError" in (result.traceback or "")
    retime = worker.call("retime", session, *_wire_args()["retime"])
    assert retime["retime"]["timings"][0][1] == "ok"
    worker._poison("device broke")
    refused = worker.call("retime", session, *_wire_args()["retime"])
    assert refused["error"].startswith("PoisonedContainer: device broke")


def test_failed_results_keep_one_message_limit_and_the_traceback_tail(monkeypatch: pytest.MonkeyPatch) -> None:
    from helion_remote.worker.failures import describe

    try:
        raise ValueError("x" * 20_000)
    except ValueError as error:
        result = JobResult.failed(JOB, "error", error, worker=WorkerInfo("w", "dev"))
    assert result.error_class == "ValueError" and result.kernel_digest == KERNEL.digest and result.worker_id == "w"
    assert len(result.error_message or "") == protocol.MESSAGE_LIMIT
    assert result.traceback is not None and len(result.traceback) < protocol.TRACEBACK_LIMIT + 100
    assert result.traceback.startswith("Traceback (most recent call last)")  # the head: where it was raised
    assert "test_failed_results_keep" in result.traceback and result.traceback.rstrip().endswith("x" * 50)
    with pytest.raises(ValueError, match="failure status"):
        JobResult.failed(JOB, "ok", "fine")
    # One limit: changing it changes every failure the worker reports.
    monkeypatch.setattr(protocol, "MESSAGE_LIMIT", 40)
    assert len(JobResult.failed("j", "infra_error", "y" * 100, error_class="X").error_message or "") == 40
    assert len(describe(RuntimeError("z" * 100))) == 40


def test_traceback_crosses_the_modal_wire() -> None:
    from helion_remote.backends.modal.wire import result_from_dict, retime_from_dict, retime_to_dict

    result = JobResult.failed(JOB, "error", "boom", error_class="E", traceback="Traceback ...\nE: boom\n")
    assert result_from_dict(json.loads(json.dumps(result.to_dict()))) == result
    retime = RetimeResult((RetimeTiming("d", "error", error_message="m", traceback="tb"), RetimeTiming("e", "ok", 2.0)))
    assert retime_from_dict(json.loads(json.dumps(retime_to_dict(retime)))) == retime
    assert {f.name for f in dataclasses.fields(JobResult)} >= {"traceback"}


def test_the_coordinator_raises_with_the_workers_traceback_as_cause() -> None:
    result = JobResult.failed(JOB, "error", "boom", error_class="E",
                              traceback='Traceback (most recent call last):\n  File "kernel.py", line 3\nE: boom\n')
    with pytest.raises(SearchError) as info:
        raise with_remote_cause(SearchError("fatal kernel error"), result.traceback)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback) and cause.text == result.traceback
    shown = "".join(traceback.format_exception(info.value))
    assert 'File "kernel.py", line 3' in shown and "direct cause" in shown
    plain = SearchError("no traceback")
    assert with_remote_cause(plain, None) is plain and plain.__cause__ is None
