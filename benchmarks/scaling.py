"""How the ``local`` backend scales across the GPUs of one host, in one run.

The 4096^3 fp16 matmul is tuned with the same algorithm (PatternSearch, full
effort), seed and time budget on 1 GPU and on N GPUs.  Prints configs/s on
each, the ratio against the 0.9 x N target, both winners re-timed side by
side on GPU 0, and which worker re-timed the finalists (always one).

    python benchmarks/scaling.py [--gpus N] [--budget 150] [--seeds 0,1,2] [--extra NAME:GPUS:CODEGEN:ORDER ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402

from local_vs_stock import add_tuning_arguments, check_correct, make_args, retime, run_remote  # noqa: E402


def finalist_line(stats: dict[str, object]) -> str:
    """Which single worker timed Helion's finalists, or why none did."""
    workers = stats["retime_workers"]
    if workers:
        return f"on {', '.join(workers)}"  # type: ignore[arg-type]
    return "skipped by Helion (budget spent)"


def parse_extra(text: str) -> tuple[str, int, int | None, bool]:
    """``NAME:GPUS:CODEGEN:ORDER`` -> (name, gpus, codegen processes or None for auto, ordered)."""
    try:
        name, gpus, codegen, ordered = text.split(":")
        if ordered not in ("0", "1"):
            raise ValueError(ordered)
        return name, int(gpus), None if codegen == "auto" else int(codegen), ordered == "1"
    except ValueError:
        raise SystemExit(f"--extra {text!r}: expected NAME:GPUS:CODEGEN:ORDER, e.g. 2gpu-unordered:2:auto:0") from None


def dump(path: str | None, runs: dict[str, dict[str, object]], extra: dict[str, object]) -> None:
    """Write the figures so far (after every run, so a cut-off command keeps what it measured)."""
    if path:
        with open(path, "w") as handle:
            json.dump({name: {k: (v.to_json() if k == "config" else v) for k, v in run.items()} for name, run in runs.items()}
                      | extra, handle, indent=1, default=str)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=torch.cuda.device_count())
    add_tuning_arguments(parser)
    parser.add_argument("--seeds", default=None,
                        help="comma-separated autotune seeds, one 1-GPU/N-GPU pair each (default: --seed); "
                             "the latency verdict is the median over pairs")
    parser.add_argument("--json", default=None)
    parser.add_argument("--extra", action="append", default=[], metavar="NAME:GPUS:CODEGEN:ORDER",
                        help="another run in the same process, e.g. 2gpu-unordered:2:auto:0 or 1gpu+cg4:1:4:1 "
                             "(CODEGEN: processes or 'auto'; ORDER: 1 = longest-compile-first, 0 = Helion's order)")
    options = parser.parse_args()
    if options.gpus < 2:
        raise SystemExit(f"scaling needs 2 or more GPUs; this host shows {torch.cuda.device_count()}")
    extras = [parse_extra(text) for text in options.extra]
    seeds = [int(s) for s in options.seeds.split(",")] if options.seeds else [options.seed]
    print(f"{time.strftime('%Y-%m-%d %H:%M')} {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}", flush=True)
    args = tuple(a.cuda() for a in make_args(options.size, options.seed))
    # Both runs start from a warm worker forkserver (it is per coordinator process), so
    # the first run does not pay the one-time torch/Triton/Helion import for the second.
    from helion_remote.worker.process import start_worker_server

    started = time.perf_counter()
    print(f"worker forkserver started: {start_worker_server(wait=True)} in {time.perf_counter() - started:.1f}s", flush=True)
    many_name = f"{options.gpus}gpu"
    plan = [("1gpu", 1, options.codegen_workers, True), (many_name, options.gpus, options.codegen_workers, True), *extras]
    runs: dict[str, dict[str, object]] = {}

    def label(name: str, seed: int) -> str:
        return name if len(seeds) == 1 else f"{name}@s{seed}"

    for seed in seeds:
        for name, gpus, codegen, ordered in plan:
            run = runs[label(name, seed)] = run_remote(
                args, options.budget, options.effort, seed, devices=list(range(gpus)),
                codegen_workers=codegen, order_by_compile_cost=ordered, max_generations=options.max_generations)
            run["configs_per_s"] = run["configs"] / run["wall_s"]
            print(f"{label(name, seed)} done: {run['configs']} configs in {run['wall_s']:.1f}s, "
                  f"evaluated/s {run['phases']['evaluated_per_s']}, batch tail {run['pipeline']['batch_tail_s_mean']} s, "
                  f"codegen processes {run['stats'].get('codegen_workers')}, compile order {run['stats'].get('compile_order')}, "
                  f"finalists {finalist_line(run['stats'])}", flush=True)
            dump(options.json, runs, {"partial": True})
    timed = retime({name: run["config"] for name, run in runs.items()}, args)
    for run in runs.values():
        check_correct(run["config"], args)
    print(f"\n{'run':<20}{'configs':>9}{'wall s':>9}{'configs/s':>11}{'reported ms':>13}{'re-timed ms':>13}  Helion's final verification")
    for name, run in runs.items():
        run["retimed_ms"] = timed[name]
        print(f"{name:<20}{run['configs']:>9}{run['wall_s']:>9.1f}{run['configs_per_s']:>11.2f}"
              f"{run['reported_ms']:>13.4f}{timed[name]:>13.4f}  {finalist_line(run['stats'])}")
        print(f"         pipeline: {json.dumps(run['pipeline'])}")
        print(f"         phases: {json.dumps(run['phases'])}")
        print(f"         startup: {json.dumps(run['startup'])}, session open {run['stats']['session_open_s']} s")
        print(f"         population re-benchmarks spread over: {run['stats']['population_retime_workers']}, "
              f"scales {run['stats'].get('population_retime_scales')}, leaders confirmed on GPU 0 "
              f"{run['stats'].get('leaders_confirmed')}; batch timings scaled "
              f"{run['stats'].get('batch_timings_scaled')} (factors {run['stats'].get('batch_timing_scales')}); "
              f"codegen processes {run['stats'].get('codegen_workers')}; compile order {run['stats'].get('compile_order')}")
    speedups, latencies = [], []
    for seed in seeds:
        one = runs[label("1gpu", seed)]
        for name, *_ in plan[1:]:
            run = runs[label(name, seed)]
            print(f"{label(name, seed)} / {label('1gpu', seed)}: configs/s {run['configs_per_s'] / one['configs_per_s']:.2f}x, "
                  f"evaluated/s {run['phases']['evaluated_per_s'] / one['phases']['evaluated_per_s']:.2f}x, "
                  f"re-timed latency {run['retimed_ms'] / one['retimed_ms']:.4f}, batch tail {run['pipeline']['batch_tail_s_mean']} s")
        many = runs[label(many_name, seed)]
        speedups.append(many["configs_per_s"] / one["configs_per_s"])
        latencies.append(many["retimed_ms"] / one["retimed_ms"])
    print(f"\nconfigs/s {options.gpus} GPUs / 1 GPU: median {statistics.median(speedups):.2f}x over {len(seeds)} seed(s) "
          f"{[round(x, 2) for x in speedups]} (target >= {0.9 * options.gpus:.2f}); re-timed best latency {options.gpus} GPUs / "
          f"1 GPU: median {statistics.median(latencies):.4f} {[round(x, 4) for x in latencies]} (target <= 1.0)")
    print(f"cuBLAS re-timed: {timed['cublas']:.4f} ms; the winners re-timed side by side by this script on cuda:0")
    dump(options.json, runs, {"cublas_ms": timed["cublas"]})


if __name__ == "__main__":
    main()
