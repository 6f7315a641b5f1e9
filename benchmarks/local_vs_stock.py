"""Stock Helion vs helion-remote's ``local`` backend on one GPU, in one run.

Both tune the same 4096^3 fp16 matmul with the same algorithm
(PatternSearch, full effort), random seed and time budget.  Prints configs/s,
the best latency each search reported, both winners re-timed side by side in
this process (interleaved, median), cuBLAS for reference, the ratios, and a
correctness check of each winner against torch.matmul.

    python benchmarks/local_vs_stock.py [--budget 150] [--effort full] [--size 4096]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

import helion

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
sys.path.insert(0, os.path.dirname(__file__))
from matmul import matmul  # noqa: E402  (the example's kernel: one definition)
from search_phases import record_phases  # noqa: E402


def make_args(size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same inputs in every script and process: drawn on the CPU from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(size, size, generator=generator, dtype=torch.float16) for _ in range(2))  # type: ignore[return-value]


def run_stock(args: tuple[torch.Tensor, ...], budget: int, effort: str, seed: int,
              max_generations: int | None = None) -> dict[str, object]:
    from helion.autotuner import PatternSearch
    from helion.autotuner.effort_profile import get_effort_profile

    kernel = helion.kernel(matmul.fn, static_shapes=True, autotune_effort=effort,
                           autotune_budget_seconds=budget, autotune_random_seed=seed,
                           autotune_max_generations=max_generations)
    bound = kernel.bind(args)
    profile = get_effort_profile(effort)
    search = PatternSearch(bound, args, **PatternSearch.get_kwargs_from_profile(profile, bound.settings))
    with record_phases() as phases:
        start = time.perf_counter()
        config = search.autotune()
        wall = time.perf_counter() - start
    metrics = search._autotune_metrics
    return {"config": config, "wall_s": wall, "configs": metrics.num_configs_tested,
            "reported_ms": float(getattr(search, "best_perf_so_far", float("nan"))),
            "phases": phases.summary(wall), "events": phases.events, "events_origin_epoch": phases.origin_epoch}


def run_remote(args: tuple[torch.Tensor, ...], budget: int, effort: str, seed: int, devices: list[int],
               codegen_workers: int | None = None, order_by_compile_cost: bool = True,
               max_generations: int | None = None) -> dict[str, object]:
    import helion_remote
    from helion_remote.backends.local import LocalExecutor

    executor = LocalExecutor(devices=devices)
    with record_phases() as phases:
        start, start_epoch = time.perf_counter(), time.time()
        result = helion_remote.autotune(matmul, args, backend=executor, algorithm="PatternSearch", effort=effort,
                                        codegen_workers=codegen_workers, order_by_compile_cost=order_by_compile_cost,
                                        autotune_budget_seconds=budget, autotune_max_generations=max_generations,
                                        autotune_random_seed=seed)
        wall = time.perf_counter() - start
    startup = executor.startup_report()
    executor.close()
    pipeline = pipeline_summary(result.records, wall)
    pipeline["batch_tail_s_mean"] = batch_tail(phases.events, result.records, phases.origin_epoch)
    return {"config": result.config, "wall_s": wall, "configs": result.stats["configs_measured"],
            "reported_ms": result.best_ms, "stats": result.stats, "pipeline": pipeline,
            "phases": phases.summary(wall), "events": phases.events, "events_origin_epoch": phases.origin_epoch, "records": result.records,
            "started_at_epoch": start_epoch, "startup": startup_summary(startup)}


def startup_summary(report: dict[str, dict[str, float]]) -> dict[str, float]:
    """Device-worker start and session open, and the compile workers' slowest start."""
    def worst(kind: str, key: str) -> float:
        return round(max((t.get(key, 0.0) for w, t in report.items() if kind in w), default=float("nan")), 2)

    return {"gpu_start_s": worst("gpu", "start"), "gpu_open_session_s": worst("gpu", "open_session"),
            "compile_start_max_s": worst("compile", "start"), "compile_open_max_s": worst("compile", "open_session")}


def pipeline_summary(records: list[dict[str, object]], wall_s: float) -> dict[str, float]:
    """Where the time went: GPU-stage busy fraction and stage durations."""
    gpu = [r for r in records if "gpu" in str(r["worker_id"]) and r["finished_at"] and r["started_at"]]
    stage = sorted(float(r["finished_at"]) - float(r["started_at"]) for r in gpu)
    compile_s = sorted(float(r["compile_time_s"]) for r in records if r["compile_time_s"] is not None)

    def pct(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")

    return {
        "gpu_jobs": len(gpu),
        "gpu_busy_fraction": sum(stage) / wall_s if wall_s else float("nan"),
        "gpu_stage_s_p50": pct(stage, 0.5), "gpu_stage_s_p90": pct(stage, 0.9),
        "compile_s_p50": pct(compile_s, 0.5), "compile_s_p90": pct(compile_s, 0.9),
        "compile_s_sum": sum(compile_s),
    }


def batch_tail(events: list[list[object]], records: list[dict[str, object]], origin_epoch: float) -> float:
    """Mean seconds a generation batch ran on after 90% of its device jobs had finished.

    The first batch (Helion's random population) is left out: nothing has
    compiled yet, so no ordering applies to it.
    """
    tails = []
    for kind, start, duration, _ in [e for e in events if e[0] == "batch"][1:]:
        end = float(start) + float(duration)
        finished = sorted(float(r["finished_at"]) - origin_epoch for r in records
                          if r["started_at"] and float(start) <= float(r["started_at"]) - origin_epoch <= end)
        if finished:
            tails.append(end - finished[int(0.9 * (len(finished) - 1))])
    return round(statistics.mean(tails), 3) if tails else float("nan")


def retime(configs: dict[str, helion.Config], args: tuple[torch.Tensor, ...], rounds: int = 5) -> dict[str, float]:
    """Interleaved median of do_bench medians: one process, one GPU, same inputs."""
    from triton.testing import do_bench

    fns = {"cublas": lambda: torch.matmul(*args)}
    for name, config in configs.items():
        compiled = helion.kernel(matmul.fn, config=config, static_shapes=True)
        compiled(*args)
        fns[name] = lambda compiled=compiled: compiled(*args)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for index in range(rounds):
        order = list(fns) if index % 2 == 0 else list(reversed(fns))
        for name in order:
            samples[name].append(do_bench(fns[name], warmup=50, rep=300, return_mode="median"))
    return {name: statistics.median(values) for name, values in samples.items()}


def check_correct(config: helion.Config, args: tuple[torch.Tensor, ...]) -> float:
    compiled = helion.kernel(matmul.fn, config=config, static_shapes=True)
    out = compiled(*args).float()
    ref = torch.matmul(args[0].float(), args[1].float())
    error = ((out - ref).norm() / ref.norm()).item()
    assert error < 1e-2, f"tuned config is wrong: relative error {error}"
    return error


def add_tuning_arguments(parser: argparse.ArgumentParser) -> None:
    """The knobs every GPU benchmark shares: one search, compared like with like."""
    parser.add_argument("--budget", type=int, default=150, help="autotune_budget_seconds")
    parser.add_argument("--effort", default="full")
    parser.add_argument("--size", type=int, default=4096, help="matmul size (size^3, fp16)")
    parser.add_argument("--seed", type=int, default=0, help="autotune_random_seed and input seed")
    parser.add_argument("--max-generations", type=int, default=None,
                        help="autotune_max_generations: end the search by generations, not the budget, so "
                             "Helion's final verification (finalists re-timed on one GPU) runs")
    parser.add_argument("--codegen-workers", type=int, default=None,
                        help="helion-remote codegen processes (default: the backend's suggestion)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_tuning_arguments(parser)
    parser.add_argument("--skip-stock", action="store_true")
    parser.add_argument("--json", default=None, help="write the figures here")
    options = parser.parse_args()
    import importlib.metadata as md

    print(f"{time.strftime('%Y-%m-%d %H:%M')} {platform.node()} {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, helion {md.version('helion') if 'helion' in {d.metadata['Name'] for d in md.distributions()} else helion.__file__}, "
          f"python {platform.python_version()}", flush=True)
    torch.manual_seed(options.seed)
    args = tuple(torch.randn(options.size, options.size, device="cuda", dtype=torch.float16) for _ in range(2))
    runs: dict[str, dict[str, object]] = {}
    if not options.skip_stock:
        runs["stock"] = run_stock(args, options.budget, options.effort, options.seed, options.max_generations)
        print(f"stock done: {runs['stock']['configs']} configs in {runs['stock']['wall_s']:.1f}s", flush=True)
    runs["remote"] = run_remote(args, options.budget, options.effort, options.seed, devices=[0],
                                codegen_workers=options.codegen_workers, max_generations=options.max_generations)
    print(f"remote done: {runs['remote']['configs']} configs in {runs['remote']['wall_s']:.1f}s", flush=True)
    timed = retime({name: run["config"] for name, run in runs.items()}, args)
    errors = {name: check_correct(run["config"], args) for name, run in runs.items()}
    print(f"\n{'run':<8}{'configs':>9}{'wall s':>9}{'configs/s':>11}{'reported ms':>13}{'re-timed ms':>13}{'rel err':>10}")
    for name, run in runs.items():
        rate = run["configs"] / run["wall_s"]
        run["configs_per_s"] = rate
        run["retimed_ms"] = timed[name]
        print(f"{name:<8}{run['configs']:>9}{run['wall_s']:>9.1f}{rate:>11.2f}{run['reported_ms']:>13.4f}{timed[name]:>13.4f}{errors[name]:>10.1e}")
    print(f"{'cublas':<8}{'':>9}{'':>9}{'':>11}{'':>13}{timed['cublas']:>13.4f}")
    if "stock" in runs:
        evaluated = runs["remote"]["phases"]["evaluated_per_s"] / runs["stock"]["phases"]["evaluated_per_s"]
        print(f"configs evaluated/s (answered, failed included, same count for both) remote/stock: {evaluated:.2f}x")
        speed = runs["remote"]["configs_per_s"] / runs["stock"]["configs_per_s"]
        latency = timed["remote"] / timed["stock"]
        print(f"\nconfigs/s ratio remote/stock: {speed:.2f}x (target >= 2.0)  "
              f"re-timed best latency ratio remote/stock: {latency:.4f} (target <= 1.01)")
    for name, run in runs.items():
        print(f"{name} phases:", json.dumps(run["phases"]))
    print("remote stats:", json.dumps(runs["remote"]["stats"]))
    print("remote pipeline:", json.dumps(runs["remote"]["pipeline"]))
    print("remote startup:", json.dumps(runs["remote"]["startup"]))
    if options.json:
        with open(options.json, "w") as handle:
            json.dump({name: {k: (v.to_json() if k == "config" else v) for k, v in run.items()} for name, run in runs.items()}
                      | {"cublas_ms": timed["cublas"]}, handle, indent=1, default=str)


if __name__ == "__main__":
    main()
