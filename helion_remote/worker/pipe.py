"""The pipe between a :class:`~helion_remote.worker.process.WorkerHandle` and its child process.

The child serves :data:`~helion_remote.worker.service.OPERATIONS` with
:func:`~helion_remote.worker.service.serve`, like a Modal container; this
module holds only what is particular to a pipe: the message shapes, the
child's loop, and the parent's wait with a deadline.

Messages (pickled tuples)::

    child -> parent at start   ("ready", WorkerInfo) | ("failed", message, traceback)
    parent -> child            (operation, args) | ("shutdown", None)
    child -> parent            (kind, value, sticky, traceback), kind "ok" | "error" | "conflict"
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from helion_remote.environ import adopt_environ
from helion_remote.errors import RemoteTraceback, WorkerError
from helion_remote.protocol import format_traceback
from helion_remote.worker.launch import WorkerSpec, child_environment

log = logging.getLogger(__name__)

_POLL_SLICE_S = 0.25


class WorkerDied(WorkerError):
    """The process exited (or broke the pipe) while serving a request."""


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


def child_main(conn: Connection, spec: WorkerSpec, environ: dict[str, str] | None = None) -> None:
    """Serve requests until ``shutdown``, EOF, or a poisoned device.

    ``environ`` is the parent's environment at start: a forkserver child would
    otherwise inherit the server's, frozen when the first worker started.
    """
    if environ is not None:
        adopt_environ(environ)
    with contextlib.suppress(OSError):
        os.setsid()  # own process group: the parent kills compiler grandchildren too
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
    while True:
        try:
            op, args = conn.recv()
        except (EOFError, OSError):
            return
        if op == "shutdown":
            return
        try:
            reply: tuple[Any, ...] = ("ok", serve(runtime, op, args), runtime.sticky, None)
        except ModuleConflictError as error:
            conn.send(("conflict", str(error), True, None))
            return
        except BaseException as error:  # noqa: BLE001 - the parent decides what it means
            message, traceback = _formatted(error)
            reply = ("error", message, runtime.sticky, traceback)
        conn.send(reply)
        if runtime.sticky:
            log.warning("worker %s: unrecoverable device error, exiting for a fresh process", spec.worker_id)
            return


# ---------------------------------------------------------------------- parent


def receive(conn: Connection, process: BaseProcess, timeout_s: float) -> tuple[Any, ...]:
    """The child's next message; ``WorkerTimedOut`` past ``timeout_s``, ``WorkerDied`` if it is gone."""
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


def start_failure(reply: tuple[Any, ...]) -> RemoteRequestError:
    """A ``("failed", message, traceback)`` start message as an error carrying the child's traceback."""
    return RemoteRequestError(str(reply[1]), reply[2] if len(reply) > 2 else None)
