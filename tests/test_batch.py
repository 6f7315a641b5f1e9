"""A batch whose every config fails code generation: Helion's no-viable-config error, raised or kept."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from helion.autotuner.metrics import AutotuneMetrics

from helion_remote.blobs import MemoryBlobStore
from helion_remote.coordinator import batch as batch_module
from helion_remote.coordinator import session_opener
from helion_remote.coordinator.run_context import RemoteContext, RunState
from helion_remote.coordinator.seam import bind_provider
from helion_remote.coordinator.stats import RunStats
from helion_remote.executor import RemoteBenchmarkExecutor, RemoteSession
from helion_remote.protocol import KernelSource, SessionSpec


class _Session(RemoteSession):
    def _submit(self, jobs):  # type: ignore[no-untyped-def]
        raise AssertionError("nothing was generated, so nothing may be submitted")

    def retime(self, kernels, *, warmup_ms, rep_ms, timeout_s):  # type: ignore[no-untyped-def]
        raise NotImplementedError


class _Executor(RemoteBenchmarkExecutor):
    name = "stub"

    @property
    def blob_store(self) -> MemoryBlobStore:
        return MemoryBlobStore()

    def workers(self) -> list[object]:
        return []

    def _open_session(self, spec: SessionSpec) -> RemoteSession:
        return _Session(self, spec)


class _Log:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, message: str) -> None:
        self.warnings.append(message)

    def debug(self, message: str) -> None:
        pass

    def register_config(self, config: object) -> str:
        return "id"

    def record_autotune_entry(self, entry: object) -> None:
        pass


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    def broken(kernel: object, config: object) -> KernelSource:
        raise RuntimeError(f"codegen failed for {config}")

    monkeypatch.setattr(batch_module, "kernel_source", broken)
    monkeypatch.setattr(session_opener, "session_spec",
                        lambda *a: SessionSpec("s", "k", "0" * 64, KernelSource("# ref\n", "ref")))
    settings = SimpleNamespace(autotune_compile_timeout=60, autotune_benchmark_timeout=30)
    context = RemoteContext(_Executor(), "0" * 64, RunState(RunStats()))
    return bind_provider(context)(kernel=None, settings=settings, config_spec=None, args=(), log=_Log(),
                                  autotune_metrics=AutotuneMetrics())


def test_nothing_generated_raises_the_last_codegen_error(provider) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RuntimeError, match="codegen failed for 2"):
        provider.benchmark([1, 2])
    assert provider.context.stats.codegen_failures == 2 and provider.context.stats.batches == 1


def test_nothing_generated_is_kept_for_the_search_when_asked(provider) -> None:  # type: ignore[no-untyped-def]
    results = provider.benchmark([1, 2], raise_if_no_viable_config=False)
    assert [r.status for r in results] == ["error", "error"] and all(math.isinf(r.perf) for r in results)
    assert all(r.completed_at is not None for r in results)
    error = provider.take_no_viable_config_error()
    assert isinstance(error, RuntimeError) and "codegen failed for 2" in str(error)
    assert provider.take_no_viable_config_error() is None
    assert len(provider.log.warnings) == 2 and provider._compile_failure_config_ids


def test_a_spent_budget_skips_the_rest(provider) -> None:  # type: ignore[no-untyped-def]
    provider.budget_exceeded_fn = lambda: True
    results = provider.benchmark([1, 2, 3])
    assert [r.status for r in results] == ["error"] * 3
    assert provider.context.stats.budget_skipped == 3 and provider.context.stats.codegen_failures == 0
