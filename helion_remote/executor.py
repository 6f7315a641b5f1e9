"""The backend contract: one executor, its sessions, and the stream ``submit`` returns.

Every backend (``fake``, ``local``, ``modal``, next ``ray``) subclasses
:class:`RemoteBenchmarkExecutor` and :class:`RemoteSession`.  The bases own
the lifecycle (``close`` once, context managers, use after close refused with
:class:`~helion_remote.errors.ExecutorClosedError`) and declare every
capability the coordinator may use, each with a default, so the coordinator
never probes with ``getattr``.  A backend implements the ``_``-prefixed hooks
and overrides a capability only when it has it::

    class MyExecutor(RemoteBenchmarkExecutor):
        name = "mine"

        @property
        def blob_store(self) -> BlobStore: ...        # where the coordinator uploads arguments
        def workers(self) -> Sequence[WorkerInfo]: ... # may start them
        def _open_session(self, spec) -> MySession: ... # load arguments + baseline; raise SessionOpenError
        def _close(self) -> None: ...                   # free processes, containers, threads

    class MySession(RemoteSession):                 # MySession(executor, spec): closed with its executor
        def _submit(self, jobs) -> ResultStream: ...   # jobs running when it returns
        def retime(self, kernels, *, warmup_ms, rep_ms, timeout_s) -> RetimeResult: ...

Failures of a job are results (``JobResult.status``), never exceptions;
``infra_error`` is the one status the coordinator retries elsewhere.
``tests/test_backend_contract.py`` runs the same checks on every backend.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from helion_remote.errors import ExecutorClosedError
from helion_remote.protocol import BenchmarkJob, KernelSource, RetimeResult, SessionSpec, WorkerInfo
from helion_remote.result_stream import ResultStream

if TYPE_CHECKING:
    from helion_remote.blobs import BlobStore

__all__ = ["RemoteBenchmarkExecutor", "RemoteSession", "ResultStream"]


class _ClosesOnce:
    """``close()`` runs the backend's ``_close()`` once, from any thread; ``with`` closes."""

    def __init__(self) -> None:
        self._closed = False
        self._close_lock = threading.Lock()

    def close(self) -> None:
        """Free what this holds (idempotent); it cannot be used again."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._close()

    def _close(self) -> None:
        """What a backend frees on close (nothing by default)."""

    def __exit__(self, *exc: object) -> None:
        self.close()


class RemoteSession(_ClosesOnce, abc.ABC):
    """One search's view of an executor: its arguments and baseline are loaded on the workers.

    Capabilities (attributes and methods with defaults):

    * ``space_report``: Helion's config space as the worker sees it on the real
      arguments, when the spec asked for it (the target drift guard); None: not reported.
    * ``retime_spread``: re-time a population over several same-model workers,
      anchored to ``kernels[0]`` and reported in ``retime``'s units; by default
      it is ``retime``.
    * ``spread_covers_batch_workers``: every worker that times batch jobs takes
      part in each spread, so the coordinator may put batch timings in the
      re-timing worker's units (``coordinator.unit_scales``).  Leave False where
      batch workers come and go unanchored (Modal's job containers).
    """

    space_report: dict[str, object] | None = None
    spread_covers_batch_workers: ClassVar[bool] = False

    def __init__(self, executor: RemoteBenchmarkExecutor, spec: SessionSpec) -> None:
        super().__init__()
        self.spec = spec
        self._owner = executor

    @property
    def closed(self) -> bool:
        """Closed itself, or its executor was (a closed executor's workers are gone)."""
        return self._closed or self._owner.closed

    def submit(self, jobs: Sequence[BenchmarkJob]) -> ResultStream:
        """Start ``jobs`` now; the stream yields one result per job in completion order.

        Refused (``ExecutorClosedError``) once the session or its executor is
        closed.  Jobs are running when this returns (the coordinator submits a batch in
        chunks while it still generates code, then drains the streams).  The
        coordinator closes every stream it stops reading early, read or not:
        ``ResultStream.close()`` cancels the jobs not yet yielded.
        """
        self._check_open()
        stream = self._submit(list(jobs))
        if not isinstance(stream, ResultStream):
            raise TypeError(f"{type(self).__name__}._submit must return a ResultStream, got {type(stream).__name__}")
        return stream

    @abc.abstractmethod
    def _submit(self, jobs: list[BenchmarkJob]) -> ResultStream:
        """Start ``jobs`` (the session is open); infrastructure trouble is an ``infra_error`` result."""

    @abc.abstractmethod
    def retime(
        self, kernels: Sequence[KernelSource], *, warmup_ms: float, rep_ms: float, timeout_s: float
    ) -> RetimeResult:
        """Re-time already-measured kernels together on ONE worker, the same for every call of the session.

        ``timeout_s`` bounds the whole call (the coordinator sizes it to the
        number of kernels).  A kernel the worker cannot time is a timing with a
        status; ``infra_error`` keeps the kernel's earlier timing.
        """

    def retime_spread(
        self, kernels: Sequence[KernelSource], *, warmup_ms: float, rep_ms: float, timeout_s: float
    ) -> RetimeResult:
        """The population re-benchmark; backends with several same-model workers share it out."""
        return self.retime(kernels, warmup_ms=warmup_ms, rep_ms=rep_ms, timeout_s=timeout_s)

    def _check_open(self) -> None:
        if self._closed:
            raise ExecutorClosedError(f"session {self.spec.session_id} is closed; open a new one")
        self._owner._check_open()

    def __enter__(self) -> RemoteSession:
        return self


class RemoteBenchmarkExecutor(_ClosesOnce, abc.ABC):
    """A pool of workers that compile, check and time generated kernels.

    Capabilities with defaults: :meth:`target_profile` (None: no GPU to
    describe), :meth:`suggested_codegen_workers` (0), :meth:`cost_report`
    (None: free), :meth:`budget_exceeded` (False: no budget).
    """

    name: ClassVar[str] = ""

    # -------------------------------------------------------------- required

    @property
    @abc.abstractmethod
    def blob_store(self) -> BlobStore:
        """Where the coordinator uploads argument blobs for this executor."""

    @abc.abstractmethod
    def workers(self) -> Sequence[WorkerInfo]:
        """The workers this executor runs on (may start them)."""

    def open_session(self, spec: SessionSpec) -> RemoteSession:
        """Load ``spec``'s arguments and baseline on the workers; a broken reference fails here."""
        self._check_open()
        session = self._open_session(spec)
        if not isinstance(session, RemoteSession):
            raise TypeError(f"{type(self).__name__}._open_session must return a RemoteSession, "
                            f"got {type(session).__name__}")
        return session

    @abc.abstractmethod
    def _open_session(self, spec: SessionSpec) -> RemoteSession:
        """Open ``spec`` (the executor is open); raise ``SessionOpenError`` naming why not."""

    # -------------------------------------------------------------- capabilities

    def target_profile(self) -> dict[str, object] | None:
        """The workers' GPU as a ``TargetProfile`` dict (``target="auto"``); None when there is no GPU."""
        return None

    def suggested_codegen_workers(self) -> int:
        """Code-generation processes this backend's fleet is worth (``autotune(codegen_workers=None)``)."""
        return 0

    def cost_report(self) -> object | None:
        """What the run cost so far (its ``str`` is printed), or None for a backend that costs nothing."""
        return None

    def budget_exceeded(self) -> bool:
        """True once a spending budget is used up: the coordinator stops dispatching new configs."""
        return False

    # -------------------------------------------------------------- lifecycle

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ExecutorClosedError(f"the {self.name or type(self).__name__} executor is closed; create a new one")

    def __enter__(self) -> RemoteBenchmarkExecutor:
        self._check_open()
        return self
