"""Coordinator cost per config: helion-remote's provider vs Helion's codegen alone.

On the fake backend with zero latency, everything the provider does beyond
``BoundKernel.to_triton_code`` (packaging the source, hashing it, building
and dispatching the job, mapping the result back into Helion's
``BenchmarkResult`` and metrics) is coordinator overhead.  Target: at most
2 ms per config, so one coordinator can feed 64 workers.

    python benchmarks/coordinator_overhead.py [--configs 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import torch  # noqa: E402

from helion.autotuner.config_generation import ConfigGeneration  # noqa: E402
from helion.autotuner.logger import AutotuningLogger  # noqa: E402
from helion.autotuner.metrics import AutotuneMetrics  # noqa: E402
from helion_remote.argcodec import upload_args  # noqa: E402
from helion_remote.backends.fake import FakeExecutor  # noqa: E402
from helion_remote.coordinator.run_context import RemoteContext, RunState
from helion_remote.coordinator.seam import bind_provider  # noqa: E402
from helion_remote.coordinator.stats import RunStats  # noqa: E402

from kernels import matmul, matmul_args, softmax, softmax_args  # noqa: E402


def measure(kernel: object, args: tuple[torch.Tensor, ...], n_configs: int, rounds: int) -> dict[str, float]:
    bound = kernel.bind(args)
    generation = ConfigGeneration(bound.config_spec)
    torch.manual_seed(0)
    configs = [generation.random_config() for _ in range(n_configs)]
    executor = FakeExecutor(seed=0, workers=64, latency_s=0.0)
    codegen_s, provider_s, inner_codegen_s = [], [], []

    def helion_alone() -> None:
        start = time.perf_counter()
        for config in configs:
            bound.to_triton_code(config)
        codegen_s.append(time.perf_counter() - start)

    for round_index in range(rounds + 1):  # noqa: B007
        # Alternate the order so neither side profits from warm caches; the
        # first round is a warm-up for both and is dropped.
        if round_index % 2 == 0:
            helion_alone()
        stats = RunStats()
        context = RemoteContext(executor, upload_args(executor.blob_store, args).digest, RunState(stats))
        provider = bind_provider(context)(
            kernel=bound, settings=bound.settings, config_spec=bound.config_spec, args=args,
            log=AutotuningLogger(bound.settings), autotune_metrics=AutotuneMetrics(),
        )
        provider.setup()
        start = time.perf_counter()
        results = provider.benchmark(list(configs), desc="overhead")
        provider_s.append(time.perf_counter() - start)
        inner_codegen_s.append(stats.codegen_s)
        provider.cleanup()
        assert sum(r.status == "ok" for r in results) == len(configs)
        if round_index % 2 == 1:
            helion_alone()
    codegen_ms = statistics.median(codegen_s[1:]) / n_configs * 1e3
    provider_ms = statistics.median(provider_s[1:]) / n_configs * 1e3
    # What the provider spends outside its own call into Helion's codegen.
    beyond_ms = statistics.median(p - c for p, c in zip(provider_s[1:], inner_codegen_s[1:])) / n_configs * 1e3
    return {"codegen_ms": codegen_ms, "provider_ms": provider_ms, "overhead_ms": provider_ms - codegen_ms,
            "beyond_codegen_ms": beyond_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cores, python {platform.python_version()}, torch {torch.__version__}")
    print(f"{'kernel':<10}{'configs':>8}{'codegen ms/cfg':>16}{'helion-remote ms/cfg':>22}{'difference':>12}"
          f"{'non-codegen':>13}{'ratio':>8}")
    for name, kernel, make_args in (("matmul", matmul, matmul_args), ("softmax", softmax, softmax_args)):
        row = measure(kernel, make_args(), options.configs, options.rounds)
        ratio = row["provider_ms"] / row["codegen_ms"]
        print(f"{name:<10}{options.configs:>8}{row['codegen_ms']:>16.3f}{row['provider_ms']:>22.3f}"
              f"{row['overhead_ms']:>12.3f}{row['beyond_codegen_ms']:>13.3f}{ratio:>8.3f}")
        verdict = "PASS" if max(row["overhead_ms"], row["beyond_codegen_ms"]) <= 2.0 else "FAIL"
        print(f"  target <= 2.0 ms overhead per config: {verdict}")


if __name__ == "__main__":
    main()
