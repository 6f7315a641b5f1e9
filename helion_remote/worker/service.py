"""What a worker does, written once: the interface, its operations, and the server-side dispatch.

Two transports carry these operations: the pipe to a local worker process
(:mod:`helion_remote.worker.pipe`) and a Modal container
(:mod:`helion_remote.backends.modal.worker`).  Both serve a request with
:func:`serve`, looking the operation up in :data:`OPERATIONS`, so a new
operation is added here and both transports (and the Modal app's methods,
generated from this table) carry it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from helion_remote.protocol import BenchmarkJob, JobResult, KernelSource, RetimeResult, SessionSpec, Status, WorkerInfo


@dataclasses.dataclass(frozen=True)
class SessionSummary:
    session_id: str
    mutated_leaves: tuple[int, ...]
    baseline_time_s: float
    space_report: dict[str, object] | None = None
    """Helion's config space for the real arguments, when the spec asks (drift guard)."""


@dataclasses.dataclass(frozen=True)
class CompileOutcome:
    """Result of a compile-only run (GPU compile pool): warms the Triton cache."""

    status: Status
    compile_time_s: float
    error_class: str | None = None
    error_message: str | None = None
    fatal: bool = False
    traceback: str | None = None


@runtime_checkable
class WorkerService(Protocol):
    """One worker bound to one device.  Kernel faults come back as values, never exceptions."""

    def info(self) -> WorkerInfo: ...

    def target_profile(self) -> dict[str, object] | None:
        """The device as a TargetProfile dict (None under the interpreter)."""
        ...

    def open_session(self, spec: SessionSpec, *, baseline: bool = True) -> SessionSummary:
        """Fetch the arguments; with ``baseline``, run the reference (raises when it fails)."""
        ...

    def run_job(self, job: BenchmarkJob, *, compile_time_s: float | None = None) -> JobResult: ...

    def compile(self, kernel: KernelSource, args_digest: str) -> CompileOutcome:
        """Compile without launching, to warm a shared Triton cache."""
        ...

    def retime(self, kernels: Sequence[KernelSource], warmup_ms: float, rep_ms: float) -> RetimeResult: ...


@dataclasses.dataclass(frozen=True)
class Operation:
    """One request a transport carries: the method of :class:`WorkerService` and its arguments, in order."""

    name: str
    params: tuple[str, ...]
    in_session: bool
    """Runs inside an open session: a transport without a sticky session (Modal) opens it first."""


OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in (
        Operation("info", (), in_session=False),
        Operation("target_profile", (), in_session=False),
        Operation("open_session", ("spec", "baseline"), in_session=False),
        Operation("run_job", ("job", "compile_time_s"), in_session=True),
        Operation("compile", ("kernel", "args_digest"), in_session=True),
        Operation("retime", ("kernels", "warmup_ms", "rep_ms"), in_session=True),
    )
}
"""Every operation a worker serves; both transports dispatch through it."""


def serve(service: WorkerService, name: str, args: Sequence[object]) -> object:
    """Run operation ``name`` on ``service`` with ``args`` in :attr:`Operation.params` order.

    Raises ``ValueError`` for an unknown operation or a wrong number of arguments
    (a transport bug, never a kernel fault).
    """
    op = OPERATIONS.get(name)
    if op is None:
        raise ValueError(f"unknown worker operation {name!r}; known: {', '.join(OPERATIONS)}")
    if len(args) != len(op.params):
        raise ValueError(f"worker operation {name!r} takes {op.params}, got {len(args)} arguments")
    return getattr(service, name)(**dict(zip(op.params, args, strict=True)))
