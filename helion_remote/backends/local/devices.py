"""Which GPUs the ``local`` backend runs on, and refusing a pool of mixed models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence

from helion_remote.errors import BackendUnavailableError, ConfigurationError

Gpu = tuple[int, str, int]
"""``(index, model, total_memory_bytes)``."""


class MixedDevicesError(BackendUnavailableError):
    """The visible GPUs are not all one model: their timings would not compare."""


def visible_gpus(devices: Sequence[int] | None) -> list[Gpu]:
    """The GPUs to use; empty means the Triton interpreter on CPU."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return []
    import torch

    if not torch.cuda.is_available():
        # A coordinator may hide the GPUs from itself (CUDA_VISIBLE_DEVICES="")
        # and still drive workers on them: ask a probe process that sees them.
        return probe_gpus(devices) if devices else []
    indices = list(devices) if devices is not None else list(range(torch.cuda.device_count()))
    out = []
    for i in indices:
        props = torch.cuda.get_device_properties(i)
        out.append((i, props.name, int(props.total_memory)))
    return out


def probe_gpus(devices: Sequence[int]) -> list[Gpu]:
    """``visible_gpus`` for physical ``devices`` the calling process cannot see."""
    code = (
        "import json, torch\n"
        "print(json.dumps([[torch.cuda.get_device_properties(i).name, torch.cuda.get_device_properties(i).total_memory]"
        " for i in range(torch.cuda.device_count())]))"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(str(d) for d in devices)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise BackendUnavailableError(f"could not probe GPUs {list(devices)}: {proc.stderr.strip()[-500:]}")
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    if len(found) != len(devices):
        raise ConfigurationError(f"devices={list(devices)} asked for, but only {len(found)} of them exist on this host")
    return [(d, name, int(mem)) for d, (name, mem) in zip(devices, found)]


def check_one_model(gpus: Sequence[Gpu]) -> None:
    """Refuse a pool of several GPU models: a config's timings on each would not compare."""
    models = sorted({name for _, name, _ in gpus})
    if len(models) > 1:
        listing = ", ".join(f"cuda:{i}={name}" for i, name, _ in gpus)
        raise MixedDevicesError(
            f"the local pool mixes GPU models ({listing}); timings across models do not compare. "
            f"Pass devices=[...] to pick one model or allow_mixed_devices=True."
        )
