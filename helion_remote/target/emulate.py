"""Coordinator side: make Helion search the target GPU's space with no GPU.

Two pieces, used together:

* :func:`stand_in_args` turns the user's arguments into FakeTensors on
  ``cuda:0`` (same shapes, strides, offsets and dtypes, no memory), so the
  kernel binds as a CUDA kernel: CPU or ``meta`` tensors would switch off the
  device-type-gated knobs (host tensor descriptors, warp specialization).
* :func:`emulate_target` answers every device query Helion makes (listed in
  :mod:`.patches`) from a :class:`TargetProfile`, and restores everything on
  exit.  Normalization and code generation query lazily, so the context must
  stay open for the whole search, not just the bind.

The patches are process-global (module attributes): one emulated target per
process at a time; a lock enforces it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import sys
import threading
import types
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from unittest import mock

import torch
from torch.utils._pytree import tree_map

from helion_remote.errors import HelionRemoteError
from helion_remote.target import patches
from helion_remote.target.active import ACTIVE as _ACTIVE
from helion_remote.target.active import active_profile
from helion_remote.target.profile import TargetProfile, dtype_key, load_profile

_LOCK = threading.RLock()


class EmulationError(HelionRemoteError, RuntimeError):
    """Emulation was asked for something it cannot do faithfully."""


@dataclasses.dataclass(frozen=True)
class Emulation:
    """What :func:`emulate_target` yields: the profile and exactly what it replaced."""

    profile: TargetProfile
    patched: tuple[str, ...]


# ---------------------------------------------------------------- stand-in arguments


def stand_in_args(args: Sequence[object], device: str = "cuda:0") -> tuple[object, ...]:
    """FakeTensor copies of ``args`` on ``device``; non-tensor leaves pass through.

    Shapes, strides, storage offsets, dtypes and ``requires_grad`` are kept;
    no memory is allocated, so a 4096x4096 matmul costs nothing to bind.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    target = torch.device(device)

    def convert(leaf: object) -> object:
        if not isinstance(leaf, torch.Tensor):
            return leaf
        if leaf.is_sparse or leaf.layout != torch.strided:
            raise EmulationError(f"cannot emulate a {leaf.layout} tensor argument; pass dense tensors")
        size, stride, offset = tuple(leaf.shape), tuple(leaf.stride()), leaf.storage_offset()
        extent = offset + sum((s - 1) * st for s, st in zip(size, stride) if s > 0) + 1 if leaf.numel() else offset
        with mode:
            base = torch.empty(max(extent, 1), dtype=leaf.dtype, device=target)
            fake = base.as_strided(size, stride, offset)
        if leaf.requires_grad:
            fake.requires_grad_(True)
        return fake

    return tuple(tree_map(convert, list(args)))


# ------------------------------------------------------------------------- answers


def _is_target(device: object) -> bool:
    """Device queries with no device, or a CUDA one, are about the target."""
    if device is None or isinstance(device, int):
        return True
    return torch.device(device).type == "cuda"  # type: ignore[arg-type]


def _device_properties(profile: TargetProfile) -> types.SimpleNamespace:
    """A stand-in for ``torch.cuda.get_device_properties`` (same attribute names)."""
    major, minor = profile.compute_capability
    return types.SimpleNamespace(
        name=profile.device_name,
        major=major,
        minor=minor,
        multi_processor_count=profile.num_sms,
        regs_per_multiprocessor=profile.regs_per_multiprocessor,
        max_threads_per_multi_processor=profile.max_threads_per_multiprocessor,
        warp_size=profile.warp_size,
        shared_memory_per_block=profile.shared_memory_per_block,
        shared_memory_per_block_optin=profile.shared_memory_per_block_optin,
        shared_memory_per_multiprocessor=profile.shared_memory_per_multiprocessor,
        L2_cache_size=profile.l2_cache_size,
        total_memory=profile.total_memory,
        gcnArchName=profile.gcn_arch_name or "",
        is_integrated=False,
        is_multi_gpu_board=False,
        uuid="emulated-" + profile.fingerprint[:12],
    )


def _bit_width(dtype_name: str) -> int:
    return torch.empty((), dtype=getattr(torch, dtype_name)).element_size() * 8


def _min_dot_size_answer(profile: TargetProfile, original: Callable[..., Any]) -> Callable[..., Any]:
    def min_dot_size(device: torch.device, lhs: torch.dtype, rhs: torch.dtype) -> tuple[int, int, int]:
        if not _is_target(device):
            return original(device, lhs, rhs)
        exact = profile.min_dot_size(dtype_key(lhs), dtype_key(rhs))
        if exact is not None:
            return exact
        widths = (_bit_width(dtype_key(lhs)), _bit_width(dtype_key(rhs)))
        for key, value in sorted(profile.min_dot_sizes.items()):
            a, b = key.split(",")
            if (_bit_width(a), _bit_width(b)) == widths:
                return value
        raise EmulationError(
            f"target profile {profile.name!r} has no minimum dot size for {lhs} x {rhs}; "
            "re-capture it with benchmarks/capture_target.py"
        )

    return min_dot_size


def _range_choice_answer(profile: TargetProfile) -> Callable[..., None]:
    """``helion.language.loops._add_config_range_choice``, keyed on the target's ``tl.range``.

    Copied from helion 1.5.x (see ``patches.REIMPLEMENTED_SOURCES``); the only
    change is reading the parameter names from the profile instead of the
    local ``triton.language.range``, which may differ or be absent.
    """
    from helion.language import loops

    CompileEnvironment = patches.CompileEnvironment
    params = profile.tl_range_params

    def _add_config_range_choice(block_ids: list[int], allow_static_range: bool = False) -> None:
        if params is None:
            return
        config_spec = CompileEnvironment.current().config_spec
        if profile.compat["use_tileir_tunables"]:
            return
        if allow_static_range:
            config_spec.static_ranges.append(loops.StaticRangeSpec(block_ids))
        if "loop_unroll_factor" in params:
            config_spec.range_unroll_factors.append(loops.RangeUnrollFactorSpec(block_ids))
        if patches.current_binding(patches.WARP_SPECIALIZE)() and "warp_specialize" in params:
            config_spec.range_warp_specialize.append(loops.RangeWarpSpecializeSpec(block_ids))
        if "num_stages" in params:
            config_spec.range_num_stages.append(loops.RangeNumStagesSpec(block_ids))
        if "disallow_acc_multi_buffer" in params:
            config_spec.range_multi_buffers.append(loops.RangeMultiBufferSpec(block_ids))
        if "flatten" in params:
            config_spec.range_flattens.append(loops.RangeFlattenSpec(block_ids))

    return _add_config_range_choice


def _warp_specialize_answer(profile: TargetProfile) -> Callable[[], bool]:
    CompileEnvironment = patches.CompileEnvironment

    def _supports_warp_specialize() -> bool:
        env = CompileEnvironment.current()
        if env.device.type != "cuda" or not env.settings.allow_warp_specialize:
            return False
        return tuple(profile.compute_capability) >= (10, 0)

    return _supports_warp_specialize


def _alignment_answer(original: Callable[[object], tuple[bool, bool]]) -> Callable[[object], tuple[bool, bool]]:
    """FakeTensor stand-ins behave like fresh CUDA allocations (base >= 256-byte aligned)."""

    def tensor_descriptor_runtime_alignment_signature(value: object) -> tuple[bool, bool]:
        if isinstance(value, torch.Tensor) and type(value).__name__ == "FakeTensor" and value.device.type == "cuda":
            offset = value.storage_offset()
            if not isinstance(offset, int):
                return False, False
            return (offset * value.element_size()) % 16 == 0, offset == 0
        return original(value)

    return tensor_descriptor_runtime_alignment_signature


def _answers(profile: TargetProfile, originals: dict[str, Any]) -> dict[str, Any]:
    """Replacement for every ``PatchPoint.answer``, built from ``profile``."""
    from packaging import version

    HardwareInfo = patches.HardwareInfo

    capability = tuple(profile.compute_capability)
    compat = profile.compat
    props = _device_properties(profile)
    hardware = HardwareInfo(**dict(profile.hardware_info))

    def const(value: object) -> Callable[..., object]:
        return lambda *_a, **_k: value

    def target_device_capability(device: torch.device | None = None) -> tuple[int, int] | None:
        return capability if _is_target(device) else None  # type: ignore[return-value]

    def get_num_sm(device: torch.device, *, reserved_sms: int = 0) -> int:
        if device.type != "cuda":
            return originals["get_num_sm"](device, reserved_sms=reserved_sms)
        return profile.num_sms if reserved_sms <= 0 else max(profile.num_sms - reserved_sms, 1)

    def for_target(value: object, fallback: object) -> Callable[..., object]:
        def answer(device: object = None, *_a: object, **_k: object) -> object:
            return value if _is_target(device) else fallback

        return answer

    def get_hardware_info(device: torch.device | None = None) -> HardwareInfo:
        if _is_target(device):
            return hardware
        return originals["hardware_info"](device)

    def triton_version() -> Any:
        if profile.triton_version is None:
            raise ImportError("the target profile has no triton")
        return version.parse(profile.triton_version)

    def jit_supports_do_not_specialize() -> bool:
        jit = profile.triton_jit_params or ()
        return "do_not_specialize" in jit and "do_not_specialize_on_alignment" in jit

    return {
        "target_device_capability": target_device_capability,
        "get_num_sm": get_num_sm,
        "num_sms": for_target(profile.num_sms, 1),
        "regs_per_block": const(profile.regs_per_multiprocessor),
        "num_xcd": const(profile.num_xcd),
        "warps_to_threads": lambda num_warps: num_warps * profile.warp_size,
        "hardware_info": get_hardware_info,
        "device_name": for_target(profile.helion_device_name, None),
        "supports_tensor_descriptor": const(compat["supports_tensor_descriptor"]),
        "supports_host_tensor_descriptor": const(compat["supports_host_tensor_descriptor"]),
        "supports_block_ptr": const(compat["supports_block_ptr"]),
        "supports_maxnreg": const(compat["supports_maxnreg"]),
        "is_hip": const(compat["is_hip"]),
        "is_amd_cdna": const(compat["is_amd_cdna"]),
        "amd_base_arch": const(profile.amd_base_arch),
        "supports_mtia_tunables": const(compat["supports_mtia_tunables"]),
        "use_tileir_tunables": const(compat["use_tileir_tunables"]),
        "fp8_block_ptr_padding_broken": const(compat["fp8_block_ptr_padding_broken"]),
        "sm100_dot_tmem_lhs_broken": for_target(compat["sm100_dot_tmem_lhs_broken"], False),
        "min_dot_size": _min_dot_size_answer(profile, originals["min_dot_size"]),
        "tensor_descriptor_fn_name": const(profile.tensor_descriptor_fn_name),
        "triton_version": triton_version,
        "add_config_range_choice": _range_choice_answer(profile),
        "supports_warp_specialize": _warp_specialize_answer(profile),
        "triton_jit_supports_do_not_specialize": jit_supports_do_not_specialize,
        "fake_gpu_context": lambda device: None,
        "alignment_signature": _alignment_answer(originals["alignment_signature"]),
        "cuda_get_device_properties": _cuda_shim(props, originals["cuda_get_device_properties"]),
        "cuda_get_device_capability": _cuda_shim(capability, originals["cuda_get_device_capability"]),
        "cuda_get_device_name": _cuda_shim(profile.device_name, originals["cuda_get_device_name"]),
        "cuda_current_device": const(0),
        # Class attributes: the stored object must be the same kind of descriptor.
        "inductor_device_interface_properties": staticmethod(
            _cuda_shim(props, originals["inductor_device_interface_properties"])
        ),
        "inductor_device_properties": _inductor_device_properties_answer(
            originals["inductor_device_properties"]
        ),
    }


def _cuda_shim(value: object, original: Callable[..., Any]) -> Callable[..., Any]:
    def shim(device: object = None) -> object:
        return value if _is_target(device) else original(device)

    return shim


def _inductor_device_properties_answer(original: Callable[..., Any]) -> classmethod:  # type: ignore[type-arg]
    """``DeviceProperties.create`` that is never memoized for the target.

    The original is a ``functools.cache``'d classmethod: for the target we call
    the undecorated function (which reads the patched device interface), so an
    entry cached before emulation (a local GPU) is not served and nothing
    emulated is left cached after it.  Other devices keep the cached path.
    """
    cached = getattr(original, "__func__", original)
    uncached = inspect.unwrap(cached)

    def create(cls: type, device: torch.device) -> Any:
        if _is_target(device):
            return uncached(cls, device)
        return cached(cls, device)

    return classmethod(create)


# ------------------------------------------------------------------------- context


def _cached_functions() -> list[Any]:
    found = []
    for name in patches.CACHED_MODULES:
        module = sys.modules.get(name)
        for value in vars(module).values() if module else ():
            if callable(getattr(value, "cache_info", None)) and callable(getattr(value, "cache_clear", None)):
                found.append(value)
    return found


@contextlib.contextmanager
def emulate_target(profile: TargetProfile | str | os.PathLike[str]) -> Iterator[Emulation]:
    """Answer Helion's device queries from ``profile`` until the block exits.

    ``profile`` is a :class:`TargetProfile`, a built-in name or a JSON path.
    Bind the kernel inside the block on :func:`stand_in_args`, and keep the
    block open for the whole search (codegen and ``normalize`` query lazily).
    Re-entering with the same profile is a no-op; a different one raises.
    """
    profile = load_profile(profile)
    _warn_on_version_skew(profile)
    with _LOCK:
        if _ACTIVE:
            if _ACTIVE[-1].fingerprint != profile.fingerprint:
                raise EmulationError(
                    f"already emulating target {_ACTIVE[-1].name!r}; one target per process at a time"
                )
            _ACTIVE.append(profile)
            try:
                yield Emulation(profile, ())
            finally:
                _ACTIVE.pop()
            return
        with contextlib.ExitStack() as stack:
            patched = _apply(profile, stack)
            _ACTIVE.append(profile)
            stack.callback(_ACTIVE.pop)
            yield Emulation(profile, tuple(patched))


def _warn_on_version_skew(profile: TargetProfile) -> None:
    """The space is built by *this* Helion; a worker on another one searches another space."""
    from helion_remote._versions import helion_version

    local = helion_version()
    if profile.helion_version and local != "unknown" and profile.helion_version != local:
        warnings.warn(
            f"target profile {profile.name!r} was captured with helion {profile.helion_version}, "
            f"this coordinator runs helion {local}: config spaces can differ between Helion versions "
            "(the drift check will say); install the worker's helion here",
            stacklevel=4,
        )


def _apply(profile: TargetProfile, stack: contextlib.ExitStack) -> list[str]:
    points = patches.PATCH_POINTS
    originals = {p.answer: getattr(patches.resolve(p), p.attribute) for p in reversed(points)}
    answers = _answers(profile, originals)
    missing = {p.answer for p in points} - set(answers)
    if missing:  # pragma: no cover - programming error
        raise EmulationError(f"no emulated answer for {sorted(missing)}")
    cached = _cached_functions()
    sizes = [fn.cache_info().currsize for fn in cached]

    def clear_leaked() -> None:
        # A cached Helion helper called under emulation may have memoized a
        # target answer; forget anything cached while we were active.
        for fn, size in zip(cached, sizes):
            if fn.cache_info().currsize != size:
                fn.cache_clear()

    stack.callback(clear_leaked)
    patched: list[str] = []
    done: set[tuple[str, str]] = set()
    for point in points:
        owner = patches.resolve(point)
        original = getattr(owner, point.attribute)
        targets: list[tuple[object, str, str]] = [(owner, point.target, point.attribute)]
        if point.module.startswith("helion") and not point.owner:
            skip = done | {(p.target, p.attribute) for p in points}
            targets += [(m, m.__name__, a) for m, a in patches.loaded_aliases(original, skip=skip)]
        for target_owner, target_name, attribute in targets:
            key = (target_name, attribute)
            if key in done:
                continue
            # mock restores a class attribute from the class __dict__ (descriptor intact).
            stack.enter_context(mock.patch.object(target_owner, attribute, answers[point.answer]))
            done.add(key)
            patched.append(f"{key[0]}.{key[1]}")
    return patched


__all__ = ["Emulation", "EmulationError", "active_profile", "emulate_target", "stand_in_args"]
