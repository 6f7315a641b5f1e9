"""Accuracy and mutation checks: is a candidate's output the reference's?

The session runs the reference once on pristine arguments; which argument
leaves it changed are the kernel's outputs too, so every candidate runs on
fresh copies of those leaves and is compared on its return value *and* on
them (as Helion's autotuner checks mutated arguments).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from helion_remote.protocol import SessionSpec, Tolerances
from helion_remote.worker import _helion_worker_compat as hc


@dataclasses.dataclass
class Session:
    """One open session in a worker: the arguments and the reference's results."""

    spec: SessionSpec
    args: list[object]
    leaves: list[object]
    spec_tree: Any
    mutated: tuple[int, ...]
    baseline: object = None
    baseline_post: list[torch.Tensor] = dataclasses.field(default_factory=list)
    bitwise: bool = False

    def fresh_args(self) -> list[object]:
        """The pristine arguments with every mutated leaf replaced by a copy."""
        leaves = list(self.leaves)
        for i in self.mutated:
            leaves[i] = clone_leaf(leaves[i])
        return tree_unflatten(leaves, self.spec_tree)

    def record_baseline(self, output: object, clones: list[object]) -> None:
        """Keep the reference's output and the leaves it changed (fp8 results compare bitwise, as Helion)."""
        self.mutated = tuple(
            i for i, (before, after) in enumerate(zip(self.leaves, clones, strict=True)) if _changed(before, after)
        )
        self.baseline = output
        self.baseline_post = [clones[i] for i in self.mutated]  # type: ignore[misc]
        dtypes = [t.dtype for t in _tensor_leaves((output, self.baseline_post))]
        self.bitwise = bool(dtypes) and all(hc.is_fp8_dtype(d) for d in dtypes)

    def accuracy_problem(self, output: object, args: list[object], tolerances: Tolerances) -> str | None:
        """Why the candidate's results differ from the reference's, or None when they match."""
        leaves, _ = tree_flatten(args)
        actual = (output, [leaves[i] for i in self.mutated])
        expected = (self.baseline, self.baseline_post)
        atol, rtol = (0.0, 0.0) if self.bitwise else (tolerances.atol, tolerances.rtol)
        try:
            hc.assert_close(actual, expected, atol=atol, rtol=rtol,
                            scale_atol_by_expected_rms=tolerances.scale_atol and not self.bitwise)
        except AssertionError as error:
            return str(error)
        return None


def open_session_args(spec: SessionSpec, args: list[object]) -> Session:
    leaves, tree = tree_flatten(args)
    return Session(spec, args, leaves, tree, mutated=())


def clone_leaf(leaf: object) -> object:
    """A copy with the same sizes AND strides: generated code bakes strides in."""
    if not isinstance(leaf, torch.Tensor):
        return leaf
    out = torch.empty_strided(leaf.size(), leaf.stride(), dtype=leaf.dtype, device=leaf.device)
    out.copy_(leaf)
    return out


def _changed(before: object, after: object) -> bool:
    if not isinstance(before, torch.Tensor) or not isinstance(after, torch.Tensor):
        return False
    try:
        return not torch.equal(before, after)
    except RuntimeError:  # as Helion: an uncomparable leaf counts as not mutated
        return False


def _tensor_leaves(tree: object) -> list[torch.Tensor]:
    return [x for x in tree_flatten(tree)[0] if isinstance(x, torch.Tensor)]
