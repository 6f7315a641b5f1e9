"""How the ``local`` backend scales across the GPUs of one host, in one run.

The 4096^3 fp16 matmul is tuned with the same algorithm (PatternSearch, full
effort), seed and time budget on 1 GPU and on N GPUs.  Prints configs/s on
each, the ratio against the 0.9 x N target, both winners re-timed side by
side on GPU 0, and which worker re-timed the finalists (always one).

    python benchmarks/scaling.py [--gpus N] [--budget 150]
"""

from __future__ import annotations

import argparse
import json
import os
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=torch.cuda.device_count())
    add_tuning_arguments(parser)
    parser.add_argument("--json", default=None)
    parser.add_argument("--also-codegen-workers", type=int, default=0,
                        help="add an N-GPU run with this many codegen processes (same process, same budget)")
    options = parser.parse_args()
    if options.gpus < 2:
        raise SystemExit(f"scaling needs 2 or more GPUs; this host shows {torch.cuda.device_count()}")
    print(f"{time.strftime('%Y-%m-%d %H:%M')} {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}", flush=True)
    args = tuple(a.cuda() for a in make_args(options.size, options.seed))
    # Both runs start from a warm worker forkserver (it is per coordinator process), so
    # the first run does not pay the one-time torch/Triton/Helion import for the second.
    from helion_remote.worker.process import start_worker_server

    started = time.perf_counter()
    print(f"worker forkserver started: {start_worker_server(wait=True)} in {time.perf_counter() - started:.1f}s", flush=True)
    runs = {
        "1gpu": run_remote(args, options.budget, options.effort, options.seed, devices=[0],
                           codegen_workers=options.codegen_workers),
        f"{options.gpus}gpu": run_remote(args, options.budget, options.effort, options.seed,
                                         devices=list(range(options.gpus)), codegen_workers=options.codegen_workers),
    }
    if options.also_codegen_workers:
        runs[f"{options.gpus}gpu+cg{options.also_codegen_workers}"] = run_remote(
            args, options.budget, options.effort, options.seed, devices=list(range(options.gpus)),
            codegen_workers=options.also_codegen_workers)
    timed = retime({name: run["config"] for name, run in runs.items()}, args)
    for run in runs.values():
        check_correct(run["config"], args)
    print(f"\n{'run':<12}{'configs':>9}{'wall s':>9}{'configs/s':>11}{'reported ms':>13}{'re-timed ms':>13}  Helion's final verification")
    for name, run in runs.items():
        run["configs_per_s"] = run["configs"] / run["wall_s"]
        run["retimed_ms"] = timed[name]
        print(f"{name:<12}{run['configs']:>9}{run['wall_s']:>9.1f}{run['configs_per_s']:>11.2f}"
              f"{run['reported_ms']:>13.4f}{timed[name]:>13.4f}  {finalist_line(run['stats'])}")
        print(f"         pipeline: {json.dumps(run['pipeline'])}")
        print(f"         phases: {json.dumps(run['phases'])}")
        print(f"         startup: {json.dumps(run['startup'])}, session open {run['stats']['session_open_s']} s")
        print(f"         population re-benchmarks spread over: {run['stats']['population_retime_workers']}")
    one, many = runs["1gpu"], runs[f"{options.gpus}gpu"]
    speedup = many["configs_per_s"] / one["configs_per_s"]
    print(f"\nconfigs/s {options.gpus} GPUs / 1 GPU: {speedup:.2f}x (target >= {0.9 * options.gpus:.2f}); "
          f"re-timed best latency {options.gpus} GPUs / 1 GPU: {many['retimed_ms'] / one['retimed_ms']:.4f} (target <= 1.0)")
    for name, run in runs.items():
        print(f"evaluated/s {name} / 1gpu: {run['phases']['evaluated_per_s'] / one['phases']['evaluated_per_s']:.2f}x")
    print(f"cuBLAS re-timed: {timed['cublas']:.4f} ms; the winners re-timed side by side by this script on cuda:0")
    if options.json:
        with open(options.json, "w") as handle:
            json.dump({name: {k: (v.to_json() if k == "config" else v) for k, v in run.items()} for name, run in runs.items()}
                      | {"cublas_ms": timed["cublas"]}, handle, indent=1, default=str)


if __name__ == "__main__":
    main()
