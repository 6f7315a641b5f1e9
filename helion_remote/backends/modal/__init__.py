"""The ``modal`` backend: Modal GPU containers.

``executor``/``session`` run on the coordinator; ``app`` (the ``modal.App``),
``worker`` (the container's body), ``wire``, ``blobs``, ``cost``, ``settings``
and ``client`` are its parts.  Names load lazily so that importing a part
(the container imports ``worker``) does not import the coordinator side.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BUDGET_EXCEEDED": "session",
    "MISSING_CREDENTIALS": "executor",
    "ModalExecutor": "executor",
    "ModalNotDeployed": "executor",
    "ModalSession": "session",
    "ModalSessionError": "executor",
    "ModalSetupError": "executor",
    "ModalVersionMismatch": "executor",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
