"""One worker PROCESS, seen from the parent: the handle that keeps it honest.

The child is started with the ``spawn`` method (a CUDA context cannot cross a
fork), pinned to one GPU with ``CUDA_VISIBLE_DEVICES`` or run under
``TRITON_INTERPRET=1`` on CPU, and serves requests over a pipe.  It puts
itself in its own process group so a hung Triton compile (and any ptxas it
started) dies with it, and it dies with the coordinator
(:mod:`~helion_remote.worker.lifeline`).

The parent ``WorkerHandle`` owns every timeout: a request that runs past its
limit gets the process group SIGKILLed and a fresh process spawned, and the
job comes back as ``status="timeout"``.  A process that dies for any other
reason, or that stops answering (stopped: no heartbeat and process state
``T``, see :mod:`~helion_remote.worker.pipe`), is replaced too; the job it
held comes back as ``infra_error`` (not the kernel's fault as far as anyone
can tell, so the coordinator retries it elsewhere) unless the kernel itself
poisoned the CUDA context, in which case its own ``error`` result was already
sent.

How the child starts lives in :mod:`~helion_remote.worker.launch`, the pipe
and the child's loop in :mod:`~helion_remote.worker.pipe`; this module is the
lifecycle and the failure policy.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING

from helion_remote import errors
from helion_remote.environ import patched_environ
from helion_remote.protocol import (
    BenchmarkJob,
    JobResult,
    KernelSource,
    RetimeResult,
    RetimeTiming,
    SessionSpec,
    Status,
    WorkerInfo,
    clip_message,
)
from helion_remote.worker import launch
from helion_remote.worker.launch import (  # noqa: F401 - WorkerSpec, child_environment, start_worker_server re-exported
    WorkerSpec,
    child_environment,
    start_worker_server,
)
from helion_remote.worker.pipe import (
    ModuleConflict,
    RemoteRequestError,
    WorkerDied,
    WorkerStopped,
    WorkerTimedOut,
    child_main,
    receive,
    start_failure,
)
from helion_remote.worker.service import CompileOutcome

if TYPE_CHECKING:
    from helion_remote.worker.service import SessionSummary

__all__ = ["RemoteRequestError", "SessionOpenError", "WorkerDied", "WorkerHandle", "WorkerSpec", "WorkerTimedOut",
           "child_environment", "patched_environ", "start_worker_server"]

log = logging.getLogger(__name__)

_LOST = (WorkerDied, ModuleConflict, RemoteRequestError, RuntimeError)
"""What a request can fail with that is not the kernel's fault."""


class SessionOpenError(errors.SessionOpenError):
    """The session could not be opened on this worker (arguments, reference kernel)."""


class WorkerHandle:
    """Parent side of one worker process: requests, timeouts, respawns.

    Thread-safe: one request at a time (a lock), so a ``retime`` waits for the
    job in flight.  Every public method that takes a job returns a result and
    never raises for the job's or the process's faults.
    """

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.lock = threading.RLock()
        self._ctx = launch.start_context(spec)
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        self._session_key: tuple[str, bool] | None = None
        self._info: WorkerInfo | None = None
        self.restarts = 0
        self.closed = False
        self.timings: dict[str, float] = {}
        """Seconds of the last start (``start``) and session open (``open_session``), for reports."""

    @property
    def worker_id(self) -> str:
        return self.spec.worker_id

    # -------------------------------------------------------------- lifecycle

    def start(self) -> WorkerInfo:
        with self.lock:
            if self._process is not None and self._process.is_alive():
                assert self._info is not None
                return self._info
            if self.closed:
                raise RuntimeError(f"worker {self.worker_id} is closed")
            started = time.perf_counter()
            parent, child = self._ctx.Pipe(duplex=True)
            with launch.SPAWN_ENV_LOCK, launch.main_module_hidden():
                process = self._ctx.Process(
                    target=child_main, args=(child, self.spec, dict(os.environ), os.getpid()),
                    name=f"helion-remote-{self.worker_id}", daemon=True,
                )
                with patched_environ(child_environment(self.spec)):
                    launch.start_process(process)  # from the launcher thread: see worker/lifeline.py
            child.close()
            self._process, self._conn, self._session_key = process, parent, None
            cause: BaseException | None = None
            try:
                reply = self._receive(self.spec.start_timeout_s)
                if reply[0] != "ready":
                    cause = start_failure(reply)
            except (WorkerDied, WorkerTimedOut) as error:
                cause = error
            if cause is not None:
                self._kill()
                if self._ctx.get_start_method() == "forkserver":
                    self._ctx = launch.forkserver_failed(self.worker_id, str(cause))
                    return self.start()
                raise errors.WorkerError(f"worker {self.worker_id} failed to start: {cause}") from cause
            self._info = reply[1]
            self.timings["start"] = time.perf_counter() - started
            return reply[1]

    def info_if_started(self) -> WorkerInfo:
        """What the worker reported when it last started (its id alone before that); never starts it."""
        return self._info or WorkerInfo(self.worker_id, "")

    def info(self) -> WorkerInfo:
        return self.start()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            if self._conn is not None and self._process is not None and self._process.is_alive():
                try:
                    self._conn.send(("shutdown", None))
                    self._process.join(timeout=2.0)
                except (OSError, ValueError):
                    pass
            self._kill()

    def kill_now(self) -> None:
        """SIGKILL the process group without waiting for the lock (shutdown path)."""
        process = self._process
        if process is not None and process.pid is not None:
            launch.killpg(process.pid)

    def _kill(self) -> None:
        process, conn = self._process, self._conn
        self._process, self._conn, self._session_key = None, None, None
        if process is not None:
            if process.pid is not None:
                launch.killpg(process.pid)
            process.join(timeout=5.0)
        if conn is not None:
            conn.close()

    def _replace(self, why: str) -> None:
        log.warning("replacing worker %s: %s", self.worker_id, why)
        self.restarts += 1
        self._kill()

    # -------------------------------------------------------------- transport

    def _receive(self, timeout_s: float) -> tuple[object, ...]:
        assert self._conn is not None and self._process is not None
        return receive(self._conn, self._process, timeout_s)

    def _request(self, op: str, args: tuple[object, ...], timeout_s: float) -> object:
        """One round trip of ``op`` (see ``service.OPERATIONS``).  On timeout or death the
        process is replaced, then the error raised."""
        self.start()
        assert self._conn is not None
        try:
            self._conn.send((op, args))
            reply = self._receive(timeout_s)
        except WorkerTimedOut:
            self._replace(f"{op} timed out after {timeout_s:.1f}s")
            raise
        except WorkerStopped as error:
            self._replace(f"stopped answering during {op}: {error}")
            raise
        except (WorkerDied, OSError) as error:
            self._replace(f"died during {op}: {error}")
            raise WorkerDied(str(error)) from error
        kind, value, sticky, traceback = reply
        if kind == "conflict":
            self._replace(str(value))
            raise ModuleConflict(str(value))
        if sticky:  # the child exits after replying; reap it and start fresh next time
            self._replace("unrecoverable device error")
        if kind == "error":
            raise RemoteRequestError(str(value), traceback)  # type: ignore[arg-type]
        return value

    def _with_session(
        self, session: SessionSpec, baseline: bool, op: str, args: tuple[object, ...], timeout_s: float
    ) -> object:
        """Open ``session`` in the process if needed, then run the request.

        A module conflict means this job needs a fresh process: respawn once and retry.
        """
        for attempt in range(2):
            try:
                self.ensure_session(session, baseline=baseline)
            except (WorkerTimedOut, WorkerDied, RemoteRequestError, RuntimeError) as error:
                raise SessionOpenError(f"cannot open session {session.session_id}: {error}") from error
            try:
                return self._request(op, args, timeout_s)
            except ModuleConflict:
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def target_profile(self) -> dict[str, object] | None:
        with self.lock:
            return self._request("target_profile", (), self.spec.start_timeout_s)  # type: ignore[return-value]

    def ensure_session(self, session: SessionSpec, *, baseline: bool = True) -> SessionSummary | None:
        with self.lock:
            key = (session.session_id, baseline)
            if self._session_key == key and self._process is not None and self._process.is_alive():
                return None
            limit = session.compile_timeout_s + session.run_timeout_s + self.spec.timeout_margin_s
            self.start()
            started = time.perf_counter()
            summary = self._request("open_session", (session, baseline), limit)
            self.timings["open_session"] = time.perf_counter() - started
            self._session_key = key
            return summary  # type: ignore[return-value]

    # -------------------------------------------------------------- requests

    def run_job(self, session: SessionSpec, job: BenchmarkJob, compile_time_s: float | None = None) -> JobResult:
        limit = job.compile_timeout_s + job.run_timeout_s + self.spec.timeout_margin_s
        started = time.time()
        with self.lock:
            try:
                return self._with_session(session, True, "run_job", (job, compile_time_s), limit)  # type: ignore[return-value]
            except WorkerTimedOut as error:
                return self._failed(job, "timeout", started, f"job ran past {limit:.1f}s: {error}", compile_time_s)
            except _LOST as error:
                return self._failed(job, "infra_error", started, error, compile_time_s)

    def compile(self, session: SessionSpec, job: BenchmarkJob) -> CompileOutcome:
        # Exactly the job's compile timeout, as stock Helion kills a precompile
        # ``autotune_compile_timeout`` seconds after it starts (no margin on top).
        limit = job.compile_timeout_s
        start = time.perf_counter()
        with self.lock:
            try:
                return self._with_session(session, False, "compile", (job.kernel, job.args_digest), limit)  # type: ignore[return-value]
            except WorkerTimedOut as error:
                return CompileOutcome("timeout", time.perf_counter() - start, "WorkerTimedOut", str(error))
            except _LOST as error:
                return CompileOutcome("infra_error", time.perf_counter() - start, type(error).__name__,
                                      clip_message(str(error)), traceback=_remote_traceback(error))

    def retime(
        self, session: SessionSpec, kernels: Sequence[KernelSource], warmup_ms: float, rep_ms: float, timeout_s: float
    ) -> RetimeResult:
        with self.lock:
            try:
                return self._with_session(session, True, "retime", (list(kernels), warmup_ms, rep_ms), timeout_s)  # type: ignore[return-value]
            except WorkerTimedOut as error:
                # Which kernel held the call up is unknown; failing them all would cost the
                # search every member's timing (as on Modal: infra_error keeps earlier timings).
                return self._retime_failed(kernels, "infra_error", f"re-timing call cut off: {error}")
            except _LOST as error:
                return self._retime_failed(kernels, "infra_error", f"{type(error).__name__}: {error}",
                                           _remote_traceback(error))

    def _failed(
        self, job: BenchmarkJob, status: Status, started: float, error: BaseException | str,
        compile_time_s: float | None,
    ) -> JobResult:
        """The job's result when the process, not the kernel, answered (timeout, lost worker)."""
        message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        return JobResult.failed(
            job, status, message,
            error_class="WorkerTimedOut" if status == "timeout" else "WorkerLost",
            worker=self.info_if_started(),
            started_at=started, compile_time_s=compile_time_s,
            traceback=None if isinstance(error, str) else _remote_traceback(error),
        )

    def _retime_failed(
        self, kernels: Sequence[KernelSource], status: Status, message: str, traceback: str | None = None
    ) -> RetimeResult:
        info = self.info_if_started()
        message = clip_message(message)
        timings = tuple(RetimeTiming(k.digest, status, error_message=message, traceback=traceback) for k in kernels)
        return RetimeResult(timings, self.worker_id, info.device_name, info.device_uuid)


def _remote_traceback(error: BaseException) -> str | None:
    """The child's traceback behind ``error``, if the child raised (a lost process has none)."""
    while error is not None:
        if isinstance(error, RemoteRequestError):
            return error.remote_traceback
        error = error.__cause__  # type: ignore[assignment]
    return None
