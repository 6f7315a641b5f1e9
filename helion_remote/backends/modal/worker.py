"""The body of the Modal worker, free of ``modal`` so it runs anywhere.

``modal_app.Worker`` (a ``modal.Cls``) creates one :class:`ContainerWorker`
per container in ``@modal.enter`` and forwards each method call to
:meth:`ContainerWorker.call`, which serves the worker operations of
:data:`~helion_remote.worker.service.OPERATIONS` (as the local pipe does)
with the codecs of :data:`~helion_remote.backends.modal.wire.WIRE_OPS`.  Per
container it keeps one :class:`~helion_remote.worker.runtime.WorkerRuntime`
and the open session (arguments on the GPU, baseline output), so each
session's arguments are fetched and verified once per container.  Every
method returns plain dicts and never raises for a kernel's fault; each reply
carries a container stamp for cost metering, and a failure's reply carries
the worker's traceback.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Callable
from typing import Any

from helion_remote.protocol import SessionSpec, clip_message, format_traceback
from helion_remote.worker.runtime import ModuleConflictError, WorkerRuntime
from helion_remote.worker.service import OPERATIONS, SessionSummary, serve
from helion_remote.backends.modal.blobs import MountedBlobStore
from helion_remote.backends.modal.settings import BLOB_MOUNT
from helion_remote.backends.modal.versions import versions
from helion_remote.backends.modal.wire import WIRE_OPS, WireOp, spec_from_dict, worker_to_dict

BLOB_ROOT_ENV = "HELION_REMOTE_MODAL_BLOB_ROOT"
"""Overrides where the worker reads blobs (tests point it at a directory)."""
PROCESS_START = time.time()
"""When this container's Python imported us: the start of its observable life."""

Payload = dict[str, Any]



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
        return worker_to_dict(self.runtime.info())

    def ping(self) -> Payload:
        """The handshake: versions, the device, and its TargetProfile (None under the interpreter)."""
        try:
            profile = serve(self.runtime, "target_profile", ())
        except Exception as error:  # noqa: BLE001 - a profile is optional; the handshake is not
            profile = {"error": f"{type(error).__qualname__}: {error}"}
        return {"versions": versions(), "worker": self._worker(), "target_profile": profile,
                "container": self.stamp()}

    def call(self, name: str, session: Payload | None = None, *wire_args: Any) -> Payload:
        """Serve worker operation ``name``: the one dispatch behind every generated Modal method.

        ``session`` (the coordinator's session payload) is opened first for the
        operations that need it: any container may take any call.  A failure
        the container can name (the session would not open here, a poisoned
        device, a module conflict, a bug in the worker) is the operation's
        failure reply, with the traceback; arguments that do not decode raise.
        """
        op, codec = OPERATIONS[name], WIRE_OPS[name]
        spec = spec_from_dict(session["spec"]) if session else None
        args = codec.args(spec, wire_args)
        if op.in_session and self.poisoned is not None:
            return self._failed(codec, args, "PoisonedContainer", self.poisoned, None)
        try:
            if name == "open_session":
                value: object = self._ensure_session(session, spec)
            else:
                if op.in_session:
                    self._ensure_session(session, spec)
                value = serve(self.runtime, name, args)
        except ModuleConflictError as error:
            self._poison(f"module conflict: {error}")
            return self._failed(codec, args, type(error).__name__, str(error), format_traceback(error))
        except Exception as error:  # noqa: BLE001 - never lose a call to a worker bug: say where it failed
            # BaselineError / JobLoadError land here: the probe opened this session elsewhere,
            # so here it is the container's fault.
            return self._failed(codec, args, type(error).__name__, str(error), format_traceback(error))
        finally:
            if self.runtime.sticky and self.poisoned is None:  # a kernel (or the reference) broke the device
                self._poison(f"unrecoverable device error in {name}")
        return {**codec.reply(value), "worker": self._worker(), "container": self.stamp()}

    def _ensure_session(self, session: Payload | None, spec: SessionSpec | None) -> SessionSummary | None:
        if session is None or spec is None:
            raise ValueError("this worker operation needs the session payload")
        self._volume = (session.get("volume_name") or "", session.get("environment"))
        if self.runtime.session_id != spec.session_id:
            return serve(self.runtime, "open_session", (spec, True))  # type: ignore[return-value]
        return None

    # ------------------------------------------------------------------ helpers

    def _failed(self, codec: WireOp, args: tuple[Any, ...], error_class: str, message: str,
                traceback: str | None) -> Payload:
        reply = codec.failure(args, error_class, clip_message(message), traceback, self.runtime.info())
        return {**reply, "container": self.stamp()}

    def _poison(self, reason: str) -> None:
        """This process can no longer be trusted: finish this reply, then let the container go."""
        self.poisoned = reason
        if self._stop_container is not None:
            self._stop_container()
