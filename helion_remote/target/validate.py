"""Prove a profile: the probe kernels' spaces, on the GPU and under emulation.

The per-session drift guard checks the user's kernel; this checks the
*profile* once per worker image and GPU model, with kernels we control
(:mod:`.probe_kernels`), so a wrong or stale profile is caught before any
search starts.  Both sides bind through :func:`.space.config_space_report`,
from the same shipped source, exactly as a worker would.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from helion_remote.protocol import SourceModule
from helion_remote.target import probe_kernels
from helion_remote.target.drift import TargetDriftError, check_drift
from helion_remote.target.emulate import emulate_target, stand_in_args
from helion_remote.target.profile import TargetProfile, load_profile
from helion_remote.target.space import config_space_report

PROBE_MODULE_NAME = "_helion_remote_probe_kernels"


def probe_source_module() -> SourceModule:
    """The probe kernels as a shipped module (what a worker would receive)."""
    return SourceModule(PROBE_MODULE_NAME, Path(probe_kernels.__file__).read_text(encoding="utf-8"))


def worker_probe_reports(
    device: str = "cuda",
    *,
    size: int = probe_kernels.DEFAULT_SIZE,
    kernels: Sequence[str] = tuple(probe_kernels.PROBES),
) -> dict[str, dict[str, Any]]:
    """On the GPU: bind each probe on real ``device`` tensors and report its space."""
    module = probe_source_module()
    return {
        name: config_space_report(module, name, probe_kernels.probe_args(name, device, size)) for name in kernels
    }


def emulated_probe_reports(
    profile: TargetProfile | str | Path,
    *,
    size: int = probe_kernels.DEFAULT_SIZE,
    kernels: Sequence[str] = tuple(probe_kernels.PROBES),
) -> dict[str, dict[str, Any]]:
    """On the coordinator: the same reports under emulation (stand-ins cost no memory)."""
    module = probe_source_module()
    with emulate_target(load_profile(profile)):
        return {
            name: config_space_report(
                module, name, stand_in_args(probe_kernels.probe_args(name, "meta", size))
            )
            for name in kernels
        }


def compare_reports(
    coordinator: Mapping[str, Mapping[str, Any]], worker: Mapping[str, Mapping[str, Any]]
) -> dict[str, str | None]:
    """Per kernel: ``None`` when the spaces match, else the drift message."""
    out: dict[str, str | None] = {}
    for name in worker:
        if name not in coordinator:
            out[name] = "no coordinator report"
            continue
        try:
            check_drift(coordinator[name], worker[name])
            out[name] = None
        except TargetDriftError as error:
            out[name] = str(error)
    return out


__all__ = [
    "PROBE_MODULE_NAME",
    "compare_reports",
    "emulated_probe_reports",
    "probe_source_module",
    "worker_probe_reports",
]
