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

from helion_remote.argcodec import upload_args
from helion_remote.backends import create_executor, resolve_backend_name
from helion_remote.coordinator.adapter import resolve_algorithm, search_factory
from helion_remote.coordinator.cache import RemoteAutotuneCache
from helion_remote.coordinator.codegen import kernel_definition, kernel_source
from helion_remote.coordinator.progress import ProgressLine
from helion_remote.coordinator.run_context import RemoteContext, RunOptions, RunState, TargetCheck
from helion_remote.coordinator.stats import RunStats
from helion_remote.errors import ConfigurationError
from helion_remote.executor import RemoteBenchmarkExecutor
from helion_remote.kernel_copy import private_kernel

__all__ = ["AutotuneResult", "RemoteAutotuneCache", "autotune", "autotuner_fn", "resolve_target", "shared_executor",
           "suggested_codegen_workers"]

_EFFORTS = ("none", "quick", "full")


@dataclasses.dataclass
class AutotuneResult:
    """What a remote autotune found, and what it cost."""

    config: Any
    best_ms: float
    """The chosen config's timing; ``nan`` when nothing was measured (``effort="none"``)."""
    decorator: str
    stats: dict[str, object]
    backend: str
    algorithm: str
    kernel_name: str
    target: str | None = None
    """The emulated target's name and fingerprint, or None for the args' own device."""
    records: list[dict[str, object]] = dataclasses.field(default_factory=list, repr=False)
    """Every job result of the run (status, perf, compile time, worker, timestamps)."""

    @property
    def measured(self) -> bool:
        """False when the config was picked without timing it (``effort="none"``)."""
        return not math.isnan(self.best_ms)

    def timing(self) -> str:
        """``best 0.1234 ms``, or what was picked instead of a measurement."""
        if self.measured:
            return f"best {self.best_ms:.4f} ms"
        return "default config (effort='none', not measured)"

    def __str__(self) -> str:
        return f"{self.kernel_name}: {self.timing()} on {self.backend}\n{self.decorator}"


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


def autotuner_fn(bound_kernel: Any, args: Sequence[object], **kwargs: object) -> RemoteAutotuneCache:
    """Drop-in ``autotuner_fn``: ``@helion.kernel(autotuner_fn=helion_remote.autotuner_fn)``.

    ``HELION_REMOTE_BACKEND`` picks the backend and ``HELION_AUTOTUNER`` the
    algorithm, so an existing script switches to remote tuning unchanged.
    """
    algorithm = resolve_algorithm(None)
    executor = shared_executor(None)
    progress = ProgressLine() if bound_kernel.settings.autotune_progress_bar else None
    stats = RunStats()
    context = RemoteContext(executor, _upload_args(executor, args, stats), RunState(stats), progress=progress)
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
        data = executor.target_profile()
        if data is None:
            if target == "auto":
                raise ConfigurationError(
                    f"target='auto' needs GPU workers to describe, but backend "
                    f"{_backend_name(executor)!r} has none; pass a profile name (e.g. target='h100') or target=None"
                )
            return None
        return TargetProfile.from_dict(data)
    return load_profile(target)


def suggested_codegen_workers(executor: RemoteBenchmarkExecutor) -> int:
    """The backend's advice on codegen processes, checked (0 when it has none)."""
    count = executor.suggested_codegen_workers()
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
    _validate_options(effort, codegen_workers, max_infra_retries)
    algorithm_cls = resolve_algorithm(algorithm)
    executor = _pick_executor(backend)
    started = time.perf_counter()
    args = tuple(args)
    overrides = {**settings, **({"autotune_effort": effort} if effort is not None else {})}
    private = private_kernel(kernel, overrides)
    stats = RunStats()
    args_digest = _upload_args(executor, args, stats)
    processes = suggested_codegen_workers(executor) if codegen_workers is None else codegen_workers
    profile = resolve_target(target, executor, args)
    with contextlib.ExitStack() as stack:
        bound, search_args = _bind_under_emulation(private, args, profile, stack)
        context = RemoteContext(
            executor,
            args_digest,
            RunState(stats, order_by_compile_cost=order_by_compile_cost),
            RunOptions(max_infra_retries=max_infra_retries, deduplicate_sources=deduplicate_sources),
            target=_target_check(kernel, bound, profile, overrides),
            progress=ProgressLine() if private.settings.autotune_progress_bar else None,
            codegen_pool=_start_codegen_pool(stack, kernel, bound, args, overrides, profile, processes,
                                             asked=codegen_workers is not None),
        )
        found = _search(bound, search_args, algorithm_cls, algorithm_options or {}, context)
    stats.wall_s = time.perf_counter() - started
    result = _build_result(found, context, algorithm_cls, profile)
    if print_result:
        _print_result(result, stats)
    return result


@dataclasses.dataclass(frozen=True)
class _Found:
    """What the search found, read while the target is still emulated."""

    config: Any
    best_ms: float
    """The chosen config's timing; ``nan`` when nothing was measured (``effort="none"``)."""
    decorator: str
    kernel_name: str
    codegen_processes: int


def _validate_options(effort: str | None, codegen_workers: int | None, max_infra_retries: object) -> None:
    if effort is not None and effort not in _EFFORTS:
        raise ConfigurationError(f"unknown effort {effort!r}; valid efforts: {', '.join(_EFFORTS)}")
    if type(max_infra_retries) is not int or max_infra_retries < 0:
        raise ConfigurationError(
            f"max_infra_retries must be an int >= 0 (how often one job is retried on another worker "
            f"after an infra_error; 0: never), got {max_infra_retries!r}"
        )
    if codegen_workers is not None and (not isinstance(codegen_workers, int) or codegen_workers < 0):
        raise ConfigurationError(f"codegen_workers must be an int >= 0 or None (the backend's suggestion), got {codegen_workers!r}")


def _pick_executor(backend: str | RemoteBenchmarkExecutor | None) -> RemoteBenchmarkExecutor:
    """A backend name (or None: ``$HELION_REMOTE_BACKEND``) means the process's shared executor."""
    if isinstance(backend, str) or backend is None:
        return shared_executor(backend)
    return backend


def _upload_args(executor: RemoteBenchmarkExecutor, args: Sequence[object], stats: RunStats) -> str:
    """Upload the arguments (once per content) and return their digest."""
    upload = upload_args(executor.blob_store, args)
    stats.blob_bytes_uploaded += upload.bytes_uploaded
    stats.blob_puts += upload.puts
    stats.blob_puts_skipped += upload.puts_skipped
    return upload.digest


def _bind_under_emulation(
    private: Any, args: tuple[object, ...], profile: Any, stack: contextlib.ExitStack
) -> tuple[Any, tuple[object, ...]]:
    """The bound kernel and the arguments the search sees (stand-ins when a target is emulated).

    The emulation is entered on ``stack`` before the bind and stays open
    through the last codegen: Helion queries the device lazily, per config.
    """
    if profile is None:
        return private.bind(args), args
    from helion_remote.target import emulate_target, stand_in_args

    stack.enter_context(emulate_target(profile))
    search_args = tuple(stand_in_args(args))
    return private.bind(search_args), search_args


def _target_check(kernel: Any, bound: Any, profile: Any, overrides: dict[str, object]) -> TargetCheck | None:
    """What the worker needs to check the emulated space; no guard when the kernel cannot be shipped."""
    if profile is None:
        return None
    definition = kernel_definition(kernel)
    if definition is None:
        return TargetCheck(profile.fingerprint)
    from helion_remote.target import space_report

    return TargetCheck(profile.fingerprint, space_report(bound), *definition, settings=tuple(sorted(overrides.items())))


def _start_codegen_pool(
    stack: contextlib.ExitStack, kernel: Any, bound: Any, args: Sequence[object], overrides: dict[str, object],
    profile: Any, processes: int, *, asked: bool,
) -> Any:
    """A pool of codegen processes closed with ``stack``, or None (none wanted, effort none, not shippable)."""
    if not processes or bound.settings.autotune_effort == "none":
        return None
    from helion_remote.coordinator.codegen_pool import start_codegen_pool

    pool = start_codegen_pool(kernel, bound, args, overrides, profile, processes, asked=asked)
    if pool is not None:
        stack.callback(pool.close)
    return pool


def _search(
    bound: Any, search_args: tuple[object, ...], algorithm_cls: type, algorithm_options: dict[str, object],
    context: RemoteContext,
) -> _Found:
    """Run the search and read what it found (effort none: the default config, not measured: ``nan`` ms)."""
    if bound.settings.autotune_effort == "none":
        config = bound.config_spec.default_config()
        return _Found(config, math.nan, bound.format_kernel_decorator(config, bound.settings), bound.kernel.name, 0)
    factory = search_factory(bound, search_args, algorithm_cls, **algorithm_options)
    # The cache enters remote_mode for the whole run (trials included).
    config = RemoteAutotuneCache(factory(), autotuner_factory=factory, context=context).autotune()
    return _Found(
        config=config,
        best_ms=context.state.last_perf_ms.get(kernel_source(bound, config).digest, math.inf),
        decorator=bound.format_kernel_decorator(config, bound.settings),
        kernel_name=bound.kernel.name,
        codegen_processes=0 if context.codegen_pool is None else context.codegen_pool.size,
    )


def _build_result(found: _Found, context: RemoteContext, algorithm_cls: type, profile: Any) -> AutotuneResult:
    stats = context.stats
    result = AutotuneResult(
        config=found.config,
        best_ms=found.best_ms,
        decorator=found.decorator,
        stats=stats.to_dict(),
        backend=_backend_name(context.executor),
        algorithm=algorithm_cls.__name__,
        kernel_name=found.kernel_name,
        target=None if profile is None else f"{profile.name} ({profile.fingerprint[:12]})",
        records=list(stats.records),
    )
    if context.state.compile_cost is not None:
        result.stats["compile_order"] = context.state.compile_cost.summary()
    result.stats["codegen_workers"] = found.codegen_processes
    cost = context.executor.cost_report()
    if cost is not None:
        result.stats["cost"] = str(cost)
    return result


def _print_result(result: AutotuneResult, stats: RunStats) -> None:
    cost = f"\nestimated cost: {result.stats['cost']}" if "cost" in result.stats else ""
    target = f", target {result.target}" if result.target else ""
    print(
        f"[helion-remote] {result.kernel_name}: {result.timing()}, "
        f"{stats.configs_measured} configs{_losses(stats)} in {stats.wall_s:.1f}s on {result.backend} "
        f"({result.algorithm}{target}){cost}\n{result.decorator}",
        file=sys.stderr,
    )


def _losses(stats: RunStats) -> str:
    """What the run could not measure for reasons that are not the configs' (empty when nothing)."""
    parts = []
    if stats.configs_lost_to_infra:
        parts.append(f"{stats.configs_lost_to_infra} lost to infrastructure")
    if stats.budget_cancelled:
        parts.append(f"{stats.budget_cancelled} cut by the budget")
    return f" ({', '.join(parts)})" if parts else ""


def _backend_name(executor: RemoteBenchmarkExecutor) -> str:
    return executor.name or type(executor).__name__
