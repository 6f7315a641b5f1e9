"""A local interpreter worker process over its pipe: every operation of the table is served,
and a kernel that raises comes back as a result carrying the worker's traceback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from helion_remote.argcodec import upload_args
from helion_remote.backends.local import LocalExecutor
from helion_remote.errors import RemoteTraceback, SearchError, with_remote_cause
from helion_remote.protocol import BenchmarkJob, KernelSource, RetimeResult, SessionSpec, Tolerances, WorkerInfo
from helion_remote.worker.pipe import RemoteRequestError
from helion_remote.worker.service import OPERATIONS, CompileOutcome, SessionSummary

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter warning

REFERENCE = KernelSource("import torch\n\ndef k(x):\n    return x * 2\n", "k")
RAISING = KernelSource(
    "import torch\n\ndef k(x):\n    return _inner(x)\n\ndef _inner(x):\n    raise ZeroDivisionError('kernel said no')\n", "k"
)


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalExecutor]:
    ex = LocalExecutor(cpu_workers=1, work_dir=tmp_path_factory.mktemp("local"))
    yield ex
    ex.close()


def _spec(executor: LocalExecutor) -> SessionSpec:
    digest = upload_args(executor.blob_store, [torch.ones(4)]).digest
    return SessionSpec("pipe-s1", "k", digest, REFERENCE)


def _job(spec: SessionSpec, kernel: KernelSource, job_id: str) -> BenchmarkJob:
    return BenchmarkJob(job_id, kernel, spec.args_digest, spec.baseline_digest, Tolerances(), 30, 30, 1.0, 5.0)


def test_a_raising_kernels_result_carries_the_worker_traceback(executor: LocalExecutor) -> None:
    spec = _spec(executor)
    session = executor.open_session(spec)
    results = {r.job_id: r for r in session.submit([_job(spec, REFERENCE, "ok"), _job(spec, RAISING, "raises")])}
    assert results["ok"].status == "ok" and results["ok"].traceback is None
    failed = results["raises"]
    assert failed.status == "error" and failed.error_class == "ZeroDivisionError"
    assert failed.error_message == "ZeroDivisionError: kernel said no"
    text = failed.traceback or ""
    assert text.startswith("Traceback (most recent call last)")
    assert "in _inner" in text and "raise ZeroDivisionError('kernel said no')" in text  # the worker's frames
    # What the coordinator shows when it has to raise for this result.
    error = with_remote_cause(SearchError("fatal"), failed.traceback)
    assert isinstance(error.__cause__, RemoteTraceback) and "in _inner" in str(error.__cause__)


def test_every_operation_of_the_table_is_served_by_the_pipe_child(executor: LocalExecutor) -> None:
    handle = executor._devices[0]
    spec = _spec(executor)
    args = {
        "info": (),
        "target_profile": (),
        "open_session": (spec, True),
        "run_job": (_job(spec, REFERENCE, "direct"), None),
        "compile": (REFERENCE, spec.args_digest),
        "retime": ([REFERENCE], 1.0, 5.0),
    }
    assert set(args) == set(OPERATIONS)
    expected = {"info": WorkerInfo, "target_profile": type(None), "open_session": SessionSummary,
                "run_job": object, "compile": CompileOutcome, "retime": RetimeResult}
    with handle.lock:
        for name in OPERATIONS:  # in table order: the session opens before the jobs
            value = handle._request(name, args[name], 120.0)
            assert isinstance(value, expected[name]), (name, value)
        assert handle._request("run_job", args["run_job"], 120.0).status == "ok"  # type: ignore[attr-defined]
        with pytest.raises(RemoteRequestError) as info:
            handle._request("no_such_op", (), 120.0)
    assert isinstance(info.value.__cause__, RemoteTraceback) and "unknown worker operation" in str(info.value)
    assert "serve" in (info.value.remote_traceback or "")
