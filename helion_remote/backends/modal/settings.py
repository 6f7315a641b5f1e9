"""Settings of the Modal backend: environment defaults, constructor overrides.

One frozen dataclass, read once per executor, so the coordinator, the
deploy CLI and the app definition agree on names and limits.  Every field
has a documented default (docs/modal.md) and an environment variable;
constructor keyword arguments win over the environment.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Literal

from helion_remote.errors import ConfigurationError

Mode = Literal["auto", "deployed", "ephemeral"]
MODES: tuple[str, ...] = ("auto", "deployed", "ephemeral")

ENV_PREFIX = "HELION_REMOTE_MODAL_"
BLOB_MOUNT = "/helion-remote-blobs"
"""Where the worker sees the blob Volume (attached per run with ``with_options``)."""
WORKER_CLS_NAME = "Worker"

_UPGRADABLE_GPUS = ("H100",)
"""Modal may silently run these on a faster GPU unless the name ends in ``!``."""


class ModalSettingsError(ConfigurationError):
    """A Modal backend setting has a value the backend cannot use."""


@dataclasses.dataclass(frozen=True)
class ModalSettings:
    """What the Modal backend runs on, and how much of it.

    Defaults are the documented ones; ``from_env`` reads
    ``HELION_REMOTE_MODAL_<FIELD>`` for every field.
    """

    gpu: str = "H100!"
    """One GPU type, pinned: ``H100`` becomes ``H100!`` so Modal never upgrades it."""
    max_containers: int = 10
    """Upper bound on GPU containers this executor holds at once (jobs + re-timing)."""
    app_name: str = "helion-remote"
    volume_name: str = "helion-remote-blobs"
    environment: str | None = None
    """Modal environment; ``None`` uses Modal's own default (``MODAL_ENVIRONMENT``)."""
    mode: Mode = "auto"
    """``auto``: deployed app if found, else an ephemeral one; ``deployed``: refuse if
    not deployed; ``ephemeral``: always run a temporary app."""
    scaledown_window_s: int = 120
    """Idle seconds before Modal stops a container: bridges generations, billed."""
    startup_timeout_s: int = 900
    """Container start (image pull, torch import, CUDA init) allowance."""
    session_load_s: int = 120
    """Added to each job's Modal timeout: the first job on a container loads the args."""
    wait_timeout_s: float = 3600.0
    """Longest the coordinator waits for one job (queueing included) before calling it lost."""
    cpu: float = 2.0
    memory_mib: int = 8192
    max_cost_usd: float | None = None
    """Dollar budget for this executor; ``None`` means no budget."""
    cold_start_s: float = 20.0
    """Billed seconds per container before our code runs (scheduling, image load): an estimate."""
    print_cost: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ModalSettingsError(f"unknown Modal mode {self.mode!r}; valid modes: {', '.join(MODES)}")
        if self.max_containers < 1:
            raise ModalSettingsError(f"max_containers must be >= 1, got {self.max_containers!r}")
        if self.max_cost_usd is not None and self.max_cost_usd <= 0:
            raise ModalSettingsError(f"max_cost_usd must be > 0, got {self.max_cost_usd!r}")
        object.__setattr__(self, "gpu", pin_gpu(self.gpu))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> ModalSettings:
        """Defaults < ``HELION_REMOTE_MODAL_*`` < ``overrides`` (``None`` overrides are ignored)."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for field in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + field.name.upper())
            if raw is not None and raw != "":
                values[field.name] = _parse(field, raw)
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown Modal setting(s) {sorted(unknown)}; valid: {[f.name for f in dataclasses.fields(cls)]}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    @property
    def gpu_type(self) -> str:
        """The bare type for the price table: ``"H100!"`` -> ``"H100"``."""
        return self.gpu.split(":", 1)[0].rstrip("!").upper()

    @property
    def gpu_count(self) -> int:
        return int(self.gpu.split(":", 1)[1]) if ":" in self.gpu else 1

    @property
    def job_containers(self) -> int:
        """Containers for jobs: one of ``max_containers`` is kept for re-timing when there are two or more."""
        return max(1, self.max_containers - 1)

    @property
    def dedicated_retime(self) -> bool:
        return self.max_containers >= 2


def pin_gpu(spec: str) -> str:
    """One exact GPU type: ``"H100"`` -> ``"H100!"``; lists and empty names are refused.

    A fallback list or an upgradable name would let timings of one search
    come from different GPU models, which do not compare.
    """
    if not isinstance(spec, str) or not spec.strip() or "," in spec:
        raise ModalSettingsError(
            f"gpu must be ONE Modal GPU type such as 'H100!' or 'A100-80GB', got {spec!r}; "
            "timings from different GPU models do not compare"
        )
    spec = spec.strip()
    name, sep, count = spec.partition(":")
    if name.upper() in _UPGRADABLE_GPUS:
        name += "!"
    return f"{name}{sep}{count}"


def _parse(field: dataclasses.Field[object], raw: str) -> object:
    kind = str(field.type)
    name = ENV_PREFIX + field.name.upper()
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
        if kind.startswith("bool"):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
    except ValueError:
        raise ModalSettingsError(f"${name}={raw!r} is not a valid {kind}") from None
    return raw


ENV_VARS: dict[str, str] = {f.name: ENV_PREFIX + f.name.upper() for f in dataclasses.fields(ModalSettings)}
