"""Anchored spread merging, backend-neutral: worker timings given as plain functions of the kernel."""

from __future__ import annotations

import pytest

from helion_remote.protocol import KernelSource, RetimeResult, RetimeTiming
from helion_remote.coordinator.unit_scales import SCALE_WINDOW, WorkerScales
from helion_remote.spread import LEADER_MARGIN, spread_groups, spread_retime


def _kernel(name: str) -> KernelSource:
    return KernelSource(f"# {name}\n", name)


TRUE_MS = {"a": 1.00, "b": 1.02, "c": 1.05, "d": 1.30, "e": 1.40, "f": 1.50, "g": 1.60, "h": 1.70, "i": 1.80}
"""Each kernel's real time on worker 0 (a, b, c are the anchors: best-known first)."""


class _Workers:
    """Worker 0 measures true times; worker 1 runs 2x slower, with ``skew`` on chosen kernels."""

    def __init__(self, skew: dict[str, float] | None = None) -> None:
        self.skew = skew or {}
        self.redone: list[list[str]] = []

    def _time(self, index: int, group: list[KernelSource]) -> RetimeResult:
        def ms(kernel: KernelSource) -> float:
            name = kernel.entry_name
            return TRUE_MS[name] * (2.0 * self.skew.get(name, 1.0) if index else 1.0)

        return RetimeResult(tuple(RetimeTiming(k.digest, "ok", ms(k)) for k in group), f"w{index}")

    def run(self, index: int, group: list[KernelSource]) -> RetimeResult:
        return self._time(index, group)

    def redo(self, group: list[KernelSource]) -> RetimeResult:
        self.redone.append([k.entry_name for k in group])
        return self._time(0, group)


def _spread(workers: _Workers) -> dict[str, float]:
    kernels = [_kernel(name) for name in TRUE_MS]
    groups = spread_groups(kernels, 2)
    assert groups is not None
    result = spread_retime(kernels, groups, run=workers.run, redo=workers.redo)
    assert result.scales == (("w1", pytest.approx(0.5)),)  # worker 1's clock runs 2x slow
    assert result.confirmed == len(workers.redone and workers.redone[0][1:])
    by_digest = {t.kernel_digest: t.perf_ms for t in result.timings}
    return {k.entry_name: by_digest[k.digest] for k in kernels}


def test_other_workers_timings_land_in_worker_zeros_units() -> None:
    workers = _Workers()
    assert _spread(workers) == pytest.approx(TRUE_MS)
    assert workers.redone == []  # nobody from worker 1 came near the lead


def test_a_kernel_that_would_lead_on_a_scaled_timing_is_confirmed_on_worker_zero() -> None:
    # Worker 1 under-reports "e" by 30%: scaled, it would beat the real leader "a".
    workers = _Workers(skew={"e": 0.7})
    merged = _spread(workers)
    assert workers.redone == [["a", "e"]]  # worker 0's best as the reference, then the contender
    assert merged["e"] == pytest.approx(TRUE_MS["e"])
    assert min(merged, key=merged.__getitem__) == "a"


def test_contenders_inside_the_margin_are_confirmed_too() -> None:
    near = 1.0 + LEADER_MARGIN / 2
    workers = _Workers(skew={"g": TRUE_MS["a"] * near / TRUE_MS["g"]})  # worker 1's share: e, g, i
    merged = _spread(workers)
    assert workers.redone == [["a", "g"]]
    assert merged["g"] == pytest.approx(TRUE_MS["g"])


def test_worker_scales_take_the_median_of_recent_calls_and_default_to_one() -> None:
    scales = WorkerScales()
    assert scales.factor("w1") == 1.0 and scales.factor(None) == 1.0  # never anchored: as measured
    scales.observe([("w1", 1.02)])
    assert scales.factor("w1") == pytest.approx(1.02)
    scales.observe([("w1", 1.50), ("w2", 0.97)])  # one noisy anchor set
    scales.observe([("w1", 1.03)])
    assert scales.factor("w1") == pytest.approx(1.03)  # median of 1.02, 1.50, 1.03
    for _ in range(SCALE_WINDOW):
        scales.observe([("w1", 0.99)])
    assert scales.factor("w1") == pytest.approx(0.99)  # older calls age out
    scales.observe([("w2", float("nan")), ("w2", 0.0), ("w2", -1.0)])  # unusable factors are dropped
    assert scales.current() == {"w1": pytest.approx(0.99), "w2": pytest.approx(0.97)}
