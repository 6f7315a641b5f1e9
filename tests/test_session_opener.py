"""Opening a session: the drift guard stops a search before any candidate is timed, the session closed."""

from __future__ import annotations

import pytest

from helion_remote.coordinator import session_opener
from helion_remote.coordinator.run_context import RemoteContext, RunState, TargetCheck
from helion_remote.coordinator.stats import RunStats

from stub_backend import SPEC, StubExecutor

class _Log:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warning(self, message: str) -> None:
        self.warnings.append(message)


def _open(executor: StubExecutor, target: TargetCheck | None, monkeypatch: pytest.MonkeyPatch) -> tuple[RemoteContext, _Log]:
    monkeypatch.setattr(session_opener, "session_spec", lambda *a: SPEC)
    context = RemoteContext(executor, "0" * 64, RunState(RunStats()), target=target)
    log = _Log()
    session_opener.open_session(context, None, None, None, log)
    return context, log


def test_no_target_opens_without_a_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    executor = StubExecutor({"error": "never read"})
    context, log = _open(executor, None, monkeypatch)
    assert context.stats.sessions == 1 and not executor.sessions[0].closed and log.warnings == []


def test_a_worker_without_a_report_skips_the_guard_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    executor = StubExecutor(None)
    _, log = _open(executor, TargetCheck("f" * 64, space_report={"space": 1}), monkeypatch)
    assert not executor.sessions[0].closed
    assert log.warnings and "backend stub did not report" in log.warnings[0]


def test_a_worker_that_cannot_bind_stops_the_search_and_closes_the_session(monkeypatch: pytest.MonkeyPatch) -> None:
    executor = StubExecutor({"error": "no GPU"})
    with pytest.raises(RuntimeError, match="could not bind the kernel.*no GPU"):
        _open(executor, TargetCheck("f" * 64, space_report={"space": 1}), monkeypatch)
    assert executor.sessions[0].closed


def test_a_drifted_space_closes_the_session(monkeypatch: pytest.MonkeyPatch) -> None:
    import helion_remote.target as target_module

    def differ(ours: object, theirs: object) -> None:
        raise ValueError(f"drift: {ours} != {theirs}")

    monkeypatch.setattr(target_module, "check_drift", differ)
    executor = StubExecutor({"space": 2})
    with pytest.raises(ValueError, match="drift"):
        _open(executor, TargetCheck("f" * 64, space_report={"space": 1}), monkeypatch)
    assert executor.sessions[0].closed


def test_an_unset_atol_is_scaled_per_tensor_as_helion_does() -> None:
    from types import SimpleNamespace

    settings = SimpleNamespace(autotune_baseline_atol=None, autotune_baseline_rtol=0.5)
    tolerances = session_opener.tolerances(settings)
    assert tolerances.scale_atol and tolerances.atol == 1e-2 and tolerances.rtol == 0.5
