"""autotune()'s argument checks and what it reports when nothing was measured."""

from __future__ import annotations

import math
import re

import pytest

import helion_remote
from helion_remote.backends.fake import FakeExecutor
from helion_remote.errors import ConfigurationError

from kernels import matmul, matmul_args


@pytest.mark.parametrize("value", [-1, 1.5, "3", True, None])
def test_bad_max_infra_retries_is_refused_naming_value_and_range(value: object) -> None:
    executor = FakeExecutor()
    with pytest.raises(ConfigurationError, match=rf"max_infra_retries must be an int >= 0.*got {re.escape(repr(value))}"):
        helion_remote.autotune(matmul, matmul_args(), backend=executor, max_infra_retries=value, print_result=False)
    assert executor.jobs_run == 0


def test_zero_infra_retries_is_valid() -> None:
    result = helion_remote.autotune(matmul, matmul_args(), backend=FakeExecutor(), effort="none",
                                    max_infra_retries=0, print_result=False)
    assert result.config is not None


def test_effort_none_says_not_measured(capsys: pytest.CaptureFixture[str]) -> None:
    result = helion_remote.autotune(matmul, matmul_args(), backend=FakeExecutor(), effort="none")
    assert isinstance(result.best_ms, float) and math.isnan(result.best_ms) and not result.measured
    first_line = capsys.readouterr().err.splitlines()[0]
    assert "default config (effort='none', not measured)" in first_line and "inf" not in first_line
    assert "not measured" in str(result)
