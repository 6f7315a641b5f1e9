"""Target emulation: a GPU-less coordinator searches exactly the target GPU's space.

Helion builds the config space and the generated code from the local device,
so on a laptop it would search a CPU-shaped space (a matmul: 12 flat
dimensions without triton, 20 with it, versus 22 on an H100: no tensor
descriptors, no maxnreg, no ``tl.range`` knobs, 1 SM, no compute capability).
A :class:`TargetProfile`, captured once on the real GPU, lets the coordinator
answer Helion's device queries instead.

Integration (what ``autotune(..., target=...)`` should do)
-----------------------------------------------------------
Coordinator::

    profile = load_profile(target)            # "h200" | "path.json" | TargetProfile
    # target="auto": profile = TargetProfile.from_dict(<worker's capture_profile().to_dict()>)
    upload = upload_args(executor.blob_store, args)       # the REAL args, as today
    with emulate_target(profile):             # open BEFORE the bind ...
        fake = stand_in_args(args)            # FakeTensors on cuda:0, no memory
        bound = private_kernel(kernel, ...).bind(fake)   # private copy: emulated binds never reach the user's bind cache
        report = space_report(bound)          # for the drift check below
        search = search_factory(bound, fake, algorithm)() # the search gets the stand-ins too
        config = <run the search as today>
        source = kernel_source(bound, config)             # ... and close it only after the LAST
        decorator = bound.format_kernel_decorator(config, bound.settings)  # codegen/normalize
    # cache key / SessionSpec.target_fingerprint: profile.fingerprint

* The context must stay open for the whole search: ``normalize`` (maxnreg
  caps) and code generation query the device lazily, per config.
* It patches module globals process-wide: one emulated target per process at
  a time (re-entering with the same profile is fine; another raises).  Do not
  run un-emulated Helion work in other threads meanwhile.
* Everything is restored on exit; caches Helion filled meanwhile are cleared.
* AMD targets: ``Settings.dot_precision`` is fixed when the kernel is
  decorated, so set it explicitly for a ROCm profile (built-ins are NVIDIA).

Worker (needs a GPU; none of this runs inside ``emulate_target``)::

    capture_profile(device).to_dict()          # executor.target_profile() -> TargetProfile.from_dict(...)
    config_space_report(SourceModule(mod_name, mod_source), kernel_attr, session_args, settings=overrides)

Drift guard, once per session before the first batch: the worker binds the
real arguments (``config_space_report``, after ``download_args``, with the
same Helion setting overrides the coordinator applied) and returns the
report; the coordinator calls ``check_drift(report, worker_report)``, which
raises :class:`TargetDriftError` naming both fingerprints and the differing
fields.  The kernel's *defining* module must be shipped for this (ship it like
``codegen.shipped_modules`` does, ``__main__`` renamed); ``kernel_attr`` is
the module attribute holding the ``@helion.kernel`` object.  Cheaper,
kernel-independent check (once per worker and profile):
``compare_reports(emulated_probe_reports(profile), worker_probe_reports())``.

Module sides (``tests/test_import_rules.py`` enforces them): the worker
imports only :mod:`.profile`, :mod:`.active`, :mod:`.space`, :mod:`.capture`
and :mod:`.probe_kernels`; :mod:`.emulate`, :mod:`.patches`, :mod:`.drift`
and :mod:`.validate` are the coordinator's.  This package therefore loads
every public name lazily, on first use.

``benchmarks/capture_target.py`` captures a profile on a GPU, computes the
probe reports from real CUDA tensors and compares them with the emulated ones
(``--compare-profile``); ``--dry-run`` smokes it on a CPU.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    # worker-safe
    "ProfileError": "profile",
    "TargetProfile": "profile",
    "builtin_names": "profile",
    "load_profile": "profile",
    "active_profile": "active",
    "config_space_report": "space",
    "space_report": "space",
    "CaptureError": "capture",
    "capture_profile": "capture",
    # coordinator side
    "Emulation": "emulate",
    "EmulationError": "emulate",
    "emulate_target": "emulate",
    "stand_in_args": "emulate",
    "TargetDriftError": "drift",
    "check_drift": "drift",
    "differing_fields": "drift",
    "compare_reports": "validate",
    "emulated_probe_reports": "validate",
    "worker_probe_reports": "validate",
}
"""Public name -> the submodule defining it (imported on first access, PEP 562)."""

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from helion_remote.target.active import active_profile
    from helion_remote.target.capture import CaptureError, capture_profile
    from helion_remote.target.drift import TargetDriftError, check_drift, differing_fields
    from helion_remote.target.emulate import Emulation, EmulationError, emulate_target, stand_in_args
    from helion_remote.target.profile import ProfileError, TargetProfile, builtin_names, load_profile
    from helion_remote.target.space import config_space_report, space_report
    from helion_remote.target.validate import compare_reports, emulated_probe_reports, worker_probe_reports


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
