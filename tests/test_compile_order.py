"""Longest-compile-first dispatch: the predictor alone, then through a real search."""

from __future__ import annotations

import math

import pytest

import helion
import helion_remote
from helion_remote.backends.fake import FakeExecutor
from helion_remote.coordinator.compile_order import CompileCostModel, compile_seconds, config_features

from kernels import matmul, matmul_args


def _compile_cost(config: dict) -> float:
    """Seconds growing with tile area and stages, like a real Triton compile."""
    blocks = config["block_sizes"]
    return 0.05 * math.prod(blocks) ** 0.5 / 8 * (1 + config.get("num_stages", 1))


def test_features_flatten_lists_and_keep_categories() -> None:
    features = config_features(helion.Config(block_sizes=[64, 16], num_warps=4, indexing=["pointer", "block_ptr"],
                                             range_multi_buffers=[None, True]))
    assert features["block_sizes[0]"] == pytest.approx(math.log2(65))
    assert features["num_warps"] == pytest.approx(math.log2(5))
    assert features["indexing[1]"] == "'block_ptr'"
    assert features["range_multi_buffers[0]"] == "None"
    assert features["range_multi_buffers[1]"] == "True"


def test_no_reordering_without_history() -> None:
    model = CompileCostModel(neighbours=3)
    configs = [{"block_sizes": [b], "num_stages": 2} for b in (16, 128, 32, 64)] * 4
    assert model.order(configs) == list(range(len(configs)))
    assert model.predict(configs[0]) is None
    assert model.batches_ordered == 0


def test_prediction_follows_nearest_observed_configs() -> None:
    model = CompileCostModel(neighbours=2)
    for block, seconds in [(16, 0.2), (16, 0.2), (256, 4.0), (256, 4.0), (64, 1.0)]:
        model.observe({"block_sizes": [block], "pid_type": "flat"}, seconds)
    assert model.predict({"block_sizes": [256], "pid_type": "flat"}) == pytest.approx(4.0, rel=0.01)
    assert model.predict({"block_sizes": [16], "pid_type": "flat"}) == pytest.approx(0.2, rel=0.05)
    # A different category counts as distance: same blocks, other pid_type still nearest by blocks.
    assert model.predict({"block_sizes": [256], "pid_type": "persistent"}) == pytest.approx(4.0, rel=0.01)


def test_order_leads_with_cheap_configs_then_longest_first() -> None:
    model = CompileCostModel(neighbours=1, cheap_first=2)
    blocks = [16, 32, 64, 128, 256, 512]
    for block in blocks:
        model.observe({"block_sizes": [block]}, block / 100)
    batch = [{"block_sizes": [b]} for b in (64, 512, 16, 256, 32, 128)]
    order = model.order(batch)
    dispatched = [batch[i]["block_sizes"][0] for i in order]
    assert dispatched == [16, 32, 512, 256, 128, 64]
    assert sorted(order) == list(range(len(batch)))
    for config in batch:  # the compiles land: predictions are scored
        model.observe(config, config["block_sizes"][0] / 100)
    assert model.summary() == {"batches_ordered": 1, "scored": 6, "rank_correlation": 1.0}


def test_unknown_or_bad_compile_times_are_ignored() -> None:
    model = CompileCostModel(neighbours=1)
    for seconds in (None, float("nan"), float("inf"), -1.0):
        model.observe({"block_sizes": [16]}, seconds)
    assert len(model) == 0
    assert compile_seconds({"compile_wall": 2.5}, 0.0) == 2.5
    assert compile_seconds({}, 1.5) == 1.5
    with pytest.raises(ValueError, match="neighbours"):
        CompileCostModel(neighbours=0)


def _search(order: bool) -> helion_remote.AutotuneResult:
    return helion_remote.autotune(
        matmul, matmul_args(), backend=FakeExecutor(seed=3, compile_cost_model=_compile_cost),
        algorithm="PatternSearch", effort="quick", order_by_compile_cost=order, print_result=False,
        autotune_random_seed=5, autotune_max_generations=3,
    )


def _dispatched_batches(result: helion_remote.AutotuneResult) -> list[list[float]]:
    """Each batch's compile times in dispatch order (job ids are given in dispatch order)."""
    batches: dict[int, list[tuple[int, float]]] = {}
    for row in result.records:
        batches.setdefault(int(row["batch"]), []).append((int(str(row["job_id"]).split("-")[1]), float(row["compile_time_s"])))
    return [[seconds for _, seconds in sorted(rows)] for _, rows in sorted(batches.items())]


def test_search_dispatches_longest_compile_first_and_keeps_its_results() -> None:
    ordered, plain = _search(True), _search(False)
    summary = ordered.stats["compile_order"]
    assert summary["batches_ordered"] >= 1
    # The predictions were scored against the compile times the workers reported.
    assert summary["scored"] > 0 and summary["rank_correlation"] > 0.8
    assert "compile_order" not in plain.stats
    # The order of dispatch is invisible to the search: same configs, same answer.
    assert ordered.config == plain.config
    assert ordered.best_ms == pytest.approx(plain.best_ms)
    assert ordered.stats["configs_measured"] == plain.stats["configs_measured"]
    # Batches after the model has history (the third on) went out slowest
    # compile first after the cheap lead of 8: the first half of each outweighs
    # the second; Helion's own order does not.
    def front_weight(batch: list[float]) -> float:
        tail = batch[8:]
        half = len(tail) // 2
        return (sum(tail[:half]) / half) / (sum(tail[half:]) / (len(tail) - half))

    ordered_batches = [b for b in _dispatched_batches(ordered)[2:] if len(b) > 16]
    plain_batches = [b for b in _dispatched_batches(plain)[2:] if len(b) > 16]
    assert ordered_batches and len(ordered_batches) == len(plain_batches)
    for mine, helions in zip(ordered_batches, plain_batches):
        assert sorted(mine) == sorted(helions)  # the same configs, dispatched in another order
        assert front_weight(mine) > 1.15 > front_weight(helions)
