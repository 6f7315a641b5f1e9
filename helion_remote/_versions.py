"""The Helion versions helion-remote supports, and the error for anything else."""

from __future__ import annotations

import importlib.metadata

SUPPORTED_HELION = ">=1.5.0,<1.6"


def helion_version() -> str:
    try:
        return importlib.metadata.version("helion")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - source checkout
        return "unknown"


def missing_helion_name(component: str, what: str) -> str:
    """The message for a private Helion name that is gone: names the version and the fix."""
    return (
        f"{component} needs helion {SUPPORTED_HELION}, but the installed helion "
        f"{helion_version()} lacks {what}. Install a supported helion "
        f"(pip install 'helion{SUPPORTED_HELION}')."
    )
