"""Backend registry: names map to executor classes, imported only when used.

The core never imports a backend SDK (modal, ray) at import time; a backend
module is imported the first time its name is asked for.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from helion_remote.errors import ConfigurationError

if TYPE_CHECKING:
    from helion_remote.executor import RemoteBenchmarkExecutor

BACKENDS: dict[str, str] = {
    "fake": "helion_remote.backends.fake:FakeExecutor",
    "local": "helion_remote.backends.local:LocalExecutor",
    "modal": "helion_remote.backends.modal:ModalExecutor",
}
DEFAULT_BACKEND = "local"
BACKEND_ENV = "HELION_REMOTE_BACKEND"


class UnknownBackendError(ConfigurationError):
    pass


def backend_names() -> list[str]:
    return sorted(BACKENDS)


def resolve_backend_name(name: str | None) -> str:
    """``name``, else ``$HELION_REMOTE_BACKEND``, else the embedded default."""
    chosen = name or os.environ.get(BACKEND_ENV) or DEFAULT_BACKEND
    if chosen not in BACKENDS:
        source = "backend" if name else f"${BACKEND_ENV}"
        raise UnknownBackendError(
            f"unknown {source} {chosen!r}; valid backends: {', '.join(backend_names())}"
        )
    return chosen


def create_executor(name: str | None = None, **options: Any) -> RemoteBenchmarkExecutor:
    """Build the executor registered under ``name`` (see :func:`resolve_backend_name`)."""
    module_name, _, attr = BACKENDS[resolve_backend_name(name)].partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    return cls(**options)
