from __future__ import annotations

import json
import re
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from helion_remote.argcodec import (
    FORMAT,
    ArgsFormatError,
    UnsupportedArgumentError,
    decode_args,
    describe_args,
    download_args,
    encode_args,
    upload_args,
)
from helion_remote.blobs import BlobDigestMismatch, DirectoryBlobStore, MemoryBlobStore, PutResult
from helion_remote.protocol import sha256_hex


class RecordingStore(MemoryBlobStore):
    """Logs calls so tests can check order and fetch counts."""

    def __init__(self) -> None:
        super().__init__()
        self.put_log: list[str] = []
        self.gets: Counter[str] = Counter()

    def put(self, data: bytes) -> PutResult:  # type: ignore[override]
        result = super().put(data)
        self.put_log.append(result.digest)
        return result

    def get(self, digest: str) -> bytes:
        self.gets[digest] += 1
        return super().get(digest)


def assert_same_tree(a: object, b: object) -> None:
    """Equal values AND equal types all the way down (1 == True, (1,) != [1])."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b)  # type: ignore[arg-type]
        for x, y in zip(a, b):  # type: ignore[call-overload]
            assert_same_tree(x, y)
    elif isinstance(a, dict):
        assert list(a) == list(b)  # type: ignore[call-overload]
        for (ka, va), (kb, vb) in zip(a.items(), b.items()):  # type: ignore[union-attr]
            assert_same_tree(ka, kb)
            assert_same_tree(va, vb)
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)  # type: ignore[arg-type]
    elif isinstance(a, float):
        assert a == b and math.copysign(1, a) == math.copysign(1, b)  # type: ignore[arg-type]
    elif isinstance(a, torch.Tensor):
        assert_same_tensor(a, b)  # type: ignore[arg-type]
    else:
        assert a == b


def assert_same_tensor(a: torch.Tensor, b: torch.Tensor) -> None:
    assert b.dtype == a.dtype
    assert b.shape == a.shape
    assert b.stride() == a.stride()
    assert b.storage_offset() == a.storage_offset()
    assert b.is_conj() == a.is_conj()
    assert storage_bytes(b) == storage_bytes(a)


def storage_bytes(t: torch.Tensor) -> bytes:
    return torch.empty(0, dtype=torch.uint8).set_(t.untyped_storage()).numpy().tobytes()


def round_trip(args: list[object]) -> list[object]:
    store = MemoryBlobStore()
    return download_args(store, upload_args(store, args).digest)


def test_round_trip_every_node_kind() -> None:
    args: list[object] = [
        None,
        True,
        False,
        0,
        -7,
        2**70,
        1.5,
        -0.0,
        math.inf,
        -math.inf,
        math.nan,
        "héllo \u2603",
        "",
        (),
        (1, (2.5, "x")),
        [],
        [1, [None, [True]]],
        {"b": 1, "a": (2,), 3: "int key", "3": "str key"},
        {"nested": [{"t": torch.arange(4)}]},
        torch.tensor(3.25),
    ]
    out = round_trip(args)
    assert_same_tree(args, out)
    assert list(out[17]) == ["b", "a", 3, "3"]  # type: ignore[arg-type]


def test_decoded_tensors_are_independent_writable_copies() -> None:
    x = torch.zeros(4)
    (y,) = round_trip([x])
    y[0] = 5  # type: ignore[index]
    assert x[0].item() == 0
    assert y.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "make",
    [
        lambda b: b.t(),
        lambda b: b[1:, 2::3],
        lambda b: b[2],
        lambda b: b[3:5, 7:],
        lambda b: b.reshape(3, 20)[:, ::4].t(),
        lambda b: b[0, :3].expand(4, 3),
        lambda b: b.unfold(1, 4, 2),
    ],
    ids=["transpose", "step-slice", "row", "offset-block", "double-view", "expand", "unfold"],
)
def test_views_keep_stride_and_offset(make) -> None:  # type: ignore[no-untyped-def]
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    view = make(base)
    (out,) = round_trip([view])
    assert_same_tensor(view, out)  # type: ignore[arg-type]
    assert torch.equal(out, view)  # type: ignore[arg-type]


def test_aliasing_is_preserved() -> None:
    base = torch.zeros(16)
    a, b = base[:8], base[4:].view(3, 4)
    encoded = encode_args([a, (b, base)])
    manifest = json.loads(encoded.manifest)
    assert len(manifest["storages"]) == 1
    assert len(encoded.storages) == 1
    out_a, (out_b, out_base) = decode_args(encoded)  # type: ignore[misc]
    out_a[5] = 42.0
    assert out_b[0, 1].item() == 42.0
    assert out_base[5].item() == 42.0
    assert out_a.untyped_storage().data_ptr() == out_b.untyped_storage().data_ptr()


def test_equal_bytes_in_distinct_storages_do_not_alias() -> None:
    x, y = torch.zeros(8), torch.zeros(8)
    store = RecordingStore()
    upload = upload_args(store, [x, y])
    manifest = json.loads(store.get(upload.digest))
    assert len(manifest["storages"]) == 2
    assert manifest["storages"][0]["digest"] == manifest["storages"][1]["digest"]
    assert upload.puts == 2  # one storage blob + the manifest
    out_x, out_y = download_args(store, upload.digest)
    assert store.gets[manifest["storages"][0]["digest"]] == 1  # fetched once
    out_x[0] = 1.0  # type: ignore[index]
    assert out_y[0].item() == 0.0  # type: ignore[index]


def random_tensor(dtype: torch.dtype, n: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if dtype == torch.bool:
        return torch.randint(0, 2, (n,), generator=g).bool()
    raw = torch.randint(0, 256, (n * torch.empty(0, dtype=dtype).element_size(),), dtype=torch.uint8, generator=g)
    return raw.view(dtype)


@pytest.mark.parametrize(
    "dtype",
    [
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.bool,
        torch.int8,
        torch.int64,
        torch.uint8,
        torch.float8_e4m3fn,
        torch.float8_e5m2,
        torch.complex64,
        torch.complex128,
    ],
    ids=str,
)
def test_dtypes_round_trip_bit_exact(dtype: torch.dtype) -> None:
    t = random_tensor(dtype).reshape(8, -1)[:, 1:]
    (out,) = round_trip([t])
    assert_same_tensor(t, out)  # type: ignore[arg-type]  # bit-exact: compares storage bytes


@pytest.mark.filterwarnings("ignore::UserWarning")  # complex32 and quantized dtypes warn
def test_every_allocatable_dtype_round_trips() -> None:
    seen = 0
    for name in dir(torch):
        dtype = getattr(torch, name)
        if not isinstance(dtype, torch.dtype):
            continue
        try:
            t = torch.empty(4, dtype=dtype)
        except Exception:
            continue
        if t.is_quantized:
            continue
        (out,) = round_trip([t])
        assert out.dtype == dtype, name  # type: ignore[union-attr]
        assert storage_bytes(out) == storage_bytes(t), name  # type: ignore[arg-type]
        seen += 1
    assert seen >= 20


def test_conjugate_view_round_trips() -> None:
    c = torch.complex(torch.arange(3.0), torch.ones(3))
    (out,) = round_trip([c.conj()])
    assert out.is_conj()  # type: ignore[union-attr]
    assert torch.equal(out.resolve_conj(), c.conj().resolve_conj())  # type: ignore[union-attr]


def test_requires_grad_is_not_shipped() -> None:
    plain = torch.arange(4.0)
    grad = torch.arange(4.0).requires_grad_()
    assert encode_args([plain]).digest == encode_args([grad]).digest
    (out,) = round_trip([grad])
    assert out.requires_grad is False  # type: ignore[union-attr]


def test_second_upload_of_equal_args_moves_nothing() -> None:
    store = RecordingStore()
    args = [torch.ones(256, 256), torch.arange(10), {"alpha": 0.5}]
    first = upload_args(store, args)
    assert first.bytes_uploaded == first.total_bytes > 256 * 256 * 4
    assert first.puts == 3 and first.puts_skipped == 0
    again = [torch.ones(256, 256), torch.arange(10), {"alpha": 0.5}]  # equal, not identical
    puts_before = len(store.put_log)
    second = upload_args(store, again)
    assert len(store.put_log) == puts_before  # skipped via contains(), put never called
    assert second.digest == first.digest
    assert second.bytes_uploaded == 0
    assert second.puts == 0 and second.puts_skipped == 3
    assert store.bytes_uploaded == first.bytes_uploaded


def test_changing_a_scalar_changes_only_the_manifest() -> None:
    store = MemoryBlobStore()
    first = upload_args(store, [torch.ones(64), 1])
    second = upload_args(store, [torch.ones(64), 2])
    assert second.digest != first.digest
    assert (second.puts, second.puts_skipped) == (1, 1)


def test_difference_after_first_4kib_changes_digest() -> None:
    a = torch.zeros(4096, dtype=torch.uint8)
    b = a.clone()
    b[3000] = 1  # byte 3000 of the tensor: inside the first 4 KiB
    c = torch.zeros(8192, dtype=torch.uint8)
    d = c.clone()
    d[6000] = 1  # beyond the first 4 KiB
    assert encode_args([c]).digest != encode_args([d]).digest
    assert encode_args([a]).digest != encode_args([b]).digest
    assert encode_args([c]).digest == encode_args([c.clone()]).digest


def test_manifest_is_canonical() -> None:
    encoded = encode_args([{"z": 1, "a": torch.arange(3)}, 2.0])
    assert encoded.manifest == encode_args([{"z": 1, "a": torch.arange(3)}, 2.0]).manifest
    doc = json.loads(encoded.manifest)
    assert doc["format"] == FORMAT
    assert json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() == encoded.manifest
    assert encoded.digest == sha256_hex(encoded.manifest)
    assert b"Infinity" not in encode_args([math.inf]).manifest


def test_upload_puts_storages_before_manifest() -> None:
    store = RecordingStore()
    upload = upload_args(store, [torch.zeros(4), torch.ones(4)])
    assert len(store.put_log) == 3
    assert store.put_log[-1] == upload.digest


@pytest.mark.parametrize(
    ("args", "path", "type_name"),
    [
        ([1, {"k": object()}], "args[1]['k']", "builtins.object"),
        ([1, 2, {"scale": [torch.device("cpu")]}], "args[2]['scale'][0]", "torch.device"),
        ([(1, 2, len)], "args[0][2]", "builtin_function_or_method"),
        ([[torch.empty(2, device="meta")]], "args[0][0]", "torch.Tensor"),
        ([torch.eye(3).to_sparse()], "args[0]", "torch.Tensor"),
        ([torch.Size([2, 3])], "args[0]", "torch.Size"),
        ([{(1, 2): 3}], "args[0] key (1, 2)", "builtins.tuple"),
    ],
    ids=["object", "device", "function", "meta", "sparse", "tuple-subclass", "tuple-key"],
)
def test_unsupported_argument_names_path_and_type(args: list[object], path: str, type_name: str) -> None:
    with pytest.raises(UnsupportedArgumentError) as info:
        encode_args(args)
    assert isinstance(info.value, TypeError)
    message = str(info.value)
    assert f"argument {path} " in message
    assert type_name in message
    assert "supported types" in message and "torch.Tensor" in message


def test_unsupported_tensor_subclass_and_quantized() -> None:
    class Wrapped(torch.Tensor):
        pass

    with pytest.raises(UnsupportedArgumentError, match=r"args\[0\].*Wrapped"):
        encode_args([torch.zeros(2).as_subclass(Wrapped)])
    q = torch.quantize_per_tensor(torch.zeros(2), 0.1, 0, torch.quint8)
    with pytest.raises(UnsupportedArgumentError, match=r"args\[1\].*quantized"):
        encode_args([1, q])


def test_self_containing_list_is_rejected() -> None:
    loop: list[object] = [1]
    loop.append(loop)
    with pytest.raises(UnsupportedArgumentError, match=r"args\[0\]\[1\].*contains itself"):
        encode_args([loop])
    shared = [1]
    assert_same_tree(decode_args(encode_args([shared, shared])), [[1], [1]])  # repeats are fine


def test_args_must_be_a_sequence() -> None:
    with pytest.raises(TypeError, match="sequence"):
        encode_args({"a": 1})  # type: ignore[arg-type]


def test_unknown_manifest_format_is_rejected() -> None:
    store = MemoryBlobStore()
    doc = json.loads(encode_args([1]).manifest)
    doc["format"] = "helion-remote-args/999"
    digest = store.put(json.dumps(doc).encode()).digest
    with pytest.raises(ArgsFormatError, match="helion-remote-args/999") as info:
        download_args(store, digest)
    assert FORMAT in str(info.value)
    not_json = store.put(bytes([0xFF, 0x00, 0x10])).digest
    with pytest.raises(ArgsFormatError, match="not a helion-remote args manifest"):
        download_args(store, not_json)
    no_format = store.put(b'{"args": []}').digest
    with pytest.raises(ArgsFormatError, match="no 'format'"):
        download_args(store, no_format)


def test_directory_store_end_to_end_and_corruption(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path)
    x = torch.arange(1024, dtype=torch.float16).reshape(32, 32)
    upload = upload_args(store, [x, x.t()])
    out_x, out_xt = download_args(store, upload.digest, device=torch.device("cpu"))
    assert torch.equal(out_x, x) and torch.equal(out_xt, x.t())  # type: ignore[arg-type]
    (storage_digest,) = [r["digest"] for r in json.loads(store.get(upload.digest))["storages"]]
    path = store.path(storage_digest)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(BlobDigestMismatch, match=storage_digest):
        download_args(store, upload.digest)


def test_describe_args() -> None:
    big = [torch.zeros(64, 64, dtype=torch.float16), torch.ones(64, 64, dtype=torch.float16)]
    text = describe_args(encode_args(big).manifest)
    assert text == "2 tensors (float16[64,64] x2), 16.0 KiB"
    mixed = describe_args(encode_args([torch.zeros(3, dtype=torch.int64), 2, {"a": None}]).manifest)
    assert mixed == "1 tensor (int64[3]), 2 other values, 24 B"


# ---------------------------------------------------------------- malformed manifests (fuzzed)


def _manifest_store() -> tuple[MemoryBlobStore, dict]:
    base = torch.arange(24, dtype=torch.float32)
    args = [base.view(4, 6), base[2:8], torch.ones(1, 3).expand(2, 3), 7, 1.5, math.inf, "s", None, True,
            (1, [2.0, {"k": base.view(2, 12)[1]}]), {3: False}]
    store = MemoryBlobStore()
    doc = json.loads(store.get(upload_args(store, args).digest))
    return store, doc


def _decode(store: MemoryBlobStore, doc: object) -> object:
    data = json.dumps(doc).encode() if not isinstance(doc, bytes) else doc
    return download_args(store, store.put(data).digest)


def _paths(node: object, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*path, i))
    return out


def _replace(doc: object, path: tuple, value: object) -> object:
    doc = json.loads(json.dumps(doc))
    if not path:
        return value
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


WRONG = [None, True, -1, 2**70, 1.5, "x", [], {}, [[]], {"t": "tensor"}]


def test_every_field_with_a_wrong_value_is_args_format_error() -> None:
    """Each field of a real manifest, replaced by each wrong value: decodes or is ArgsFormatError."""
    store, doc = _manifest_store()
    paths = [p for p in _paths(doc) if p[:1] != ("format",)]
    assert len(paths) > 80
    refused = 0
    for path in paths:
        for value in WRONG:
            try:
                _decode(store, _replace(doc, path, value))
            except ArgsFormatError:
                refused += 1
            except Exception as error:  # noqa: BLE001 - the point of the test
                pytest.fail(f"field {path} = {value!r} raised {type(error).__name__}: {error}")
    assert refused > len(paths) * len(WRONG) // 2


def test_truncated_manifest_is_args_format_error() -> None:
    store, doc = _manifest_store()
    raw = json.dumps(doc).encode()
    for cut in range(0, len(raw), 7):
        with pytest.raises(ArgsFormatError):
            _decode(store, raw[:cut])


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("shape", [5, 6], "args[0]"),  # sizes overflow the storage: set_ would grow it silently
        ("shape", [-4, 6], "args[0].shape"),
        ("stride", [6, -1], "args[0].stride"),
        ("stride", [6], "args[0].stride"),
        ("offset", -1, "args[0].offset"),
        ("offset", 1, "args[0]"),
        ("storage", 9, "args[0].storage"),
        ("storage", -1, "args[0].storage"),
        ("dtype", "qint8", "args[0].dtype"),
        ("dtype", "Tensor", "args[0].dtype"),
    ],
)
def test_bad_tensor_fields_are_named(field: str, value: object, named: str) -> None:
    store, doc = _manifest_store()
    doc["args"][0][field] = value
    with pytest.raises(ArgsFormatError, match=re.escape(named)):
        _decode(store, doc)


def test_deep_nesting_is_args_format_error_not_recursion_error() -> None:
    store, doc = _manifest_store()
    deep: dict = {"t": "none"}
    for _ in range(200):
        deep = {"t": "list", "items": [deep]}
    doc["args"] = [deep]
    with pytest.raises(ArgsFormatError, match="nesting deeper"):
        _decode(store, doc)
    with pytest.raises(ArgsFormatError):
        _decode(store, b"[" * 100_000 + b"]" * 100_000)
    nested: list = []
    for _ in range(100):
        nested = [nested]
    with pytest.raises(UnsupportedArgumentError, match="nest deeper"):
        encode_args([nested])


def test_storage_refs_are_checked() -> None:
    store, doc = _manifest_store()
    for ref, named in [({"digest": "ab", "nbytes": 4}, "storages[0].digest"), ({"digest": "0" * 64}, "nbytes"),
                       ({"digest": "0" * 64, "nbytes": -3}, "storages[0].nbytes"), ("x", "storages[0]")]:
        with pytest.raises(ArgsFormatError, match=re.escape(named)):
            _decode(store, {**doc, "storages": [ref]})
