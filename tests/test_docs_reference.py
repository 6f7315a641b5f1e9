"""docs/reference.md names every public option and counter (a new one must be documented)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import helion_remote
from helion_remote.backends.fake import FakeExecutor
from helion_remote.coordinator.stats import RunStats

REFERENCE = (Path(__file__).resolve().parent.parent / "docs" / "reference.md").read_text()


def _documented(name: str) -> bool:
    """``name`` as a whole word inside some `code span` of the reference."""
    return re.search(rf"`[^`]*\b{re.escape(name)}\b[^`]*`", REFERENCE) is not None


def test_every_autotune_argument_is_documented() -> None:
    params = [p for p in inspect.signature(helion_remote.autotune).parameters if p != "settings"]
    assert [p for p in params if not _documented(p)] == []


def test_every_stats_key_and_journal_field_is_documented() -> None:
    stats = RunStats()
    keys = [*stats.to_dict(), "compile_order", "codegen_workers", "cost"]
    assert [k for k in keys if not _documented(k)] == []

    class Result:
        job_id, status, perf_ms, compile_time_s, worker_id, started_at, finished_at, stages = "j", "ok", 1.0, 0.0, "w", 0.0, 0.0, {}

    stats.record(Result())
    assert [k for k in stats.records[0] if not _documented(k)] == []


def test_every_executor_option_is_documented() -> None:
    from helion_remote.backends.local import LocalExecutor

    for cls in (FakeExecutor, LocalExecutor):
        options = [p for p in inspect.signature(cls.__init__).parameters if p != "self" and not p.startswith("_")]
        assert [p for p in options if not _documented(p)] == [], cls.__name__


def test_every_public_name_is_documented() -> None:
    assert [n for n in helion_remote.__all__ if not _documented(n)] == []
