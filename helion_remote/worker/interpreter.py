"""Worker-side fixes that let Helion's generated code run under the Triton interpreter.

libdevice math is routed in ``interpreter_libdevice``; this module holds the
rest, which needs no triton import (the coordinator may import the worker
package without triton).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def interpreter_mode() -> bool:
    """True when this process runs kernels under ``TRITON_INTERPRET=1``."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


INTERPRETER_NUM_SM = 4
"""Persistent kernels size their grid from ``helion.runtime.get_num_sm``,
which refuses CPU tensors; under the interpreter a small fixed "SM count"
lets those configs run (and be checked) like any other."""


def install_interpreter_num_sm() -> None:
    """Wrap ``helion.runtime.get_num_sm`` (through the worker compat module) to answer for CPU."""
    from helion_remote.worker import _helion_worker_compat as hc

    original = hc.runtime_get_num_sm()
    if getattr(original, "_helion_remote_interpreter", False):
        return

    def get_num_sm(device: torch.device, *, reserved_sms: int = 0) -> int:
        if device.type == "cpu":
            return max(1, INTERPRETER_NUM_SM - reserved_sms)
        return original(device, reserved_sms=reserved_sms)

    get_num_sm._helion_remote_interpreter = True  # type: ignore[attr-defined]
    hc.set_runtime_get_num_sm(get_num_sm)
