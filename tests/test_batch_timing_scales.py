"""Batch timings from another GPU reach Helion in GPU 0's units once that GPU has been anchored.

A real PatternSearch on the fake backend with two workers, the second 20%
fast (``worker_speeds``), no noise, population re-benchmarks spread over both
(``spread_retime``).  Helion's own autotune log shows what the search saw.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

import helion
import helion_remote
from helion_remote.backends.fake import FakeExecutor, default_cost_model
from helion_remote.coordinator.codegen import config_to_dict

from kernels import matmul, matmul_args

FAST = 0.8


def _seen_ratios(log_csv: Path) -> list[tuple[int, float]]:
    """(generation, timing Helion saw / the config's true time) per ok row of Helion's log."""
    rows = []
    with log_csv.open() as f:
        for row in csv.DictReader(f):
            if row["status"] != "ok":
                continue
            config = eval(row["config"], {"Config": helion.Config, "__builtins__": {}})  # Helion's own repr
            rows.append((int(row["generation"]), float(row["perf_ms"]) / default_cost_model(config_to_dict(config))))
    return rows


def _search(tmp_path: Path, **options: object) -> tuple[helion_remote.AutotuneResult, list[tuple[int, float]]]:
    executor = FakeExecutor(seed=3, workers=2, noise=0.0, worker_speeds=(1.0, FAST), **options)
    result = helion_remote.autotune(
        matmul, matmul_args(), backend=executor, algorithm="PatternSearch", effort="full",
        print_result=False, autotune_max_generations=3, autotune_random_seed=0, autotune_log=str(tmp_path / "tune"),
        deduplicate_sources=False,  # a same-source copy carries another config's (true) time
    )
    return result, _seen_ratios(tmp_path / "tune.csv")


def test_batch_timings_from_an_anchored_gpu_are_put_in_gpu_zeros_units(tmp_path: Path) -> None:
    result, seen = _search(tmp_path, spread_retime=True)
    stats = result.stats
    assert stats["population_retime_scales"]["fake-1.0"] == pytest.approx([1 / FAST] * len(stats["population_retime_scales"]["fake-1.0"]))
    assert stats["batch_timing_scales"] == {"fake-1.0": pytest.approx(1 / FAST)}
    assert stats["batch_timings_scaled"] > 50
    # Every timing Helion saw is the true time, or worker 1's raw time before its first anchoring.
    assert all(ratio == pytest.approx(1.0, rel=1e-4) or ratio == pytest.approx(FAST, rel=1e-4) for _, ratio in seen)
    # Worker 1's raw timings reach Helion only in the generations before the first spread
    # (which one that is depends on how many members the first re-benchmarks had).
    raw = {generation for generation, ratio in seen if ratio == pytest.approx(FAST, rel=1e-4)}
    assert raw and raw == set(range(max(raw) + 1))
    later = [generation for generation, _ in seen if generation > max(raw)]
    assert len(later) > 50, "generations after the first spread, every timing in worker 0's units"


def test_without_a_covering_spread_batch_timings_stay_as_measured(tmp_path: Path) -> None:
    # No spread (one re-timing worker, as on Modal's job containers): no factors, nothing scaled,
    # so worker 1's timings stay 20% fast in every generation.
    result, seen = _search(tmp_path)
    assert result.stats["batch_timing_scales"] == {} and result.stats["batch_timings_scaled"] == 0
    last = max(generation for generation, _ in seen)
    assert any(generation == last and ratio == pytest.approx(FAST, rel=1e-4) for generation, ratio in seen)


def test_worker_speeds_must_name_every_worker() -> None:
    with pytest.raises(ValueError, match=r"one positive factor per worker \(2\), got \(1\.0,\)"):
        FakeExecutor(workers=2, worker_speeds=(1.0,))
    with pytest.raises(ValueError, match="worker_speeds"):
        FakeExecutor(workers=2, worker_speeds=(1.0, 0.0))
