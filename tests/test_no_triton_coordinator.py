"""The coordinator needs neither a GPU nor triton: it only generates code."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

HERE = os.path.dirname(__file__)

SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import helion_remote
    from helion_remote.backends.fake import FakeExecutor, FaultRule
    from kernels import matmul, matmul_args
    try:
        import triton  # noqa: F401
    except ImportError:
        print("NO_TRITON")
    executor = FakeExecutor(seed=1, faults=[FaultRule("worker_crash", rate=0.2)])
    for algorithm in ("PatternSearch", "LFBOTreeSearch"):
        result = helion_remote.autotune(matmul, matmul_args(), backend=executor, algorithm=algorithm,
                                        effort="full", autotune_max_generations=1, print_result=False)
        assert result.stats["configs_measured"] > 0 and result.stats["infra_retries"] > 0
        print("TUNED", algorithm, result.best_ms)
    """
)


def test_full_effort_search_with_no_triton_on_the_coordinator(tmp_path) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "triton"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('triton is blocked for this test')\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=HERE)], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "NO_TRITON" in proc.stdout
    assert proc.stdout.count("TUNED") == 2
