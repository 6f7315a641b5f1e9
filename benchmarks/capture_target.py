"""Capture a TargetProfile on this GPU and prove that emulating it reproduces the GPU's spaces.

On the GPU (e.g. the H200, to write helion_remote/profiles/h200.json)::

    PYTHONPATH=<helion 1.5.0> python benchmarks/capture_target.py \\
        --out helion_remote/profiles/h200.json --compare-profile h200 --compare-profile h100

1. ``capture_profile()`` on the current CUDA device -> ``--out`` (JSON; printed when no ``--out``);
2. ``config_space_report`` for the probe kernels (matmul 4096^3 fp16, softmax and layer
   norm over 4096x4096 fp16) bound on real CUDA tensors -> ``--reports-out``;
3. for the captured profile and every ``--compare-profile`` (a path or a built-in name),
   the coordinator-emulated reports computed in a subprocess with
   ``CUDA_VISIBLE_DEVICES=""`` (so it really has no GPU), printed per kernel as MATCH or
   MISMATCH with the differing fields.  Exit status 1 when the captured profile mismatches.
   ``--compare-profile`` files are read before ``--out`` is written, so ``h200`` above is the
   spec-sheet profile being replaced.

On a CPU (CI / smoke test)::

    python benchmarks/capture_target.py --dry-run [--profile h200] [--compare-profile a100]

uses a built-in profile instead of capturing and emulated reports instead of GPU ones
(labelled as such), so every step except the CUDA calls runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _versions() -> dict[str, str | None]:
    import importlib.metadata

    import torch

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,
        "triton": version("triton"),
        "helion": version("helion"),
    }


def emulated_reports_subprocess(profile_json: str, size: int, kernels: list[str]) -> dict[str, Any]:
    """Emulated reports from a process that sees no GPU, exactly like a laptop coordinator."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        profile_path = Path(tmp) / "profile.json"
        profile_path.write_text(profile_json, encoding="utf-8")
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
        command = [
            sys.executable,
            __file__,
            "--emulate-reports",
            str(profile_path),
            "--size",
            str(size),
            "--kernels",
            ",".join(kernels),
        ]
        proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"emulation subprocess failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}")
    marker = "@@REPORTS@@"
    text = proc.stdout[proc.stdout.index(marker) + len(marker) :]
    return json.loads(text)


def _emulate_reports_main(profile_path: str, size: int, kernels: list[str]) -> int:
    """Child mode: print the emulated reports as JSON after a marker."""
    import torch

    from helion_remote.target import emulated_probe_reports

    reports = emulated_probe_reports(profile_path, size=size, kernels=kernels)
    for report in reports.values():
        report["cuda_available_in_coordinator"] = bool(torch.cuda.is_available())
    print("@@REPORTS@@" + json.dumps(reports))
    return 0


def _line(name: str, report: dict[str, Any]) -> str:
    return f"{name:<11} {report['fingerprint'][:16]}  {report['flat_dims']:>3} dims  on {report.get('device', '?')}"


def compare(label: str, coordinator: dict[str, Any], worker: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    from helion_remote.target import compare_reports

    outcome = compare_reports(coordinator, worker)
    print(f"\n== emulated {label} vs GPU")
    summary: dict[str, Any] = {}
    for name, message in outcome.items():
        verdict = "MATCH" if message is None else "MISMATCH"
        c = coordinator.get(name, {})
        print(f"{name:<11} {verdict:<8}  gpu {worker[name]['fingerprint'][:16]} ({worker[name]['flat_dims']} dims)"
              f"  emulated {str(c.get('fingerprint'))[:16]} ({c.get('flat_dims')} dims)")
        if message is not None:
            print("    " + message.replace("\n", "\n    "))
        summary[name] = {"verdict": verdict, "emulated": c.get("fingerprint"), "gpu": worker[name]["fingerprint"],
                         "message": message}
    return all(m is None for m in outcome.values()), summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write the captured profile JSON here (default: print it)")
    parser.add_argument("--name", help="profile name (default: from the device name, e.g. h200)")
    parser.add_argument("--reports-out",
                        help="GPU + emulated reports and verdicts as JSON "
                             "(default on a GPU: target_reports_<name>.json; none on --dry-run)")
    parser.add_argument("--compare-profile", action="append", default=[],
                        help="also compare the GPU against this profile (path or built-in name); repeatable")
    parser.add_argument("--size", type=int, default=4096, help="probe size (matmul size^3, softmax/layer norm size^2)")
    parser.add_argument("--kernels", default="matmul,softmax,layer_norm")
    parser.add_argument("--device", default=None, help="CUDA device (default: current)")
    parser.add_argument("--dry-run", action="store_true", help="CPU smoke test: no capture, emulated 'GPU' reports")
    parser.add_argument("--profile", default="h200", help="--dry-run: the built-in profile standing in for the capture")
    parser.add_argument("--emulate-reports", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    kernels = [k for k in args.kernels.split(",") if k]
    if args.emulate_reports:
        return _emulate_reports_main(args.emulate_reports, args.size, kernels)

    import torch

    from helion_remote.target import (
        capture_profile,
        emulated_probe_reports,
        load_profile,
        worker_probe_reports,
    )
    from helion_remote.target.capture import profile_summary

    started = time.perf_counter()
    print(f"versions: {_versions()}", file=sys.stderr)
    # Read the profiles to compare first: --out may overwrite one of them (h200.json).
    others = [(item, load_profile(item)) for item in args.compare_profile]
    if args.dry_run:
        profile = load_profile(args.profile)
        print(f"DRY RUN: using built-in profile {profile.name!r} instead of a capture; the 'GPU' reports "
              "below are emulated in-process, not measured", file=sys.stderr)
        gpu_reports = emulated_probe_reports(profile, size=args.size, kernels=kernels)
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run this on the GPU, or pass --dry-run for a CPU smoke test", file=sys.stderr)
            return 2
        profile = capture_profile(args.device, name=args.name)
        device = args.device or f"cuda:{torch.cuda.current_device()}"
        gpu_reports = worker_probe_reports(device, size=args.size, kernels=kernels)

    if args.out:
        Path(args.out).write_text(profile.to_json(), encoding="utf-8")
        print(f"profile written to {args.out}: {profile_summary(profile)}", file=sys.stderr)
    else:
        print(profile.to_json())

    print("\n== GPU config spaces" + (" (dry run: emulated)" if args.dry_run else ""))
    for name, report in gpu_reports.items():
        print(_line(name, report))

    label = profile.name if args.dry_run else f"captured {profile.name}"
    targets = [(label, profile.to_json())]
    targets += [(f"{item} ({other.name}, {'captured' if other.captured else 'spec'})", other.to_json())
                for item, other in others]
    results: dict[str, Any] = {}
    primary_ok = True
    for index, (label, profile_json) in enumerate(targets):
        emulated = emulated_reports_subprocess(profile_json, args.size, kernels)
        ok, summary = compare(label, emulated, gpu_reports)
        results[label] = {"match": ok, "kernels": summary, "emulated_reports": emulated}
        if index == 0:
            primary_ok = ok
    reports_out = args.reports_out or (None if args.dry_run else f"target_reports_{profile.name}.json")
    if reports_out:
        payload = {
            "versions": _versions(),
            "dry_run": args.dry_run,
            "profile": profile.to_dict(),
            "profile_fingerprint": profile.fingerprint,
            "gpu_reports": gpu_reports,
            "comparisons": results,
            "wall_s": time.perf_counter() - started,
        }
        Path(reports_out).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        print(f"\nreports written to {reports_out}", file=sys.stderr)
    print(f"\n{'OK' if primary_ok else 'MISMATCH'}: emulating {targets[0][0]} "
          f"{'reproduces' if primary_ok else 'does NOT reproduce'} the GPU config spaces "
          f"({time.perf_counter() - started:.1f}s)")
    return 0 if primary_ok else 1


if __name__ == "__main__":
    sys.exit(main())
