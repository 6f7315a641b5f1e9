"""Inputs torch allows but a naive worker chokes on: broadcast (stride-0), transposed,
offset and aliased arguments, NaN and -inf.  Checked at the worker-copy level and end to
end on the local backend (real worker processes, Triton interpreter, real kernels)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import helion
import helion.language as hl
from helion_remote.argcodec import decode_args, encode_args, upload_args
from helion_remote.backends.local import LocalExecutor
from helion_remote.errors import SessionOpenError
from helion_remote.protocol import BenchmarkJob, KernelSource, SessionSpec, Tolerances
from helion_remote.worker.checking import clone_leaves, open_session_args

pytestmark = pytest.mark.filterwarnings("ignore:helion_remote local backend")


@helion.kernel(static_shapes=True)
def hi_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(y)
    for tile in hl.tile(y.size()):
        out[tile] = x[tile] + y[tile]
    return out


@helion.kernel(static_shapes=True)
def hi_iadd(x: torch.Tensor, y: torch.Tensor) -> None:
    for tile in hl.tile(x.size()):
        x[tile] += y[tile]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def layouts() -> list[torch.Tensor]:
    """One of each layout torch allows, two of them sharing a storage with a third."""
    base = torch.randn(40, 40, generator=_gen(0))
    return [
        torch.randn(1, 32, generator=_gen(1)).expand(32, 32),  # broadcast: stride 0
        base.t(),  # transposed
        base[3:10, 5:20],  # offset view
        base,  # aliases the two above
        base.view(torch.int32)[:2],  # same storage, other dtype
        torch.randn(4, 4, dtype=torch.complex64, generator=_gen(2)).conj(),  # lazy conjugate
    ]


def assert_same_layout(a: torch.Tensor, b: torch.Tensor) -> None:
    assert (a.dtype, a.shape, a.stride(), a.storage_offset(), a.is_conj()) == (
        b.dtype, b.shape, b.stride(), b.storage_offset(), b.is_conj())
    assert torch.equal(a, b)


def test_every_layout_round_trips_through_the_codec() -> None:
    args = layouts()
    back = decode_args(encode_args(args))
    for a, b in zip(args, back, strict=True):
        assert_same_layout(a, b)  # type: ignore[arg-type]
    ptr = [t.untyped_storage().data_ptr() for t in back]  # type: ignore[union-attr]
    assert ptr[1] == ptr[2] == ptr[3] == ptr[4] and len({ptr[0], ptr[3], ptr[5]}) == 3


def test_worker_copies_keep_every_layout_and_aliasing() -> None:
    args = decode_args(encode_args(layouts()))
    copies = clone_leaves(args)
    for a, b in zip(args, copies, strict=True):
        assert_same_layout(a, b)  # type: ignore[arg-type]
        assert a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr()  # type: ignore[union-attr]
    ptr = [t.untyped_storage().data_ptr() for t in copies]  # type: ignore[union-attr]
    assert ptr[1] == ptr[2] == ptr[3] == ptr[4], "views of one storage share one copy"
    copies[3][3, 5] = 123.0  # type: ignore[index]
    assert copies[2][0, 0] == 123.0 and copies[1][5, 3] == 123.0  # type: ignore[index]
    assert args[3][3, 5] != 123.0  # type: ignore[index]


def test_fresh_args_copy_what_aliases_a_mutated_leaf() -> None:
    base = torch.zeros(8)
    session = open_session_args(None, [base, base[2:6], torch.ones(3).expand(4, 3)])  # type: ignore[arg-type]
    session.mutated = (0,)
    fresh = session.fresh_args()
    assert fresh[0] is not base and fresh[1] is not session.leaves[1]
    assert fresh[1].untyped_storage().data_ptr() == fresh[0].untyped_storage().data_ptr()
    assert fresh[2] is session.leaves[2]  # untouched leaves are not copied
    session.mutated = (2,)
    expanded = session.fresh_args()[2]  # stride 0: empty_strided(...).copy_() raised here
    assert expanded.stride() == (0, 1) and torch.equal(expanded, torch.ones(4, 3))


def test_nan_and_inf_inputs_are_not_mutations_and_match_themselves() -> None:
    x = torch.tensor([1.0, float("nan"), float("-inf"), 2.0])
    session = open_session_args(None, [x, x.clone()])  # type: ignore[arg-type]
    output = x * 2
    session.record_baseline(output, clone_leaves(session.leaves))
    assert session.mutated == ()
    tol = Tolerances()
    assert session.accuracy_problem(x * 2, session.fresh_args(), tol) is None
    moved = torch.tensor([float("nan"), 2.0, float("-inf"), 4.0])
    assert "NaN positions differ" in (session.accuracy_problem(moved, session.fresh_args(), tol) or "")
    wrong = torch.tensor([2.0, float("nan"), float("-inf"), 5.0])
    assert "mismatch" in (session.accuracy_problem(wrong, session.fresh_args(), tol) or "").lower()
    session.record_baseline(torch.full((3,), float("nan")), clone_leaves(session.leaves))
    assert "NaN" in (session.reference_problem() or "")


# ---------------------------------------------------------------- local backend, end to end


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalExecutor]:
    ex = LocalExecutor(cpu_workers=1, work_dir=tmp_path_factory.mktemp("hardening"), timeout_margin_s=2.0)
    yield ex
    ex.close()


def _source(kernel: object, args: list[torch.Tensor], block_sizes: list[int]) -> KernelSource:
    bound = kernel.bind(tuple(args))  # type: ignore[attr-defined]
    return KernelSource(bound.to_triton_code(helion.Config(block_sizes=block_sizes)), bound.kernel.name)


def _open(ex: LocalExecutor, name: str, args: list[torch.Tensor], reference: KernelSource) -> object:
    upload = upload_args(ex.blob_store, args)
    return ex.open_session(SessionSpec(name, reference.entry_name, upload.digest, reference, Tolerances()))


def _run(session: object, kernel: KernelSource) -> str:
    spec = session.spec  # type: ignore[attr-defined]
    job = BenchmarkJob(job_id="j", kernel=kernel, args_digest=spec.args_digest, baseline_digest=spec.baseline_digest,
                       tolerances=spec.tolerances, compile_timeout_s=30, run_timeout_s=30, warmup_ms=0.5, rep_ms=2.0)
    (result,) = list(session.submit([job]))  # type: ignore[attr-defined]
    return result.status if result.ok else f"{result.status}: {result.error_message}"


def test_local_session_opens_on_broadcast_and_aliased_arguments(local: LocalExecutor) -> None:
    base = torch.randn(32, 32, generator=_gen(3))
    broadcast = [torch.randn(1, 32, generator=_gen(4)).expand(32, 32), base.t()]
    session = _open(local, "broadcast", broadcast, _source(hi_add, broadcast, [32, 32]))
    assert _run(session, _source(hi_add, broadcast, [16, 8])) == "ok"
    # In place into one half of a storage, reading the other half: both travel as one storage.
    aliased = [base[:16], base[16:]]
    session = _open(local, "aliased", aliased, _source(hi_iadd, aliased, [32, 32]))
    assert _run(session, _source(hi_iadd, aliased, [16, 16])) == "ok"


def test_local_nan_and_inf_inputs_tune(local: LocalExecutor) -> None:
    x = torch.randn(32, 32, generator=_gen(5))
    x[0, 0], x[3, 7] = float("nan"), float("-inf")
    args = [x, torch.randn(32, 32, generator=_gen(6))]
    session = _open(local, "nan", args, _source(hi_add, args, [32, 32]))
    assert _run(session, _source(hi_add, args, [16, 8])) == "ok"
    assert _run(session, _source(hi_add, args, [32, 32])) == "ok", "the reference config checks against itself"


def test_local_reference_that_cannot_check_is_refused_at_open(local: LocalExecutor) -> None:
    args = [torch.full((32, 32), float("nan")), torch.randn(32, 32, generator=_gen(7))]
    with pytest.raises(SessionOpenError, match="cannot check candidates.*NaN.*nan_to_num"):
        _open(local, "all-nan", args, _source(hi_add, args, [32, 32]))
    # NaNs that move between two runs of the reference: no candidate could ever match.
    finite = [torch.randn(32, 32, generator=_gen(8)), torch.randn(32, 32, generator=_gen(9))]
    ref = _source(hi_add, finite, [32, 32])
    assert "    return out" in ref.module_source
    moving = KernelSource(ref.module_source.replace(
        "    return out", "    out.view(-1)[torch.randint(0, out.numel(), (4,))] = float('nan')\n    return out", 1),
        ref.entry_name)
    with pytest.raises(SessionOpenError, match="two runs on the same inputs disagree"):
        _open(local, "moving-nan", finite, moving)
