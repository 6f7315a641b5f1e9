"""How a worker process is started: start method, environment, and process-group kill.

GPU workers fork from a forkserver that imported torch, Triton and Helion
once; interpreter workers are spawned (Triton reads ``TRITON_INTERPRET`` at
import).  Every child runs in its own process group, so killing it kills the
compilers it started too, and every child is started from one long-lived
thread (:func:`start_process`), so Linux's parent-death signal fires only
when the coordinator itself dies (see :mod:`~helion_remote.worker.lifeline`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING

from helion_remote.environ import patched_environ

if TYPE_CHECKING:
    from helion_remote.blobs import BlobStore

log = logging.getLogger(__name__)

SPAWN_ENV_LOCK = threading.Lock()
"""Children inherit ``os.environ`` at ``start()``; set it for one child at a time."""
_FORKSERVER_PRELOAD = ["helion_remote.worker.runtime"]
SERVER_ENV = {"PYTORCH_NVML_BASED_CUDA_CHECK": "1", "TRITON_INTERPRET": "0"}
_FORKSERVER_USABLE = True
"""Cleared when a forkserver child fails to start; later workers use ``spawn``."""


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """How to (re)start one worker process."""

    worker_id: str
    blob_store: BlobStore
    """Must be picklable and safe to use from several processes (``DirectoryBlobStore``)."""
    work_dir: str
    cuda_device: int | None = None
    """Physical GPU index to pin; ``None`` runs the Triton interpreter on CPU."""
    env: tuple[tuple[str, str], ...] = ()
    start_timeout_s: float = 300.0
    timeout_margin_s: float = 10.0
    nice: int = 0
    """Added to the child's niceness: compile workers yield the CPU to device workers."""


def _forkserver_context() -> multiprocessing.context.BaseContext:
    """The forkserver context, preloading the worker runtime (torch, Triton, Helion)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_FORKSERVER_PRELOAD)
    return context


def start_context(spec: WorkerSpec) -> multiprocessing.context.BaseContext:
    """``forkserver`` for GPU workers, ``spawn`` otherwise.

    A forkserver imports torch, Triton and Helion once and forks each worker
    from it, so 1 + N workers start in well under a second each instead of each
    paying the multi-second imports (33 concurrent imports took ~22 s on a
    32-core host).  Nothing in the server touches CUDA (each child picks its
    GPU with ``CUDA_VISIBLE_DEVICES`` before its first CUDA call); interpreter
    workers keep ``spawn`` because Triton reads ``TRITON_INTERPRET`` at import.
    """
    if spec.cuda_device is not None and forkserver_wanted():
        return _forkserver_context()
    return multiprocessing.get_context("spawn")


def forkserver_wanted() -> bool:
    return (
        _FORKSERVER_USABLE
        and os.environ.get("HELION_REMOTE_WORKER_START", "forkserver") == "forkserver"
        and "forkserver" in multiprocessing.get_all_start_methods()
    )


def forkserver_failed(worker_id: str, why: str) -> multiprocessing.context.BaseContext:
    """A forkserver child could not start: every later worker uses ``spawn`` (slower, always safe)."""
    global _FORKSERVER_USABLE
    _FORKSERVER_USABLE = False
    log.warning("worker %s could not start from the forkserver (%s); using spawn", worker_id, why)
    return multiprocessing.get_context("spawn")


def start_worker_server(*, wait: bool = False) -> bool:
    """Start the GPU workers' forkserver now (it imports torch, Triton and Helion once).

    Later GPU workers then start in well under a second.  ``wait`` returns only
    once the imports are done.  Returns False when workers use ``spawn``
    (forkserver unavailable, disabled, or it failed).
    """
    if not forkserver_wanted():
        return False
    context = _forkserver_context()
    with SPAWN_ENV_LOCK, main_module_hidden():
        from multiprocessing import forkserver

        # The server inherits this environment: its imports must not touch CUDA
        # (torch then refuses CUDA in every forked child), so NVML-only checks.
        with patched_environ(SERVER_ENV):
            forkserver.ensure_running()
        if wait:  # the server forks only after its preload: a no-op child marks the end
            probe = context.Process(target=os.getpid, daemon=True)
            probe.start()
    if wait:
        probe.join()
    return True


def child_environment(spec: WorkerSpec) -> dict[str, str]:
    env: dict[str, str] = {}
    if spec.cuda_device is None:
        env["TRITON_INTERPRET"] = "1"
        env["CUDA_VISIBLE_DEVICES"] = ""
    else:
        env["CUDA_VISIBLE_DEVICES"] = str(spec.cuda_device)
        env["TRITON_INTERPRET"] = "0"
        # torch.cuda.is_available() through NVML: no CUDA driver state before the
        # child picks its GPU (and none in a forkserver that children fork from).
        env.update(SERVER_ENV)
        # As Helion's autotuner: compile locally, keep only binaries in the cache.
        env["TRITON_LOCAL_BUILD"] = "1"
        env["TRITON_STORE_BINARY_ONLY"] = "1"
    env.update(dict(spec.env))
    return env


@contextlib.contextmanager
def main_module_hidden() -> Iterator[None]:
    """Keep ``spawn`` from re-running the user's script in every worker.

    ``spawn`` re-imports ``__main__`` in the child; a script that calls
    ``autotune`` at top level (no ``if __name__ == "__main__"`` guard) would then
    recurse.  Workers need nothing from ``__main__``: everything they run
    arrives as generated source, so hide it while the child is prepared.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {name: main.__dict__.pop(name) for name in ("__file__", "__spec__") if name in main.__dict__}
    main.__spec__ = None  # type: ignore[assignment]  # spawn reads it unconditionally
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def killpg(pid: int) -> None:
    """Kill the child's process group (it called setsid), falling back to the pid."""
    for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            target()
            return
        except (ProcessLookupError, PermissionError, OSError):
            continue


class _Launcher:
    """One daemon thread that starts every child process, for the process's whole life.

    ``prctl(PR_SET_PDEATHSIG)`` fires when the *thread* that created the child
    exits, not the process: children started from the executor's short-lived
    start-up threads would be killed as soon as those threads return.  This
    thread never returns (it blocks on its queue until the process exits).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[Callable[[], None], queue.SimpleQueue[BaseException | None]]] = (
            queue.SimpleQueue())
        self._pid: int | None = None

    def run(self, call: Callable[[], None]) -> None:
        """Run ``call`` on the launcher thread; re-raise what it raised."""
        self._ensure_thread()
        done: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        self._queue.put((call, done))
        error = done.get()
        if error is not None:
            raise error

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._pid != os.getpid():  # first use, or a forked copy of this module (no thread there)
                self._queue = queue.SimpleQueue()
                threading.Thread(target=self._serve, args=(self._queue,), daemon=True,
                                 name="helion-remote-launcher").start()
                self._pid = os.getpid()

    @staticmethod
    def _serve(requests: queue.SimpleQueue[tuple[Callable[[], None], queue.SimpleQueue[BaseException | None]]]) -> None:
        while True:
            call, done = requests.get()
            try:
                call()
            except BaseException as error:  # noqa: BLE001 - handed to the caller
                done.put(error)
            else:
                done.put(None)


_LAUNCHER = _Launcher()


def start_process(process: BaseProcess) -> None:
    """``process.start()`` from the launcher thread (the caller holds any environment lock)."""
    _LAUNCHER.run(process.start)
