"""benchmark_isolated's re-timing: population vs finalist windows, against the backend contract's defaults."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from helion_remote.coordinator import _helion_compat as compat
from helion_remote.coordinator.helion_results import RemoteKernel
from helion_remote.coordinator.retiming import retime_isolated
from helion_remote.coordinator.run_context import RemoteContext, RunState
from helion_remote.coordinator.stats import RunStats
from helion_remote.protocol import KernelSource, RetimeResult, RetimeTiming

from stub_backend import SPEC, StubExecutor, StubSession


class _Session(StubSession):
    """Times kernel ``k`` at ``perf[k.entry_name]`` on worker ``w0``; notes every call."""

    def __init__(self, perf: dict[str, RetimeTiming | float]) -> None:
        super().__init__(StubExecutor(), SPEC)
        self.perf = perf
        self.calls: list[list[str]] = []

    def retime(self, kernels: Sequence[KernelSource], *, warmup_ms: float, rep_ms: float, timeout_s: float) -> RetimeResult:
        self.calls.append([k.entry_name for k in kernels])
        timings = []
        for k in kernels:
            value = self.perf[k.entry_name]
            timings.append(value if isinstance(value, RetimeTiming) else RetimeTiming(k.digest, "ok", value))
        return RetimeResult(tuple(timings), "w0")


class _SpreadSession(_Session):
    spread_covers_batch_workers = True

    def retime_spread(self, kernels, *, warmup_ms, rep_ms, timeout_s):  # type: ignore[no-untyped-def]
        result = self.retime(kernels, warmup_ms=warmup_ms, rep_ms=rep_ms, timeout_s=timeout_s)
        return RetimeResult(result.timings, "w0", workers=("w0", "w1"), scales=(("w1", 0.5),), confirmed=1)


def _handle(name: str) -> RemoteKernel:
    return RemoteKernel(KernelSource(f"# {name}\n", name), config={"name": name})


def _context() -> RemoteContext:
    return RemoteContext(StubExecutor(), "0" * 64, RunState(RunStats()))


def test_a_population_rebenchmark_goes_through_retime_spread_and_counts_as_one() -> None:
    context, session = _context(), _Session({"a": 2.0, "b": 1.0})
    timings = retime_isolated(context, session, [_handle("a"), _handle("b")], warmup=1, rep=10, timeout_s=5.0,
                              finalist_window=False)
    assert timings == [2.0, 1.0]
    stats = context.stats
    assert stats.population_retime_workers == {"w0"} and stats.retime_workers == set()
    assert stats.retime_calls == 1 and stats.retimed_kernels == 2
    # The contract's default spread is retime itself: one worker, no scales for batch timings.
    assert session.spread_covers_batch_workers is False and context.state.unit_scales.current() == {}


def test_finalist_windows_stay_on_retime_and_count_as_finalists() -> None:
    context, session = _context(), _SpreadSession({"a": 2.0})
    retime_isolated(context, session, [_handle("a")], warmup=1, rep=10, timeout_s=5.0, finalist_window=True)
    assert context.stats.retime_workers == {"w0"} and context.stats.population_retime_workers == set()
    assert context.stats.leaders_confirmed == 0


def test_a_spread_that_covers_batch_workers_sets_their_unit_scales() -> None:
    context, session = _context(), _SpreadSession({"a": 2.0, "b": 1.0})
    retime_isolated(context, session, [_handle("a"), _handle("b")], warmup=1, rep=10, timeout_s=5.0,
                    finalist_window=False)
    assert context.stats.population_retime_workers == {"w0", "w1"}
    assert context.stats.population_retime_scales == {"w1": [0.5]}
    assert context.state.unit_scales.factor("w1") == 0.5 and context.stats.batch_timing_scales == {"w1": 0.5}
    assert context.stats.leaders_confirmed == 1


def test_best_known_goes_first_and_failures_map_to_helion() -> None:
    context = _context()
    a, b, c, d = (_handle(n) for n in "abcd")
    context.state.last_perf_ms[b.source.digest] = 0.5
    session = _Session({
        "a": 3.0,
        "b": RetimeTiming(b.source.digest, "infra_error"),
        "c": RetimeTiming(c.source.digest, "timeout"),
        "d": RetimeTiming(d.source.digest, "ok", float("inf")),
    })
    timings = retime_isolated(context, session, [a, b, c, d, object()], warmup=1, rep=10, timeout_s=5.0,
                              finalist_window=False)
    assert session.calls == [["b", "a", "c", "d"]], "the best-known kernel anchors the call"
    assert timings[0] == 3.0 and timings[1] is None and timings[4] is None
    assert isinstance(timings[2], compat.IsolatedBenchmarkFailure) and isinstance(timings[3], compat.IsolatedBenchmarkFailure)
    assert context.state.last_perf_ms == {b.source.digest: 0.5, a.source.digest: 3.0}


def test_the_context_is_frozen() -> None:
    context = _context()
    with pytest.raises(AttributeError):
        context.args_digest = "1" * 64  # type: ignore[misc]
