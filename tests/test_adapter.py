"""The adapter: provider injection, restoration, codegen shipping, settings checks."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import helion_remote
from helion_remote.coordinator import _helion_compat as compat
from helion_remote.coordinator.adapter import remote_mode
from helion_remote.backends.fake import FakeExecutor
from helion_remote.coordinator.run_context import RemoteContext, RunState
from helion_remote.coordinator.seam import bind_provider
from helion_remote.coordinator.stats import RunStats

from kernels import matmul, matmul_args


def test_remote_mode_patches_then_restores_the_default_provider() -> None:
    from helion.autotuner import PatternSearch

    provider = bind_provider(RemoteContext(FakeExecutor(), "0" * 64, RunState(RunStats())))
    bound = matmul.bind(matmul_args())
    with remote_mode(provider):
        assert PatternSearch(bound, matmul_args())._benchmark_provider_cls is provider
    assert PatternSearch(bound, matmul_args())._benchmark_provider_cls is compat.LocalBenchmarkProvider
    assert compat.BaseSearch.__init__.__defaults__ == (compat.LocalBenchmarkProvider,)


def test_remote_mode_restores_even_when_the_search_fails() -> None:
    provider = bind_provider(RemoteContext(FakeExecutor(), "0" * 64, RunState(RunStats())))
    with pytest.raises(RuntimeError, match="boom"), remote_mode(provider):
        raise RuntimeError("boom")
    assert compat.BaseSearch.__init__.__defaults__ == (compat.LocalBenchmarkProvider,)


def test_local_only_settings_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="autotune_baseline_fn"):
        helion_remote.autotune(matmul, matmul_args(), backend=FakeExecutor(), effort="quick",
                               autotune_baseline_fn=lambda x, y: x @ y, print_result=False)


def test_non_kernel_is_refused() -> None:
    with pytest.raises(TypeError, match="@helion.kernel"):
        helion_remote.autotune(lambda x: x, (), backend=FakeExecutor())


def test_unknown_algorithm_option_lists_valid_ones() -> None:
    with pytest.raises(TypeError, match="RandomSearch has no option 'population'; valid options: .*count"):
        helion_remote.autotune(matmul, matmul_args(), backend=FakeExecutor(), algorithm="RandomSearch",
                               algorithm_options={"population": 3}, print_result=False)


def test_effort_none_returns_the_default_config_without_measuring() -> None:
    executor = FakeExecutor()
    result = helion_remote.autotune(matmul, matmul_args(), backend=executor, effort="none", print_result=False)
    assert result.config == matmul.bind(matmul_args()).config_spec.default_config()
    assert executor.jobs_run == 0


SCRIPT = textwrap.dedent(
    """
    import torch, helion, helion.language as hl
    import helion_remote
    GLOBAL_SCALE = 3.0

    @helion.kernel(autotuner_fn=helion_remote.autotuner_fn, autotune_effort="quick", static_shapes=True)
    def scaled_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(x)
        for tile in hl.tile(out.size()):
            out[tile] = x[tile] + y[tile] * GLOBAL_SCALE
        return out

    if __name__ == "__main__":
        args = (torch.randn(64, 64), torch.randn(64, 64))
        config = scaled_add.autotune(args)
        print("CONFIG", config.to_json())
    """
)


def test_autotuner_fn_route_tunes_an_unchanged_script_through_env_vars(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    script = tmp_path / "user_script.py"
    script.write_text(SCRIPT)
    env = {"HELION_REMOTE_BACKEND": "fake", "HELION_AUTOTUNER": "PatternSearch", "HELION_AUTOTUNE_PROGRESS_BAR": "1"}
    import os

    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CONFIG {" in proc.stdout
    # The remote provider measured the batches (its progress line), on the fake backend.
    assert "[helion-remote] Initial population" in proc.stderr
    assert "LocalBenchmarkProvider" not in proc.stderr


def test_autotuner_fn_route_rejects_an_unknown_backend(tmp_path) -> None:  # type: ignore[no-untyped-def]
    script = tmp_path / "user_script.py"
    script.write_text(SCRIPT)
    import os

    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HELION_REMOTE_BACKEND": "nope"}, cwd=tmp_path)
    assert proc.returncode != 0
    assert "unknown $HELION_REMOTE_BACKEND 'nope'; valid backends: fake, local, modal" in proc.stderr


def test_kernel_in_main_ships_its_module_under_a_content_name(tmp_path) -> None:  # type: ignore[no-untyped-def]
    check = textwrap.dedent(
        """
        if __name__ == "__main__":
            from helion_remote.coordinator.codegen import kernel_source
            b = scaled_add.bind((torch.randn(8, 8), torch.randn(8, 8)))
            src = kernel_source(b, b.config_spec.default_config())
            assert "import __main__" not in src.module_source, src.module_source
            (mod,) = src.source_modules
            assert mod.name.startswith("_helion_remote_main_"), mod.name
            assert f"import {mod.name} as" in src.module_source
            assert "GLOBAL_SCALE = 3.0" in mod.source
            print("OK")
        """
    )
    script = tmp_path / "main_kernel.py"
    script.write_text(SCRIPT.split('if __name__ == "__main__":')[0] + check)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
