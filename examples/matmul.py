"""Autotune a Helion matmul with helion-remote on the default backend.

On a machine with a GPU this is the 4096^3 fp16 matmul at full effort; on a
CPU-only machine it tunes a small fp32 matmul with real generated kernels
under the Triton interpreter (interpreter timings, so the point is the
pipeline, not the numbers).

    python examples/matmul.py            # backend from $HELION_REMOTE_BACKEND, else "local"
"""

from __future__ import annotations

import torch

import helion
import helion.language as hl
import helion_remote


@helion.kernel(static_shapes=True)
def matmul(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    m, k = x.size()
    _k, n = y.size()
    out = torch.empty([m, n], dtype=x.dtype, device=x.device)
    for tile_m, tile_n in hl.tile([m, n]):
        acc = hl.zeros([tile_m, tile_n], dtype=torch.float32)
        for tile_k in hl.tile(k):
            acc = torch.addmm(acc, x[tile_m, tile_k], y[tile_k, tile_n])
        out[tile_m, tile_n] = acc.to(x.dtype)
    return out


def main() -> None:
    if torch.cuda.is_available():
        args = tuple(torch.randn(4096, 4096, device="cuda", dtype=torch.float16) for _ in range(2))
        result = helion_remote.autotune(matmul, args, algorithm="PatternSearch", effort="full")
    else:
        args = tuple(torch.randn(64, 64) for _ in range(2))
        result = helion_remote.autotune(
            matmul, args, algorithm="PatternSearch", effort="quick", autotune_max_generations=2
        )
    print(f"best {result.best_ms:.4f} ms after {result.stats['configs_measured']} configs "
          f"in {result.stats['wall_s']:.1f}s; failures {result.stats['failures']}")



if __name__ == "__main__":
    main()
