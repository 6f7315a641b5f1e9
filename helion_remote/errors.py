"""Every error helion-remote raises, as one tree.

Backends translate what their SDK or transport raises into these at their
boundary (as httpx maps httpcore's errors), so a caller catches
``HelionRemoteError`` or one branch and never a backend's own types.  Each class
also derives from the builtin a caller would have caught before (``ValueError``
for bad input, ``RuntimeError`` for a failed run), so older ``except`` clauses
keep working::

    HelionRemoteError
    ├── ConfigurationError (ValueError)      bad input: a name, a setting, a profile, an argument
    ├── BackendUnavailableError (RuntimeError)  a backend cannot start: extra, credentials, devices, versions
    ├── ExecutorClosedError (RuntimeError)   an executor or session used after close()
    ├── SessionOpenError (RuntimeError)      a search's session could not be opened (arguments, reference kernel)
    ├── SearchError (RuntimeError)           a search had to stop: RemoteFatalKernelError (a fatal kernel),
    │                                        InfraRetriesExhausted (no worker runs anything), a drifted target
    ├── WorkerError (RuntimeError)           a worker process or container stopped answering properly
    ├── BlobStoreError (RuntimeError)        a blob is missing or its bytes are not what their digest says
    └── CompatError (ImportError)            the installed Helion lacks a private name this version relies on

A failure of one *candidate kernel* is never an exception: it is a
:class:`~helion_remote.protocol.JobResult` with a status (made by
:meth:`~helion_remote.protocol.JobResult.failed`).  The worker's traceback
travels in that result and becomes a :class:`RemoteTraceback` cause (see
:func:`with_remote_cause`) when the coordinator has to raise.
"""

from __future__ import annotations

from typing import TypeVar

__all__ = [
    "BackendUnavailableError",
    "BlobStoreError",
    "CompatError",
    "ConfigurationError",
    "ExecutorClosedError",
    "HelionRemoteError",
    "InfraRetriesExhausted",
    "RemoteFatalKernelError",
    "RemoteTraceback",
    "SearchError",
    "SessionOpenError",
    "WorkerError",
    "with_remote_cause",
]

E = TypeVar("E", bound=BaseException)


class HelionRemoteError(Exception):
    """The root: anything helion-remote raises on purpose."""


class ConfigurationError(HelionRemoteError, ValueError):
    """Bad input from the caller; the message names the value and the fix."""


class BackendUnavailableError(HelionRemoteError, RuntimeError):
    """A backend cannot start here (missing extra, credentials, devices, mismatched versions)."""


class ExecutorClosedError(HelionRemoteError, RuntimeError):
    """An executor or session was used after ``close()``; open a new one."""


class SessionOpenError(HelionRemoteError, RuntimeError):
    """A search's session could not be opened (arguments, the reference kernel)."""


class SearchError(HelionRemoteError, RuntimeError):
    """A search had to stop before it finished."""


class InfraRetriesExhausted(SearchError):
    """Every job of the run failed on infrastructure, every attempt: no worker can run anything."""


class RemoteFatalKernelError(SearchError):
    """A worker classified a failure as fatal for the search (Helion's ``raise``)."""


class WorkerError(HelionRemoteError, RuntimeError):
    """A worker process or container stopped answering properly (not the kernel's fault)."""


class BlobStoreError(HelionRemoteError, RuntimeError):
    """A blob is missing, or its bytes do not hash to its name."""


class CompatError(HelionRemoteError, ImportError):
    """The installed Helion lacks a private name this helion-remote relies on."""


class RemoteTraceback(Exception):
    """A worker's traceback, kept as text and attached as ``__cause__`` (as ``concurrent.futures`` does)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


def with_remote_cause(error: E, traceback: str | None) -> E:
    """``error`` with the worker's ``traceback`` as its ``__cause__``; returns ``error`` to raise.

    ``raise with_remote_cause(SearchError(...), result.traceback)`` prints the
    worker's traceback above the coordinator's, as ``concurrent.futures`` does
    for a process pool.  No text (an old worker, a transport failure) leaves
    ``error`` as it was.
    """
    if traceback:
        error.__cause__ = RemoteTraceback(traceback)
    return error
