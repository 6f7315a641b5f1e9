"""``TargetProfile``: every device and toolchain fact Helion's search reads.

Helion builds the config space (and generates code) from whatever device the
process sees.  A coordinator with no GPU would search a CPU-shaped space, so
a worker captures these facts once on the real GPU and the coordinator
answers Helion's device queries from them (:mod:`.emulate`).

The profile is plain JSON.  Its ``fingerprint`` hashes the facts only (not the
``name``/``captured``/``source`` metadata), so two profiles that make Helion
behave the same share a fingerprint and a result-cache key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from helion_remote.errors import ConfigurationError

SCHEMA_VERSION = 1
PROFILES_PACKAGE = "helion_remote.profiles"
_METADATA_FIELDS = frozenset({"name", "captured", "source"})

COMPAT_PREDICATES: tuple[str, ...] = (
    "supports_tensor_descriptor",
    "supports_host_tensor_descriptor",
    "supports_block_ptr",
    "supports_maxnreg",
    "is_hip",
    "supports_amd_cdna_tunables",
    "is_amd_cdna",
    "supports_mtia_tunables",
    "use_tileir_tunables",
    "fp8_block_ptr_padding_broken",
    "sm100_dot_tmem_lhs_broken",
)
"""Helion ``_compat`` predicates, captured by value on the worker."""


class ProfileError(ConfigurationError):
    """A profile file or name that cannot be used."""


@dataclasses.dataclass(frozen=True)
class TargetProfile:
    """What Helion would learn from the target GPU and its software stack.

    Device fields mirror ``torch.cuda.get_device_properties``; ``compat``
    holds Helion's ``_compat`` predicates; ``tl_range_params`` and
    ``triton_jit_params`` are the parameter names of ``triton.language.range``
    and ``triton.jit`` (Helion offers a ``tl.range`` knob only if Triton
    accepts it); ``min_dot_sizes`` maps ``"lhs,rhs"`` dtype names to Triton's
    minimum ``(m, n, k)`` dot sizes.
    """

    name: str
    device_name: str
    """``torch.cuda.get_device_name``: the name heuristics match on."""
    helion_device_name: str | None
    """``helion._compat.get_device_name`` (e.g. H100 variants collapse to ``NVIDIA H100``)."""
    compute_capability: tuple[int, int]
    num_sms: int
    regs_per_multiprocessor: int
    max_threads_per_multiprocessor: int
    warp_size: int
    shared_memory_per_block: int
    shared_memory_per_block_optin: int
    shared_memory_per_multiprocessor: int
    l2_cache_size: int
    total_memory: int
    hardware_info: Mapping[str, str]
    """``dataclasses.asdict(helion._hardware.get_hardware_info(device))``."""
    compat: Mapping[str, bool]
    tl_range_params: tuple[str, ...] | None
    """``None`` means no Triton on the target (no ``tl.range`` knobs at all)."""
    triton_jit_params: tuple[str, ...] | None
    min_dot_sizes: Mapping[str, tuple[int, int, int]]
    num_xcd: int = 1
    gcn_arch_name: str | None = None
    amd_base_arch: str | None = None
    tensor_descriptor_fn_name: str = "tl.make_tensor_descriptor"
    torch_version: str | None = None
    torch_cuda_version: str | None = None
    torch_hip_version: str | None = None
    triton_version: str | None = None
    helion_version: str | None = None
    device_kind: str = "cuda"
    schema_version: int = SCHEMA_VERSION
    captured: bool = False
    """True only when :func:`~helion_remote.target.capture.capture_profile` wrote it on the GPU."""
    source: str = ""

    # ------------------------------------------------------------- identity

    def identity(self) -> dict[str, Any]:
        """The facts that can change Helion's behaviour (what the fingerprint hashes)."""
        data = self.to_dict()
        for key in _METADATA_FIELDS:
            data.pop(key, None)
        return data

    @property
    def fingerprint(self) -> str:
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def capability_str(self) -> str:
        return f"sm{self.compute_capability[0]}{self.compute_capability[1]}"

    # --------------------------------------------------------- serialization

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["compute_capability"] = list(self.compute_capability)
        data["hardware_info"] = dict(self.hardware_info)
        data["compat"] = dict(sorted(self.compat.items()))
        data["min_dot_sizes"] = {k: list(v) for k, v in sorted(self.min_dot_sizes.items())}
        for key in ("tl_range_params", "triton_jit_params"):
            data[key] = None if data[key] is None else list(data[key])
        return data

    def to_json(self) -> str:
        """Pretty JSON with the fingerprint stated (checked again on load)."""
        data = self.to_dict()
        data["fingerprint"] = self.fingerprint
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TargetProfile:
        data = dict(data)
        stated = data.pop("fingerprint", None)  # informational copy in files
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ProfileError(f"unknown profile fields {unknown}; known fields: {sorted(known)}")
        version = data.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise ProfileError(
                f"profile schema_version {version} is not supported (this helion_remote reads "
                f"{SCHEMA_VERSION}); re-capture the profile with benchmarks/capture_target.py"
            )
        try:
            data["compute_capability"] = tuple(int(v) for v in data["compute_capability"])
            data["min_dot_sizes"] = {
                str(k): tuple(int(x) for x in v) for k, v in dict(data.get("min_dot_sizes", {})).items()
            }
            for key in ("tl_range_params", "triton_jit_params"):
                if data.get(key) is not None:
                    data[key] = tuple(str(p) for p in data[key])
            data["compat"] = {str(k): bool(v) for k, v in dict(data["compat"]).items()}
            data["hardware_info"] = {str(k): str(v) for k, v in dict(data["hardware_info"]).items()}
            profile = cls(**data)
        except (KeyError, TypeError, ValueError) as error:
            raise ProfileError(f"malformed target profile: {error}") from error
        missing = sorted(set(COMPAT_PREDICATES) - set(profile.compat))
        if missing:
            raise ProfileError(f"profile {profile.name!r} lacks compat predicates {missing}")
        if stated is not None and stated != profile.fingerprint:
            raise ProfileError(
                f"profile {profile.name!r} states fingerprint {str(stated)[:16]}... but its facts hash to "
                f"{profile.fingerprint[:16]}...: the file was edited; delete its \"fingerprint\" field "
                "or re-capture it"
            )
        return profile

    @classmethod
    def from_json(cls, text: str) -> TargetProfile:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as error:
            raise ProfileError(f"target profile is not valid JSON: {error}") from error

    # -------------------------------------------------------------- lookups

    def min_dot_size(self, lhs: str, rhs: str) -> tuple[int, int, int] | None:
        """Triton's minimum dot shape for a dtype pair, or ``None`` if never captured."""
        return self.min_dot_sizes.get(f"{lhs},{rhs}")


def builtin_names() -> list[str]:
    root = resources.files(PROFILES_PACKAGE)
    return sorted(p.name[: -len(".json")] for p in root.iterdir() if p.name.endswith(".json") and p.name.count(".") == 1)


def load_profile(name_or_path: str | os.PathLike[str] | TargetProfile) -> TargetProfile:
    """A built-in profile by name (``"h100"``), or a profile JSON file by path."""
    if isinstance(name_or_path, TargetProfile):
        return name_or_path
    text = str(name_or_path)
    path = Path(text)
    if path.suffix == ".json" or path.exists():
        try:
            return TargetProfile.from_json(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise ProfileError(f"cannot read target profile {text!r}: {error}") from error
    names = builtin_names()
    key = text.lower()
    if key not in names:
        raise ProfileError(
            f"unknown target {text!r}; built-in targets: {', '.join(names)} "
            "(or pass the path of a profile JSON written by benchmarks/capture_target.py)"
        )
    resource = resources.files(PROFILES_PACKAGE).joinpath(f"{key}.json")
    return TargetProfile.from_json(resource.read_text(encoding="utf-8"))


def dtype_key(dtype: object) -> str:
    """``torch.float16`` -> ``"float16"``: the dtype spelling in ``min_dot_sizes``."""
    return str(dtype).removeprefix("torch.")


__all__ = [
    "COMPAT_PREDICATES",
    "ProfileError",
    "TargetProfile",
    "builtin_names",
    "dtype_key",
    "load_profile",
]
