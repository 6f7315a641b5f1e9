"""Three small kernels that exercise the device-dependent parts of the space.

A matmul (tensor descriptors, ``tl.range`` knobs, maxnreg, dot sizes,
compiler-seeded defaults), a softmax and a layer norm (reductions, persistent
rows).  ``benchmarks/capture_target.py`` binds them on the real GPU and the
tests bind them under emulation; equal fingerprints prove the profile.  The
module is shipped to workers by source (it must stay self-contained).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

import helion
import helion.language as hl


@helion.kernel(static_shapes=True)
def matmul(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    m, k = x.size()
    _k2, n = y.size()
    out = torch.empty([m, n], dtype=x.dtype, device=x.device)
    for tile_m, tile_n in hl.tile([m, n]):
        acc = hl.zeros([tile_m, tile_n], dtype=torch.float32)
        for tile_k in hl.tile(k):
            acc = torch.addmm(acc, x[tile_m, tile_k], y[tile_k, tile_n])
        out[tile_m, tile_n] = acc.to(x.dtype)
    return out


@helion.kernel(static_shapes=True)
def softmax(x: torch.Tensor) -> torch.Tensor:
    n, _m = x.size()
    out = torch.empty_like(x)
    for tile_n in hl.tile(n):
        out[tile_n, :] = torch.nn.functional.softmax(x[tile_n, :], dim=1)
    return out


@helion.kernel(static_shapes=True)
def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    m, _n = x.size()
    out = torch.empty_like(x)
    for tile_m in hl.tile(m):
        row = x[tile_m, :].to(torch.float32)
        mean = torch.mean(row, dim=-1, keepdim=True)
        centered = row - mean
        var = torch.mean(centered * centered, dim=-1, keepdim=True)
        normed = centered * torch.rsqrt(var + 1e-5)
        out[tile_m, :] = (normed * weight[None, :].to(torch.float32) + bias[None, :].to(torch.float32)).to(x.dtype)
    return out


def _matmul_args(device: str, size: int) -> tuple[torch.Tensor, ...]:
    return (
        torch.randn(size, size, dtype=torch.float16, device=device),
        torch.randn(size, size, dtype=torch.float16, device=device),
    )


def _softmax_args(device: str, size: int) -> tuple[torch.Tensor, ...]:
    return (torch.randn(size, size, dtype=torch.float16, device=device),)


def _layer_norm_args(device: str, size: int) -> tuple[torch.Tensor, ...]:
    return (
        torch.randn(size, size, dtype=torch.float16, device=device),
        torch.randn(size, dtype=torch.float16, device=device),
        torch.randn(size, dtype=torch.float16, device=device),
    )


PROBES: dict[str, Callable[[str, int], tuple[torch.Tensor, ...]]] = {
    "matmul": _matmul_args,
    "softmax": _softmax_args,
    "layer_norm": _layer_norm_args,
}
"""Kernel attribute name -> argument factory ``(device, size)``."""

DEFAULT_SIZE = 4096
"""matmul 4096^3 fp16; softmax and layer norm over 4096x4096 fp16."""


def probe_args(name: str, device: str = "cpu", size: int = DEFAULT_SIZE) -> tuple[torch.Tensor, ...]:
    if name not in PROBES:
        raise KeyError(f"unknown probe kernel {name!r}; probes: {', '.join(PROBES)}")
    return PROBES[name](device, size)
