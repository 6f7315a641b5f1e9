"""A private copy of a ``@helion.kernel`` with setting overrides.

The coordinator binds its copy (often under target emulation) and the worker
binds its own copy for the drift guard; both must apply the same overrides,
and neither may touch the user's kernel or its bind cache.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any


def private_kernel(kernel: Any, settings: Mapping[str, object] | None = None) -> Any:
    """A fresh ``Kernel`` for ``kernel.fn`` with ``settings`` applied to a copy of its settings."""
    from helion.runtime.kernel import Kernel

    if not isinstance(kernel, Kernel):
        raise TypeError(
            f"autotune() needs a @helion.kernel-decorated function, got {type(kernel).__name__}; "
            "decorate it with @helion.kernel first"
        )
    new_settings = copy.copy(kernel.settings)
    for name, value in (settings or {}).items():
        if not hasattr(new_settings, name):
            raise TypeError(f"unknown Helion setting {name!r}; see helion.Settings for valid names")
        setattr(new_settings, name, value)
    return Kernel(kernel.fn, configs=kernel.configs, settings=new_settings)
