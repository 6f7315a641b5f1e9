"""Shipped Python sources as real files and modules in a worker process.

Triton's ``@jit`` reads source with ``inspect``, so generated kernels and the
user modules they import must exist as files; content-addressed paths let
every process of a host share them.  A module name already loaded with other
code means the process must be replaced: reusing it would run the generated
kernel against the wrong globals.

Generated sources (~4 KB a config) would pile up without limit in a
long-lived work directory, so each directory is bounded: a file's mtime is
its last use (``write_once`` touches a file it reuses), and every
``PRUNE_EVERY`` writes a process deletes the least recently used files beyond
``MAX_SOURCE_FILES``, never one used in the last ``MIN_IDLE_S`` seconds.  A
file is needed only between ``write_once`` and the end of its import (Triton
keeps the source it read), and a later job that wants a deleted file writes
it again, so processes sharing the directory never lose a file they import.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import threading
import time
import types
from pathlib import Path

from helion_remote.errors import WorkerError
from helion_remote.protocol import SourceModule

_DIGEST_ATTR = "__helion_remote_digest__"

MAX_SOURCE_FILES = 4096
"""Files kept per source directory (~16 MiB of generated kernels), beyond those in use."""
MIN_IDLE_S = 600.0
"""A file used (written or reused) this recently is never deleted: some process may be importing it."""
PRUNE_EVERY = 256
"""Writes between two prunes of a directory by one process (a prune stats every file)."""

_writes: dict[Path, int] = {}
_writes_lock = threading.Lock()


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
            _touch(path)  # its mtime is its last use: the pruner keeps recently used files
            return path
    except (OSError, UnicodeDecodeError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    _count_write(path.parent)
    return path


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:  # a read-only shared directory: nothing to prune there either
        pass


def _count_write(directory: Path) -> None:
    with _writes_lock:
        count = _writes.get(directory, 0)
        _writes[directory] = count + 1
    if count % PRUNE_EVERY == 0:  # the first write of a process prunes too: restarts keep the bound
        prune_sources(directory)


def prune_sources(directory: Path, *, max_files: int | None = None, min_idle_s: float | None = None) -> int:
    """Delete the least recently used files of ``directory`` beyond ``max_files``; how many went.

    Files used within ``min_idle_s`` stay whatever the count (one may be
    importing right now), as do subdirectories.  Safe against other processes
    pruning or writing the same directory: a file already gone is skipped.
    """
    keep = MAX_SOURCE_FILES if max_files is None else max_files
    idle = MIN_IDLE_S if min_idle_s is None else min_idle_s
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    files: list[tuple[float, str]] = []
    for entry in entries:
        try:
            if entry.is_file(follow_symlinks=False):
                files.append((entry.stat(follow_symlinks=False).st_mtime, entry.path))
        except OSError:
            continue
    if len(files) <= keep:
        return 0
    files.sort()
    cutoff = time.time() - idle
    removed = 0
    for mtime, file in files[: len(files) - keep]:
        if mtime > cutoff:
            break  # sorted: everything after was used more recently still
        try:
            if os.stat(file).st_mtime > cutoff:
                continue  # another process just reused it
            os.unlink(file)
            removed += 1
        except FileNotFoundError:
            pass
        except OSError:
            break
    return removed


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
