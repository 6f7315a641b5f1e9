"""Every private Helion name the worker touches, in one place.

The worker reuses Helion's own loader, accuracy check, timing loop and error
classification so a remote measurement means what a local one means; it
captures a target profile through the same device queries Helion's search
makes; and it reports a config space through Helion's own field table.  Those
names are private, so importing this module checks that each one exists and
fails with the installed Helion version named: drift shows up when a worker
starts, not as a wave of mysterious ``error`` results.  Every name below was
checked in helion 1.5.0 and 1.5.1.

This module is worker-safe: it imports no coordinator code and no triton
(the coordinator computes space reports through it too).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from helion_remote.errors import CompatError
from helion_remote._versions import SUPPORTED_HELION, helion_version, missing_helion_name


class HelionWorkerCompatError(CompatError):
    pass


def _fail(what: str) -> HelionWorkerCompatError:
    return HelionWorkerCompatError(missing_helion_name("the helion_remote worker", what))


try:
    from helion.autotuner.accuracy import assert_close, is_fp8_dtype
    from helion.autotuner.benchmarking import do_bench, synchronize_device
    from helion.autotuner.block_id_sequence import BlockIdSequence
    from helion.autotuner.config_generation import ConfigGeneration
    from helion.autotuner.logger import (
        capture_output,
        classify_triton_exception,
        match_unrecoverable_runtime_error,
    )
    from helion.autotuner.precompile_future import (
        SerializedCompiledFunction,
        _load_compiled_fn,
        _unload_compiled_fn,
    )
    from helion.runtime.triton.launcher import compile_only_launch_args
except ImportError as error:  # pragma: no cover - exercised only on drift
    raise _fail(f"a worker name ({error})") from error


DEVICE_QUERIES: Mapping[str, str] = {
    # What target capture (target/capture.py) asks Helion about the real GPU:
    # the same functions Helion's search calls, so a profile replays Helion's answers.
    "supports_tensor_descriptor": "helion._compat.supports_tensor_descriptor",
    "supports_host_tensor_descriptor": "helion._compat.supports_host_tensor_descriptor",
    "supports_block_ptr": "helion._compat.supports_block_ptr",
    "supports_maxnreg": "helion._compat.supports_maxnreg",
    "is_hip": "helion._compat.is_hip",
    "supports_amd_cdna_tunables": "helion._compat.supports_amd_cdna_tunables",
    "is_amd_cdna": "helion._compat._is_amd_cdna",
    "supports_mtia_tunables": "helion._compat.supports_mtia_tunables",
    "use_tileir_tunables": "helion._compat.use_tileir_tunables",
    "fp8_block_ptr_padding_broken": "helion._compat.fp8_block_ptr_padding_broken",
    "sm100_dot_tmem_lhs_broken": "helion._compat.sm100_dot_tmem_lhs_broken",
    "min_dot_size": "helion._compat.min_dot_size",
    "device_name": "helion._compat.get_device_name",
    "amd_base_arch": "helion._compat._amd_base_arch",
    "tensor_descriptor_fn_name": "helion._compat.get_tensor_descriptor_fn_name",
    "hardware_info": "helion._hardware.get_hardware_info",
    "num_sm": "helion.runtime.get_num_sm",
    "num_xcd": "helion.runtime.get_num_xcd",
}
"""Answer name -> Helion function, resolved at call time (it reads the current binding)."""

NUM_SM_BINDING = ("helion.runtime", "get_num_sm")
"""Module global the interpreter replaces (persistent kernels size their grid from it)."""

PRIVATE_NAMES: tuple[str, ...] = (
    "helion.autotuner.precompile_future._load_compiled_fn",
    "helion.autotuner.precompile_future._unload_compiled_fn",
    "helion.autotuner.config_spec.ConfigSpec._flat_fields",
    "helion.autotuner.block_id_sequence.BlockIdSequence._data",
    "helion.autotuner.block_id_sequence._BlockIdItem._fragment",
    *(name for name in DEVICE_QUERIES.values() if "._" in name),
)
"""Every private Helion name worker code reads (checked below; tests/test_import_rules.py
holds every other module to this list)."""

INSTANCE_ATTRIBUTES = frozenset({"helion.autotuner.block_id_sequence.BlockIdSequence._data"})
"""Set in ``__init__``: checked on an instance, not the class."""


def resolve_name(dotted: str) -> Any:
    """``pkg.module.Class.attr`` -> the object: import the longest module prefix, then getattr."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            found = getattr(found, part)
        return found
    raise ImportError(dotted)


def verify_private_names(names: tuple[str, ...] = PRIVATE_NAMES) -> None:
    """Raise :class:`HelionWorkerCompatError` (naming the Helion version) for a name that is gone."""
    for dotted in names:
        try:
            if dotted in INSTANCE_ATTRIBUTES:
                owner, _, attribute = dotted.rpartition(".")
                getattr(resolve_name(owner)(), attribute)
            else:
                resolve_name(dotted)
        except (ImportError, AttributeError, TypeError) as error:
            raise _fail(f"{dotted} ({type(error).__name__}: {error})") from error
    for name, dotted in DEVICE_QUERIES.items():
        if not callable(resolve_name(dotted)):
            raise _fail(f"{dotted} (device query {name!r}; no longer callable)")


def _self_check() -> None:
    """Check the shapes we rely on, not only the names."""
    import dataclasses

    verify_private_names()
    fields = {f.name for f in dataclasses.fields(SerializedCompiledFunction)}
    missing = {"function_name", "source_code", "filename", "module_name", "source_modules"} - fields
    if missing:
        raise _fail(f"SerializedCompiledFunction fields {sorted(missing)}")
    params = inspect.signature(assert_close).parameters
    if "scale_atol_by_expected_rms" not in params:
        raise _fail("assert_close(scale_atol_by_expected_rms=)")
    params = inspect.signature(do_bench).parameters
    for name in ("warmup", "rep", "return_mode"):
        if name not in params:
            raise _fail(f"do_bench({name}=)")
    module, attribute = NUM_SM_BINDING
    if "reserved_sms" not in inspect.signature(getattr(importlib.import_module(module), attribute)).parameters:
        raise _fail(f"{module}.{attribute}(device, *, reserved_sms=)")


_self_check()


# ------------------------------------------------------------------ accessors


def device_query(name: str) -> Callable[..., Any]:
    """The Helion function answering ``name`` (a :data:`DEVICE_QUERIES` key), as bound now."""
    return resolve_name(DEVICE_QUERIES[name])


def runtime_get_num_sm() -> Callable[..., int]:
    module, attribute = NUM_SM_BINDING
    return getattr(importlib.import_module(module), attribute)


def set_runtime_get_num_sm(replacement: Callable[..., int]) -> None:
    """Replace ``helion.runtime.get_num_sm`` process-wide (the worker's interpreter mode only)."""
    module, attribute = NUM_SM_BINDING
    setattr(importlib.import_module(module), attribute, replacement)


def flat_fields(config_spec: Any) -> dict[str, Any]:
    """``ConfigSpec._flat_fields()``: name -> fragment or per-block-id sequence, in search order."""
    return config_spec._flat_fields()


def block_id_items(field: Any) -> list[Any] | None:
    """The items of a per-block-id field (``BlockIdSequence._data``); None for a plain fragment."""
    return list(field._data) if isinstance(field, BlockIdSequence) else None


def item_fragment(item: Any, config_spec: Any) -> Any:
    """One block-id item's search fragment (``_BlockIdItem._fragment``)."""
    return item._fragment(config_spec)


def flat_dims(config_spec: Any) -> int:
    """Number of flat search dimensions Helion's config generation sees."""
    return len(ConfigGeneration(config_spec).flat_spec)


__all__ = [
    "DEVICE_QUERIES",
    "INSTANCE_ATTRIBUTES",
    "NUM_SM_BINDING",
    "PRIVATE_NAMES",
    "SUPPORTED_HELION",
    "HelionWorkerCompatError",
    "SerializedCompiledFunction",
    "_load_compiled_fn",
    "_unload_compiled_fn",
    "assert_close",
    "block_id_items",
    "capture_output",
    "classify_triton_exception",
    "compile_only_launch_args",
    "device_query",
    "do_bench",
    "flat_dims",
    "flat_fields",
    "helion_version",
    "is_fp8_dtype",
    "item_fragment",
    "match_unrecoverable_runtime_error",
    "resolve_name",
    "runtime_get_num_sm",
    "set_runtime_get_num_sm",
    "synchronize_device",
    "verify_private_names",
]
