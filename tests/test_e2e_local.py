"""Real kernels, real workers: ``autotune(..., backend="local")`` on CPU under
the Triton interpreter, with real accuracy checks and real timeouts."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence

import pytest

import helion
import helion_remote
from helion_remote.backends.local import LocalExecutor
from helion_remote.executor import RemoteBenchmarkExecutor, RemoteSession, ResultStream
from helion_remote.protocol import BenchmarkJob, KernelSource, SessionSpec

import kernels

pytestmark = pytest.mark.filterwarnings("ignore:helion_remote local backend")
HERE = os.path.dirname(__file__)


@pytest.fixture(scope="module")
def local() -> Iterator[LocalExecutor]:
    executor = LocalExecutor(cpu_workers=2, timeout_margin_s=2.0)
    yield executor
    executor.close()


def reproduces_eager(name: str, config: helion.Config) -> None:
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "interpreter_check.py"), name, config.to_json()],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0 and f"MATCH {name}" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.mark.parametrize("name", ["matmul", "softmax", "add_inplace"])
def test_tuned_config_reproduces_eager(local: LocalExecutor, name: str) -> None:
    kernel = getattr(kernels, name)
    result = helion_remote.autotune(
        kernel, kernels.ARGS[name](), backend=local, algorithm="PatternSearch", effort="quick",
        autotune_max_generations=1, print_result=False,
    )
    assert result.stats["configs_measured"] >= 5
    assert result.stats["devices_used"] == ["cpu-interpreter"]
    assert result.best_ms > 0
    assert len(result.stats["retime_workers"]) <= 1, "finalists are re-timed on one worker"
    reproduces_eager(name, result.config)


class SourceEditingExecutor(RemoteBenchmarkExecutor):
    """Wraps a real executor and edits the generated source of chosen configs.

    The edited kernel really runs on the worker: what is tested is that the
    worker's accuracy check and timeout catch it, not a canned status.
    """

    name = "edited-local"

    def __init__(self, inner: LocalExecutor, select: Callable[[dict], bool], edit: Callable[[str], str]) -> None:
        super().__init__()
        self.inner, self.select, self.edit = inner, select, edit
        self.edited_digests: set[str] = set()

    @property
    def blob_store(self):  # type: ignore[no-untyped-def]
        return self.inner.blob_store

    def workers(self):  # type: ignore[no-untyped-def]
        return self.inner.workers()

    def _open_session(self, spec: SessionSpec) -> RemoteSession:
        return _EditingSession(self, self.inner.open_session(spec))


class _EditingSession(RemoteSession):
    def __init__(self, outer: SourceEditingExecutor, inner: RemoteSession) -> None:
        super().__init__(outer, inner.spec)
        self.outer, self.inner = outer, inner
        self.space_report = inner.space_report

    def _submit(self, jobs: list[BenchmarkJob]) -> ResultStream:
        edited = []
        for job in jobs:
            if self.outer.select(job.config):
                new_source = self.outer.edit(job.kernel.module_source)
                assert new_source != job.kernel.module_source, "the edit did not apply"
                kernel = dataclasses.replace(job.kernel, module_source=new_source)
                self.outer.edited_digests.add(kernel.digest)
                job = dataclasses.replace(job, kernel=kernel)
            edited.append(job)
        return self.inner.submit(edited)

    def retime(self, kernels: Sequence[KernelSource], **kw):  # type: ignore[no-untyped-def]
        return self.inner.retime(kernels, **kw)

    def _close(self) -> None:
        self.inner.close()


def _is_block(config: dict, size: int) -> bool:
    return config["block_sizes"][0] == size


def _matmul_configs(*block_sizes: list[int]) -> list[helion.Config]:
    """The default config with these block sizes: explicit candidates, not RandomSearch's,
    whose draws depend on the interpreter's hash seed (some draws hold no config the
    Triton interpreter can run)."""
    base = dict(kernels.matmul.bind(kernels.ARGS["matmul"]()).config_spec.default_config())
    return [helion.Config(**{**base, "block_sizes": list(b)}) for b in block_sizes]


CANDIDATES = ([16, 16, 16], [32, 16, 16], [16, 32, 16], [32, 32, 16])


def test_wrong_candidate_is_accuracy_error_and_never_chosen(local: LocalExecutor) -> None:
    # Candidates with 16-wide row blocks double their output: a real wrong answer.
    executor = SourceEditingExecutor(
        local, lambda c: _is_block(c, 16), lambda src: src.replace("\n    return out", "\n    return out * 2", 1)
    )
    args = kernels.ARGS["matmul"]()
    result = helion_remote.autotune(
        kernels.matmul, args, backend=executor, algorithm="FiniteSearch", effort="quick",
        algorithm_options={"configs": _matmul_configs(*CANDIDATES)}, print_result=False,
    )
    assert len(executor.edited_digests) == 2
    assert result.stats["failures"].get("accuracy_error", 0) >= 1
    assert result.config["block_sizes"][0] != 16
    reproduces_eager("matmul", result.config)


def test_hanging_candidate_times_out_and_search_finishes(local: LocalExecutor) -> None:
    executor = SourceEditingExecutor(
        local, lambda c: c["block_sizes"][:2] == [16, 16],
        lambda src: src.replace("    out = torch.empty(", "    while True:\n        pass\n    out = torch.empty(", 1),
    )
    restarts_before = sum(h.restarts for h in local._devices) if hasattr(local, "_devices") else None
    result = helion_remote.autotune(
        kernels.matmul, kernels.ARGS["matmul"](), backend=executor, algorithm="FiniteSearch", effort="quick",
        algorithm_options={"configs": _matmul_configs(*CANDIDATES)}, autotune_compile_timeout=2,
        autotune_benchmark_timeout=2, print_result=False,
    )
    assert len(executor.edited_digests) == 1
    assert result.stats["failures"].get("timeout", 0) >= 1
    assert result.config["block_sizes"][:2] != [16, 16]
    if restarts_before is not None:
        assert sum(h.restarts for h in local._devices) > restarts_before
