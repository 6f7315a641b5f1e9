"""Worker side: capture a :class:`TargetProfile` from the real GPU in one call.

Everything is read through the same functions Helion itself calls (its
``_compat`` predicates, ``_hardware.get_hardware_info``, ``min_dot_size``), so
the coordinator replays Helion's own answers rather than our reading of the
spec sheet.  Those names are private: they are listed and checked in
:data:`helion_remote.worker._helion_worker_compat.DEVICE_QUERIES`.  Must run
in a process that has not entered target emulation (a worker never does).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import itertools
from typing import Any

import torch

from helion_remote.errors import WorkerError
from helion_remote.worker import _helion_worker_compat as hc
from helion_remote.target.profile import COMPAT_PREDICATES, TargetProfile, dtype_key

MIN_DOT_DTYPES: tuple[torch.dtype, ...] = tuple(
    d
    for d in (
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
        torch.int8,
        getattr(torch, "float8_e4m3fn", None),
        getattr(torch, "float8_e5m2", None),
    )
    if d is not None
)
"""Dtype pairs whose minimum dot size is captured; other pairs fall back by bit width."""


class CaptureError(WorkerError):
    """The process cannot describe a GPU target (no CUDA device)."""


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _triton_params() -> tuple[tuple[str, ...] | None, tuple[str, ...] | None, str | None]:
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None, None, None
    return (
        tuple(inspect.signature(tl.range).parameters),
        tuple(inspect.signature(triton.jit).parameters),
        str(triton.__version__),
    )


def _compat_predicates(device: torch.device) -> dict[str, bool]:
    ask = hc.device_query
    with torch.cuda.device(device):
        values = {name: ask(name)() for name in COMPAT_PREDICATES if name != "sm100_dot_tmem_lhs_broken"}
        values["sm100_dot_tmem_lhs_broken"] = ask("sm100_dot_tmem_lhs_broken")(device)
    assert set(values) == set(COMPAT_PREDICATES)
    return {k: bool(v) for k, v in values.items()}


def _min_dot_sizes(device: torch.device) -> dict[str, tuple[int, int, int]]:
    min_dot_size = hc.device_query("min_dot_size")
    table: dict[str, tuple[int, int, int]] = {}
    for lhs, rhs in itertools.product(MIN_DOT_DTYPES, repeat=2):
        try:
            size = min_dot_size(device, lhs, rhs)
        except Exception:  # noqa: BLE001 - Triton rejects some pairs (mixed bit widths)
            continue
        table[f"{dtype_key(lhs)},{dtype_key(rhs)}"] = tuple(int(v) for v in size)  # type: ignore[assignment]
    return table


def capture_profile(
    device: str | torch.device | int | None = None,
    *,
    name: str | None = None,
    source: str = "captured on the GPU by helion_remote.target.capture_profile",
) -> TargetProfile:
    """Read everything Helion's search asks of ``device`` (default: current CUDA device)."""
    if not torch.cuda.is_available():
        raise CaptureError(
            "capture_profile() needs a CUDA/ROCm GPU; run it on a worker "
            "(benchmarks/capture_target.py), or use a built-in profile on the coordinator"
        )
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device())
    elif isinstance(device, int):
        device = torch.device("cuda", device)
    else:
        device = torch.device(device)
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    ask = hc.device_query
    props = torch.cuda.get_device_properties(device)
    tl_range, jit_params, triton_version = _triton_params()
    hardware = dataclasses.asdict(ask("hardware_info")(device))
    gcn = (getattr(props, "gcnArchName", None) or None) if torch.version.hip else None
    capability = tuple(torch.cuda.get_device_capability(device))
    return TargetProfile(
        name=name or _default_name(torch.cuda.get_device_name(device)),
        device_name=torch.cuda.get_device_name(device),
        helion_device_name=ask("device_name")(device),
        compute_capability=(int(capability[0]), int(capability[1])),
        num_sms=int(ask("num_sm")(device)),
        regs_per_multiprocessor=_prop(props, "regs_per_multiprocessor"),
        max_threads_per_multiprocessor=_prop(props, "max_threads_per_multi_processor"),
        warp_size=int(getattr(props, "warp_size", 32) or 32),
        shared_memory_per_block=_prop(props, "shared_memory_per_block"),
        shared_memory_per_block_optin=_prop(props, "shared_memory_per_block_optin"),
        shared_memory_per_multiprocessor=_prop(props, "shared_memory_per_multiprocessor"),
        l2_cache_size=_prop(props, "L2_cache_size"),
        total_memory=_prop(props, "total_memory"),
        hardware_info={k: str(v) for k, v in hardware.items()},
        compat=_compat_predicates(device),
        tl_range_params=tl_range,
        triton_jit_params=jit_params,
        min_dot_sizes=_min_dot_sizes(device),
        num_xcd=int(ask("num_xcd")(device)),
        gcn_arch_name=gcn,
        amd_base_arch=ask("amd_base_arch")() if torch.version.hip else None,
        tensor_descriptor_fn_name=ask("tensor_descriptor_fn_name")() if tl_range is not None else "tl.make_tensor_descriptor",
        torch_version=str(torch.__version__),
        torch_cuda_version=torch.version.cuda,
        torch_hip_version=torch.version.hip,
        triton_version=triton_version,
        helion_version=_version("helion"),
        device_kind=str(hardware.get("device_kind", "cuda")),
        captured=True,
        source=source,
    )


def _prop(props: Any, attribute: str) -> int:
    """Device properties vary by torch build; a missing one reads as 0, not a crash."""
    return int(getattr(props, attribute, 0) or 0)


def _default_name(device_name: str) -> str:
    """``NVIDIA H200`` -> ``h200``; a readable default file stem."""
    words = device_name.replace("NVIDIA", "").replace("AMD", "").split()
    return (words[0] if words else "gpu").lower()


def profile_summary(profile: TargetProfile) -> dict[str, Any]:
    """The few facts a person checks first, for logs."""
    return {
        "name": profile.name,
        "device": profile.device_name,
        "capability": profile.capability_str,
        "num_sms": profile.num_sms,
        "triton": profile.triton_version,
        "helion": profile.helion_version,
        "fingerprint": profile.fingerprint[:16],
    }


__all__ = ["CaptureError", "MIN_DOT_DTYPES", "capture_profile", "profile_summary"]
