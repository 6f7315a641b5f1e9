"""The drift guard: prove, per session, that the coordinator searches the worker's space.

Emulation answers the device queries we know about.  A query we missed (a
newer Helion, a heuristic whose exception Helion swallows, a worker Triton
that differs from the profile) would silently give the coordinator a
different space.  So the worker binds the *real* arguments and reports
Helion's own config-space identity, ``ConfigSpec.cache_fingerprint_hash()``
(knobs, ranges, compiler default and ordered seeds; same API in helion 1.5.0
and 1.5.1); the coordinator compares it with its emulated bind and stops on a
mismatch, naming the fields that differ.

Reports are plain JSON-able dicts, so they cross any transport unchanged.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from helion_remote.errors import SearchError
from helion_remote._versions import helion_version
from helion_remote.protocol import SourceModule

REPORT_VERSION = 1


class TargetDriftError(SearchError):
    """The coordinator's (emulated) config space is not the worker's."""

    def __init__(self, message: str, *, coordinator: str, worker: str, fields: Sequence[str]) -> None:
        super().__init__(message)
        self.coordinator_fingerprint = coordinator
        self.worker_fingerprint = worker
        self.differing_fields = tuple(fields)


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, default=repr)


def _describe_field(field: Any, config_spec: Any) -> str:
    """One flat field as text: fragments with their ranges/choices, per block id."""
    items = getattr(field, "_data", None)
    if items is None:
        return _fragment_text(field)
    parts = []
    for item in items:
        try:
            fragment = item._fragment(config_spec)
        except Exception as error:  # noqa: BLE001 - description only
            fragment = f"<{type(error).__name__}>"
        parts.append(f"{list(getattr(item, 'block_ids', []))}:{_fragment_text(fragment)}")
    return "[" + ", ".join(parts) + "]"


def _fragment_text(fragment: object) -> str:
    """``repr`` where it is informative; never an address (reports are compared as text)."""
    if isinstance(fragment, str):
        return fragment
    if type(fragment).__repr__ is not object.__repr__:
        return repr(fragment)
    return f"{type(fragment).__name__}({', '.join(f'{k}={v!r}' for k, v in sorted(vars(fragment).items()))})"


def _fields(config_spec: Any) -> dict[str, str]:
    try:
        fields = config_spec._flat_fields()  # private, present in 1.5.0 and 1.5.1
    except AttributeError:
        return {str(row[0]): repr(row[1:]) for row in config_spec.structural_fingerprint()}
    return {name: _describe_field(field, config_spec) for name, field in fields.items()}


def _config_text(config: Any) -> str | None:
    if config is None:
        return None
    return _canonical(getattr(config, "config", config))


def space_report(bound: Any) -> dict[str, Any]:
    """Helion's identity of ``bound``'s config space, plus what is needed to explain a mismatch."""
    from helion.autotuner.config_generation import ConfigGeneration

    spec = bound.config_spec
    device = getattr(bound.env, "device", None)
    capability = spec.target_device_capability
    return {
        "report_version": REPORT_VERSION,
        "kernel": getattr(bound.kernel, "name", "?"),
        "fingerprint": spec.cache_fingerprint_hash(),
        "structural_fingerprint": spec.structural_fingerprint_hash(),
        "flat_dims": len(ConfigGeneration(spec).flat_spec),
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
    from helion_remote.target.emulate import active_profile

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
    """Import a shipped module from a content-addressed file (Triton needs real files)."""
    import sys

    from helion_remote.worker.modules import register_source_module, write_once

    root = Path(work_dir) if work_dir is not None else Path(tempfile.gettempdir()) / f"helion_remote_modules-{os.getuid()}"
    path = write_once(root / kernel_module.digest / f"{kernel_module.name}.py", kernel_module.source)
    register_source_module(kernel_module, path)
    return sys.modules[kernel_module.name]


def differing_fields(coordinator: Mapping[str, Any], worker: Mapping[str, Any]) -> list[str]:
    """Names of flat fields and space facts that differ (``facts.num_sm`` style for facts)."""
    out = []
    c_fields, w_fields = coordinator.get("fields", {}), worker.get("fields", {})
    for name in list(dict.fromkeys([*c_fields, *w_fields])):
        if c_fields.get(name) != w_fields.get(name):
            out.append(name)
    c_facts, w_facts = coordinator.get("facts", {}), worker.get("facts", {})
    for name in list(dict.fromkeys([*c_facts, *w_facts])):
        if name != "default_config" and c_facts.get(name) != w_facts.get(name):
            out.append(f"facts.{name}")
    if c_facts.get("default_config") != w_facts.get("default_config"):
        out.append("facts.default_config")
    return out


def check_drift(coordinator_report: Mapping[str, Any], worker_report: Mapping[str, Any]) -> None:
    """Raise :class:`TargetDriftError` unless both sides would search the same space."""
    ours, theirs = coordinator_report.get("fingerprint"), worker_report.get("fingerprint")
    if ours is not None and ours == theirs:
        return
    fields = differing_fields(coordinator_report, worker_report)
    lines = [
        f"target drift for kernel {coordinator_report.get('kernel', '?')!r}: the coordinator would search "
        "a different config space than the worker's GPU.",
        f"  coordinator: fingerprint {ours} ({coordinator_report.get('flat_dims')} dims) on "
        f"{coordinator_report.get('device', '?')}",
        f"  worker:      fingerprint {theirs} ({worker_report.get('flat_dims')} dims) on "
        f"{worker_report.get('device', '?')}",
        f"  differing fields: {', '.join(fields) if fields else '(none named; compare the reports)'}",
    ]
    for name in fields[:8]:
        lines.append(f"    {name}: coordinator={_lookup(coordinator_report, name)} worker={_lookup(worker_report, name)}")
    c_version = coordinator_report.get("facts", {}).get("helion_version")
    w_version = worker_report.get("facts", {}).get("helion_version")
    if c_version != w_version:
        lines.append(f"  helion differs: coordinator {c_version}, worker {w_version}; install the same helion on both.")
    lines.append(
        "  Fix: pick the target that matches the worker GPU (target=...), or re-capture the profile on "
        "that GPU (python benchmarks/capture_target.py --out <name>.json) and pass its path; "
        "target='auto' captures it from the worker."
    )
    raise TargetDriftError("\n".join(lines), coordinator=str(ours), worker=str(theirs), fields=fields)


def _lookup(report: Mapping[str, Any], name: str) -> str:
    if name.startswith("facts."):
        value = report.get("facts", {}).get(name[len("facts.") :], "<absent>")
    else:
        value = report.get("fields", {}).get(name, "<absent>")
    text = value if isinstance(value, str) else _canonical(value)
    return text if len(text) <= 160 else text[:157] + "..."


__all__ = [
    "TargetDriftError",
    "check_drift",
    "config_space_report",
    "differing_fields",
    "load_source_module",
    "space_report",
]
