"""Coordinator-side code generation: a Helion config becomes a :class:`KernelSource`.

Only Helion's codegen runs here (``BoundKernel.to_triton_code``); nothing is
compiled or launched, so this works with no GPU and no triton installed.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import sys
import sysconfig
from pathlib import Path
from typing import Any

from helion_remote.coordinator import _helion_compat as compat
from helion_remote.protocol import KernelSource, SourceModule, sha256_hex

_INSTALLED_ROOTS = tuple(
    str(Path(p).resolve())
    for key in ("purelib", "platlib", "stdlib", "platstdlib")
    if (p := sysconfig.get_paths().get(key))
)


def config_to_dict(config: Any) -> dict[str, object]:
    """A Helion ``Config`` as plain JSON data (for jobs, logs and the fake cost model)."""
    to_json = getattr(config, "to_json", None)
    if callable(to_json):
        return json.loads(to_json())
    return json.loads(json.dumps(dict(config), default=str))


def _is_installed(module: Any) -> bool:
    """Installed packages are on the worker too; user files are not."""
    path = getattr(module, "__file__", None)
    if not path:
        return True  # builtins and namespace packages: nothing to ship
    resolved = str(Path(path).resolve())
    return resolved.startswith(_INSTALLED_ROOTS)


@functools.lru_cache(maxsize=256)
def _read_module_source(path: str, mtime: float) -> str:
    return Path(path).read_text()


def _module_source(module: Any) -> str:
    path = getattr(module, "__file__", None)
    if path and Path(path).exists():
        return _read_module_source(path, Path(path).stat().st_mtime)
    return inspect.getsource(module)


def _ship_name(name: str, source: str) -> str:
    """The worker has its own ``__main__``: a script's module travels under a content-derived name."""
    return f"_helion_remote_main_{sha256_hex(source)[:12]}" if name == "__main__" else name


def shipped_modules(bound: Any, module_source: str) -> tuple[str, tuple[SourceModule, ...]]:
    """User modules the generated code imports, shipped by content.

    A kernel defined in a script lives in ``__main__``; the worker has its own
    ``__main__``, so the module is shipped under a content-derived name and the
    import line in the generated code is rewritten to match.
    """
    modules: list[SourceModule] = []
    for name in compat.source_module_names(bound):
        module = sys.modules.get(name)
        if module is None or _is_installed(module):
            continue
        source = _module_source(module)
        ship_name = _ship_name(name, source)
        if ship_name != name:
            module_source = re.sub(
                r"^import __main__ as ", f"import {ship_name} as ", module_source, flags=re.MULTILINE
            )
        modules.append(SourceModule(ship_name, source))
    return module_source, tuple(modules)


def kernel_definition(kernel: Any) -> tuple[SourceModule, str] | None:
    """The module that defines ``kernel`` (shipped by content) and its attribute name.

    Used by the drift guard: the worker binds the same kernel on the real
    arguments.  ``None`` when the module has no readable source.
    """
    module = sys.modules.get(getattr(kernel.fn, "__module__", "") or "")
    if module is None:
        return None
    try:
        source = _module_source(module)
    except (OSError, TypeError):
        return None
    name = _ship_name(module.__name__, source)
    attr = next((key for key, value in vars(module).items() if value is kernel), kernel.fn.__name__)
    return SourceModule(name, source), attr


def kernel_source(bound: Any, config: Any) -> KernelSource:
    """Generate the complete Triton module for ``config`` on the coordinator."""
    code = bound.to_triton_code(config)
    code, modules = shipped_modules(bound, code)
    return KernelSource(module_source=code, entry_name=bound.kernel.name, source_modules=modules)
