"""The smallest backend on the contract, for coordinator unit tests that need no worker.

``StubSession`` refuses ``submit`` and ``retime`` unless a test overrides them, so
a test that reaches a worker by mistake fails loudly.
"""

from __future__ import annotations

from helion_remote.blobs import MemoryBlobStore
from helion_remote.executor import RemoteBenchmarkExecutor, RemoteSession
from helion_remote.protocol import KernelSource, SessionSpec

SPEC = SessionSpec("s", "k", "0" * 64, KernelSource("# ref\n", "ref"))


class StubSession(RemoteSession):
    def _submit(self, jobs):  # type: ignore[no-untyped-def]
        raise AssertionError("this test must not submit jobs")

    def retime(self, kernels, *, warmup_ms, rep_ms, timeout_s):  # type: ignore[no-untyped-def]
        raise AssertionError("this test must not re-time")


class StubExecutor(RemoteBenchmarkExecutor):
    """Opens ``StubSession``s carrying ``space_report``; keeps every session it opened."""

    name = "stub"

    def __init__(self, space_report: dict[str, object] | None = None) -> None:
        super().__init__()
        self.space_report = space_report
        self.sessions: list[StubSession] = []
        self._store = MemoryBlobStore()

    @property
    def blob_store(self) -> MemoryBlobStore:
        return self._store

    def workers(self) -> list[object]:
        return []

    def _open_session(self, spec: SessionSpec) -> RemoteSession:
        session = StubSession(self, spec)
        session.space_report = self.space_report
        self.sessions.append(session)
        return session
