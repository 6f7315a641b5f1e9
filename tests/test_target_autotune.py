"""autotune(..., target=...): the emulated space end to end, and the drift guard."""

from __future__ import annotations

import pytest

import helion_remote
from helion_remote.backends.fake import FakeExecutor
from helion_remote.target import TargetDriftError, emulate_target, load_profile, space_report, stand_in_args

from kernels import matmul, matmul_args


def test_target_search_uses_the_targets_space_and_keys() -> None:
    executor = FakeExecutor(seed=1)
    result = helion_remote.autotune(matmul, matmul_args(), backend=executor, target="h100",
                                    algorithm="PatternSearch", effort="quick", print_result=False)
    assert result.target is not None and result.target.startswith("h100 (")
    # Knobs a CPU coordinator never sees.
    assert "tensor_descriptor" in result.decorator or "maxnreg" in result.decorator
    assert "host_tensor_descriptors" in result.decorator
    # Without a target the same coordinator searches the CPU space.
    plain = helion_remote.autotune(matmul, matmul_args(), backend=FakeExecutor(seed=1),
                                   algorithm="PatternSearch", effort="quick", print_result=False)
    assert plain.target is None and "host_tensor_descriptors" not in plain.decorator


def _worker_report(profile_name: str) -> dict:
    with emulate_target(load_profile(profile_name)):
        return space_report(matmul.bind(tuple(stand_in_args(matmul_args()))))


def test_wrong_profile_is_stopped_before_any_candidate_is_timed() -> None:
    executor = FakeExecutor(seed=1, space_report=_worker_report("h100"))
    with pytest.raises(TargetDriftError) as caught:
        helion_remote.autotune(matmul, matmul_args(), backend=executor, target="a100",
                               algorithm="PatternSearch", effort="quick", print_result=False)
    message = str(caught.value)
    assert "target_device_capability" in message or "num_sm" in message
    assert executor.jobs_run == 0


def test_matching_profile_passes_the_drift_guard() -> None:
    executor = FakeExecutor(seed=1, space_report=_worker_report("h100"))
    result = helion_remote.autotune(matmul, matmul_args(), backend=executor, target="h100",
                                    algorithm="RandomSearch", effort="quick", algorithm_options={"count": 20},
                                    print_result=False)
    assert executor.jobs_run > 0 and result.stats["configs_measured"] > 0


def test_auto_target_needs_gpu_workers() -> None:
    with pytest.raises(ValueError, match="target='auto' needs GPU workers"):
        helion_remote.autotune(matmul, matmul_args(), backend=FakeExecutor(), target="auto", print_result=False)


def test_unknown_target_lists_builtins() -> None:
    with pytest.raises(Exception, match="h100"):
        helion_remote.autotune(matmul, matmul_args(), backend=FakeExecutor(), target="h9000", print_result=False)
