"""helion-remote: autotune Helion kernels on GPUs you do not sit at.

Every Helion search algorithm runs unchanged on the coordinator while its
benchmark batches go to a :class:`RemoteBenchmarkExecutor` backend.
"""

from __future__ import annotations

from helion_remote.coordinator.api import AutotuneResult, RemoteAutotuneCache, autotune, autotuner_fn, shared_executor
from helion_remote.backends import backend_names, create_executor
from helion_remote.executor import RemoteBenchmarkExecutor, RemoteSession
from helion_remote.protocol import BenchmarkJob, JobResult, KernelSource, SessionSpec

__all__ = [
    "AutotuneResult",
    "BenchmarkJob",
    "JobResult",
    "KernelSource",
    "RemoteAutotuneCache",
    "RemoteBenchmarkExecutor",
    "RemoteSession",
    "SessionSpec",
    "autotune",
    "autotuner_fn",
    "backend_names",
    "create_executor",
    "shared_executor",
]
__version__ = "0.1.0"
