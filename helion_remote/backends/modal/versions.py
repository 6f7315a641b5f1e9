"""What a Modal worker must share with the coordinator: package versions and its own code.

The handshake compares :func:`versions` on both sides.  ``code`` is a digest
of exactly the helion_remote files the container imports, derived from the
import statements (top-level and inside functions) reachable from the
container's entry modules, plus every package ``__init__`` on the way and the
built-in profiles.  A hand-kept list silently missed modules the worker
imports, so a deployment differing only there passed the handshake.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import platform
from collections.abc import Iterable
from pathlib import Path

PACKAGE = "helion_remote"
ROOT = Path(__file__).resolve().parents[2]
"""The ``helion_remote`` package directory."""

ENTRY_MODULES: tuple[str, ...] = ("helion_remote.backends.modal.app", "helion_remote.backends.modal.worker")
"""What the container imports first: the app module (deploy) and the worker body it wraps."""

DATA_FILES: tuple[str, ...] = ("profiles/*.json",)
"""Non-Python files the worker reads (built-in target profiles)."""


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The source file of helion_remote module ``name`` (a package's ``__init__.py``) under ``root``, if any."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = root.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(path: Path, module: str) -> Iterable[str]:
    """Every module ``path`` may import, anywhere in it; ``from m import x`` yields ``m`` and ``m.x``."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Call) and _is_import_module_call(node):
            yield node.args[0].value  # type: ignore[attr-defined]


def _is_import_module_call(node: ast.Call) -> bool:
    """``importlib.import_module("helion_remote....")`` with a literal name."""
    func = node.func
    named = (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
        isinstance(func, ast.Name) and func.id == "import_module"
    )
    return named and bool(node.args) and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)


def _with_parents(name: str) -> list[str]:
    """Importing ``a.b.c`` runs ``a/__init__``, ``a/b/__init__`` first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def worker_modules(entries: tuple[str, ...] = ENTRY_MODULES, root: Path = ROOT) -> tuple[str, ...]:
    """The static import closure of ``entries`` inside helion_remote (the package at ``root``), sorted."""
    seen: set[str] = set()
    todo = [parent for entry in entries for parent in _with_parents(entry)]
    while todo:
        name = todo.pop()
        path = module_file(name, root)
        if name in seen or path is None:
            continue
        seen.add(name)
        for imported in _imported_names(path, name):
            todo.extend(p for p in _with_parents(imported) if p.startswith(PACKAGE) and p not in seen)
    return tuple(sorted(seen))


def worker_files(root: Path = ROOT) -> list[Path]:
    """The files :func:`code_digest` covers: the closure's sources and the data files."""
    files = {module_file(name, root) for name in worker_modules(root=root)}
    for pattern in DATA_FILES:
        files.update(root.glob(pattern))
    return sorted(f for f in files if f is not None)


def digest_files(files: Iterable[Path], root: Path = ROOT) -> str:
    """sha256 over each file's path (relative to ``root``) and bytes, in the given order."""
    h = hashlib.sha256()
    for path in files:
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@functools.cache
def code_digest(root: Path = ROOT) -> str:
    """Identity of the helion_remote code a worker runs: a deployment built from other code differs.

    Cached: the files do not change under a running process, and the
    executor asks on every handshake.
    """
    return digest_files(worker_files(root), root)


def versions() -> dict[str, str]:
    """What generated code depends on: it must match between coordinator and worker."""
    from importlib.metadata import PackageNotFoundError, version

    from helion_remote.backends.modal.wire import WIRE_VERSION

    out = {"python": platform.python_version(), "wire": str(WIRE_VERSION), "code": code_digest()}
    for package in ("helion", "torch", "triton"):
        try:
            out[package] = version(package).split("+", 1)[0]
        except PackageNotFoundError:
            out[package] = "missing"
    return out


__all__ = [
    "DATA_FILES",
    "ENTRY_MODULES",
    "code_digest",
    "digest_files",
    "module_file",
    "versions",
    "worker_files",
    "worker_modules",
]
