"""The ``local`` backend: worker processes on this machine's GPUs (or the Triton interpreter on CPU).

``executor`` holds the executor and its sessions, ``pipeline`` the
compile -> device scheduler, ``devices`` GPU discovery.
"""

from __future__ import annotations

from helion_remote.backends.local.devices import MixedDevicesError
from helion_remote.backends.local.executor import INTERPRETER_WARNING, LocalExecutor, LocalSession

__all__ = ["INTERPRETER_WARNING", "LocalExecutor", "LocalSession", "MixedDevicesError"]
