"""A re-timing call's limit grows with the kernels it re-times (Helion's timeout is per kernel)."""

from __future__ import annotations

import pytest

import helion_remote
from helion_remote.backends.fake import FakeExecutor, FakeSession
from helion_remote.coordinator.retiming import retime_call_timeout_s

from kernels import matmul, matmul_args


def test_limit_is_the_timeout_plus_each_kernels_window_twice() -> None:
    assert retime_call_timeout_s(30.0, 0, 1.0, 200.0) == 30.0
    # 130 population members at Helion's ~200 ms window: ~30 s of timing, so a flat 30 s cut it off.
    assert retime_call_timeout_s(30.0, 130, 1.0, 200.0) == pytest.approx(30 + 130 * 0.452)
    assert retime_call_timeout_s(30.0, 131, 1.0, 200.0) > retime_call_timeout_s(30.0, 130, 1.0, 200.0)


class _LimitLog(FakeExecutor):
    """The real fake executor, noting (kernels, timeout_s) of every re-timing call."""

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        self.calls: list[tuple[int, float, float, float]] = []

    def open_session(self, spec):  # type: ignore[no-untyped-def]
        session: FakeSession = super().open_session(spec)
        retime = session.retime

        def logged(kernels, *, warmup_ms, rep_ms, timeout_s):  # type: ignore[no-untyped-def]
            self.calls.append((len(kernels), warmup_ms, rep_ms, timeout_s))
            return retime(kernels, warmup_ms=warmup_ms, rep_ms=rep_ms, timeout_s=timeout_s)

        session.retime = logged  # type: ignore[method-assign]
        return session


def test_population_rebenchmark_gets_a_limit_sized_to_its_members() -> None:
    executor = _LimitLog(seed=1)
    helion_remote.autotune(matmul, matmul_args(), backend=executor, algorithm="PatternSearch", effort="full",
                           print_result=False, autotune_max_generations=1, autotune_benchmark_timeout=5)
    assert executor.calls, "a full-effort search re-benchmarks its population"
    # Every call: Helion's per-kernel timeout (the setting, or its own for finalist
    # windows) plus each kernel's window twice over.
    for count, warmup_ms, rep_ms, timeout_s in executor.calls:
        assert timeout_s - retime_call_timeout_s(0.0, count, warmup_ms, rep_ms) >= 5.0 - 1e-9
    population = max(executor.calls)
    assert population[0] > 1
    assert population[3] == pytest.approx(retime_call_timeout_s(5.0, *population[:3]))
