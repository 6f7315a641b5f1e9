"""Every private Helion name the coordinator touches, in one place.

Helion's public seam (``BenchmarkProvider``, ``search_algorithms``,
``to_triton_code``) is not quite enough: the remote provider must subclass
``LocalBenchmarkProvider`` (final selection routes on ``isinstance``), and
injection into searches Helion builds internally needs the default of
``BaseSearch.__init__``.  Importing this module checks each name and fails
with the installed Helion version named, so drift shows up at import, not
halfway through a search.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from helion_remote._versions import SUPPORTED_HELION, helion_version, missing_helion_name
from helion_remote.errors import CompatError


class HelionCompatError(CompatError):
    """The installed Helion lacks a private name the coordinator relies on."""


def _fail(what: str) -> HelionCompatError:
    return HelionCompatError(missing_helion_name("helion_remote", what))


try:
    from helion.autotuner import base_search as _base_search
    from helion.autotuner.base_search import BaseSearch
    from helion.autotuner.benchmark_provider import (
        BenchmarkResult,
        IsolatedBenchmarkFailure,
        LocalBenchmarkProvider,
        _unset_fn,
    )
    from helion.autotuner.logger import AutotuneLogEntry
except ImportError as error:  # pragma: no cover - exercised only on drift
    raise _fail(f"an autotuner name ({error})") from error

FINAL_REBENCHMARK_ISOLATED_ENV: str = getattr(
    _base_search, "_FINAL_REBENCHMARK_ISOLATED_ENV", "HELION_AUTOTUNE_FINAL_REBENCHMARK_ISOLATED"
)

HAS_FINAL_SELECTION: bool = hasattr(_base_search, "_WorkerFinalSelectionMeasurer")
"""helion 1.5.1 times full-effort finalists through ``benchmark_isolated`` windows;
1.5.0 only has the single-pass final re-benchmark."""

_PROVIDER_PARAM = "benchmark_provider_cls"

PRIVATE_NAMES: tuple[str, ...] = (
    "helion.autotuner.benchmark_provider._unset_fn",
    "helion.autotuner.base_search.BaseSearch._benchmark_provider_cls",
    "helion.autotuner.base_search._FINAL_REBENCHMARK_ISOLATED_ENV",
    "helion.autotuner.base_search._WorkerFinalSelectionMeasurer",
    "helion.autotuner.benchmark_provider.LocalBenchmarkProvider._record_compile_failure",
    "helion.autotuner.benchmark_provider.LocalBenchmarkProvider._record_accuracy_failure",
    "helion.autotuner.benchmark_provider.LocalBenchmarkProvider._record_worker_failure",
)
"""Every private Helion name search-side code reads or sets (tests/test_import_rules.py holds
every other module to this list)."""

OPTIONAL_NAMES = frozenset({
    "helion.autotuner.base_search._FINAL_REBENCHMARK_ISOLATED_ENV",  # read with a default
    "helion.autotuner.base_search._WorkerFinalSelectionMeasurer",  # helion 1.5.1 only: feature probe
})
SET_IN_INIT = frozenset({"helion.autotuner.base_search.BaseSearch._benchmark_provider_cls"})
"""Instance attributes: checked in the source of the class's ``__init__``."""


def _owner(dotted: str) -> tuple[Any, str]:
    """``pkg.module.Class.attr`` -> (``Class``, ``"attr"``): the longest importable module, then getattr."""
    path, _, attribute = dotted.rpartition(".")
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            owner: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            owner = getattr(owner, part)
        return owner, attribute
    raise ImportError(path)


def verify_private_names(names: tuple[str, ...] = PRIVATE_NAMES) -> None:
    """Raise :class:`HelionCompatError` (naming the Helion version) for a required name that is gone."""
    for dotted in names:
        if dotted in OPTIONAL_NAMES:
            continue
        try:
            owner, attribute = _owner(dotted)
        except (ImportError, AttributeError) as error:
            raise _fail(f"{dotted} ({type(error).__name__}: {error})") from error
        if dotted in SET_IN_INIT:
            found = f"self.{attribute} =" in inspect.getsource(owner.__init__)
        else:
            found = hasattr(owner, attribute)
        if not found:
            raise _fail(dotted)


def _self_check() -> None:
    params = inspect.signature(BaseSearch.__init__).parameters
    if params.get(_PROVIDER_PARAM) is None or params[_PROVIDER_PARAM].default is not LocalBenchmarkProvider:
        raise _fail(f"BaseSearch.__init__({_PROVIDER_PARAM}=LocalBenchmarkProvider)")
    if BaseSearch.__init__.__defaults__ != (LocalBenchmarkProvider,):
        raise _fail("BaseSearch.__init__.__defaults__ == (LocalBenchmarkProvider,)")
    for field in ("config", "fn", "perf", "status", "compile_time", "completed_at"):
        if field not in BenchmarkResult._fields:
            raise _fail(f"BenchmarkResult.{field}")
    from helion.autotuner.config_spec import ConfigSpec

    verify_private_names()
    for method in ("autotune_reference_config", "default_config"):
        if not hasattr(ConfigSpec, method):
            raise _fail(f"ConfigSpec.{method}")


_self_check()


def provider_default_patch_target() -> tuple[Any, str]:
    """``BaseSearch.__init__.__defaults__``: patched so nested searches use our provider."""
    return BaseSearch.__init__, "__defaults__"


def use_benchmark_provider(autotuner: Any, provider_cls: type) -> None:
    """Make a search Helion already built measure through ``provider_cls`` (its private
    ``_benchmark_provider_cls``, read when the search creates its provider)."""
    autotuner._benchmark_provider_cls = provider_cls


def record_compile_failure(provider: Any, config: Any) -> None:
    """Count a config that failed code generation in Helion's autotune metrics."""
    provider._record_compile_failure(config)


def record_accuracy_failure(provider: Any, config: Any) -> None:
    """Count a config whose output did not match the baseline."""
    provider._record_accuracy_failure(config)


def record_worker_failure(provider: Any, config: Any, status: str) -> None:
    """Count a config that errored or timed out (``status``: ``"error"`` | ``"timeout"``)."""
    provider._record_worker_failure(config, status)


def reference_config(config_spec: Any) -> Any:
    """The conservative config Helion uses to compute the accuracy baseline."""
    return config_spec.autotune_reference_config()


def source_module_names(bound: Any) -> list[str]:
    """Python modules the generated code imports (``import m as _source_module``)."""
    try:
        imports = bound.host_function.global_imports
    except AttributeError:
        return []
    names = []
    for item in imports.values():
        module = getattr(item, "module", None)
        if isinstance(module, str):
            names.append(module)
    return names


__all__ = [
    "AutotuneLogEntry",
    "BaseSearch",
    "BenchmarkResult",
    "FINAL_REBENCHMARK_ISOLATED_ENV",
    "HAS_FINAL_SELECTION",
    "HelionCompatError",
    "SUPPORTED_HELION",
    "IsolatedBenchmarkFailure",
    "LocalBenchmarkProvider",
    "OPTIONAL_NAMES",
    "PRIVATE_NAMES",
    "_unset_fn",
    "helion_version",
    "provider_default_patch_target",
    "record_accuracy_failure",
    "record_compile_failure",
    "record_worker_failure",
    "reference_config",
    "source_module_names",
    "use_benchmark_provider",
    "verify_private_names",
]
