"""Every fault the fake backend can inject, under each search family, for whole searches.

Each run must complete with a result; every job sent must come back as exactly
one journal row; the counters must agree with what the workers answered; and
the pick must never be a config that failed.  The kernel is tiny and the fake
has no latency, so a full quick search (every generation) takes seconds.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest
import torch

import helion
import helion_remote
from helion_remote.backends.fake import FAULT_KINDS, KERNEL_FAULTS, FakeExecutor, FaultRule
from helion_remote.coordinator.codegen import kernel_source
from helion_remote.protocol import BenchmarkJob, JobResult

from kernels import add_inplace, add_inplace_args

ALGORITHMS: dict[str, dict[str, object]] = {
    "PatternSearch": {},
    "LFBOTreeSearch": {},
    # Quick DE seeds its population from the default config alone, and 1.5.1's mutation then
    # samples 4 members of a population of 1 (ValueError: Sample larger than population, issue
    # 15): pad it with random configs, and keep it small; all 8 quick generations still run.
    "DifferentialEvolutionSearch": {"best_available_pad_random": True, "population_size": 8},
}

SCENARIOS: dict[str, tuple[list[FaultRule], float]] = {
    # one fault kind each, on a fifth of the jobs (kernel faults: every attempt of the configs
    # they hit; infrastructure faults: the first attempt, so the retry answers)
    **{kind: ([FaultRule(kind, rate=0.2)], 0.0) for kind in FAULT_KINDS if kind != "straggler"},
    # a straggler only shows with latency: 1 ms jobs, stragglers 20 ms, results out of order
    "straggler": ([FaultRule("straggler", rate=0.2, slow_factor=20)], 0.001),
    # infrastructure that fails every attempt (about 1 job in 16 is lost): the search goes on
    "infra_every_attempt": ([FaultRule("worker_crash", rate=0.3, attempts="all"),
                             FaultRule("transport_error", rate=0.3, attempts="all")], 0.0),
}


def test_the_matrix_covers_every_fault_kind() -> None:
    assert {rule.kind for rules, _ in SCENARIOS.values() for rule in rules} == set(FAULT_KINDS)


@pytest.fixture(scope="module")
def args() -> tuple[torch.Tensor, ...]:
    return add_inplace_args()


@pytest.fixture(scope="module")
def bound(args: tuple[torch.Tensor, ...]) -> Any:
    """The kernel bound once, to name the picked config's generated module."""
    return add_inplace.bind(tuple(a.clone() for a in args))


def _final_attempts(log: list[tuple[BenchmarkJob, JobResult]]) -> dict[str, tuple[BenchmarkJob, JobResult]]:
    """Per job id, its last attempt and the result it got."""
    last: dict[str, tuple[BenchmarkJob, JobResult]] = {}
    for job, result in log:
        if job.job_id not in last or job.attempt > last[job.job_id][0].attempt:
            last[job.job_id] = (job, result)
    return last


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_a_search_survives_the_fault(algorithm: str, scenario: str, args: tuple[torch.Tensor, ...], bound: Any) -> None:
    rules, latency_s = SCENARIOS[scenario]
    executor = FakeExecutor(seed=11, latency_s=latency_s, faults=rules)
    result = helion_remote.autotune(
        add_inplace, tuple(a.clone() for a in args), backend=executor, algorithm=algorithm, effort="quick",
        algorithm_options=ALGORITHMS[algorithm], autotune_random_seed=11, print_result=False,
    )
    stats = result.stats

    # A result, from a search that ran past its first generations.
    assert isinstance(result.config, helion.Config) and math.isfinite(result.best_ms) and result.best_ms > 0
    assert stats["batches"] >= 3

    # Jobs sent = jobs the workers ran = results the coordinator received.
    assert executor.jobs_submitted == executor.jobs_run == len(result.records)
    assert Counter(r["status"] for r in result.records) == Counter(r.status for _, r in executor.job_log)

    # The counters say what the workers answered.
    finals = _final_attempts(executor.job_log)
    final_status = Counter(r.status for _, r in finals.values())
    lost = final_status.pop("infra_error", 0)
    assert stats["configs_measured"] == sum(final_status.values())
    assert stats["infra_retries"] == len(executor.job_log) - len(finals)
    kernel_failures = {s: n for s, n in final_status.items() if s != "ok"}
    codegen = stats["codegen_failures"]
    assert stats["failures"] == {s: n + (codegen if s == "error" else 0) for s, n in kernel_failures.items()} | (
        {"error": codegen} if codegen and "error" not in kernel_failures else {})
    assert (stats["configs_lost_to_infra"] > 0) == (lost > 0) and stats["configs_lost_to_infra"] >= lost
    if scenario == "infra_every_attempt":
        assert lost > 0, "the scenario should lose some jobs to infrastructure"
    if scenario in KERNEL_FAULTS:
        assert kernel_failures, "the scenario should fail some configs"

    # The pick was measured ok and never failed (a config's faults hit every attempt).
    picked = kernel_source(bound, result.config).digest
    statuses = {r.status for job, r in finals.values() if job.kernel.digest == picked}
    assert "ok" in statuses and statuses <= {"ok", "infra_error"}, statuses
