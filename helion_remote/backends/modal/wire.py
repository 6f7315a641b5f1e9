"""Protocol objects as plain dicts for Modal calls, and back.

Modal pickles call arguments and results; pickled helion_remote classes
would tie a deployed worker to the coordinator's exact class layout and, for
exceptions, fail to unpickle on a laptop.  Only dicts, lists, str and
numbers cross, and both sides rebuild the dataclasses.
"""

from __future__ import annotations

import dataclasses
import math
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
)

WIRE_VERSION = 1
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
            [t.kernel_digest, t.status, t.perf_ms if math.isfinite(t.perf_ms) else repr(t.perf_ms), t.error_message]
            for t in result.timings
        ],
        "worker_id": result.worker_id,
        "device_name": result.device_name,
        "device_uuid": result.device_uuid,
    }


def retime_from_dict(data: Payload) -> RetimeResult:
    timings = tuple(RetimeTiming(d, s, float(p), m) for d, s, p, m in data["timings"])  # type: ignore[arg-type]
    return RetimeResult(timings, data["worker_id"], data["device_name"], data["device_uuid"])


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
