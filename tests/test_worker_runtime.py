"""WorkerRuntime on real Helion-generated kernels under the Triton interpreter (CPU).

The coordinator side is real too: kernels are bound on CPU tensors and
``to_triton_code`` produces the module each job ships.  Wrong, broken and
poisoned candidates are made by editing that generated source.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import helion
import helion.language as hl
from helion_remote.argcodec import upload_args
from helion_remote.blobs import DirectoryBlobStore
from helion_remote.protocol import BenchmarkJob, JobResult, KernelSource, SessionSpec, SourceModule, Tolerances


@helion.kernel(static_shapes=True)
def rt_matmul(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    m, k = x.size()
    _k2, n = y.size()
    out = torch.empty([m, n], dtype=x.dtype, device=x.device)
    for tile_m, tile_n in hl.tile([m, n]):
        acc = hl.zeros([tile_m, tile_n], dtype=torch.float32)
        for tile_k in hl.tile(k):
            acc = torch.addmm(acc, x[tile_m, tile_k], y[tile_k, tile_n])
        out[tile_m, tile_n] = acc.to(x.dtype)
    return out


@helion.kernel(static_shapes=True)
def rt_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(x)
    for tile in hl.tile(x.size()):
        out[tile] = x[tile] + y[tile]
    return out


@helion.kernel(static_shapes=True)
def rt_iadd(x: torch.Tensor, y: torch.Tensor) -> None:
    for tile in hl.tile(x.size()):
        x[tile] += y[tile]


@helion.kernel(static_shapes=True)
def rt_softmax(x: torch.Tensor) -> torch.Tensor:
    n, _m = x.size()
    out = torch.empty_like(x)
    for tile_n in hl.tile(n):
        out[tile_n, :] = torch.nn.functional.softmax(x[tile_n, :], dim=1)
    return out


def two(shape: tuple[int, int] = (32, 32)) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(*shape, generator=gen), torch.randn(*shape, generator=gen)]


def source(kernel: object, args: list[torch.Tensor], block_sizes: list[int] | None = None) -> KernelSource:
    """Coordinator-side codegen, as the adapter does it."""
    bound = kernel.bind(tuple(args))  # type: ignore[attr-defined]
    config = bound.config_spec.default_config() if block_sizes is None else helion.Config(block_sizes=block_sizes)
    return KernelSource(bound.to_triton_code(config), bound.kernel.name)


def edit(kernel: KernelSource, old: str, new: str) -> KernelSource:
    assert old in kernel.module_source, old
    return KernelSource(kernel.module_source.replace(old, new), kernel.entry_name, kernel.source_modules)


def job(spec: SessionSpec, kernel: KernelSource, job_id: str = "j") -> BenchmarkJob:
    return BenchmarkJob(
        job_id=job_id, kernel=kernel, args_digest=spec.args_digest, baseline_digest=spec.baseline_digest,
        tolerances=spec.tolerances, compile_timeout_s=30, run_timeout_s=30, warmup_ms=1.0, rep_ms=5.0,
    )


# The runtime runs in a spawned child: TRITON_INTERPRET must be set before
# triton is first imported, and the pytest process imported it long ago.
_RUNTIMES: dict[str, object] = {}


def _in_child(key: str, store_root: str, work_dir: str, spec: SessionSpec | None, ops: list[tuple]) -> list[object]:
    """Run ``ops`` against the child's runtime ``key`` (created on first use)."""
    from helion_remote.blobs import DirectoryBlobStore
    from helion_remote.worker.runtime import WorkerRuntime

    runtime = _RUNTIMES.get(key)
    if runtime is None:
        runtime = _RUNTIMES[key] = WorkerRuntime("w-test", DirectoryBlobStore(store_root), work_dir)
    out: list[object] = []
    if spec is not None:
        out.append(runtime.open_session(spec))  # type: ignore[attr-defined]
    for op, *rest in ops:
        if op == "run":
            out.append(runtime.run_job(*rest))  # type: ignore[attr-defined]
        elif op == "retime":
            out.append(runtime.retime(*rest))  # type: ignore[attr-defined]
        elif op == "sticky":
            out.append(runtime.sticky)  # type: ignore[attr-defined]
        elif op == "args":
            out.append([a.clone() for a in runtime._session.args])  # type: ignore[attr-defined]
    return out


@pytest.fixture(scope="module")
def child() -> Iterator[object]:
    ctx = multiprocessing.get_context("spawn")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        pool = ctx.Pool(1)
        pool.apply(os.getpid)  # the worker process exists (and has the env) from here on
    yield pool
    pool.terminate()
    pool.join()


class Remote:
    """A test's handle on one runtime in the child process."""

    def __init__(self, pool, store_root: Path, work_dir: Path, key: str) -> None:  # type: ignore[no-untyped-def]
        self.pool, self.store_root, self.work_dir, self.key = pool, str(store_root), str(work_dir), key
        self.spec: SessionSpec | None = None

    def open(self, spec: SessionSpec) -> object:
        self.spec = spec
        return self.pool.apply(_in_child, (self.key, self.store_root, self.work_dir, spec, []))[0]

    def ops(self, *ops: tuple) -> list[object]:
        return self.pool.apply(_in_child, (self.key, self.store_root, self.work_dir, None, list(ops)))

    def run(self, kernel: KernelSource, job_id: str = "j") -> JobResult:
        assert self.spec is not None
        return self.ops(("run", job(self.spec, kernel, job_id)))[0]  # type: ignore[return-value]


@pytest.fixture()
def make_runtime(child, tmp_path):  # type: ignore[no-untyped-def]
    store = DirectoryBlobStore(tmp_path / "blobs")

    def make(kernel: object, args: list[torch.Tensor], reference: KernelSource | None = None):  # type: ignore[no-untyped-def]
        upload = upload_args(store, args)
        ref = reference or source(kernel, args)
        spec = SessionSpec("s-" + upload.digest[:8], ref.entry_name, upload.digest, ref, Tolerances())
        remote = Remote(child, tmp_path / "blobs", tmp_path / "work", str(tmp_path))
        summary = remote.open(spec)
        return remote, spec, summary

    return make


def test_correct_kernels_are_ok_with_finite_perf(make_runtime) -> None:  # type: ignore[no-untyped-def]
    args = two()
    runtime, spec, summary = make_runtime(rt_matmul, args, source(rt_matmul, args, [32, 32, 32]))
    assert summary.mutated_leaves == ()
    result = runtime.run(source(rt_matmul, args, [16, 16, 16]), "mm16")
    assert result.status == "ok", result.error_message
    assert math.isfinite(result.perf_ms) and result.perf_ms > 0
    assert result.compile_time_s is not None and result.compile_time_s > 0
    assert result.worker_id == "w-test"
    assert result.device_name == "cpu-interpreter" and result.device_uuid.startswith("cpu-interpreter")
    assert result.kernel_digest == source(rt_matmul, args, [16, 16, 16]).digest
    assert result.started_at <= result.finished_at

    runtime, spec, _ = make_runtime(rt_add, args)
    assert runtime.run(source(rt_add, args, [16, 8])).status == "ok"


def test_softmax_runs_with_libdevice_shim(make_runtime) -> None:  # type: ignore[no-untyped-def]
    args = [torch.randn(16, 32, generator=torch.Generator().manual_seed(3))]
    runtime, spec, _ = make_runtime(rt_softmax, args)
    result = runtime.run(source(rt_softmax, args, [8]))
    assert result.status == "ok", result.error_message


def test_wrong_result_is_accuracy_error(make_runtime) -> None:  # type: ignore[no-untyped-def]
    args = two()
    runtime, spec, _ = make_runtime(rt_add, args)
    wrong = edit(source(rt_add, args, [16, 16]), "v_0 = load + load_1", "v_0 = (load + load_1) * 2")
    result = runtime.run(wrong)
    assert result.status == "accuracy_error"
    assert not result.fatal and result.perf_ms == math.inf
    assert "mismatch" in (result.error_message or "").lower()


def test_mutated_argument_is_checked(make_runtime) -> None:  # type: ignore[no-untyped-def]
    args = two()
    pristine = args[0].clone()
    runtime, spec, summary = make_runtime(rt_iadd, args)
    assert summary.mutated_leaves == (0,)
    good = runtime.run(source(rt_iadd, args, [16, 16]), "good")
    assert good.status == "ok", good.error_message
    wrong = edit(source(rt_iadd, args, [16, 16]), "v_0 = load + load_1", "v_0 = load + 2 * load_1")
    bad = runtime.run(wrong, "bad")
    assert bad.status == "accuracy_error", bad
    # The session's own copy of the arguments is never touched by candidates.
    assert torch.equal(runtime.ops(("args",))[0][0], pristine)


def test_module_that_fails_to_import_is_fatal_error(make_runtime) -> None:  # type: ignore[no-untyped-def]
    args = two()
    runtime, spec, _ = make_runtime(rt_add, args)
    broken = KernelSource(source(rt_add, args).module_source + "\ndef broken(:\n", "rt_add")
    result = runtime.run(broken)
    assert result.status == "error" and result.fatal
    assert result.error_class == "SyntaxError"
    assert runtime.run(source(rt_add, args, [8, 8])).status == "ok"


def test_unrecoverable_device_error_marks_runtime_sticky(make_runtime) -> None:  # type: ignore[no-untyped-def]
    args = two()
    runtime, spec, _ = make_runtime(rt_add, args)
    poisoned = edit(
        source(rt_add, args, [16, 16]), "    out = torch.empty_like(x)\n",
        "    raise RuntimeError('CUDA error: an illegal memory access was encountered')\n",
    )
    result = runtime.run(poisoned)
    assert result.status == "error" and not result.fatal  # Helion classifies it "debug"
    assert runtime.ops(("sticky",)) == [True]


def test_job_for_unknown_arguments_is_infra_error(make_runtime) -> None:  # type: ignore[no-untyped-def]
    args = two()
    runtime, spec, _ = make_runtime(rt_add, args)
    other = BenchmarkJob("x", spec.reference, "0" * 64, spec.baseline_digest, Tolerances(), 5, 5)
    assert runtime.ops(("run", other))[0].status == "infra_error"


def test_source_modules_are_shipped_and_conflicts_detected(make_runtime) -> None:  # type: ignore[no-untyped-def]
    from helion_remote.worker.runtime import ModuleConflictError

    args = two()
    runtime, spec, _ = make_runtime(rt_add, args)
    base = source(rt_add, args, [16, 16])
    module = SourceModule("hr_shipped_pkg.consts", "SCALE = 1\n")
    shipped = KernelSource(
        base.module_source.replace(
            "import torch\n", "import torch\nimport hr_shipped_pkg.consts as _source_module\n", 1
        ).replace("    return out", "    return out * _source_module.SCALE"),
        base.entry_name,
        (module,),
    )
    assert runtime.run(shipped).status == "ok"
    changed = KernelSource(shipped.module_source + "\n# v2\n", base.entry_name, (SourceModule(module.name, "SCALE = 2\n"),))
    with pytest.raises(ModuleConflictError):
        runtime.run(changed)


def test_retime_times_every_kernel_on_this_worker(make_runtime) -> None:  # type: ignore[no-untyped-def]
    args = two()
    runtime, spec, _ = make_runtime(rt_add, args)
    kernels = [source(rt_add, args, [16, 16]), source(rt_add, args, [32, 8])]
    broken = KernelSource("def broken(:\n", "rt_add")
    (result,) = runtime.ops(("retime", [*kernels, broken], 0.5, 3.0))
    assert result.worker_id == "w-test"
    assert [t.kernel_digest for t in result.timings] == [k.digest for k in (*kernels, broken)]
    assert [t.status for t in result.timings] == ["ok", "ok", "error"]
    assert all(math.isfinite(t.perf_ms) for t in result.timings[:2])


def test_a_kernel_that_poisons_the_device_fails_alone_in_a_retime(make_runtime) -> None:  # type: ignore[no-untyped-def]
    """The others become infra_error (the search keeps their earlier timings), not errors."""
    args = two()
    runtime, spec, _ = make_runtime(rt_add, args)
    good = [source(rt_add, args, [16, 16]), source(rt_add, args, [32, 8])]
    poisoned = edit(
        source(rt_add, args, [8, 8]), "    out = torch.empty_like(x)\n",
        "    raise RuntimeError('CUDA error: an illegal memory access was encountered')\n",
    )
    (result,) = runtime.ops(("retime", [good[0], poisoned, good[1]], 0.5, 3.0))
    assert [t.status for t in result.timings] == ["infra_error", "error", "infra_error"]
    assert poisoned.digest[:12] in result.timings[0].error_message
    assert runtime.ops(("sticky",)) == [True]


def test_pinned_atol_is_not_scaled_by_the_expected_rms(make_runtime) -> None:  # type: ignore[no-untyped-def]
    """A user who pins ``autotune_baseline_atol`` gets that atol, as in stock Helion."""
    import dataclasses

    args = [a * 10 for a in two()]  # RMS of the expected output ~14: scaling matters
    runtime, spec, _ = make_runtime(rt_add, args)
    # Off by 0.05 everywhere: inside atol=0.01 scaled by the RMS, outside a pinned 0.01.
    nudged = edit(source(rt_add, args, [16, 16]), "v_0 = load + load_1", "v_0 = load + load_1 + 0.05")
    scaled = dataclasses.replace(job(spec, nudged, "scaled"), tolerances=Tolerances(0.01, 0.0, scale_atol=True))
    pinned = dataclasses.replace(job(spec, nudged, "pinned"), tolerances=Tolerances(0.01, 0.0, scale_atol=False))
    first, second = runtime.ops(("run", scaled), ("run", pinned))
    assert first.status == "ok", first.error_message
    assert second.status == "accuracy_error"


def test_a_planted_file_at_a_content_address_is_replaced_not_imported(tmp_path: Path) -> None:
    import sys

    from helion_remote.target.space import load_source_module
    from helion_remote.worker.modules import write_once

    shipped = SourceModule("hr_planted_pkg_consts", "VALUE = 'shipped'\n")
    path = tmp_path / shipped.digest / f"{shipped.name}.py"
    path.parent.mkdir(parents=True)
    path.write_text("VALUE = 'planted'\n")
    assert write_once(path, shipped.source).read_text() == shipped.source
    path.write_text("VALUE = 'planted'\n")
    try:
        assert load_source_module(shipped, tmp_path).VALUE == "shipped"
    finally:
        sys.modules.pop(shipped.name, None)


def test_generated_sources_are_bounded_least_recently_used_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from helion_remote.worker import modules

    monkeypatch.setattr(modules, "MAX_SOURCE_FILES", 20)
    monkeypatch.setattr(modules, "PRUNE_EVERY", 10)
    src = tmp_path / "src"
    old = time.time() - 3600
    for i in range(50):  # an hour-old pile from earlier runs
        path = modules.write_once(src / f"old{i:02d}.py", f"X = {i}\n")
        os.utime(path, (old + i, old + i))
    reused = modules.write_once(src / "old00.py", "X = 0\n")  # reuse marks it recently used
    for i in range(30):  # this run's configs
        modules.write_once(src / f"new{i:02d}.py", f"Y = {i}\n")
    names = {p.name for p in src.iterdir()}
    # Over the cap, every idle file went; recently used ones stay whatever the count.
    assert names == {f"new{i:02d}.py" for i in range(30)} | {reused.name}
    assert modules.prune_sources(src, max_files=0) == 0, "nothing idle is left to delete"
    assert modules.prune_sources(src, max_files=0, min_idle_s=0) == len(names)


def test_the_runtime_writes_generated_sources_where_they_are_pruned(make_runtime, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from helion_remote.worker import modules

    args = two()
    runtime, spec, _ = make_runtime(rt_add, args)
    assert runtime.run(source(rt_add, args, [16, 16])).status == "ok"
    written = {p.parent for p in (tmp_path / "work").rglob("*.py")}
    assert tmp_path / "work" / "src" in written
    assert modules.prune_sources(tmp_path / "work" / "src", max_files=0, min_idle_s=0) >= 2


def test_broadcast_input_opens_and_nan_input_is_not_a_mutation(make_runtime) -> None:  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(11)
    broadcast = [torch.randn(1, 32, generator=gen).expand(32, 32), torch.randn(32, 32, generator=gen)]
    runtime, spec, summary = make_runtime(rt_iadd, [broadcast[1], broadcast[0]])  # reads the stride-0 one
    assert summary.mutated_leaves == (0,)
    assert runtime.run(source(rt_iadd, [broadcast[1], broadcast[0]], [16, 16])).status == "ok"
    x = torch.randn(32, 32, generator=gen)
    x[1, 2], x[5, 5] = float("nan"), float("-inf")
    runtime, spec, summary = make_runtime(rt_add, [x, x.t()])  # and two views of one storage
    assert summary.mutated_leaves == ()
    result = runtime.run(source(rt_add, [x, x.t()], [16, 8]))
    assert result.status == "ok", result.error_message
