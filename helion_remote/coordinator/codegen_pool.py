"""Parallel code generation: processes that each bind the kernel once.

Helion's code generation is pure Python (threads would share the GIL) and
takes ~15-30 ms per config; with several GPUs the coordinator's one core
becomes what feeds a batch.  Each pool process imports the kernel from its
shipped definition, binds a private copy on the same arguments (real tensors
from a private blob store, on the coordinator's device, or stand-ins under the
same target emulation) and returns the ``KernelSource`` of each config it is
sent.

Trust, but check: a process only joins the pool after the source it generates
for a probe config is byte-identical to the coordinator's.  A process that
fails or differs is dropped (logged) and its configs are generated on the
coordinator, so the pool can only change how fast code is generated.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import queue
import tempfile
import threading
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection
from typing import Any

from helion_remote.coordinator.codegen import config_to_dict, kernel_source
from helion_remote.protocol import KernelSource, SourceModule

log = logging.getLogger(__name__)

CHUNK = 4
"""Configs per request: small enough to balance, large enough to amortize the pipe."""
START_TIMEOUT_S = 300.0


@dataclasses.dataclass(frozen=True)
class CodegenSpec:
    """What a pool process needs to bind the kernel as the coordinator did."""

    definition: SourceModule
    kernel_attr: str
    settings: tuple[tuple[str, object], ...]
    store_root: str
    args_digest: str
    device: str
    """Where the arguments live on the coordinator (``cpu``, ``cuda:0``)."""
    profile: dict[str, object] | None
    """The emulated target (bind on stand-ins under emulation), or None."""


def _child(conn: Connection, spec: CodegenSpec, environ: dict[str, str], coordinator_pid: int | None = None) -> None:
    from helion_remote.environ import adopt_environ
    from helion_remote.worker.lifeline import die_with_parent

    if coordinator_pid is not None:  # never outlive the coordinator (a forkserver child's parent is the server)
        die_with_parent(coordinator_pid)
    adopt_environ(environ)
    try:
        generate = _bind(spec)
        conn.send(("ready", None))
    except BaseException as error:  # noqa: BLE001 - reported, then the process ends
        conn.send(("failed", f"{type(error).__qualname__}: {error}"))
        return
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        replies = []
        for index, config in request:
            try:
                source = generate(config)
                replies.append((index, True, (source.module_source, source.entry_name,
                                              tuple((m.name, m.source) for m in source.source_modules))))
            except Exception as error:  # noqa: BLE001 - the coordinator decides
                replies.append((index, False, f"{type(error).__qualname__}: {error}"))
        conn.send(replies)


def _bind(spec: CodegenSpec) -> Any:
    """Import and bind the kernel; return ``config dict -> KernelSource``."""
    import contextlib

    import helion

    from helion_remote.argcodec import download_args
    from helion_remote.blobs import DirectoryBlobStore
    from helion_remote.target.space import load_private_kernel

    private = load_private_kernel(spec.definition, spec.kernel_attr, dict(spec.settings))
    stack = contextlib.ExitStack()  # kept open for the process's life, as the coordinator does
    if spec.profile is not None:
        from helion_remote.target import TargetProfile, emulate_target, stand_in_args

        args = download_args(DirectoryBlobStore(spec.store_root), spec.args_digest, device="cpu")
        stack.enter_context(emulate_target(TargetProfile.from_dict(spec.profile)))
        bound = private.bind(tuple(stand_in_args(args)))
    else:
        args = download_args(DirectoryBlobStore(spec.store_root), spec.args_digest, device=spec.device)
        bound = private.bind(tuple(args))

    def generate(config: dict[str, Any], _keep_open: contextlib.ExitStack = stack) -> KernelSource:
        # _keep_open: the emulation ends when its context manager is collected.
        return kernel_source(bound, helion.Config(**config))

    return generate


class _Member:
    """One pool process and the pipe to it."""

    def __init__(self, spec: CodegenSpec, method: str) -> None:
        from helion_remote.worker.launch import SPAWN_ENV_LOCK, main_module_hidden, start_process, start_worker_server

        if method == "forkserver":
            start_worker_server()  # the GPU workers' server: torch and Helion already imported
        context = multiprocessing.get_context(method)
        self.conn, child = context.Pipe(duplex=True)
        self.process = context.Process(target=_child, args=(child, spec, dict(os.environ), os.getpid()),
                                       daemon=True, name="helion-remote-codegen")
        with SPAWN_ENV_LOCK, main_module_hidden():
            start_process(self.process)  # from the launcher thread: parent death fires only with this process
        child.close()

    def close(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.process.join(timeout=2.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=2.0)
        self.conn.close()


class CodegenPool:
    """``processes`` code generators for one search; ``generate`` streams sources."""

    def __init__(
        self, spec: CodegenSpec, bound: Any, probe_config: Any, processes: int, *, owns_store: bool = False
    ) -> None:
        if processes < 1:
            raise ValueError(f"a codegen pool needs processes >= 1, got {processes!r}")
        self._bound = bound
        self._local_lock = threading.Lock()
        """Codegen on the coordinator's bound kernel is one thread at a time."""
        self._members: list[_Member] = []
        self._store_root = spec.store_root if owns_store else None
        """Removed on ``close`` when the pool made it (``start_codegen_pool``)."""
        self._lock = threading.Lock()
        self._ready = threading.Event()
        expected = kernel_source(bound, probe_config).digest
        probe = config_to_dict(probe_config)
        self._closed = False

        def start_one() -> None:
            for method in _start_methods():
                member = _Member(spec, method)
                try:
                    if not member.conn.poll(START_TIMEOUT_S):
                        raise RuntimeError(f"not ready within {START_TIMEOUT_S:.0f}s")
                    kind, detail = member.conn.recv()
                    if kind != "ready":
                        raise RuntimeError(detail)
                    member.conn.send([(0, probe)])
                    ((_, ok, payload),) = member.conn.recv()
                    if not ok or _to_source(payload).digest != expected:
                        log.warning("codegen process dropped: its code for a probe config differs from the "
                                    "coordinator's (%s)", payload if not ok else "digest")
                        member.close()
                        return
                    break
                except Exception as error:  # noqa: BLE001 - try the next start method, then give up
                    log.warning("codegen process (%s) could not start: %s", method, error)
                    member.close()
            else:
                return
            with self._lock:
                if self._closed:
                    member.close()
                    return
                self._members.append(member)

        threads = [threading.Thread(target=start_one, daemon=True) for _ in range(processes)]
        for t in threads:
            t.start()

        def all_started() -> None:
            for t in threads:
                t.join()
            self._ready.set()

        threading.Thread(target=all_started, daemon=True).start()

    @property
    def size(self) -> int:
        with self._lock:
            return len(self._members)

    def generate(self, configs: Sequence[Any]) -> Iterator[tuple[int, KernelSource | Exception]]:
        """``(index, source or codegen error)`` for every config, in completion order.

        Uses the processes that have started so far; with none, or for the
        chunks of a process that dies, the coordinator generates the code.
        """
        with self._lock:
            members = list(self._members)
        if not members:
            for index, config in enumerate(configs):
                yield index, _local(self._bound, config)
            return
        chunks: queue.SimpleQueue[list[tuple[int, Any]]] = queue.SimpleQueue()
        for start in range(0, len(configs), CHUNK):
            chunks.put([(i, configs[i]) for i in range(start, min(start + CHUNK, len(configs)))])
        out: queue.SimpleQueue[tuple[int, KernelSource | Exception]] = queue.SimpleQueue()
        stop = threading.Event()

        def next_chunk() -> list[tuple[int, Any]] | None:
            if stop.is_set():
                return None
            try:
                return chunks.get_nowait()
            except queue.Empty:
                return None

        def feed(member: _Member) -> None:
            while (chunk := next_chunk()) is not None:
                try:
                    member.conn.send([(i, config_to_dict(c)) for i, c in chunk])
                    replies = member.conn.recv()
                except (EOFError, OSError) as error:
                    log.warning("codegen process lost (%s); generating its configs here", error)
                    self._drop(member)
                    while chunk is not None:
                        for index, config in chunk:
                            with self._local_lock:
                                out.put((index, _local(self._bound, config)))
                        chunk = next_chunk()
                    return
                for index, ok, payload in replies:
                    out.put((index, _to_source(payload) if ok else RuntimeError(payload)))

        threads = [threading.Thread(target=feed, args=(m,), daemon=True) for m in members]
        for t in threads:
            t.start()
        try:
            for _ in range(len(configs)):
                yield out.get()
        finally:
            # Stopped early (budget): each process finishes its request, so its pipe is clean.
            stop.set()
            for t in threads:
                t.join()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    def _drop(self, member: _Member) -> None:
        """Leave a lost process out of later batches, and reap it (close() no longer sees it)."""
        with self._lock:
            if member not in self._members:
                return
            self._members.remove(member)
        member.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            members, self._members = self._members, []
        for member in members:
            member.close()
        if self._store_root is not None:
            import shutil

            shutil.rmtree(self._store_root, ignore_errors=True)


def start_codegen_pool(
    kernel: Any, bound: Any, args: Sequence[object], settings: dict[str, object], profile: Any, processes: int,
    *, asked: bool = True,
) -> CodegenPool | None:
    """A pool for ``bound`` (``kernel`` bound as the coordinator did), or None when the
    kernel's module cannot be shipped (no readable source: a warning if the caller
    ``asked`` for the pool, a debug line when it was only the backend's suggestion)."""
    from helion_remote.argcodec import upload_args
    from helion_remote.blobs import DirectoryBlobStore
    from helion_remote.coordinator.codegen import kernel_definition

    definition = kernel_definition(kernel)
    if definition is None:
        (log.warning if asked else log.debug)(
            "codegen_workers ignored: the kernel's module has no readable source to ship; code is generated here")
        return None
    root = tempfile.mkdtemp(prefix="helion-remote-codegen-")
    upload = upload_args(DirectoryBlobStore(root), args)
    spec = CodegenSpec(
        definition=definition[0], kernel_attr=definition[1], settings=tuple(sorted(settings.items())),
        store_root=root, args_digest=upload.digest, device=args_device(args),
        profile=None if profile is None else profile.to_dict(),
    )
    return CodegenPool(spec, bound, bound.config_spec.default_config(), processes, owns_store=True)


def _start_methods() -> list[str]:
    """Fork from the GPU workers' preloaded server when it is in use (sub-second start), else spawn."""
    from helion_remote.worker.launch import forkserver_wanted

    return ["forkserver", "spawn"] if forkserver_wanted() else ["spawn"]


def _to_source(payload: tuple[str, str, tuple[tuple[str, str], ...]]) -> KernelSource:
    module_source, entry_name, modules = payload
    return KernelSource(module_source, entry_name, tuple(SourceModule(n, s) for n, s in modules))


def _local(bound: Any, config: Any) -> KernelSource | Exception:
    try:
        return kernel_source(bound, config)
    except Exception as error:  # noqa: BLE001 - reported per config, like the pool's
        return error


def args_device(args: Sequence[object]) -> str:
    """The device the coordinator's tensors live on (``cpu`` when none is a tensor)."""
    for arg in args:
        device = getattr(arg, "device", None)
        if device is not None:
            return str(device)
    return "cpu"


__all__ = ["CHUNK", "CodegenPool", "CodegenSpec", "args_device", "start_codegen_pool"]
