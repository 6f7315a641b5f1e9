"""Real Helion searches, end to end, through the adapter on the fake backend."""

from __future__ import annotations

import math
import time

import pytest
import torch

import helion
import helion_remote
from helion_remote.backends.fake import FaultRule, FakeExecutor

from kernels import matmul, matmul_args, softmax, softmax_args

ALGORITHMS = ["PatternSearch", "LFBOTreeSearch", "LFBOPatternSearch", "DifferentialEvolutionSearch", "RandomSearch"]
KERNELS = {"matmul": (matmul, matmul_args), "softmax": (softmax, softmax_args)}


def _assert_valid(kernel: object, args: tuple[torch.Tensor, ...], result: helion_remote.AutotuneResult) -> None:
    assert isinstance(result.config, helion.Config)
    assert math.isfinite(result.best_ms) and result.best_ms > 0
    assert result.decorator.startswith("@helion.kernel(config=helion.Config(")
    # The config is one Helion accepts for this kernel: codegen succeeds.
    code = kernel.bind(args).to_triton_code(result.config)
    assert "@triton.jit" in code
    assert result.stats["configs_measured"] > 0


@pytest.mark.parametrize("effort", ["quick", "full"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("kernel_name", sorted(KERNELS))
def test_every_algorithm_returns_a_valid_config(kernel_name: str, algorithm: str, effort: str) -> None:
    kernel, make_args = KERNELS[kernel_name]
    args = make_args()
    executor = FakeExecutor(seed=7)
    # Full effort keeps its population sizes, rebenchmarking and final
    # selection; only the number of generations (and RandomSearch's sample
    # count) is capped to bound CI time.
    options = {"count": 100} if algorithm == "RandomSearch" else {}
    result = helion_remote.autotune(
        kernel, args, backend=executor, algorithm=algorithm, effort=effort,
        algorithm_options=options, autotune_max_generations=1 if effort == "full" else 2,
        print_result=False,
    )
    _assert_valid(kernel, args, result)
    assert result.algorithm == algorithm
    assert executor.sessions_opened >= 1
    # Finalist re-timing stays on one worker per session.
    assert len(result.stats["retime_workers"]) <= executor.sessions_opened
    if effort == "full" and algorithm != "RandomSearch":
        assert result.stats["retime_calls"] >= 1


def _block0(config: dict) -> int:
    return config["block_sizes"][0]


KERNEL_FAULT_STATUS = {
    "compile_error": "error",
    "runtime_error": "error",
    "timeout": "timeout",
    "accuracy_error": "accuracy_error",
    "sticky_error": "error",
}


@pytest.mark.parametrize("kind", sorted(KERNEL_FAULT_STATUS))
def test_kernel_faults_never_win(kind: str) -> None:
    # The fake cost model likes 64-wide blocks best: fault exactly those.
    faulty = lambda config: _block0(config) == 64  # noqa: E731
    executor = FakeExecutor(seed=3, faults=[FaultRule(kind, when=faulty)])
    args = matmul_args()
    result = helion_remote.autotune(matmul, args, backend=executor, algorithm="PatternSearch",
                                    effort="quick", print_result=False)
    _assert_valid(matmul, args, result)
    assert result.config["block_sizes"][0] != 64
    assert result.stats["failures"].get(KERNEL_FAULT_STATUS[kind], 0) > 0
    assert result.stats["infra_retries"] == 0
    if kind == "sticky_error":
        # The worker that hit the sticky error was replaced (new generation id).
        assert any(not w.endswith(".0") for w in result.stats["workers_used"])


def test_a_zero_timing_is_an_error_not_a_winner() -> None:
    """A worker answering "ok" in 0 ms (a broken timer, a cost model's bug) must not win."""
    from helion_remote.backends.fake import default_cost_model

    def cost(config: dict[str, object]) -> float:
        return 0.0 if _block0(config) == 64 else default_cost_model(config)

    executor = FakeExecutor(seed=3, cost_model=cost)
    args = matmul_args()
    result = helion_remote.autotune(matmul, args, backend=executor, algorithm="PatternSearch",
                                    effort="quick", print_result=False)
    _assert_valid(matmul, args, result)
    assert result.config["block_sizes"][0] != 64
    assert result.stats["failures"].get("error", 0) > 0 and "ok" not in result.stats["failures"]


@pytest.mark.parametrize("kind", ["worker_crash", "transport_error"])
def test_infra_faults_are_retried_not_reported(kind: str) -> None:
    executor = FakeExecutor(seed=5, faults=[FaultRule(kind, rate=0.3)])
    args = matmul_args()
    clean = helion_remote.autotune(matmul, args, backend=FakeExecutor(seed=5), algorithm="PatternSearch",
                                   effort="quick", print_result=False)
    result = helion_remote.autotune(matmul, args, backend=executor, algorithm="PatternSearch",
                                    effort="quick", print_result=False)
    _assert_valid(matmul, args, result)
    assert result.stats["infra_retries"] > 0
    assert result.stats["failures"] == {}
    # Retried jobs land on healthy workers with the same deterministic outcome.
    assert result.config == clean.config


def test_infra_faults_on_a_predicate_and_stragglers() -> None:
    executor = FakeExecutor(
        seed=2, latency_s=0.001,
        faults=[FaultRule("worker_crash", when=lambda c: _block0(c) == 64), FaultRule("straggler", rate=0.2, slow_factor=5)],
    )
    args = matmul_args()
    result = helion_remote.autotune(matmul, args, backend=executor, algorithm="PatternSearch",
                                    effort="quick", print_result=False)
    _assert_valid(matmul, args, result)
    assert result.stats["infra_retries"] > 0
    assert "infra_error" not in result.stats["failures"]


def test_equal_args_upload_once() -> None:
    executor = FakeExecutor(seed=1)
    args = matmul_args()
    first = helion_remote.autotune(matmul, args, backend=executor, algorithm="RandomSearch",
                                   effort="quick", print_result=False)
    again = helion_remote.autotune(matmul, tuple(a.clone() for a in args), backend=executor,
                                   algorithm="RandomSearch", effort="quick", print_result=False)
    assert first.stats["blob_bytes_uploaded"] >= 2 * 64 * 64 * 4
    assert again.stats["blob_bytes_uploaded"] == 0
    assert again.stats["blob_puts_skipped"] > 0


def test_args_that_share_a_prefix_get_different_keys() -> None:
    from helion_remote.argcodec import upload_args
    from helion_remote.blobs import MemoryBlobStore

    store = MemoryBlobStore()
    a = torch.zeros(8192, dtype=torch.float32)  # 32 KiB; the first 4 KiB match
    b = a.clone()
    b[-1] = 1.0
    assert upload_args(store, (a,)).digest != upload_args(store, (b,)).digest


def test_unknown_names_list_valid_ones() -> None:
    args = matmul_args()
    with pytest.raises(ValueError, match="valid backends: fake, local, modal"):
        helion_remote.autotune(matmul, args, backend="nope")
    with pytest.raises(ValueError, match="valid algorithms: .*PatternSearch"):
        helion_remote.autotune(matmul, args, backend=FakeExecutor(), algorithm="Nope")
    with pytest.raises(ValueError, match="valid efforts"):
        helion_remote.autotune(matmul, args, backend=FakeExecutor(), effort="max")
    with pytest.raises(TypeError, match="unknown Helion setting 'autotune_nope'"):
        helion_remote.autotune(matmul, args, backend=FakeExecutor(), autotune_nope=1)


def test_infra_retries_exhausted_on_every_job_is_an_error_not_a_config_failure() -> None:
    from helion_remote.coordinator.dispatch import InfraRetriesExhausted

    executor = FakeExecutor(seed=1, faults=[FaultRule("transport_error", rate=1.0, attempts="all")])
    with pytest.raises(InfraRetriesExhausted, match="every job of this run failed 4 times on infrastructure"):
        helion_remote.autotune(matmul, matmul_args(), backend=executor, algorithm="RandomSearch",
                               effort="quick", print_result=False)


def _digest(config: helion.Config, args: tuple[torch.Tensor, ...]) -> str:
    from helion_remote.coordinator.codegen import kernel_source

    return kernel_source(matmul.bind(args), config).digest


def test_a_config_lost_to_infrastructure_is_not_blamed_and_the_search_ends_with_its_best() -> None:
    """Infra faults on every attempt at 20%: this seed lost a job after 146 jobs and used to abort the run."""
    executor = FakeExecutor(seed=2, faults=[FaultRule("worker_crash", rate=0.2, attempts="all")])
    args = matmul_args()
    result = helion_remote.autotune(matmul, args, backend=executor, algorithm="PatternSearch", effort="quick",
                                    autotune_random_seed=2, print_result=False)
    _assert_valid(matmul, args, result)
    final: dict[str, str] = {}  # job id -> status of its last attempt
    attempts: dict[str, int] = {}
    for job, job_result in executor.job_log:
        if job.attempt >= attempts.get(job.job_id, -1):
            attempts[job.job_id], final[job.job_id] = job.attempt, job_result.status
    lost = {job.kernel.digest for job, _ in executor.job_log if final[job.job_id] == "infra_error"}
    assert lost and result.stats["configs_lost_to_infra"] >= len(lost)
    assert result.stats["failures"] == {}  # lost configs are not kernel failures
    assert _digest(result.config, args) not in lost
    assert executor.jobs_submitted == executor.jobs_run == len(result.records)


@pytest.mark.parametrize("algorithm", ["PatternSearch", "LFBOTreeSearch"])
def test_a_spent_time_budget_cancels_the_batch_in_flight(algorithm: str) -> None:
    """Jobs of 1 s on 2 workers, a 2 s budget: the search returns its best within a few seconds of it."""
    from kernels import add_inplace, add_inplace_args

    executor = FakeExecutor(seed=0, workers=2, latency_s=1.0)
    started = time.perf_counter()
    result = helion_remote.autotune(add_inplace, add_inplace_args(), backend=executor, algorithm=algorithm,
                                    effort="quick", autotune_budget_seconds=2, print_result=False)
    elapsed = time.perf_counter() - started
    assert elapsed < 2 + 3, f"a 2 s budget took {elapsed:.1f}s"
    assert isinstance(result.config, helion.Config) and math.isfinite(result.best_ms)
    assert result.stats["budget_cancelled"] > 0
    assert executor.jobs_submitted > executor.jobs_run  # the queued jobs never ran


def test_best_of_k_trials_all_run_remotely() -> None:
    executor = FakeExecutor(seed=4)
    result = helion_remote.autotune(matmul, matmul_args(), backend=executor, algorithm="PatternSearch",
                                    effort="quick", autotune_best_of_k=2, print_result=False)
    assert isinstance(result.config, helion.Config)
    # Two trials plus the rebench round: each opens its own session.
    assert executor.sessions_opened >= 3


def test_identical_generated_sources_are_measured_once_per_search() -> None:
    """Configs that generate a byte-identical module share one measurement."""
    from helion.autotuner.config_generation import ConfigGeneration

    from helion_remote.coordinator.codegen import kernel_source

    args = matmul_args()
    bound = matmul.bind(args)
    gen = ConfigGeneration(bound.config_spec)
    base = gen.default_flat()
    twins = []
    for index, fragment in enumerate(gen.flat_spec):
        for value in fragment.pattern_neighbors(base[index]):
            flat = list(base)
            flat[index] = value
            twins.append(gen.unflatten(flat))
    same = [c for c in twins if kernel_source(bound, c).digest == kernel_source(bound, gen.unflatten(base)).digest]
    different = [c for c in twins if c not in same]
    assert same and different, "the default matmul config should have same-code and different-code neighbours"
    configs = [gen.unflatten(base), *same[:3], *different[:2]]
    executor = FakeExecutor(workers=4)
    result = helion_remote.autotune(
        matmul, args, backend=executor, algorithm="FiniteSearch", algorithm_options={"configs": configs},
        print_result=False,
    )
    assert result.stats["deduplicated"] == len(same[:3])
    assert result.stats["configs_measured"] == executor.jobs_run == 1 + len(different[:2])
    again = helion_remote.autotune(
        matmul, args, backend=FakeExecutor(workers=4), algorithm="FiniteSearch", algorithm_options={"configs": configs},
        deduplicate_sources=False, print_result=False,
    )
    assert again.stats["deduplicated"] == 0 and again.stats["configs_measured"] == len(configs)
