"""Small Helion kernels shared by the tests (CPU-sized shapes)."""

from __future__ import annotations

import torch

import helion
import helion.language as hl

# The package's probe kernels are the tests' matmul and softmax: one definition.
from helion_remote.target.probe_kernels import matmul, softmax

__all__ = ["ARGS", "EAGER", "add_inplace", "matmul", "softmax"]


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
