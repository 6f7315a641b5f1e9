"""The drift guard: prove, per session, that the coordinator searches the worker's space.

Emulation answers the device queries we know about.  A query we missed (a
newer Helion, a heuristic whose exception Helion swallows, a worker Triton
that differs from the profile) would silently give the coordinator a
different space.  So the worker reports its config space
(:func:`~helion_remote.target.space.config_space_report`, real arguments),
the coordinator computes the same report under emulation, and
:func:`check_drift` stops on a mismatch, naming the fields that differ.

Coordinator side.  The report itself lives in the worker-safe :mod:`.space`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from helion_remote.errors import SearchError
from helion_remote.target.space import canonical


class TargetDriftError(SearchError):
    """The coordinator's (emulated) config space is not the worker's."""

    def __init__(self, message: str, *, coordinator: str, worker: str, fields: Sequence[str]) -> None:
        super().__init__(message)
        self.coordinator_fingerprint = coordinator
        self.worker_fingerprint = worker
        self.differing_fields = tuple(fields)


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
    text = value if isinstance(value, str) else canonical(value)
    return text if len(text) <= 160 else text[:157] + "..."


__all__ = ["TargetDriftError", "check_drift", "differing_fields"]
