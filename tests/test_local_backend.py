"""LocalExecutor end to end on CPU: real worker processes, the Triton interpreter,
real Helion-generated kernels, and candidates edited to be wrong, hang or crash.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator

import pytest
import torch

import helion
import helion.language as hl
from helion_remote.argcodec import upload_args
import helion_remote.backends.local.executor as local_backend
from helion_remote.backends.local import LocalExecutor, MixedDevicesError
from helion_remote.executor import RemoteBenchmarkExecutor
from helion_remote.protocol import BenchmarkJob, KernelSource, SessionSpec, Tolerances

pytestmark = pytest.mark.filterwarnings("ignore:helion_remote local backend")


@helion.kernel(static_shapes=True)
def lb_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(x)
    for tile in hl.tile(x.size()):
        out[tile] = x[tile] + y[tile]
    return out


@helion.kernel(static_shapes=True)
def lb_iadd(x: torch.Tensor, y: torch.Tensor) -> None:
    for tile in hl.tile(x.size()):
        x[tile] += y[tile]


ARGS = [torch.randn(32, 32, generator=torch.Generator().manual_seed(0)) for _ in range(2)]
TIMEOUT_S = 3.0
"""compile_timeout_s + run_timeout_s of the hang test; the margin is 2 s."""


def source(kernel: object, block_sizes: list[int] | None = None) -> KernelSource:
    bound = kernel.bind(tuple(ARGS))  # type: ignore[attr-defined]
    config = bound.config_spec.default_config() if block_sizes is None else helion.Config(block_sizes=block_sizes)
    return KernelSource(bound.to_triton_code(config), bound.kernel.name)


def edit(kernel: KernelSource, old: str, new: str) -> KernelSource:
    assert old in kernel.module_source, old
    return KernelSource(kernel.module_source.replace(old, new), kernel.entry_name)


HOST_LINE = "    out = torch.empty_like(x)\n"


def job(spec: SessionSpec, kernel: KernelSource, job_id: str, *, timeout_s: float = 30.0, **kw: object) -> BenchmarkJob:
    return BenchmarkJob(
        job_id=job_id, kernel=kernel, args_digest=spec.args_digest, baseline_digest=spec.baseline_digest,
        tolerances=spec.tolerances, compile_timeout_s=timeout_s / 2, run_timeout_s=timeout_s / 2,
        warmup_ms=0.5, rep_ms=3.0, **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalExecutor]:
    ex = LocalExecutor(cpu_workers=2, work_dir=tmp_path_factory.mktemp("local"), timeout_margin_s=2.0)
    yield ex
    ex.close()


def open_session(ex: LocalExecutor, kernel: object, name: str) -> object:
    upload = upload_args(ex.blob_store, ARGS)
    ref = source(kernel)
    return ex.open_session(SessionSpec(name, ref.entry_name, upload.digest, ref, Tolerances()))


def test_interpreter_pool_warns_and_describes_workers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.warns(RuntimeWarning, match="INTERPRETER timings"):
        ex = LocalExecutor(cpu_workers=1, work_dir=tmp_path)
    ex.close()
    ex.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        ex.workers()


def test_batch_streams_ok_accuracy_and_error_results(executor: LocalExecutor) -> None:
    assert isinstance(executor, RemoteBenchmarkExecutor)
    infos = executor.workers()
    assert len(infos) == 2 and all(i.interpreter and i.device_name == "cpu-interpreter" for i in infos)
    session = open_session(executor, lb_add, "batch")
    jobs = [
        job(session.spec, source(lb_add, [16, 16]), "ok-16"),
        job(session.spec, source(lb_add, [32, 8]), "ok-32"),
        job(session.spec, edit(source(lb_add, [16, 16]), "v_0 = load + load_1", "v_0 = load - load_1"), "wrong"),
        job(session.spec, KernelSource("def broken(:\n", "lb_add"), "broken"),
    ]
    results = {r.job_id: r for r in session.submit(jobs)}
    assert set(results) == {j.job_id for j in jobs}
    assert results["ok-16"].ok and results["ok-32"].ok
    assert math.isfinite(results["ok-16"].perf_ms)
    assert results["wrong"].status == "accuracy_error"
    assert results["broken"].status == "error" and results["broken"].fatal
    worker_ids = {i.worker_id for i in infos}
    for r in results.values():
        assert r.worker_id in worker_ids and r.device_uuid.startswith("cpu-interpreter")
        assert r.started_at <= r.finished_at and r.kernel_digest


def test_mutating_kernel_checked_on_mutated_argument(executor: LocalExecutor) -> None:
    session = open_session(executor, lb_iadd, "inplace")
    good = source(lb_iadd, [16, 16])
    wrong = edit(good, "v_0 = load + load_1", "v_0 = load + 2 * load_1")
    results = {r.job_id: r.status for r in session.submit([job(session.spec, good, "g"), job(session.spec, wrong, "w")])}
    assert results == {"g": "ok", "w": "accuracy_error"}


def test_hanging_candidate_times_out_and_worker_is_replaced(executor: LocalExecutor) -> None:
    session = open_session(executor, lb_add, "hang")
    hang = edit(source(lb_add, [16, 16]), HOST_LINE, "    while True:\n        pass\n")
    handles = {h.worker_id: h for h in executor._devices}
    restarts = {w: h.restarts for w, h in handles.items()}
    start = time.monotonic()
    (result,) = list(session.submit([job(session.spec, hang, "hang", timeout_s=TIMEOUT_S)]))
    elapsed = time.monotonic() - start
    assert result.status == "timeout", result
    assert elapsed < TIMEOUT_S + 2.0 + 3.0
    assert handles[result.worker_id].restarts == restarts[result.worker_id] + 1
    # The replacement process re-opens the session lazily and runs the next job.
    again = job(session.spec, source(lb_add, [8, 8]), "after", avoid_workers=tuple(w for w in handles if w != result.worker_id))
    (after,) = list(session.submit([again]))
    assert after.worker_id == result.worker_id
    assert after.ok, after


def test_a_retime_call_cut_off_loses_no_timing_and_the_worker_is_replaced(executor: LocalExecutor) -> None:
    session = open_session(executor, lb_add, "retime-hang")
    good = source(lb_add, [32, 8])
    hang = edit(source(lb_add, [16, 16]), HOST_LINE, "    while True:\n        pass\n")
    result = session.retime([good, hang], warmup_ms=0.5, rep_ms=3.0, timeout_s=TIMEOUT_S)
    # Which kernel held the call up is unknown: infra_error keeps each one's earlier timing.
    assert [t.status for t in result.timings] == ["infra_error", "infra_error"], result
    assert "cut off" in (result.timings[0].error_message or "")
    (after,) = session.retime([good], warmup_ms=0.5, rep_ms=3.0, timeout_s=60).timings
    assert after.status == "ok" and math.isfinite(after.perf_ms)


def test_crashed_and_poisoned_workers_are_replaced(executor: LocalExecutor) -> None:
    session = open_session(executor, lb_add, "crash")
    crash = edit(source(lb_add, [16, 16]), HOST_LINE, "    import os; os._exit(3)\n")
    poison = edit(
        source(lb_add, [16, 16]), HOST_LINE, "    raise RuntimeError('CUDA error: an illegal memory access was encountered')\n"
    )
    results = {r.job_id: r for r in session.submit([job(session.spec, crash, "crash"), job(session.spec, poison, "poison")])}
    assert results["crash"].status == "infra_error"  # not blamed on the kernel: the coordinator retries
    assert results["poison"].status == "error" and not results["poison"].fatal
    followups = [job(session.spec, source(lb_add, [16, 8]), f"next{i}") for i in range(2)]
    assert all(r.ok for r in session.submit(followups))


def test_avoid_workers_is_honoured(executor: LocalExecutor) -> None:
    session = open_session(executor, lb_add, "avoid")
    first, second = (h.worker_id for h in executor._devices)
    jobs = [job(session.spec, source(lb_add, [16, 16]), f"a{i}", avoid_workers=(first,)) for i in range(3)]
    assert {r.worker_id for r in session.submit(jobs)} == {second}


def test_retime_uses_one_worker_for_the_session(executor: LocalExecutor) -> None:
    session = open_session(executor, lb_add, "retime")
    kernels = [source(lb_add, [16, 16]), source(lb_add, [32, 8])]
    first = session.retime(kernels, warmup_ms=0.5, rep_ms=3.0, timeout_s=60)
    second = session.retime(kernels[::-1], warmup_ms=0.5, rep_ms=3.0, timeout_s=60)
    assert first.worker_id == second.worker_id != ""
    assert [t.kernel_digest for t in first.timings] == [k.digest for k in kernels]
    assert all(t.status == "ok" and math.isfinite(t.perf_ms) for t in (*first.timings, *second.timings))


def test_retime_spread_shares_a_population_over_workers_in_one_scale(executor: LocalExecutor) -> None:
    session = open_session(executor, lb_add, "spread")
    kernels = [source(lb_add, b) for b in ([16, 16], [32, 8], [8, 32], [8, 8], [32, 32], [16, 8], [8, 16], [4, 32])]
    result = session.retime_spread(kernels, warmup_ms=0.5, rep_ms=3.0, timeout_s=60)
    assert [t.kernel_digest for t in result.timings] == [k.digest for k in kernels]
    assert all(t.status == "ok" and math.isfinite(t.perf_ms) and t.perf_ms > 0 for t in result.timings)
    assert sorted(result.workers) == sorted(h.worker_id for h in executor._devices)
    assert result.worker_id == session.retime(kernels[:2], warmup_ms=0.5, rep_ms=3.0, timeout_s=60).worker_id
    # Too few kernels to share: one worker, as ``retime``.
    small = session.retime_spread(kernels[:5], warmup_ms=0.5, rep_ms=3.0, timeout_s=60)
    assert small.workers == () and len(small.timings) == 5


def test_anchor_scaling_maps_each_worker_onto_the_retime_worker() -> None:
    from helion_remote.protocol import RetimeResult, RetimeTiming

    ours = RetimeResult((RetimeTiming("a", "ok", 2.0), RetimeTiming("b", "ok", 3.0), RetimeTiming("x", "ok", 1.0)), "w0")
    theirs = RetimeResult((RetimeTiming("a", "ok", 4.0), RetimeTiming("b", "ok", 6.6), RetimeTiming("x", "error"),
                           RetimeTiming("c", "ok", 8.0)), "w1")
    from helion_remote.spread import anchor_factor, scaled

    factor = anchor_factor(ours, theirs, ["a", "b", "x"])
    assert factor == pytest.approx((0.5 + 3.0 / 6.6) / 2)  # median of the anchors both timed
    assert scaled(theirs.timings[3], 0.5).perf_ms == pytest.approx(4.0)
    assert anchor_factor(ours, RetimeResult((RetimeTiming("a", "error"),), "w1"), ["a"]) is None
    assert scaled(RetimeTiming("c", "timeout"), 0.5).status == "timeout"


def test_results_journal_their_stages(executor: LocalExecutor) -> None:
    session = open_session(executor, lb_add, "stages")
    (result,) = list(session.submit([job(session.spec, source(lb_add, [16, 16]), "s")]))
    assert result.ok
    assert {"queue", "load", "first_call", "check", "time"} <= set(result.stages)
    assert all(v >= 0 for v in result.stages.values())


def test_broken_reference_fails_open_session(executor: LocalExecutor) -> None:
    upload = upload_args(executor.blob_store, ARGS)
    ref = edit(source(lb_add), HOST_LINE, "    raise ValueError('reference is broken')\n")
    with pytest.raises(RuntimeError, match="reference is broken"):
        executor.open_session(SessionSpec("badref", "lb_add", upload.digest, ref, Tolerances()))


def test_mixed_gpu_models_are_refused(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fake = [(0, "NVIDIA H100 80GB HBM3", 80 << 30), (1, "NVIDIA A100-SXM4-40GB", 40 << 30)]
    monkeypatch.setattr(local_backend, "_visible_gpus", lambda devices: fake)
    with pytest.raises(MixedDevicesError, match="H100.*A100|A100.*H100"):
        LocalExecutor(work_dir=tmp_path)
    ex = LocalExecutor(work_dir=tmp_path, allow_mixed_devices=True, compile_workers=3)
    try:  # no process starts until the executor is used
        assert [h.spec.cuda_device for h in ex._devices] == [0, 1]
        assert [h.spec.cuda_device for h in ex._compilers] == [0, 1, 0]
    finally:
        ex.close()


def test_codegen_processes_suggested_per_8_cpus_for_gpu_pools_only(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from helion_remote.coordinator.api import suggested_codegen_workers

    monkeypatch.setattr(local_backend, "_visible_gpus", lambda devices: [(0, "NVIDIA H200", 140 << 30)])
    monkeypatch.setattr(local_backend, "start_worker_server", lambda wait=False: False)  # a pool never used
    ex = LocalExecutor(work_dir=tmp_path, compile_workers=1)
    try:
        for cpus, expected in [(4, 0), (16, 2), (32, 4), (128, 4)]:
            monkeypatch.setattr(local_backend.os, "cpu_count", lambda cpus=cpus: cpus)
            assert suggested_codegen_workers(ex) == expected
    finally:
        ex.close()


def test_interpreter_pool_suggests_no_codegen_processes(executor: LocalExecutor) -> None:
    from helion_remote.coordinator.api import suggested_codegen_workers

    assert executor.interpreter and suggested_codegen_workers(executor) == 0


def test_a_bad_codegen_suggestion_is_named() -> None:
    from helion_remote.coordinator.api import suggested_codegen_workers

    class Odd:
        def suggested_codegen_workers(self) -> object:
            return "four"

    with pytest.raises(TypeError, match="Odd.suggested_codegen_workers.*'four'"):
        suggested_codegen_workers(Odd())
    from helion_remote.backends.fake import FakeExecutor

    with FakeExecutor() as fake:  # the contract's default: no advice
        assert suggested_codegen_workers(fake) == 0


def test_close_kills_worker_processes(executor: LocalExecutor) -> None:
    """Runs last: closes the module's executor (the fixture's close is then a no-op)."""
    executor.workers()
    pids = [h._process.pid for h in executor._devices]  # type: ignore[union-attr]
    executor.close()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            for _ in range(50):
                os.kill(pid, 0)
                time.sleep(0.1)
