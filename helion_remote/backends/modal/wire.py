"""Protocol objects as plain dicts for Modal calls, and back.

Modal pickles call arguments and results; pickled helion_remote classes
would tie a deployed worker to the coordinator's exact class layout and, for
exceptions, fail to unpickle on a laptop.  Only dicts, lists, str and
numbers cross, and both sides rebuild the dataclasses.

:data:`WIRE_OPS` says how each worker operation of
:data:`~helion_remote.worker.service.OPERATIONS` crosses a call: its
arguments in, its reply out, and what its failure looks like (a ``run_job``
always answers with a result, even from a container that cannot run it).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from helion_remote.protocol import (
    BenchmarkJob,
    JobResult,
    KernelSource,
    RetimeResult,
    RetimeTiming,
    SessionSpec,
    SourceModule,
    Tolerances,
    WorkerInfo,
)
from helion_remote.worker.service import OPERATIONS, CompileOutcome, SessionSummary

WIRE_VERSION = 2
"""Bumped when a payload's shape changes; the worker refuses other versions."""

Payload = dict[str, Any]


def kernel_to_dict(kernel: KernelSource) -> Payload:
    return {
        "module_source": kernel.module_source,
        "entry_name": kernel.entry_name,
        "source_modules": [[m.name, m.source] for m in kernel.source_modules],
    }


def kernel_from_dict(data: Payload) -> KernelSource:
    return KernelSource(
        module_source=data["module_source"],
        entry_name=data["entry_name"],
        source_modules=tuple(SourceModule(name, source) for name, source in data["source_modules"]),
    )


def spec_to_dict(spec: SessionSpec) -> Payload:
    return {
        "wire": WIRE_VERSION,
        "session_id": spec.session_id,
        "kernel_name": spec.kernel_name,
        "args_digest": spec.args_digest,
        "reference": kernel_to_dict(spec.reference),
        "tolerances": [spec.tolerances.atol, spec.tolerances.rtol, spec.tolerances.scale_atol],
        "compile_timeout_s": spec.compile_timeout_s,
        "run_timeout_s": spec.run_timeout_s,
        "target_fingerprint": spec.target_fingerprint,
        "kernel_definition": (
            None if spec.kernel_definition is None else [spec.kernel_definition.name, spec.kernel_definition.source]
        ),
        "kernel_attr": spec.kernel_attr,
        "settings": [[name, value] for name, value in spec.settings],
    }


def spec_from_dict(data: Payload) -> SessionSpec:
    check_wire(data)
    atol, rtol, *scale = data["tolerances"]
    return SessionSpec(
        session_id=data["session_id"],
        kernel_name=data["kernel_name"],
        args_digest=data["args_digest"],
        reference=kernel_from_dict(data["reference"]),
        tolerances=Tolerances(atol, rtol, bool(scale[0]) if scale else True),
        compile_timeout_s=data["compile_timeout_s"],
        run_timeout_s=data["run_timeout_s"],
        target_fingerprint=data["target_fingerprint"],
        kernel_definition=None if data.get("kernel_definition") is None else SourceModule(*data["kernel_definition"]),
        kernel_attr=data.get("kernel_attr"),
        settings=tuple((name, value) for name, value in data.get("settings", ())),
    )


def job_to_dict(job: BenchmarkJob) -> Payload:
    return {
        "wire": WIRE_VERSION,
        "job_id": job.job_id,
        "kernel": kernel_to_dict(job.kernel),
        "args_digest": job.args_digest,
        "baseline_digest": job.baseline_digest,
        "tolerances": [job.tolerances.atol, job.tolerances.rtol, job.tolerances.scale_atol],
        "compile_timeout_s": job.compile_timeout_s,
        "run_timeout_s": job.run_timeout_s,
        "warmup_ms": job.warmup_ms,
        "rep_ms": job.rep_ms,
        "config": _jsonable(job.config),
        "attempt": job.attempt,
    }


def job_from_dict(data: Payload) -> BenchmarkJob:
    check_wire(data)
    atol, rtol, *scale = data["tolerances"]
    return BenchmarkJob(
        job_id=data["job_id"],
        kernel=kernel_from_dict(data["kernel"]),
        args_digest=data["args_digest"],
        baseline_digest=data["baseline_digest"],
        tolerances=Tolerances(atol, rtol, bool(scale[0]) if scale else True),
        compile_timeout_s=data["compile_timeout_s"],
        run_timeout_s=data["run_timeout_s"],
        warmup_ms=data["warmup_ms"],
        rep_ms=data["rep_ms"],
        config=data["config"],
        attempt=data["attempt"],
    )


def result_from_dict(data: Payload) -> JobResult:
    fields = {f.name for f in dataclasses.fields(JobResult)}
    return JobResult.from_dict({k: v for k, v in data.items() if k in fields})


def retime_to_dict(result: RetimeResult) -> Payload:
    return {
        "timings": [
            [t.kernel_digest, t.status, t.perf_ms if math.isfinite(t.perf_ms) else repr(t.perf_ms), t.error_message,
             t.traceback]
            for t in result.timings
        ],
        "worker_id": result.worker_id,
        "device_name": result.device_name,
        "device_uuid": result.device_uuid,
    }


def retime_from_dict(data: Payload) -> RetimeResult:
    timings = tuple(RetimeTiming(d, s, float(p), m, *rest) for d, s, p, m, *rest in data["timings"])  # type: ignore[arg-type]
    return RetimeResult(timings, data["worker_id"], data["device_name"], data["device_uuid"])


def worker_to_dict(info: WorkerInfo) -> Payload:
    return {"worker_id": info.worker_id, "device_name": info.device_name,
            "device_uuid": info.device_uuid, "interpreter": info.interpreter}


@dataclasses.dataclass(frozen=True)
class WireOp:
    """How one worker operation crosses a Modal call.

    A call is ``method(session, *wire_args)``: ``args`` rebuilds the service's
    arguments (``session`` is the decoded session spec, or None), ``reply`` turns
    its value into the reply's fields, and ``failure(args, error_class, message,
    traceback, worker)`` says what the reply is when the container could not
    serve it.  Arguments that do not decode (another wire version) raise, and
    the coordinator sees the call fail.
    """

    wire_params: tuple[str, ...]
    args: Callable[[SessionSpec | None, tuple[Any, ...]], tuple[Any, ...]]
    reply: Callable[[Any], Payload]
    failure: Callable[[tuple[Any, ...], str, str, str | None, WorkerInfo], Payload] = (
        lambda args, error_class, message, traceback, worker: {"error": f"{error_class}: {message}",
                                                              "traceback": traceback}
    )


_BASELINE_ERRORS = ("BaselineError", "UncheckableReferenceError")
"""The reference kernel failed or cannot be checked (``worker.checking``): the session's fault, not the container's."""


def _open_failure(args: tuple[Any, ...], error_class: str, message: str, traceback: str | None,
                  worker: WorkerInfo) -> Payload:
    kind = "baseline" if error_class in _BASELINE_ERRORS else "load"
    return {"ok": False, "kind": kind, "message": message, "traceback": traceback}


def _job_failure(args: tuple[Any, ...], error_class: str, message: str, traceback: str | None,
                 worker: WorkerInfo) -> Payload:
    result = JobResult.failed(args[0], "infra_error", message, error_class=error_class, worker=worker,
                              traceback=traceback)
    return {"result": result.to_dict()}


def _compile_failure(args: tuple[Any, ...], error_class: str, message: str, traceback: str | None,
                     worker: WorkerInfo) -> Payload:
    return {"compile": dataclasses.asdict(CompileOutcome("infra_error", 0.0, error_class, message,
                                                         traceback=traceback))}


def _summary_reply(summary: SessionSummary | None) -> Payload:
    return {"ok": True, "space_report": None if summary is None else summary.space_report}


WIRE_OPS: dict[str, WireOp] = {
    "info": WireOp((), lambda spec, a: (), lambda info: {"worker": worker_to_dict(info)}),
    "target_profile": WireOp((), lambda spec, a: (), lambda profile: {"target_profile": profile}),
    "open_session": WireOp((), lambda spec, a: (spec, True), _summary_reply, _open_failure),
    "run_job": WireOp(("job",), lambda spec, a: (job_from_dict(a[0]), None),
                      lambda result: {"result": result.to_dict()}, _job_failure),
    "compile": WireOp(("kernel", "args_digest"), lambda spec, a: (kernel_from_dict(a[0]), a[1]),
                      lambda outcome: {"compile": dataclasses.asdict(outcome)}, _compile_failure),
    "retime": WireOp(("kernels", "warmup_ms", "rep_ms"),
                     lambda spec, a: ([kernel_from_dict(k) for k in a[0]], a[1], a[2]),
                     lambda result: {"retime": retime_to_dict(result)}),
}
"""One entry per worker operation: the Modal app's methods are generated from it."""
if WIRE_OPS.keys() != OPERATIONS.keys():  # pragma: no cover - caught by any import
    raise AssertionError(f"wire codecs {sorted(WIRE_OPS)} differ from the worker operations {sorted(OPERATIONS)}")


def check_wire(data: Payload) -> None:
    if data.get("wire") != WIRE_VERSION:
        raise ValueError(
            f"payload wire version {data.get('wire')!r}, this helion_remote speaks {WIRE_VERSION}; "
            "redeploy the Modal app with the coordinator's helion_remote (helion-remote modal deploy)"
        )


def _jsonable(value: object) -> Any:
    """Configs are JSON-like already; anything else becomes its text (logs only)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)
