"""Shipped Python sources as real files and modules in a worker process.

Triton's ``@jit`` reads source with ``inspect``, so generated kernels and the
user modules they import must exist as files; content-addressed paths let
every process of a host share them.  A module name already loaded with other
code means the process must be replaced: reusing it would run the generated
kernel against the wrong globals.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path

from helion_remote.errors import WorkerError
from helion_remote.protocol import SourceModule

_DIGEST_ATTR = "__helion_remote_digest__"


class ModuleConflictError(WorkerError):
    """A shipped module's name is taken by different code: the process must be replaced."""


class JobLoadError(WorkerError):
    """The worker could not stage the job (blob, disk): not the kernel's fault."""


def write_once(path: Path, text: str) -> Path:
    """Content-addressed file: written atomically once, shared by every process.

    An existing file is used only if it holds exactly ``text``: anything else
    at that path (another user's file in a shared temp dir, a damaged disk) is
    replaced, never imported.
    """
    try:
        if path.read_text(encoding="utf-8") == text:
            return path
    except (OSError, UnicodeDecodeError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def register_source_module(module: SourceModule, file: Path) -> None:
    """Register a shipped module under its own name before the generated code imports it.

    A same-named module already in ``sys.modules`` is reused only when it is
    the same code; otherwise the process must be replaced (``ModuleConflictError``):
    the generated code would silently run against the wrong globals.
    """
    existing = sys.modules.get(module.name)
    if existing is not None:
        if getattr(existing, _DIGEST_ATTR, None) == module.digest:
            return
        existing_file = getattr(existing, "__file__", None)
        if existing_file and _read(existing_file) == module.source:
            return
        raise ModuleConflictError(
            f"module {module.name!r} is already loaded with different code in worker process {os.getpid()}"
        )
    _ensure_parents(module.name)
    spec = importlib.util.spec_from_file_location(module.name, file)
    if spec is None or spec.loader is None:
        raise JobLoadError(f"cannot build an import spec for shipped module {module.name} at {file}")
    mod = importlib.util.module_from_spec(spec)
    setattr(mod, _DIGEST_ATTR, module.digest)
    sys.modules[module.name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(module.name, None)
        raise


def _ensure_parents(name: str) -> None:
    """``import a.b as m`` needs ``a`` importable: use the real one, else an empty package."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        parent = ".".join(parts[:i])
        if parent in sys.modules:
            continue
        try:
            importlib.import_module(parent)
        except ImportError:
            pkg = types.ModuleType(parent)
            pkg.__path__ = []
            sys.modules[parent] = pkg


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError:
        return None
