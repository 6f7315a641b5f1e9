"""Opening a search's session on the executor, and the target drift guard.

A session loads the arguments and computes the baseline on the workers.
With an emulated target, the worker also reports Helion's config space on the
real arguments; a space that differs from the coordinator's would make every
config the search proposes wrong for the GPU, so the search stops here.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

from helion_remote.coordinator import _helion_compat as compat
from helion_remote.coordinator.codegen import kernel_source
from helion_remote.coordinator.run_context import RemoteContext, TargetCheck
from helion_remote.errors import SessionOpenError
from helion_remote.executor import RemoteSession
from helion_remote.protocol import JobResult, SessionSpec, Tolerances


@dataclasses.dataclass
class OpenedSession:
    """A provider's open session and what it measured (configs with the same source reuse it)."""

    session: RemoteSession
    measured_sources: dict[str, JobResult] = dataclasses.field(default_factory=dict)
    """Final result per generated-source digest in this session (source dedup)."""


def open_session(context: RemoteContext, kernel: Any, settings: Any, config_spec: Any, log: Any) -> OpenedSession:
    """Open a session for ``kernel``; raise (with the session closed) if the worker's space drifted."""
    spec = session_spec(context, kernel, settings, config_spec)
    opened = time.perf_counter()
    session = context.executor.open_session(spec)
    context.stats.session_open_s += time.perf_counter() - opened
    context.stats.sessions += 1
    if context.target is not None:
        try:
            check_drift(context.target, session, context.executor.name, log)
        except Exception:
            session.close()
            raise
    return OpenedSession(session)


def session_spec(context: RemoteContext, kernel: Any, settings: Any, config_spec: Any) -> SessionSpec:
    reference = kernel_source(kernel, compat.reference_config(config_spec))
    target = context.target
    return SessionSpec(
        session_id=uuid.uuid4().hex,
        kernel_name=reference.entry_name,
        args_digest=context.args_digest,
        reference=reference,
        tolerances=tolerances(settings),
        compile_timeout_s=float(settings.autotune_compile_timeout),
        run_timeout_s=float(settings.autotune_benchmark_timeout),
        target_fingerprint=None if target is None else target.fingerprint,
        kernel_definition=None if target is None or target.space_report is None else target.kernel_definition,
        kernel_attr=None if target is None else target.kernel_attr,
        settings=() if target is None else target.settings,
    )


def tolerances(settings: Any) -> Tolerances:
    """Helion's accuracy tolerances; an unset atol is scaled per tensor, as Helion does."""
    atol = settings.autotune_baseline_atol
    rtol = settings.autotune_baseline_rtol
    return Tolerances(
        atol=1e-2 if atol is None else float(atol),
        rtol=1e-2 if rtol is None else float(rtol),
        scale_atol=atol is None,
    )


def check_drift(target: TargetCheck, session: RemoteSession, backend_name: str, log: Any) -> None:
    """Stop before any candidate is timed if the worker's space is not ours."""
    if target.space_report is None:
        return
    worker_report = session.space_report
    if worker_report is None:
        log.warning(
            f"backend {backend_name or '?'} did not report the worker's config space; "
            "the target drift guard was skipped"
        )
        return
    if "error" in worker_report:
        raise SessionOpenError(
            f"the worker could not bind the kernel on the real arguments to check the target "
            f"({worker_report['error']}); the search was not started"
        )
    from helion_remote.target import check_drift as compare_spaces

    compare_spaces(target.space_report, worker_report)
