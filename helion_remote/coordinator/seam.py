"""``RemoteBenchmarkProvider``: Helion's benchmark seam, answered by remote workers.

It subclasses ``LocalBenchmarkProvider`` (without running its ``__init__``)
because Helion's full-effort final selection only routes finalist windows to
the provider when ``isinstance(provider, LocalBenchmarkProvider)``; every
method the search calls is overridden, so nothing local is ever compiled or
launched.  The work is elsewhere: ``session_opener`` (session, drift guard),
``batch`` (a benchmark batch), ``helion_results`` (results as Helion's),
``retiming`` (``benchmark_isolated``).  The ``fn`` it returns is a
:class:`~helion_remote.coordinator.helion_results.RemoteKernel` handle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from helion_remote.coordinator import _helion_compat as compat
from helion_remote.coordinator.batch import Batch
from helion_remote.coordinator.helion_results import RemoteKernel
from helion_remote.coordinator.retiming import retime_isolated
from helion_remote.coordinator.run_context import RemoteContext
from helion_remote.coordinator.session_opener import OpenedSession, open_session
from helion_remote.errors import ConfigurationError


class RemoteBenchmarkProvider(compat.LocalBenchmarkProvider):
    """Benchmark provider that sends every measurement to ``context.executor``."""

    context: RemoteContext  # set on the subclass made by bind_provider()

    def __init__(  # noqa: PLR0913 - Helion's constructor contract
        self,
        kernel: Any,
        settings: Any,
        config_spec: Any,
        args: Sequence[object],
        log: Any,
        autotune_metrics: Any,
    ) -> None:
        # Deliberately no super().__init__: it compiles and runs the baseline locally.
        self.kernel = kernel
        self.settings = settings
        self.config_spec = config_spec
        self.args = args
        self.log = log
        self._autotune_metrics = autotune_metrics
        self.mutated_arg_indices: Sequence[int] = ()
        self._accuracy_failure_config_ids: list[int] = []
        self._compile_failure_config_ids: list[int] = []
        self._worker_failure_config_ids: list[int] = []
        self._last_benchmark_failure_status = None
        self._no_viable_config_error: Exception | None = None
        self._effective_source_repairs: dict[Any, Any] = {}
        self._compiler_seed_configs: set[Any] = set()
        self._opened: OpenedSession | None = None
        _reject_local_only_settings(settings)

    # -- lifecycle ----------------------------------------------------------------

    def setup(self) -> None:
        self._ensure_session()

    def cleanup(self) -> None:
        if self._opened is not None:
            self._opened.session.close()
            self._opened = None
        # Break the search -> provider -> bound-method cycle, as Helion's own provider does.
        self.budget_exceeded_fn = compat.LocalBenchmarkProvider.budget_exceeded_fn

    def _ensure_session(self) -> OpenedSession:
        if self._opened is None:
            self._opened = open_session(self.context, self.kernel, self.settings, self.config_spec, self.log)
        return self._opened

    # -- the search's calls ---------------------------------------------------------

    def benchmark(
        self,
        configs: list[Any],
        *,
        desc: str = "Benchmarking",
        raise_if_no_viable_config: bool = True,
        **_: object,
    ) -> list[Any]:
        opened = self._ensure_session()
        self._no_viable_config_error = None
        batch = Batch(self, opened, configs, desc)
        batch.dispatch()
        if batch.no_viable_error is not None:
            if raise_if_no_viable_config:
                raise batch.no_viable_error
            self._no_viable_config_error = batch.no_viable_error
        return batch.helion_results()

    def benchmark_isolated(
        self,
        fns: list[Callable[..., object]],
        *,
        warmup: int,
        rep: int,
        desc: str = "Benchmarking",
        fresh_process: bool = False,
        args_slots: Sequence[int | None] | None = None,
        timeout: float | None = None,
        **_: object,
    ) -> list[Any]:
        if not any(isinstance(fn, RemoteKernel) for fn in fns):
            return [None] * len(fns)  # nothing of ours to re-time: no session needed
        return retime_isolated(
            self.context,
            self._ensure_session().session,
            fns,
            warmup=warmup,
            rep=rep,
            timeout_s=float(timeout if timeout is not None else self.settings.autotune_benchmark_timeout),
            finalist_window=fresh_process or args_slots is not None,
        )

    def steady_window_benchmark_available(self) -> bool:
        return True

    def private_argument_copies_affordable(self, count: int) -> bool:
        return False

    def release_private_argument_copies(self) -> None:
        return None

    def set_compiler_seed_configs(self, configs: Sequence[Any]) -> None:
        self._compiler_seed_configs = set(configs)

    def has_measured_source_hash(self, source_hash: str) -> bool:
        return False

    def take_effective_source_repairs(self) -> dict[Any, Any]:
        return {}

    def take_no_viable_config_error(self) -> Exception | None:
        error, self._no_viable_config_error = self._no_viable_config_error, None
        return error

    def invalidate_effective_source_hash(self, source_hash: str) -> None:
        return None


def bind_provider(context: RemoteContext) -> type[RemoteBenchmarkProvider]:
    """A provider class bound to one run's context (Helion instantiates classes)."""
    return type("BoundRemoteBenchmarkProvider", (RemoteBenchmarkProvider,), {"context": context})


def _reject_local_only_settings(settings: Any) -> None:
    for name, why in (
        ("autotune_benchmark_fn", "it times kernels in the coordinator process"),
        ("autotune_baseline_fn", "the baseline is computed on the worker from the reference config"),
        ("autotune_baseline_accuracy_check_fn", "accuracy is checked on the worker"),
    ):
        if getattr(settings, name, None) is not None:
            raise ConfigurationError(
                f"helion_remote does not support the {name} setting ({why}); remove it, "
                "or tune locally with stock Helion"
            )
