"""Every Helion (and torch) name target emulation replaces, in one place.

Helion asks the local device for facts at dozens of sites; these are the
module attributes those sites resolve at call time.  Several are name-bound
copies (``from .._compat import x``), so each binding is listed; at emulation
time :func:`loaded_aliases` also finds any *other* loaded ``helion.*`` module
holding the same function object, so a new ``from _compat import`` in a later
Helion is still covered.

A few torch names live on a class, not a module (Inductor's
``DeviceProperties.create`` and the device interface's staticmethod copy of
``torch.cuda.get_device_properties``, bound when the class was defined); they
are written ``"module:Class.attribute"`` and patched on the class.

Importing this module checks that every listed name exists and fails with the
installed Helion version named: drift shows up at import, not as a silently
CPU-shaped search.  Functions we re-implement (not just answer) are also
checked against the source we copied; a change only warns, because the
per-session drift guard (:mod:`.drift`) is the final word.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import sys
import warnings
from collections.abc import Iterator
from types import ModuleType

from helion_remote.coordinator._helion_compat import HelionCompatError
from helion_remote._versions import helion_version, missing_helion_name


@dataclasses.dataclass(frozen=True)
class PatchPoint:
    """One module attribute replaced while a target is emulated.

    ``answer`` names the replacement built from the profile in
    :mod:`.emulate`; several bindings of one function share an answer.
    ``owner`` is a dotted attribute path inside ``module`` (a class) when the
    name is a class attribute, else empty.
    """

    answer: str
    module: str
    attribute: str
    why: str
    owner: str = ""

    @property
    def target(self) -> str:
        """Dotted name of the object holding ``attribute``."""
        return f"{self.module}.{self.owner}" if self.owner else self.module


def _points(answer: str, why: str, *bindings: str) -> tuple[PatchPoint, ...]:
    """``"pkg.module.attr"`` or, for a class attribute, ``"pkg.module:Class.attr"``."""
    out = []
    for binding in bindings:
        module, _, rest = binding.rpartition(":") if ":" in binding else ("", "", binding)
        head, _, attribute = rest.rpartition(".")
        if module:
            out.append(PatchPoint(answer, module, attribute, why, owner=head))
        else:
            out.append(PatchPoint(answer, head, attribute, why))
    return tuple(out)


PATCH_POINTS: tuple[PatchPoint, ...] = (
    # -- captured when the CompileEnvironment / ConfigSpec is built (bind) ---------
    *_points(
        "target_device_capability",
        "ConfigSpec.target_device_capability, bind-cache key, capability gates",
        "helion._compat.target_device_capability",
        "helion._compiler.compile_environment.target_device_capability",
        "helion.runtime.kernel.target_device_capability",
        "helion.autotuner.config_spec.get_target_device_capability",
    ),
    *_points(
        "get_num_sm",
        "ConfigSpec.num_sm, compiler-seed facts, matmul heuristics (CPU raises -> 1)",
        "helion.runtime.get_num_sm",
    ),
    *_points(
        "num_sms",
        "grid-block floors and the ConfigSpec num_sm default",
        "helion._compat.num_compute_units",
        "helion.autotuner.config_spec.num_compute_units",
        "helion._compat.device_num_sm",
        "helion.autotuner.config_spec.device_num_sm",
    ),
    *_points(
        "regs_per_block",
        "maxnreg cap; queried on every normalize()",
        "helion._compat._regs_per_block",
        "helion.autotuner.config_spec._regs_per_block",
    ),
    *_points(
        "num_xcd",
        "AMD xcd_remap",
        "helion.autotuner.config_spec.get_num_xcd",
        "helion.runtime.get_num_xcd",
    ),
    *_points(
        "warps_to_threads",
        "thread counts (warp size 32 vs 64)",
        "helion._compat.warps_to_threads",
        "helion.autotuner.config_spec.warps_to_threads",
        "helion.autotuner.config_generation.warps_to_threads",
    ),
    *_points(
        "hardware_info",
        "named-target compiler heuristics and the promoted default config",
        "helion._hardware.get_hardware_info",
    ),
    *_points(
        "device_name",
        "hardware name in search metadata and warm-start cache lookups",
        "helion._compat.get_device_name",
        "helion.autotuner.base_search.get_device_name",
        "helion.autotuner.local_cache.get_device_name",
    ),
    # -- Helion's "patchable in testing" _compat predicates (read lazily) ----------
    *_points("supports_tensor_descriptor", "indexing choices, descriptor codegen", "helion._compat._supports_tensor_descriptor"),
    *_points("supports_host_tensor_descriptor", "host_tensor_descriptors knob", "helion._compat._supports_host_tensor_descriptor"),
    *_points("supports_block_ptr", "block_ptr indexing choice", "helion._compat._supports_block_ptr"),
    *_points("supports_maxnreg", "maxnreg knob and launch kwarg", "helion._compat._supports_maxnreg"),
    *_points("is_hip", "AMD knobs, dot precision, fences", "helion._compat._is_hip"),
    *_points("is_amd_cdna", "AMD CDNA tunables", "helion._compat._is_amd_cdna"),
    *_points("amd_base_arch", "AMD arch (tf32 support)", "helion._compat._amd_base_arch"),
    *_points("supports_mtia_tunables", "MTIA knobs", "helion._compat._supports_mtia_tunables"),
    *_points(
        "use_tileir_tunables",
        "tileir backend drops tl.range knobs",
        "helion._compat.use_tileir_tunables",
        "helion.language.loops.use_tileir_tunables",
    ),
    *_points("fp8_block_ptr_padding_broken", "fp8 block-pointer workaround", "helion._compat._fp8_block_ptr_padding_broken"),
    *_points("sm100_dot_tmem_lhs_broken", "sm100 dot splitting", "helion._compat._sm100_dot_tmem_lhs_broken"),
    *_points("min_dot_size", "minimum dot block sizes (with triton: AssertionError on CPU torch)", "helion._compat._min_dot_size"),
    *_points(
        "tensor_descriptor_fn_name",
        "descriptor constructor spelled in generated code",
        "helion._compat.get_tensor_descriptor_fn_name",
        "helion._compiler.device_function.get_tensor_descriptor_fn_name",
        "helion._compiler.indexing_strategy.get_tensor_descriptor_fn_name",
    ),
    *_points(
        "triton_version",
        "version-gated workarounds; raises ImportError without triton",
        "helion._compat.get_triton_version",
        "helion.autotuner.config_spec.get_triton_version",
    ),
    # -- Triton API probes ----------------------------------------------------------
    *_points(
        "add_config_range_choice",
        "tl.range knobs: Helion offers one only if the local triton.language.range accepts it",
        "helion.language.loops._add_config_range_choice",
    ),
    *_points(
        "supports_warp_specialize",
        "range_warp_specializes: reads torch.cuda.get_device_capability()",
        "helion.language.loops._supports_warp_specialize",
    ),
    *_points(
        "triton_jit_supports_do_not_specialize",
        "@triton.jit(do_not_specialize=...) in generated code",
        "helion._compiler.triton.backend._triton_jit_supports_do_not_specialize",
    ),
    # -- binding on FakeTensor cuda:0 -------------------------------------------------
    *_points(
        "fake_gpu_context",
        "a FakeTensor on cuda:0 first initialises a real CUDA context (torch 2.11+cu130 asks only "
        "whether the build has CUDA) -> 'No CUDA GPUs are available' on a CUDA build with no GPU; "
        "stand-ins need no context",
        "torch._subclasses.fake_tensor.init_gpu_context",
    ),
    *_points(
        "alignment_signature",
        "FakeTensor reads as unaligned, so inputs would never get tensor descriptors",
        "helion._compiler.compile_environment.tensor_descriptor_runtime_alignment_signature",
    ),
    # -- torch.cuda queries made directly by heuristics (silently swallowed on failure) --
    *_points("cuda_get_device_properties", "warp_slots_per_sm and similar heuristics", "torch.cuda.get_device_properties"),
    *_points("cuda_get_device_capability", "direct capability reads", "torch.cuda.get_device_capability"),
    *_points("cuda_get_device_name", "direct name reads", "torch.cuda.get_device_name"),
    *_points("cuda_current_device", "get_device_properties(torch.cuda.current_device())", "torch.cuda.current_device"),
    # -- Inductor lowering (reductions: Reduction.num_splits -> DeviceProperties.create) --
    *_points(
        "inductor_device_interface_properties",
        "Inductor's device interface holds its own copy of torch.cuda.get_device_properties "
        "(a staticmethod bound at import); torch <= 2.11 reaches it while lowering a reduction "
        "(amax/sum in softmax, layer norm) -> 'No CUDA GPUs are available' on a CUDA build with no GPU",
        "torch._dynamo.device_interface:CudaInterface.get_device_properties",
    ),
    *_points(
        "inductor_device_properties",
        "functools.cache'd per device for the process: unpatched it would serve a local GPU's "
        "properties cached before emulation, or keep the target's after it",
        "torch._inductor.runtime.hints:DeviceProperties.create",
    ),
)

REIMPLEMENTED_SOURCES: dict[str, frozenset[str]] = {
    # sha256 of inspect.getsource(); identical in helion 1.5.0 and 1.5.1.
    "helion.language.loops._add_config_range_choice": frozenset(
        {"aeb96d92302d373f7e5479e8735a429ee5c298314385b0cba82228f93eae39a4"}
    ),
    "helion.language.loops._supports_warp_specialize": frozenset(
        {"8d605ec376a6826ba15e042097a950c42ede65ed89436aaba779f4ccf95a4bda"}
    ),
    "helion._compiler.compile_environment.tensor_descriptor_runtime_alignment_signature": frozenset(
        {"edee0ed4ddb2e28dd489389b78b9f869e7c47b615321ec7d3217599fc50b9796"}
    ),
}
"""Functions :mod:`.emulate` copies rather than answers; a new source means re-check the copy."""


ALSO_READ: tuple[str, ...] = (
    # Helion names emulation (target/emulate.py) reads or constructs without
    # patching them.  Capture (worker side) declares its reads in
    # helion_remote.worker._helion_worker_compat.DEVICE_QUERIES.
    "helion._compiler.compile_environment.CompileEnvironment",
    "helion._hardware.HardwareInfo",
    "helion.language.loops.StaticRangeSpec",
    "helion.language.loops.RangeUnrollFactorSpec",
    "helion.language.loops.RangeWarpSpecializeSpec",
    "helion.language.loops.RangeNumStagesSpec",
    "helion.language.loops.RangeMultiBufferSpec",
    "helion.language.loops.RangeFlattenSpec",
)
"""Checked at import with the patch points, so a Helion that drops one fails here, named."""

WARP_SPECIALIZE = "helion.language.loops._supports_warp_specialize"
"""The copied range-choice function calls this binding as Helion's does: as bound at call time."""

CACHED_MODULES: tuple[str, ...] = ("helion._compat", "helion._hardware", "helion._compiler.triton.backend")
"""Helion modules whose ``functools.cache``'d helpers may memoize an emulated answer (cleared on exit)."""


def _fail(what: str) -> HelionCompatError:
    return HelionCompatError(missing_helion_name("helion_remote target emulation", what))


def resolve(point: PatchPoint) -> object:
    """The object holding ``point.attribute``: its module, or the class inside it."""
    owner: object = importlib.import_module(point.module)
    for part in point.owner.split(".") if point.owner else ():
        owner = getattr(owner, part)
    return owner


def current(point: PatchPoint) -> object:
    """The attribute as stored (a class's ``staticmethod``/``classmethod`` wrapper, not the bound result).

    Identity comparisons (restore checks) need this: reading a classmethod
    through the class makes a new bound method every time.
    """
    owner = resolve(point)
    if isinstance(owner, type):
        for klass in owner.__mro__:
            if point.attribute in vars(klass):
                return vars(klass)[point.attribute]
    return getattr(owner, point.attribute)


def source_digest(obj: object) -> str | None:
    try:
        return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()  # type: ignore[arg-type]
    except (OSError, TypeError):
        return None


def verify_patch_points() -> None:
    """Raise if a patched name is gone; warn if a copied function changed."""
    for point in PATCH_POINTS:
        try:
            module = resolve(point)
        except (ImportError, AttributeError) as error:
            raise _fail(f"{point.target} ({error})") from error
        if not callable(getattr(module, point.attribute, None)):
            raise _fail(f"{point.target}.{point.attribute} (patched for: {point.why})")
    for dotted in ALSO_READ:
        module_name, _, attribute = dotted.rpartition(".")
        try:
            found = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as error:
            raise _fail(f"{dotted} (read by target emulation: {error})") from error
        if not callable(found):
            raise _fail(f"{dotted} (read by target emulation; no longer callable)")
    for module_name in CACHED_MODULES:
        try:
            importlib.import_module(module_name)
        except ImportError as error:
            raise _fail(f"module {module_name} (its caches are cleared after emulation: {error})") from error
    for dotted, known in REIMPLEMENTED_SOURCES.items():
        module_name, _, attribute = dotted.rpartition(".")
        digest = source_digest(getattr(sys.modules[module_name], attribute))
        if digest is not None and digest not in known:
            warnings.warn(
                f"helion {helion_version()} changed {dotted}, which helion_remote target emulation "
                "re-implements; the per-session drift check will catch a different config space",
                stacklevel=2,
            )


def loaded_aliases(original: object, *, skip: set[tuple[str, str]]) -> Iterator[tuple[ModuleType, str]]:
    """Other loaded ``helion`` modules that hold ``original`` under any name."""
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "helion" or name.startswith("helion.")):
            continue
        try:
            items = list(vars(module).items())
        except TypeError:
            continue
        for attribute, value in items:
            if value is original and (name, attribute) not in skip:
                yield module, attribute


def _dotted(point: PatchPoint) -> str:
    return f"{point.target}.{point.attribute}".replace(":", ".")


def _private(dotted: str) -> bool:
    return any(part.startswith("_") for part in dotted.split(".")[1:])


PRIVATE_NAMES: tuple[str, ...] = tuple(
    dict.fromkeys(
        name
        for name in (*(_dotted(p) for p in PATCH_POINTS if p.module.startswith("helion")), *ALSO_READ,
                     *REIMPLEMENTED_SOURCES, *CACHED_MODULES)
        if _private(name)
    )
)
"""Every private Helion name target emulation touches (tests/test_import_rules.py holds the
other modules to the compat modules' lists)."""


def current_binding(dotted: str) -> object:
    """A listed Helion module attribute as bound *now* (the emulated answer while emulating)."""
    if dotted not in PRIVATE_NAMES:
        raise KeyError(f"{dotted} is not a name target emulation declares")
    module_name, _, attribute = dotted.rpartition(".")
    return getattr(importlib.import_module(module_name), attribute)


verify_patch_points()

from helion._compiler.compile_environment import CompileEnvironment  # noqa: E402 - checked above (ALSO_READ)
from helion._hardware import HardwareInfo  # noqa: E402 - checked above (ALSO_READ)

__all__ = [
    "ALSO_READ",
    "CACHED_MODULES",
    "CompileEnvironment",
    "HardwareInfo",
    "WARP_SPECIALIZE",
    "PRIVATE_NAMES",
    "PATCH_POINTS",
    "PatchPoint",
    "REIMPLEMENTED_SOURCES",
    "current",
    "current_binding",
    "loaded_aliases",
    "resolve",
    "verify_patch_points",
]
