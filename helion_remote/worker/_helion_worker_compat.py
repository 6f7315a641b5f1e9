"""Every private Helion name the worker touches, in one place.

The worker reuses Helion's own loader, accuracy check, timing loop and error
classification so a remote measurement means what a local one means.  Those
names are private, so importing this module checks that each one exists and
fails with the installed Helion version named: drift shows up when a worker
starts, not as a wave of mysterious ``error`` results.  Every name below was
checked in helion 1.5.0 and 1.5.1.
"""

from __future__ import annotations

from helion_remote.errors import CompatError
from helion_remote._versions import SUPPORTED_HELION, helion_version, missing_helion_name


class HelionWorkerCompatError(CompatError):
    pass


def _fail(what: str) -> HelionWorkerCompatError:
    return HelionWorkerCompatError(missing_helion_name("the helion_remote worker", what))


try:
    from helion.autotuner.accuracy import assert_close, is_fp8_dtype
    from helion.autotuner.benchmarking import do_bench, synchronize_device
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


def _self_check() -> None:
    """Check the shapes we rely on, not only the names."""
    import dataclasses
    import inspect

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


_self_check()

__all__ = [
    "SUPPORTED_HELION",
    "HelionWorkerCompatError",
    "SerializedCompiledFunction",
    "_load_compiled_fn",
    "_unload_compiled_fn",
    "assert_close",
    "capture_output",
    "classify_triton_exception",
    "compile_only_launch_args",
    "do_bench",
    "helion_version",
    "is_fp8_dtype",
    "match_unrecoverable_runtime_error",
    "synchronize_device",
]
