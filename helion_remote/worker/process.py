"""One worker PROCESS and the parent-side handle that keeps it honest.

The child is started with the ``spawn`` method (a CUDA context cannot cross a
fork), pinned to one GPU with ``CUDA_VISIBLE_DEVICES`` or run under
``TRITON_INTERPRET=1`` on CPU, and serves requests over a pipe.  It puts
itself in its own process group so a hung Triton compile (and any ptxas it
started) dies with it.

The parent ``WorkerHandle`` owns every timeout: a request that runs past its
limit gets the process group SIGKILLed and a fresh process spawned, and the
job comes back as ``status="timeout"``.  A process that dies for any other
reason is respawned too; the job it held comes back as ``infra_error`` (not
the kernel's fault as far as anyone can tell, so the coordinator retries it
elsewhere) unless the kernel itself poisoned the CUDA context, in which case
its own ``error`` result was already sent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from helion_remote import errors
from helion_remote.errors import WorkerError
from helion_remote.environ import adopt_environ, patched_environ
from helion_remote.protocol import (
    BenchmarkJob,
    JobResult,
    KernelSource,
    RetimeResult,
    RetimeTiming,
    SessionSpec,
    Status,
    WorkerInfo,
)

if TYPE_CHECKING:
    from helion_remote.blobs import BlobStore
    from helion_remote.worker.runtime import CompileOutcome, SessionSummary

log = logging.getLogger(__name__)

_SPAWN_ENV_LOCK = threading.Lock()
"""Children inherit ``os.environ`` at ``start()``; set it for one child at a time."""
_POLL_SLICE_S = 0.25


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """How to (re)start one worker process."""

    worker_id: str
    blob_store: BlobStore
    """Must be picklable and safe to use from several processes (``DirectoryBlobStore``)."""
    work_dir: str
    cuda_device: int | None = None
    """Physical GPU index to pin; ``None`` runs the Triton interpreter on CPU."""
    env: tuple[tuple[str, str], ...] = ()
    start_timeout_s: float = 300.0
    timeout_margin_s: float = 10.0
    nice: int = 0
    """Added to the child's niceness: compile workers yield the CPU to device workers."""


_FORKSERVER_PRELOAD = ["helion_remote.worker.runtime"]
_SERVER_ENV = {"PYTORCH_NVML_BASED_CUDA_CHECK": "1", "TRITON_INTERPRET": "0"}
_FORKSERVER_USABLE = True
"""Cleared when a forkserver child fails to start; later workers use ``spawn``."""


def _forkserver_context() -> multiprocessing.context.BaseContext:
    """The forkserver context, preloading the worker runtime (torch, Triton, Helion)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_FORKSERVER_PRELOAD)
    return context


def _start_context(spec: WorkerSpec) -> multiprocessing.context.BaseContext:
    """``forkserver`` for GPU workers, ``spawn`` otherwise.

    A forkserver imports torch, Triton and Helion once and forks each worker
    from it, so 1 + N workers start in well under a second each instead of each
    paying the multi-second imports (33 concurrent imports took ~22 s on a
    32-core host).  Nothing in the server touches CUDA (each child picks its
    GPU with ``CUDA_VISIBLE_DEVICES`` before its first CUDA call); interpreter
    workers keep ``spawn`` because Triton reads ``TRITON_INTERPRET`` at import.
    """
    if spec.cuda_device is not None and _forkserver_wanted():
        return _forkserver_context()
    return multiprocessing.get_context("spawn")


def _forkserver_wanted() -> bool:
    return (
        _FORKSERVER_USABLE
        and os.environ.get("HELION_REMOTE_WORKER_START", "forkserver") == "forkserver"
        and "forkserver" in multiprocessing.get_all_start_methods()
    )


def start_worker_server(*, wait: bool = False) -> bool:
    """Start the GPU workers' forkserver now (it imports torch, Triton and Helion once).

    Later GPU workers then start in well under a second.  ``wait`` returns only
    once the imports are done.  Returns False when workers use ``spawn``
    (forkserver unavailable, disabled, or it failed).
    """
    if not _forkserver_wanted():
        return False
    context = _forkserver_context()
    with _SPAWN_ENV_LOCK, _main_module_hidden():
        from multiprocessing import forkserver

        # The server inherits this environment: its imports must not touch CUDA
        # (torch then refuses CUDA in every forked child), so NVML-only checks.
        with patched_environ(_SERVER_ENV):
            forkserver.ensure_running()
        if wait:  # the server forks only after its preload: a no-op child marks the end
            probe = context.Process(target=os.getpid, daemon=True)
            probe.start()
    if wait:
        probe.join()
    return True


class WorkerDied(WorkerError):
    """The process exited (or broke the pipe) while serving a request."""


class WorkerTimedOut(WorkerError):
    """A request ran past its limit; the process was killed and replaced."""


class SessionOpenError(errors.SessionOpenError):
    """The session could not be opened on this worker (arguments, reference kernel)."""


class _ModuleConflict(WorkerError):
    """The child needs a fresh process to load this job's shipped modules."""


def child_environment(spec: WorkerSpec) -> dict[str, str]:
    env: dict[str, str] = {}
    if spec.cuda_device is None:
        env["TRITON_INTERPRET"] = "1"
        env["CUDA_VISIBLE_DEVICES"] = ""
    else:
        env["CUDA_VISIBLE_DEVICES"] = str(spec.cuda_device)
        env["TRITON_INTERPRET"] = "0"
        # torch.cuda.is_available() through NVML: no CUDA driver state before the
        # child picks its GPU (and none in a forkserver that children fork from).
        env.update(_SERVER_ENV)
        # As Helion's autotuner: compile locally, keep only binaries in the cache.
        env["TRITON_LOCAL_BUILD"] = "1"
        env["TRITON_STORE_BINARY_ONLY"] = "1"
    env.update(dict(spec.env))
    return env


# ---------------------------------------------------------------------- child


def _child_main(conn: Connection, spec: WorkerSpec, environ: dict[str, str] | None = None) -> None:
    """Serve requests until ``shutdown``, EOF, or a poisoned device.

    ``environ`` is the parent's environment at start: a forkserver child would
    otherwise inherit the server's, frozen when the first worker started.
    """
    if environ is not None:
        adopt_environ(environ)
    try:
        os.setsid()  # own process group: the parent kills compiler grandchildren too
    except OSError:
        pass
    if spec.nice:
        with contextlib.suppress(OSError):
            os.nice(spec.nice)
    os.environ.update(child_environment(spec))
    from helion_remote.worker.runtime import ModuleConflictError, WorkerRuntime

    try:
        runtime = WorkerRuntime(spec.worker_id, spec.blob_store, spec.work_dir)
        conn.send(("ready", runtime.info()))
    except BaseException as error:  # noqa: BLE001 - report, then die
        conn.send(("failed", f"{type(error).__qualname__}: {error}"))
        return
    while True:
        try:
            op, payload = conn.recv()
        except (EOFError, OSError):
            return
        if op == "shutdown":
            return
        try:
            value = _dispatch(runtime, op, payload)
            reply: tuple[Any, ...] = ("ok", value, runtime.sticky)
        except ModuleConflictError as error:
            conn.send(("conflict", str(error), True))
            return
        except BaseException as error:  # noqa: BLE001 - the parent decides what it means
            reply = ("error", f"{type(error).__qualname__}: {error}", runtime.sticky)
        conn.send(reply)
        if runtime.sticky:
            log.warning("worker %s: unrecoverable device error, exiting for a fresh process", spec.worker_id)
            return


def _dispatch(runtime: Any, op: str, payload: Any) -> object:
    if op == "info":
        return runtime.info()
    if op == "target_profile":
        return runtime.target_profile()
    if op == "open_session":
        session, baseline = payload
        return runtime.open_session(session, baseline=baseline)
    if op == "run_job":
        job, compile_time_s = payload
        return runtime.run_job(job, compile_time_s=compile_time_s)
    if op == "compile":
        kernel, args_digest = payload
        return runtime.compile_kernel(kernel, args_digest)
    if op == "retime":
        kernels, warmup_ms, rep_ms = payload
        return runtime.retime(kernels, warmup_ms, rep_ms)
    raise ValueError(f"unknown worker request {op!r}")


# ---------------------------------------------------------------------- parent


class WorkerHandle:
    """Parent side of one worker process: requests, timeouts, respawns.

    Thread-safe: one request at a time (a lock), so a ``retime`` waits for the
    job in flight.  Every public method that takes a job returns a result and
    never raises for the job's or the process's faults.
    """

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.lock = threading.RLock()
        self._ctx = _start_context(spec)
        self._process: multiprocessing.process.BaseProcess | None = None
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
            with _SPAWN_ENV_LOCK, _main_module_hidden():
                process = self._ctx.Process(
                    target=_child_main, args=(child, self.spec, dict(os.environ)),
                    name=f"helion-remote-{self.worker_id}", daemon=True,
                )
                with patched_environ(child_environment(self.spec)):
                    process.start()
            child.close()
            self._process, self._conn, self._session_key = process, parent, None
            cause: BaseException | None = None
            try:
                reply = self._receive(self.spec.start_timeout_s)
                failure = None if reply[0] == "ready" else str(reply[1])
            except (WorkerDied, WorkerTimedOut) as error:
                cause, failure = error, str(error)
            if failure is not None:
                self._kill()
                if self._ctx.get_start_method() == "forkserver":
                    return self._start_spawned_instead(failure)
                raise RuntimeError(f"worker {self.worker_id} failed to start: {failure}") from cause
            self._info = reply[1]
            self.timings["start"] = time.perf_counter() - started
            return reply[1]

    def _start_spawned_instead(self, why: str) -> WorkerInfo:
        """A forkserver child could not start: use ``spawn`` from now on (slower, always safe)."""
        global _FORKSERVER_USABLE
        _FORKSERVER_USABLE = False
        log.warning("worker %s could not start from the forkserver (%s); using spawn", self.worker_id, why)
        self._ctx = multiprocessing.get_context("spawn")
        return self.start()

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
            _killpg(process.pid)

    def _kill(self) -> None:
        process, conn = self._process, self._conn
        self._process, self._conn, self._session_key = None, None, None
        if process is not None:
            if process.pid is not None:
                _killpg(process.pid)
            process.join(timeout=5.0)
        if conn is not None:
            conn.close()

    def _replace(self, why: str) -> None:
        log.warning("replacing worker %s: %s", self.worker_id, why)
        self.restarts += 1
        self._kill()

    # -------------------------------------------------------------- transport

    def _receive(self, timeout_s: float) -> tuple[Any, ...]:
        conn, process = self._conn, self._process
        assert conn is not None and process is not None
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerTimedOut(f"no answer within {timeout_s:.1f}s")
            try:
                if conn.poll(min(_POLL_SLICE_S, remaining)):
                    return conn.recv()
            except (EOFError, OSError) as error:
                raise WorkerDied(f"pipe closed ({error}); exit code {process.exitcode}") from error
            if not process.is_alive() and not conn.poll(0):
                raise WorkerDied(f"process exited with code {process.exitcode}")

    def _request(self, op: str, payload: object, timeout_s: float) -> object:
        """One round trip.  On timeout or death the process is replaced, then the error raised."""
        self.start()
        assert self._conn is not None
        try:
            self._conn.send((op, payload))
            reply = self._receive(timeout_s)
        except WorkerTimedOut:
            self._replace(f"{op} timed out after {timeout_s:.1f}s")
            raise
        except (WorkerDied, OSError) as error:
            self._replace(f"died during {op}: {error}")
            raise WorkerDied(str(error)) from error
        kind, value, sticky = reply
        if kind == "conflict":
            self._replace(value)
            raise _ModuleConflict(value)
        if sticky:  # the child exits after replying; reap it and start fresh next time
            self._replace("unrecoverable device error")
        if kind == "error":
            raise RemoteRequestError(value)
        return value

    def _with_session(self, session: SessionSpec, baseline: bool, op: str, payload: object, timeout_s: float) -> object:
        """Open ``session`` in the process if needed, then run the request.

        A module conflict means this job needs a fresh process: respawn once and retry.
        """
        for attempt in range(2):
            try:
                self.ensure_session(session, baseline=baseline)
            except (WorkerTimedOut, WorkerDied, RemoteRequestError, RuntimeError) as error:
                raise SessionOpenError(f"cannot open session {session.session_id}: {error}") from error
            try:
                return self._request(op, payload, timeout_s)
            except _ModuleConflict:
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def target_profile(self) -> dict[str, object] | None:
        with self.lock:
            return self._request("target_profile", None, self.spec.start_timeout_s)  # type: ignore[return-value]

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
            except (WorkerDied, _ModuleConflict, RemoteRequestError, RuntimeError) as error:
                return self._failed(job, "infra_error", started, f"{type(error).__name__}: {error}", compile_time_s)

    def compile(self, session: SessionSpec, job: BenchmarkJob) -> CompileOutcome:
        from helion_remote.worker.runtime import CompileOutcome

        limit = job.compile_timeout_s + self.spec.timeout_margin_s
        start = time.perf_counter()
        with self.lock:
            try:
                return self._with_session(session, False, "compile", (job.kernel, job.args_digest), limit)  # type: ignore[return-value]
            except WorkerTimedOut as error:
                return CompileOutcome("timeout", time.perf_counter() - start, "WorkerTimedOut", str(error))
            except (WorkerDied, _ModuleConflict, RemoteRequestError, RuntimeError) as error:
                return CompileOutcome("infra_error", time.perf_counter() - start, type(error).__name__, str(error))

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
            except (WorkerDied, _ModuleConflict, RemoteRequestError, RuntimeError) as error:
                return self._retime_failed(kernels, "infra_error", f"{type(error).__name__}: {error}")

    def _failed(
        self, job: BenchmarkJob, status: Status, started: float, message: str, compile_time_s: float | None
    ) -> JobResult:
        info = self._info or WorkerInfo(self.worker_id, "")
        return JobResult(
            job_id=job.job_id,
            status=status,
            compile_time_s=compile_time_s,
            error_class="WorkerTimedOut" if status == "timeout" else "WorkerLost",
            error_message=message,
            worker_id=self.worker_id,
            device_name=info.device_name,
            device_uuid=info.device_uuid,
            started_at=started,
            finished_at=time.time(),
            kernel_digest=job.kernel.digest,
        )

    def _retime_failed(self, kernels: Sequence[KernelSource], status: Status, message: str) -> RetimeResult:
        info = self._info or WorkerInfo(self.worker_id, "")
        timings = tuple(RetimeTiming(k.digest, status, error_message=message) for k in kernels)
        return RetimeResult(timings, self.worker_id, info.device_name, info.device_uuid)


class RemoteRequestError(WorkerError):
    """The child raised while serving a request (not a kernel fault: those are results)."""


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Keep ``spawn`` from re-running the user's script in every worker.

    ``spawn`` re-imports ``__main__`` in the child; a script that calls
    ``autotune`` at top level (no ``if __name__ == "__main__"`` guard) would then
    recurse.  Workers need nothing from ``__main__``: everything they run
    arrives as generated source, so hide it while the child is prepared.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {name: main.__dict__.pop(name) for name in ("__file__", "__spec__") if name in main.__dict__}
    main.__spec__ = None  # type: ignore[assignment]  # spawn reads it unconditionally
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def _killpg(pid: int) -> None:
    """Kill the child's process group (it called setsid), falling back to the pid."""
    for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            target()
            return
        except (ProcessLookupError, PermissionError, OSError):
            continue

