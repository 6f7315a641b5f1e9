"""The codegen pool: processes that bind the kernel once and must generate exactly
the coordinator's code (checked digest for digest), or be left out."""

from __future__ import annotations

import pytest
import torch

import helion_remote
from helion.autotuner.config_generation import ConfigGeneration
from helion_remote.backends.fake import FakeExecutor
from helion_remote.coordinator.codegen import kernel_source
from helion_remote.coordinator.codegen_pool import CodegenPool, start_codegen_pool
from helion_remote.kernel_copy import private_kernel

from kernels import matmul, matmul_args, softmax, softmax_args


def sample_configs(bound: object, count: int) -> list[object]:
    gen = ConfigGeneration(bound.config_spec)  # type: ignore[attr-defined]
    configs = [gen.unflatten(gen.default_flat())]
    while len(configs) < count:
        configs.append(gen.unflatten(gen.random_flat()))
    return configs


@pytest.mark.parametrize("kernel,make_args", [(matmul, matmul_args), (softmax, softmax_args)])
def test_pool_generates_exactly_the_coordinators_code(kernel: object, make_args: object) -> None:
    args = make_args()  # type: ignore[operator]
    bound = private_kernel(kernel).bind(args)
    pool = start_codegen_pool(kernel, bound, args, {}, None, processes=2)
    assert pool is not None
    try:
        assert pool.wait_ready(120) and pool.size == 2
        configs = sample_configs(bound, 10)
        got = dict(pool.generate(configs))
        assert sorted(got) == list(range(len(configs)))
        for index, config in enumerate(configs):
            expected = kernel_source(bound, config)
            assert not isinstance(got[index], Exception), got[index]
            assert got[index].digest == expected.digest
    finally:
        pool.close()


@pytest.mark.filterwarnings("ignore:target profile 'h200' was captured with helion")
def test_pool_under_target_emulation_matches_the_emulating_coordinator() -> None:
    from helion_remote.target import emulate_target, load_profile, stand_in_args

    args = matmul_args()
    profile = load_profile("h200")
    with emulate_target(profile):
        bound = private_kernel(matmul).bind(tuple(stand_in_args(args)))
        pool = start_codegen_pool(matmul, bound, args, {}, profile, processes=1)
        assert pool is not None
        try:
            assert pool.wait_ready(120) and pool.size == 1
            configs = sample_configs(bound, 6)
            for index, source in pool.generate(configs):
                assert source.digest == kernel_source(bound, configs[index]).digest  # type: ignore[union-attr]
        finally:
            pool.close()


def test_a_process_that_generates_different_code_is_left_out() -> None:
    """The pool binds with a setting the coordinator did not use: its probe differs, so the
    coordinator generates every config itself, and still returns every one."""
    args = matmul_args()
    bound = private_kernel(matmul).bind(args)
    pool = start_codegen_pool(matmul, bound, args, {"index_dtype": torch.int64}, None, processes=1)
    assert pool is not None
    try:
        assert pool.wait_ready(120) and pool.size == 0
        configs = sample_configs(bound, 3)
        got = dict(pool.generate(configs))
        assert [got[i].digest for i in range(3)] == [kernel_source(bound, c).digest for c in configs]  # type: ignore[union-attr]
    finally:
        pool.close()


def test_a_process_that_dies_is_reaped_and_its_configs_generated_here() -> None:
    args = matmul_args()
    bound = private_kernel(matmul).bind(args)
    pool = start_codegen_pool(matmul, bound, args, {}, None, processes=2)
    assert pool is not None
    try:
        assert pool.wait_ready(120) and pool.size == 2
        lost = pool._members[0]
        lost.process.kill()
        lost.process.join(10)
        configs = sample_configs(bound, 40)  # 10 chunks: the dead process's thread asks for one
        got = dict(pool.generate(configs))
        assert [got[i].digest for i in range(40)] == [kernel_source(bound, c).digest for c in configs]  # type: ignore[union-attr]
        assert pool.size == 1 and lost.conn.closed  # left out, and its pipe closed
    finally:
        pool.close()


def test_search_with_a_codegen_pool_measures_the_same_configs() -> None:
    def run(workers: int) -> helion_remote.AutotuneResult:
        return helion_remote.autotune(
            matmul, matmul_args(), backend=FakeExecutor(workers=4), algorithm="PatternSearch", effort="quick",
            autotune_max_generations=2, autotune_random_seed=0, codegen_workers=workers, print_result=False,
        )

    serial, pooled = run(0), run(2)
    assert pooled.config == serial.config
    assert pooled.stats["configs_measured"] == serial.stats["configs_measured"]
    assert (serial.stats["codegen_workers"], pooled.stats["codegen_workers"]) == (0, 2)
    with pytest.raises(ValueError, match="codegen_workers must be an int >= 0 or None.*-1"):
        run(-1)


def test_pool_needs_a_process() -> None:
    with pytest.raises(ValueError, match="processes >= 1"):
        CodegenPool(None, None, None, 0)  # type: ignore[arg-type]
