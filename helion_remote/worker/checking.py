"""Accuracy and mutation checks: is a candidate's output the reference's?

The session runs the reference once on pristine arguments; which argument
leaves it changed are the kernel's outputs too, so every candidate runs on
fresh copies of those leaves and is compared on its return value *and* on
them (as Helion's autotuner checks mutated arguments).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
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
    nan_masks: dict[int, torch.Tensor] = dataclasses.field(default_factory=dict)
    """Where the reference's results hold NaN, by leaf of ``(baseline, baseline_post)``."""

    def fresh_args(self) -> list[object]:
        """The pristine arguments with every mutated leaf (and what aliases it) replaced by a copy."""
        return tree_unflatten(clone_leaves(self.leaves, self.mutated), self.spec_tree)

    def record_baseline(self, output: object, clones: list[object]) -> None:
        """Keep the reference's output and the leaves it changed (fp8 results compare bitwise, as Helion)."""
        self.mutated = tuple(
            i for i, (before, after) in enumerate(zip(self.leaves, clones, strict=True)) if _changed(before, after)
        )
        self.baseline = output
        self.baseline_post = [clones[i] for i in self.mutated]  # type: ignore[misc]
        dtypes = [t.dtype for t in _tensor_leaves((output, self.baseline_post))]
        self.bitwise = bool(dtypes) and all(hc.is_fp8_dtype(d) for d in dtypes)
        expected, _ = tree_flatten((output, self.baseline_post))
        self.nan_masks = {i: mask for i, leaf in enumerate(expected) if (mask := _nan_mask(leaf)) is not None}

    def reference_problem(self) -> str | None:
        """Why the reference's own results cannot check a candidate, or None.

        A result that is NaN everywhere tells no candidate from another: any
        kernel that returns NaN would pass.  (A reference whose NaNs move
        between runs is caught by running it twice: see the runtime.)
        """
        floats = [t for t in _tensor_leaves((self.baseline, self.baseline_post))
                  if (t.is_floating_point() or t.is_complex()) and t.numel() and not hc.is_fp8_dtype(t.dtype)]
        if floats and all(bool(t.isnan().all()) for t in floats):
            return "every floating-point value it returns or writes is NaN"
        return None

    def accuracy_problem(self, output: object, args: list[object], tolerances: Tolerances) -> str | None:
        """Why the candidate's results differ from the reference's, or None when they match."""
        leaves, _ = tree_flatten(args)
        actual: object = (output, [leaves[i] for i in self.mutated])
        expected: object = (self.baseline, self.baseline_post)
        if self.nan_masks and not self.bitwise:
            masked = _mask_matching_nans(actual, expected, self.nan_masks)
            if isinstance(masked, str):
                return masked
            actual, expected = masked
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
    """A copy with the same sizes, strides and offset: generated code bakes strides in."""
    return clone_leaves([leaf], [0])[0]


def clone_leaves(leaves: list[object], indices: Sequence[int] | None = None) -> list[object]:
    """``leaves`` with the tensors at ``indices`` (all when None) replaced by copies.

    Whole storages are copied, once each, and every view is rebuilt on its
    copy with the same dtype, sizes, strides and offset.  So every layout torch
    allows survives: expanded (stride 0, where ``empty_strided(...).copy_`` fails
    on the overlap), transposed, offset views, and arguments that share one
    storage still share it (a tensor aliasing a copied one is copied with it,
    as Helion's ``_clone_args`` does).
    """
    chosen = range(len(leaves)) if indices is None else indices
    picked = {_storage_key(leaves[i]) for i in chosen if isinstance(leaves[i], torch.Tensor)}
    copies: dict[tuple[str, int, int], torch.UntypedStorage] = {}
    out = list(leaves)
    for i, leaf in enumerate(leaves):
        if not isinstance(leaf, torch.Tensor):
            continue
        key = _storage_key(leaf)
        if key not in picked:
            continue
        storage = copies.get(key)
        if storage is None:
            storage = copies[key] = leaf.untyped_storage().clone()
        out[i] = _view_on(leaf, storage)
    return out


def _storage_key(t: torch.Tensor) -> tuple[str, int, int]:
    storage = t.untyped_storage()
    if storage.nbytes() == 0:  # empty storages all share data_ptr 0: never group them
        return ("empty", id(t), 0)
    return (str(storage.device), storage.data_ptr(), storage.nbytes())


def _view_on(leaf: torch.Tensor, storage: torch.UntypedStorage) -> torch.Tensor:
    """``leaf``'s view (a lazy conjugate stays lazy: the storage holds unconjugated values)."""
    out = torch.empty(0, dtype=leaf.dtype, device=leaf.device)
    out.set_(storage, leaf.storage_offset(), leaf.size(), leaf.stride())
    return out.conj() if leaf.is_conj() else out


def _changed(before: object, after: object) -> bool:
    """Bitwise: a NaN the kernel never wrote is not a mutation (``NaN != NaN`` would say it is)."""
    if not isinstance(before, torch.Tensor) or not isinstance(after, torch.Tensor):
        return False
    try:
        return not torch.equal(_bits(before), _bits(after))
    except RuntimeError:  # as Helion: an uncomparable leaf counts as not mutated
        return False


_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The same elements as integers of the same width, so equality is bitwise."""
    if t.is_complex():
        t = torch.view_as_real(t.resolve_conj())
    if t.dtype.is_floating_point and t.element_size() in _INT_OF_SIZE:
        return t.view(_INT_OF_SIZE[t.element_size()])
    return t


def _nan_mask(leaf: object) -> torch.Tensor | None:
    if not isinstance(leaf, torch.Tensor) or not (leaf.is_floating_point() or leaf.is_complex()):
        return None
    if hc.is_fp8_dtype(leaf.dtype):
        return None  # compared bitwise
    mask = leaf.isnan()
    return mask if bool(mask.any()) else None


def _mask_matching_nans(
    actual: object, expected: object, masks: dict[int, torch.Tensor]
) -> tuple[object, object] | str:
    """NaN-aware comparison (``equal_nan=True``): NaN where the reference has NaN matches.

    Returns both trees with those NaNs zeroed, or why the NaNs do not line up.
    A NaN where the reference has a number still fails the ordinary check.
    """
    a_leaves, a_spec = tree_flatten(actual)
    e_leaves, e_spec = tree_flatten(expected)
    if a_spec != e_spec:
        return actual, expected  # assert_close names the structure mismatch
    for i, mask in masks.items():
        got = a_leaves[i]
        if not isinstance(got, torch.Tensor) or got.shape != mask.shape:
            return actual, expected
        got_nan = got.isnan() if (got.is_floating_point() or got.is_complex()) else torch.zeros_like(mask)
        if not torch.equal(got_nan, mask):
            missing = int((mask & ~got_nan).sum())
            extra = int((got_nan & ~mask).sum())
            return (f"NaN positions differ from the reference's in result leaf {i}: "
                    f"{missing} reference NaN(s) have a number, {extra} new NaN(s)")
        a_leaves[i] = got.masked_fill(mask, 0)
        e_leaves[i] = e_leaves[i].masked_fill(mask, 0)
    return tree_unflatten(a_leaves, a_spec), tree_unflatten(e_leaves, e_spec)


def _tensor_leaves(tree: object) -> list[torch.Tensor]:
    return [x for x in tree_flatten(tree)[0] if isinstance(x, torch.Tensor)]
