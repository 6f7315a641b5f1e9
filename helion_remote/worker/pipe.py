"""The pipe between a :class:`~helion_remote.worker.process.WorkerHandle` and its child process.

The child serves :data:`~helion_remote.worker.service.OPERATIONS` with
:func:`~helion_remote.worker.service.serve`, like a Modal container; this
module holds only what is particular to a pipe: the message shapes, the
child's loop, and the parent's wait with a deadline.

Messages (pickled tuples)::

    child -> parent at start   ("ready", WorkerInfo) | ("failed", message, traceback)
    parent -> child            (operation, args) | ("shutdown", None)
    child -> parent            (kind, value, sticky, traceback), kind "ok" | "error" | "conflict"
    child -> parent            ("beat",) every HEARTBEAT_S while a request runs

Stopped or slow?  A worker that stops answering (SIGSTOP, a debugger) is not
the kernel's fault: its job is ``infra_error`` and it is replaced.  A kernel
that runs past its limit is ``timeout``.  The child's heartbeat thread says
"this process is scheduled and its GIL moves"; when beats stop for
SILENCE_S the parent reads the child's process state (``/proc/<pid>/stat``,
``ps`` without /proc) and raises :class:`WorkerStopped` only for a *stopped*
process (``T``/``t``).  A silent process that is running or sleeping is most
likely a kernel holding the GIL in C code (a heartbeat thread cannot run
without the GIL in pure Python), so it is left to its deadline and charged as
``timeout``.  The residual ambiguity: a worker frozen some other way (a
cgroup freezer shows ``S``/``D``, not ``T``) is charged as ``timeout`` too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from helion_remote.environ import adopt_environ
from helion_remote.errors import RemoteTraceback, WorkerError
from helion_remote.protocol import format_traceback
from helion_remote.worker.launch import WorkerSpec, child_environment
from helion_remote.worker.lifeline import die_with_parent, stopped

log = logging.getLogger(__name__)

_POLL_SLICE_S = 0.25
HEARTBEAT_S = 0.5
"""The child's beat interval while it serves a request."""
SILENCE_S = 2.0
"""Beats missing this long make the parent look at the child's process state."""


class WorkerDied(WorkerError):
    """The process exited (or broke the pipe) while serving a request."""


class WorkerStopped(WorkerDied):
    """The process is stopped (SIGSTOP, a tracer) and stopped beating: lost, not the kernel's fault."""


class WorkerTimedOut(WorkerError):
    """A request ran past its limit; the process was killed and replaced."""


class RemoteRequestError(WorkerError):
    """The child raised while serving a request (not a kernel fault: those are results).

    ``remote_traceback`` is the child's traceback; it is also this error's ``__cause__``.
    """

    def __init__(self, message: str, remote_traceback: str | None = None) -> None:
        super().__init__(message)
        self.remote_traceback = remote_traceback
        if remote_traceback:
            self.__cause__ = RemoteTraceback(remote_traceback)


class ModuleConflict(WorkerError):
    """The child needs a fresh process to load this job's shipped modules."""


def _formatted(error: BaseException) -> tuple[str, str | None]:
    """``Type: message`` and the traceback, as the parent shows a child's failure."""
    return f"{type(error).__qualname__}: {error}", format_traceback(error)


# ---------------------------------------------------------------------- child


def child_main(
    conn: Connection, spec: WorkerSpec, environ: dict[str, str] | None = None, coordinator_pid: int | None = None
) -> None:
    """Serve requests until ``shutdown``, EOF, or a poisoned device.

    ``environ`` is the parent's environment at start: a forkserver child would
    otherwise inherit the server's, frozen when the first worker started.
    ``coordinator_pid`` is the process this worker must not outlive (for a
    forkserver child, not its parent).
    """
    if environ is not None:
        adopt_environ(environ)
    with contextlib.suppress(OSError):
        os.setsid()  # own process group: the parent kills compiler grandchildren too
    if coordinator_pid is not None:
        die_with_parent(coordinator_pid)
    if spec.nice:
        with contextlib.suppress(OSError):
            os.nice(spec.nice)
    os.environ.update(child_environment(spec))
    from helion_remote.worker.runtime import ModuleConflictError, WorkerRuntime
    from helion_remote.worker.service import serve

    try:
        runtime = WorkerRuntime(spec.worker_id, spec.blob_store, spec.work_dir)
        conn.send(("ready", runtime.info()))
    except BaseException as error:  # noqa: BLE001 - report, then die
        conn.send(("failed", *_formatted(error)))
        return
    heart = _Heartbeat(conn)
    while True:
        try:
            op, args = conn.recv()
        except (EOFError, OSError):
            return
        if op == "shutdown":
            return
        heart.busy()
        try:
            reply: tuple[Any, ...] = ("ok", serve(runtime, op, args), runtime.sticky, None)
        except ModuleConflictError as error:
            heart.reply(("conflict", str(error), True, None))
            return
        except BaseException as error:  # noqa: BLE001 - the parent decides what it means
            message, traceback = _formatted(error)
            reply = ("error", message, runtime.sticky, traceback)
        heart.reply(reply)
        if runtime.sticky:
            log.warning("worker %s: unrecoverable device error, exiting for a fresh process", spec.worker_id)
            return


class _Heartbeat:
    """Sends ``("beat",)`` every :data:`HEARTBEAT_S` while a request runs, from a daemon thread.

    Beats and the reply share one lock, and no beat follows a reply, so the
    parent reads beats only while it waits for that reply (an idle worker
    sends nothing that could fill the pipe).
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._busy = False
        threading.Thread(target=self._beat, daemon=True, name="helion-remote-heartbeat").start()

    def busy(self) -> None:
        with self._lock:
            self._busy = True

    def reply(self, message: tuple[Any, ...]) -> None:
        with self._lock:
            self._busy = False
            self._conn.send(message)

    def _beat(self) -> None:
        while True:
            time.sleep(HEARTBEAT_S)
            with self._lock:
                if not self._busy:
                    continue
                try:
                    self._conn.send(("beat",))
                except (OSError, ValueError):
                    return


# ---------------------------------------------------------------------- parent


def receive(conn: Connection, process: BaseProcess, timeout_s: float) -> tuple[Any, ...]:
    """The child's next message (beats skipped).

    ``WorkerTimedOut`` past ``timeout_s``; ``WorkerDied`` if it is gone;
    ``WorkerStopped`` if it stopped beating and its state says stopped.
    """
    now = time.monotonic()
    deadline, heard, looked = now + timeout_s, now, now
    while True:
        now = time.monotonic()
        remaining = deadline - now
        if remaining <= 0:
            raise WorkerTimedOut(f"no answer within {timeout_s:.1f}s")
        try:
            if conn.poll(min(_POLL_SLICE_S, remaining)):
                message = conn.recv()
                heard = time.monotonic()
                if message == ("beat",):
                    continue
                return message
        except (EOFError, OSError) as error:
            raise WorkerDied(f"pipe closed ({error}); exit code {process.exitcode}") from error
        if not process.is_alive() and not conn.poll(0):
            raise WorkerDied(f"process exited with code {process.exitcode}")
        now = time.monotonic()
        if now - heard >= SILENCE_S and now - looked >= 1.0 and process.pid is not None:
            looked = now
            if stopped(process.pid):
                raise WorkerStopped(f"no heartbeat for {now - heard:.1f}s and the process is stopped "
                                    f"(pid {process.pid}); not the kernel's fault")


def start_failure(reply: tuple[Any, ...]) -> RemoteRequestError:
    """A ``("failed", message, traceback)`` start message as an error carrying the child's traceback."""
    return RemoteRequestError(str(reply[1]), reply[2] if len(reply) > 2 else None)
