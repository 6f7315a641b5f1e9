"""The public entry points: :func:`autotune` and :func:`autotuner_fn`."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import math
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from helion_remote.coordinator import _helion_compat
from helion_remote.coordinator.adapter import remote_mode, resolve_algorithm, search_factory
from helion_remote.argcodec import upload_args
from helion_remote.backends import create_executor, resolve_backend_name
from helion_remote.coordinator.codegen import kernel_definition, kernel_source
from helion_remote.kernel_copy import private_kernel
from helion_remote.coordinator.progress import ProgressLine
from helion_remote.executor import RemoteBenchmarkExecutor
from helion_remote.coordinator.provider import RemoteContext, bind_provider
from helion_remote.coordinator.stats import RunStats

from helion.autotuner.base_cache import AutotuneCacheBase, CacheKeyBase


@dataclasses.dataclass
class AutotuneResult:
    """What a remote autotune found, and what it cost."""

    config: Any
    best_ms: float
    decorator: str
    stats: dict[str, object]
    backend: str
    algorithm: str
    kernel_name: str
    target: str | None = None
    """The emulated target's name and fingerprint, or None for the args' own device."""
    records: list[dict[str, object]] = dataclasses.field(default_factory=list, repr=False)
    """Every job result of the run (status, perf, compile time, worker, timestamps)."""

    def __str__(self) -> str:
        return f"{self.kernel_name}: {self.best_ms:.4f} ms on {self.backend}\n{self.decorator}"


@dataclasses.dataclass(frozen=True)
class _RemoteCacheKey(CacheKeyBase):
    kernel_name: str
    args_digest: str
    target_fingerprint: str | None


class RemoteAutotuneCache(AutotuneCacheBase):
    """Helion's cache layer with remote benchmarking switched on.

    Running Helion's own best-of-K trial loop (``autotune_best_of_k``) inside
    :func:`remote_mode` means every trial and the rebench round measure
    remotely.  It reads nothing (``get`` is a miss): a result store keyed by
    target lives outside Helion's per-host cache.
    """

    def __init__(self, autotuner: Any, *, autotuner_factory: Any = None, context: RemoteContext) -> None:
        super().__init__(autotuner, autotuner_factory=autotuner_factory)
        self.context = context
        self.provider_cls = bind_provider(context)
        _helion_compat.use_benchmark_provider(autotuner, self.provider_cls)
        self.selected: Any = None

    def autotune(self, *, skip_cache: bool = False) -> Any:
        with remote_mode(self.provider_cls, str(self.kernel.settings.autotune_effort)):
            return super().autotune(skip_cache=True)

    def get(self) -> Any:
        return None

    def put(self, config: Any) -> None:
        self.selected = config

    def _get_cache_key(self) -> CacheKeyBase:
        return _RemoteCacheKey(self.kernel.kernel.name, self.context.args_digest, self.context.target_fingerprint)

    def _list_cache_entries(self) -> Sequence[tuple[str, CacheKeyBase]]:
        return []


_shared_executors: dict[str, RemoteBenchmarkExecutor] = {}
_shared_lock = threading.Lock()


def shared_executor(name: str | None = None) -> RemoteBenchmarkExecutor:
    """One executor per backend name per process, reused across runs, closed at exit."""
    resolved = resolve_backend_name(name)
    with _shared_lock:
        executor = _shared_executors.get(resolved)
        if executor is None:
            executor = create_executor(resolved)
            _shared_executors[resolved] = executor
        return executor


@atexit.register
def _close_shared_executors() -> None:
    for executor in list(_shared_executors.values()):
        try:
            executor.close()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass
    _shared_executors.clear()


def _make_context(executor: RemoteBenchmarkExecutor, args: Sequence[object], stats: RunStats, **kw: Any) -> RemoteContext:
    """Upload the arguments (once per content) and bundle what the providers share."""
    upload = upload_args(executor.blob_store, args)
    stats.blob_bytes_uploaded += upload.bytes_uploaded
    stats.blob_puts += upload.puts
    stats.blob_puts_skipped += upload.puts_skipped
    return RemoteContext(executor=executor, args_digest=upload.digest, stats=stats, **kw)


def autotuner_fn(bound_kernel: Any, args: Sequence[object], **kwargs: object) -> RemoteAutotuneCache:
    """Drop-in ``autotuner_fn``: ``@helion.kernel(autotuner_fn=helion_remote.autotuner_fn)``.

    ``HELION_REMOTE_BACKEND`` picks the backend and ``HELION_AUTOTUNER`` the
    algorithm, so an existing script switches to remote tuning unchanged.
    """
    algorithm = resolve_algorithm(None)
    executor = shared_executor(None)
    progress = ProgressLine() if bound_kernel.settings.autotune_progress_bar else None
    context = _make_context(executor, args, RunStats(), progress=progress)
    factory = search_factory(bound_kernel, args, algorithm, **kwargs)
    return RemoteAutotuneCache(factory(), autotuner_factory=factory, context=context)


def resolve_target(target: Any, executor: RemoteBenchmarkExecutor, args: Sequence[object]) -> Any:
    """The ``TargetProfile`` to emulate, or None to search the arguments' own device.

    ``None`` means: arguments already on a GPU search natively; otherwise ask
    the backend for its workers' profile (``"auto"``), which is None for
    backends without GPUs (fake, interpreter).
    """
    from helion_remote.target import TargetProfile, load_profile

    if isinstance(target, TargetProfile):
        return target
    if target is None and any(getattr(a, "is_cuda", False) for a in args):
        return None
    if target is None or target == "auto":
        describe = getattr(executor, "target_profile", None)
        data = describe() if callable(describe) else None
        if data is None:
            if target == "auto":
                raise ValueError(
                    f"target='auto' needs GPU workers to describe, but backend "
                    f"{getattr(executor, 'name', type(executor).__name__)!r} has none; pass a profile "
                    "name (e.g. target='h100') or target=None"
                )
            return None
        return TargetProfile.from_dict(data)
    return load_profile(target)


def suggested_codegen_workers(executor: object) -> int:
    """The backend's advice on codegen processes (0 when it has none)."""
    suggest = getattr(executor, "suggested_codegen_workers", None)
    if not callable(suggest):
        return 0
    count = suggest()
    if not isinstance(count, int) or count < 0:
        raise TypeError(f"{type(executor).__name__}.suggested_codegen_workers() must return an int >= 0, got {count!r}")
    return count


def autotune(
    kernel: Any,
    args: Sequence[object],
    *,
    backend: str | RemoteBenchmarkExecutor | None = None,
    target: Any = None,
    algorithm: str | None = None,
    effort: str | None = None,
    algorithm_options: dict[str, object] | None = None,
    max_infra_retries: int = 3,
    deduplicate_sources: bool = True,
    order_by_compile_cost: bool = True,
    codegen_workers: int | None = None,
    print_result: bool = True,
    **settings: object,
) -> AutotuneResult:
    """Autotune ``kernel`` on ``args`` with benchmarks on ``backend``'s workers.

    The coordinator (this process) runs the Helion search and generates code;
    it never compiles or launches a kernel, so it needs no GPU.

    ``target`` is the GPU whose config space to search: a built-in profile
    name (``"h200"``, ``"h100"``, ...), a JSON path, a ``TargetProfile``, or
    ``"auto"`` (the backend's workers describe their GPU).  ``None``: CUDA
    arguments search their own device, anything else asks the backend.  With
    a target, the worker checks the space against the real arguments before
    any candidate is timed (``TargetDriftError`` on a mismatch).

    ``deduplicate_sources``: configs that generate a byte-identical module
    (Helion maps several configs to the same code) are measured once per
    search and share that result; ``stats["deduplicated"]`` counts them.

    ``order_by_compile_cost``: dispatch each batch longest-compile-first, as
    predicted from this search's earlier compiles (a batch waits for its
    slowest compile); ``stats["compile_order"]`` says how well it predicted.
    Results reach the search in its own order either way.

    ``codegen_workers``: processes that generate code in parallel with the
    coordinator's (each binds the kernel once; only processes whose code for a
    probe config is byte-identical to the coordinator's are used).  Worth it
    when code generation, not the GPUs, feeds the batches (several GPUs).
    ``None`` asks the backend (``suggested_codegen_workers()``; the local
    backend says one per 8 CPUs, at most 4, and 0 under the interpreter).

    ``algorithm_options`` are keyword arguments for the search class (they
    override the effort profile's), ``settings`` are Helion settings
    (``autotune_budget_seconds=...``, ``autotune_random_seed=...``).
    """
    if effort is not None and effort not in ("none", "quick", "full"):
        raise ValueError(f"unknown effort {effort!r}; valid efforts: none, quick, full")
    algorithm_cls = resolve_algorithm(algorithm)
    if isinstance(backend, str) or backend is None:
        executor = shared_executor(backend)
    else:
        executor = backend
    started = time.perf_counter()
    args = tuple(args)
    overrides = {**settings, **({"autotune_effort": effort} if effort is not None else {})}
    private = private_kernel(kernel, overrides)
    stats = RunStats()
    progress = ProgressLine() if private.settings.autotune_progress_bar else None
    context = _make_context(executor, args, stats, max_infra_retries=max_infra_retries, progress=progress)
    context.deduplicate_sources = deduplicate_sources
    if not order_by_compile_cost:
        context.compile_cost = None
    if codegen_workers is not None and (not isinstance(codegen_workers, int) or codegen_workers < 0):
        raise ValueError(f"codegen_workers must be an int >= 0 or None (the backend's suggestion), got {codegen_workers!r}")
    codegen_asked = codegen_workers is not None
    if codegen_workers is None:
        codegen_workers = suggested_codegen_workers(executor)
    profile = resolve_target(target, executor, args)
    with contextlib.ExitStack() as stack:
        search_args: tuple[object, ...] = args
        if profile is not None:
            from helion_remote.target import emulate_target, space_report, stand_in_args

            # Open before the bind and keep open through the last codegen:
            # Helion queries the device lazily, per config.
            stack.enter_context(emulate_target(profile))
            search_args = tuple(stand_in_args(args))
        bound = private.bind(search_args)
        if profile is not None:
            definition = kernel_definition(kernel)
            context.target_fingerprint = profile.fingerprint
            if definition is not None:
                context.space_report = space_report(bound)
                context.kernel_definition, context.kernel_attr = definition
                context.settings = tuple(sorted(overrides.items()))
        if codegen_workers and bound.settings.autotune_effort != "none":
            from helion_remote.coordinator.codegen_pool import start_codegen_pool

            context.codegen_pool = start_codegen_pool(kernel, bound, args, overrides, profile, codegen_workers,
                                                      asked=codegen_asked)
            if context.codegen_pool is not None:
                stack.callback(context.codegen_pool.close)
        if bound.settings.autotune_effort == "none":
            config = bound.config_spec.default_config()
        else:
            factory = search_factory(bound, search_args, algorithm_cls, **(algorithm_options or {}))
            # The cache enters remote_mode for the whole run (trials included).
            config = RemoteAutotuneCache(factory(), autotuner_factory=factory, context=context).autotune()
        codegen_processes = 0 if context.codegen_pool is None else context.codegen_pool.size
        best_ms = context.last_perf_ms.get(kernel_source(bound, config).digest, math.inf)
        decorator = bound.format_kernel_decorator(config, bound.settings)
    stats.wall_s = time.perf_counter() - started
    result = AutotuneResult(
        config=config,
        best_ms=best_ms,
        decorator=decorator,
        stats=stats.to_dict(),
        backend=getattr(executor, "name", type(executor).__name__),
        algorithm=algorithm_cls.__name__,
        kernel_name=bound.kernel.name,
        target=None if profile is None else f"{profile.name} ({profile.fingerprint[:12]})",
        records=list(stats.records),
    )
    if context.compile_cost is not None:
        result.stats["compile_order"] = context.compile_cost.summary()
    result.stats["codegen_workers"] = codegen_processes
    cost = getattr(executor, "cost_report", None)
    if callable(cost):
        result.stats["cost"] = str(cost())
    if print_result:
        print(
            f"[helion-remote] {result.kernel_name}: best {best_ms:.4f} ms, "
            f"{stats.configs_measured} configs in {stats.wall_s:.1f}s on {result.backend} "
            f"({result.algorithm}{', target ' + result.target if result.target else ''})"
            f"{chr(10) + 'estimated cost: ' + str(result.stats['cost']) if 'cost' in result.stats else ''}"
            f"\n{result.decorator}",
            file=sys.stderr,
        )
    return result
