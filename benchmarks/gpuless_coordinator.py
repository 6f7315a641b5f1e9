"""A coordinator that cannot see the GPU tunes for it (target="auto").

The coordinator runs in a child process with ``CUDA_VISIBLE_DEVICES=""``: its
arguments are CPU tensors, it asks the ``local`` backend's worker (which does
see GPU 0) for its TargetProfile, emulates it, and searches.  The winner is
then re-timed side by side with the winner of a coordinator that sees the GPU
(the ``1gpu`` run of ``scaling.py``, same seed and budget, passed with
``--reference``).  Finally a deliberately wrong profile (``--wrong a100``) must
be stopped by the drift guard before any candidate is timed.

    python benchmarks/gpuless_coordinator.py --budget 150 --reference scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))


def coordinator(options: argparse.Namespace) -> None:
    import torch

    import helion_remote
    from helion_remote.backends.local import LocalExecutor
    from local_vs_stock import make_args, matmul

    assert not torch.cuda.is_available(), "the coordinator must not see a GPU"
    args = make_args(options.size, options.seed)
    executor = LocalExecutor(devices=[0])
    report: dict[str, object] = {}
    try:
        start = time.perf_counter()
        result = helion_remote.autotune(matmul, args, backend=executor, target="auto", algorithm="PatternSearch",
                                        effort=options.effort, autotune_budget_seconds=options.budget,
                                        autotune_random_seed=options.seed)
        report = {"config": result.config.to_json(), "configs": result.stats["configs_measured"],
                  "wall_s": time.perf_counter() - start, "reported_ms": result.best_ms, "target": result.target}
        print("GPU-less coordinator:", json.dumps(report), flush=True)
        from helion_remote.target import TargetDriftError

        try:
            helion_remote.autotune(matmul, args, backend=executor, target=options.wrong, algorithm="PatternSearch",
                                   effort="quick", print_result=False)
            report["drift_guard"] = "NOT RAISED"
        except TargetDriftError as error:
            report["drift_guard"] = str(error)
        print("drift guard with a wrong profile:", report["drift_guard"][:1500], flush=True)
    finally:
        executor.close()
    with open(options.out, "w") as handle:
        json.dump(report, handle)


def main() -> None:
    from local_vs_stock import add_tuning_arguments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_tuning_arguments(parser)
    parser.add_argument("--wrong", default="a100")
    parser.add_argument("--reference", help="scaling.py --json output (its 1gpu run is the GPU-seeing coordinator)")
    parser.add_argument("--run-reference", action="store_true",
                        help="first tune with a coordinator that sees the GPU (same seed, budget), in this process")
    parser.add_argument("--role", default="driver")
    parser.add_argument("--out", default="gpuless_result.json")
    options = parser.parse_args()
    if options.role == "coordinator":
        coordinator(options)
        return
    sees_gpu = None
    if options.run_reference:
        import torch

        from local_vs_stock import make_args, run_remote

        cuda_args = tuple(a.cuda() for a in make_args(options.size, options.seed))
        sees_gpu = run_remote(cuda_args, options.budget, options.effort, options.seed, devices=[0])
        print(f"GPU-seeing coordinator: {sees_gpu['configs']} configs in {sees_gpu['wall_s']:.1f}s", flush=True)
        del cuda_args
        torch.cuda.empty_cache()
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, __file__, "--role", "coordinator", "--budget", str(options.budget), "--effort",
           options.effort, "--size", str(options.size), "--seed", str(options.seed), "--wrong", options.wrong,
           "--out", options.out]
    subprocess.run(cmd, env=env, check=True)
    with open(options.out) as handle:
        gpuless = json.load(handle)
    import helion
    import torch

    from local_vs_stock import check_correct, make_args, retime

    args = tuple(a.cuda() for a in make_args(options.size, options.seed))
    configs = {"gpuless": helion.Config.from_json(gpuless["config"])}
    if sees_gpu is not None:
        configs["sees_gpu"] = sees_gpu["config"]
    elif options.reference:
        with open(options.reference) as handle:
            reference = json.load(handle)["1gpu"]
        configs["sees_gpu"] = helion.Config.from_json(reference["config"])
    timed = retime(configs, args)
    error = check_correct(configs["gpuless"], args)
    print(f"\nGPU-less coordinator: {gpuless['configs']} configs in {gpuless['wall_s']:.1f}s, target {gpuless['target']}, "
          f"re-timed {timed['gpuless']:.4f} ms, rel err {error:.1e}")
    if "sees_gpu" in timed:
        print(f"GPU-seeing coordinator: re-timed {timed['sees_gpu']:.4f} ms; "
              f"ratio gpuless/sees_gpu {timed['gpuless'] / timed['sees_gpu']:.4f} (target <= 1.02)")
    print(f"cuBLAS {timed['cublas']:.4f} ms; drift guard: {'RAISED' if gpuless['drift_guard'] != 'NOT RAISED' else 'NOT RAISED'}")
    del torch


if __name__ == "__main__":
    main()
