"""Small Helion kernels shared by the tests (CPU-sized shapes)."""

from __future__ import annotations

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
def add_inplace(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    for tile in hl.tile(x.size()):
        x[tile] = x[tile] + y[tile]
    return x


def matmul_args(size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(size, size, generator=gen), torch.randn(size, size, generator=gen))


def softmax_args() -> tuple[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(32, 64, generator=gen),)


def add_inplace_args() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    return (torch.randn(32, 32, generator=gen), torch.randn(32, 32, generator=gen))


def _eager_add_inplace(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x += y
    return x


ARGS = {"matmul": lambda: matmul_args(32), "softmax": softmax_args, "add_inplace": add_inplace_args}
EAGER = {
    "matmul": lambda x, y: x @ y,
    "softmax": lambda x: torch.softmax(x, dim=1),
    "add_inplace": _eager_add_inplace,
}
