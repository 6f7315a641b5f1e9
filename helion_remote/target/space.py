"""A kernel's config space as a plain report: computed alike by the worker and the coordinator.

The worker binds the *real* arguments and reports Helion's own config-space
identity, ``ConfigSpec.cache_fingerprint_hash()`` (knobs, ranges, compiler
default and ordered seeds; same API in helion 1.5.0 and 1.5.1); the
coordinator computes the same report under emulation, and :mod:`.drift`
compares the two.  Reports are JSON-able dicts, so they cross any transport.

Worker-safe: no coordinator code, no emulation; Helion's private field table
is read through :mod:`helion_remote.worker._helion_worker_compat`.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from helion_remote._versions import helion_version
from helion_remote.protocol import SourceModule
from helion_remote.target.active import active_profile
from helion_remote.worker import _helion_worker_compat as hc

REPORT_VERSION = 1


def canonical(value: object) -> str:
    """Stable JSON text (reports are compared as text)."""
    return json.dumps(value, sort_keys=True, default=repr)


def _describe_field(field: Any, config_spec: Any) -> str:
    """One flat field as text: fragments with their ranges/choices, per block id."""
    items = hc.block_id_items(field)
    if items is None:
        return _fragment_text(field)
    parts = []
    for item in items:
        try:
            fragment = hc.item_fragment(item, config_spec)
        except Exception as error:  # noqa: BLE001 - description only
            fragment = f"<{type(error).__name__}>"
        parts.append(f"{list(getattr(item, 'block_ids', []))}:{_fragment_text(fragment)}")
    return "[" + ", ".join(parts) + "]"


def _fragment_text(fragment: object) -> str:
    """``repr`` where it is informative; never an address."""
    if isinstance(fragment, str):
        return fragment
    if type(fragment).__repr__ is not object.__repr__:
        return repr(fragment)
    return f"{type(fragment).__name__}({', '.join(f'{k}={v!r}' for k, v in sorted(vars(fragment).items()))})"


def _fields(config_spec: Any) -> dict[str, str]:
    return {name: _describe_field(field, config_spec) for name, field in hc.flat_fields(config_spec).items()}


def _config_text(config: Any) -> str | None:
    if config is None:
        return None
    return canonical(getattr(config, "config", config))


def space_report(bound: Any) -> dict[str, Any]:
    """Helion's identity of ``bound``'s config space, plus what is needed to explain a mismatch."""
    spec = bound.config_spec
    device = getattr(bound.env, "device", None)
    capability = spec.target_device_capability
    return {
        "report_version": REPORT_VERSION,
        "kernel": getattr(bound.kernel, "name", "?"),
        "fingerprint": spec.cache_fingerprint_hash(),
        "structural_fingerprint": spec.structural_fingerprint_hash(),
        "flat_dims": hc.flat_dims(spec),
        "fields": _fields(spec),
        "facts": {
            "device_type": getattr(device, "type", None),
            "target_device_capability": list(capability) if capability is not None else None,
            "num_sm": spec.num_sm,
            "compiler_default_config": _config_text(spec.compiler_default_config),
            "compiler_seed_configs": [_config_text(c) for c in spec.compiler_seed_configs],
            "default_config": _config_text(spec.default_config()),
            "helion_version": helion_version(),
        },
        "device": _device_label(device),
    }


def _device_label(device: Any) -> str:
    """What the report was measured on: the emulated target or the real GPU."""
    profile = active_profile()
    if profile is not None:
        return f"emulated {profile.name} ({profile.device_name}, profile {profile.fingerprint[:12]})"
    if getattr(device, "type", None) == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    return str(device)


def config_space_report(
    kernel_module: SourceModule,
    kernel_attr: str,
    args: Sequence[object],
    *,
    settings: Mapping[str, object] | None = None,
    work_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Worker side: import the shipped module, bind ``args`` (already on the device), report.

    ``settings`` are the Helion setting overrides the coordinator applied to
    its private kernel copy (they can change the space).  The bind uses a
    private ``Kernel`` copy, so the module's own bind cache is untouched.
    """
    return space_report(load_private_kernel(kernel_module, kernel_attr, settings, work_dir).bind(tuple(args)))


def load_private_kernel(
    kernel_module: SourceModule,
    kernel_attr: str,
    settings: Mapping[str, object] | None = None,
    work_dir: str | os.PathLike[str] | None = None,
) -> Any:
    """The shipped kernel (``module.attr``) as a private copy with the coordinator's settings."""
    from helion_remote.kernel_copy import private_kernel

    kernel: Any = load_source_module(kernel_module, work_dir)
    for part in kernel_attr.split("."):
        kernel = getattr(kernel, part)
    return private_kernel(kernel, settings)


def load_source_module(kernel_module: SourceModule, work_dir: str | os.PathLike[str] | None = None) -> Any:
    """Import a shipped module from a content-addressed file (Triton needs real files).

    The file is named like the original (``pkg.kernels`` -> ``kernels.py``):
    Helion writes the file's base name into generated code (``# src[kernels.py:12]``),
    so a codegen process binding the shipped copy generates the coordinator's code
    byte for byte even when the original module is not importable there.
    """
    from helion_remote.worker.modules import register_source_module, write_once

    root = Path(work_dir) if work_dir is not None else Path(tempfile.gettempdir()) / f"helion_remote_modules-{os.getuid()}"
    stem = kernel_module.name.rpartition(".")[2]
    path = write_once(root / kernel_module.digest / f"{stem}.py", kernel_module.source)
    register_source_module(kernel_module, path)
    return sys.modules[kernel_module.name]


__all__ = [
    "REPORT_VERSION",
    "canonical",
    "config_space_report",
    "load_private_kernel",
    "load_source_module",
    "space_report",
]
