"""helion-remote: autotune Helion kernels on GPUs you do not sit at.

Every Helion search algorithm runs unchanged on the coordinator while its
benchmark batches go to a :class:`RemoteBenchmarkExecutor` backend.

Names load on first use (PEP 562): a worker process imports
``helion_remote.worker...`` through this package and must not load the
coordinator (Helion's search side) on the way.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from helion_remote.backends import backend_names, create_executor
    from helion_remote.coordinator.api import (
        AutotuneResult,
        RemoteAutotuneCache,
        autotune,
        autotuner_fn,
        shared_executor,
    )
    from helion_remote.executor import RemoteBenchmarkExecutor, RemoteSession
    from helion_remote.protocol import BenchmarkJob, JobResult, KernelSource, SessionSpec

_EXPORTS = {
    "AutotuneResult": "helion_remote.coordinator.api",
    "BenchmarkJob": "helion_remote.protocol",
    "JobResult": "helion_remote.protocol",
    "KernelSource": "helion_remote.protocol",
    "RemoteAutotuneCache": "helion_remote.coordinator.api",
    "RemoteBenchmarkExecutor": "helion_remote.executor",
    "RemoteSession": "helion_remote.executor",
    "SessionSpec": "helion_remote.protocol",
    "autotune": "helion_remote.coordinator.api",
    "autotuner_fn": "helion_remote.coordinator.api",
    "backend_names": "helion_remote.backends",
    "create_executor": "helion_remote.backends",
    "shared_executor": "helion_remote.coordinator.api",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'helion_remote' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
