"""The body of the Modal worker, free of ``modal`` so it runs anywhere.

``modal_app.Worker`` (a ``modal.Cls``) creates one :class:`ContainerWorker`
per container in ``@modal.enter`` and forwards each method call.  Per
container it keeps one :class:`~helion_remote.worker.runtime.WorkerRuntime`
and the open session (arguments on the GPU, baseline output), so each
session's arguments are fetched and verified once per container.  Every
method returns plain dicts and never raises for a kernel's fault; each reply
carries a container stamp for cost metering.
"""

from __future__ import annotations

import hashlib
import os
import platform
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from helion_remote.protocol import JobResult
from helion_remote.worker.runtime import BaselineError, JobLoadError, ModuleConflictError, SessionSummary, WorkerRuntime
from helion_remote.backends.modal.blobs import MountedBlobStore
from helion_remote.backends.modal.settings import BLOB_MOUNT
from helion_remote.backends.modal.wire import WIRE_VERSION, job_from_dict, kernel_from_dict, retime_to_dict, spec_from_dict

BLOB_ROOT_ENV = "HELION_REMOTE_MODAL_BLOB_ROOT"
"""Overrides where the worker reads blobs (tests point it at a directory)."""
PROCESS_START = time.time()
"""When this container's Python imported us: the start of its observable life."""

Payload = dict[str, Any]


from helion_remote.backends.modal.versions import code_digest, versions  # noqa: E402 - re-exported (the app and executor import them here)


class ContainerWorker:
    """One container's worker: a runtime, its session, and a poisoned flag."""

    def __init__(
        self,
        pool: str,
        *,
        blob_root: str | None = None,
        reload_volume: Callable[[str, str | None], None] | None = None,
        stop_container: Callable[[], None] | None = None,
    ) -> None:
        self.pool = pool
        self.container_id = os.environ.get("MODAL_TASK_ID") or f"{socket.gethostname()}-{os.getpid()}"
        self.worker_id = f"modal:{self.container_id}"
        self._reload_volume = reload_volume
        self._stop_container = stop_container
        self._volume: tuple[str, str | None] | None = None
        root = blob_root or os.environ.get(BLOB_ROOT_ENV) or BLOB_MOUNT
        self.store = MountedBlobStore(root, reload=self._reload)
        self.runtime = WorkerRuntime(self.worker_id, self.store, tempfile.mkdtemp(prefix="helion-remote-modal-"))
        self.poisoned: str | None = None

    def _reload(self) -> None:
        if self._reload_volume is not None and self._volume is not None:
            self._reload_volume(*self._volume)

    def stamp(self) -> Payload:
        return {"id": self.container_id, "boot": PROCESS_START, "now": time.time(), "pool": self.pool}

    def _worker(self) -> Payload:
        info = self.runtime.info()
        return {"worker_id": info.worker_id, "device_name": info.device_name,
                "device_uuid": info.device_uuid, "interpreter": info.interpreter}

    def ping(self) -> Payload:
        """The handshake: versions, the device, and its TargetProfile (None under the interpreter)."""
        try:
            profile = self.runtime.target_profile()
        except Exception as error:  # noqa: BLE001 - a profile is optional; the handshake is not
            profile = {"error": f"{type(error).__qualname__}: {error}"}
        return {"versions": versions(), "worker": self._worker(), "target_profile": profile,
                "container": self.stamp()}

    def _ensure_session(self, session: Payload) -> SessionSummary | None:
        self._volume = (session.get("volume_name") or "", session.get("environment"))
        spec = spec_from_dict(session["spec"])
        if self.runtime.session_id != spec.session_id:
            return self.runtime.open_session(spec)
        return None

    def open_session(self, session: Payload) -> Payload:
        """Open (or confirm) the session here: the coordinator's fail-fast probe."""
        try:
            summary = self._ensure_session(session)
        except BaselineError as error:
            return {"ok": False, "kind": "baseline", "message": str(error), "container": self.stamp()}
        except JobLoadError as error:
            return {"ok": False, "kind": "load", "message": str(error), "container": self.stamp()}
        finally:
            if self.runtime.sticky:  # the reference itself broke the device
                self._poison("unrecoverable device error opening the session")
        return {"ok": True, "worker": self._worker(), "container": self.stamp(),
                "space_report": getattr(summary, "space_report", None)}

    def run_job(self, session: Payload, job_payload: Payload) -> Payload:
        job = job_from_dict(job_payload)
        if self.poisoned is not None:
            return self._reply(self._infra(job.job_id, "PoisonedContainer", self.poisoned))
        try:
            self._ensure_session(session)
        except (BaselineError, JobLoadError) as error:
            # The probe opened this session elsewhere: here it is the container's fault.
            return self._reply(self._infra(job.job_id, type(error).__name__, str(error)))
        try:
            result = self.runtime.run_job(job)
        except ModuleConflictError as error:
            self._poison(f"module conflict: {error}")
            return self._reply(self._infra(job.job_id, "ModuleConflictError", str(error)))
        if self.runtime.sticky:
            self._poison(f"unrecoverable device error in job {job.job_id}")
        return self._reply(result)

    def retime(self, session: Payload, kernels: list[Payload], warmup_ms: float, rep_ms: float) -> Payload:
        if self.poisoned is not None:
            return {"error": f"PoisonedContainer: {self.poisoned}", "container": self.stamp()}
        try:
            self._ensure_session(session)
        except (BaselineError, JobLoadError) as error:
            return {"error": f"{type(error).__name__}: {error}", "container": self.stamp()}
        try:
            result = self.runtime.retime([kernel_from_dict(k) for k in kernels], warmup_ms, rep_ms)
        except ModuleConflictError as error:
            self._poison(f"module conflict: {error}")
            return {"error": f"ModuleConflictError: {error}", "container": self.stamp()}
        if self.runtime.sticky:  # one kernel broke the device; the others came back infra_error
            self._poison("unrecoverable device error while re-timing")
        return {"retime": retime_to_dict(result), "container": self.stamp()}

    # ------------------------------------------------------------------ helpers

    def _infra(self, job_id: str, error_class: str, message: str) -> JobResult:
        info = self.runtime.info()
        now = time.time()
        return JobResult(job_id=job_id, status="infra_error", error_class=error_class, error_message=message[:4000],
                         worker_id=self.worker_id, device_name=info.device_name, device_uuid=info.device_uuid,
                         started_at=now, finished_at=now)

    def _reply(self, result: JobResult) -> Payload:
        return {"result": result.to_dict(), "container": self.stamp()}

    def _poison(self, reason: str) -> None:
        """This process can no longer be trusted: finish this reply, then let the container go."""
        self.poisoned = reason
        if self._stop_container is not None:
            self._stop_container()
