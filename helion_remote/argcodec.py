"""Kernel arguments as content-addressed blobs, without pickle.

Pickle would let a blob run code on a worker, and its bytes depend on more
than the values.  Instead each distinct tensor *storage* becomes one blob of
raw bytes, and a canonical JSON manifest describes the argument tree and
points at the storages by digest.  The manifest's digest names the arguments:
equal arguments give equal digests, a one-byte difference anywhere gives a
different one, and views that shared a storage share it again after decoding.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from helion_remote.errors import ConfigurationError
from helion_remote.args_manifest import FORMAT, MAX_DEPTH, ArgsFormatError, dtype_named, load_manifest
from helion_remote.blobs import BlobStore, Buffer, PutResult, check_digest


SUPPORTED_TYPES = (
    "torch.Tensor (dense, strided, with data), int, float, bool, None, str, "
    "tuple, list, dict (str or int keys)"
)

JsonNode = dict[str, Any]


class UnsupportedArgumentError(ConfigurationError, TypeError):
    """An argument the codec cannot ship; names where in the tree it is."""

    def __init__(self, path: str, value: object, reason: str = "") -> None:
        self.path = path
        kind = f"{type(value).__module__}.{type(value).__qualname__}"
        detail = f" ({reason})" if reason else ""
        super().__init__(
            f"cannot ship argument {path} of type {kind}{detail}; "
            f"supported types: {SUPPORTED_TYPES}"
        )


@dataclasses.dataclass(frozen=True)
class EncodedArgs:
    manifest: bytes
    storages: dict[str, bytes]
    """Storage blobs by digest, each once."""

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.manifest).hexdigest()


@dataclasses.dataclass(frozen=True)
class ArgsUpload:
    digest: str
    """The manifest's digest: what ``SessionSpec.args_digest`` carries."""
    bytes_uploaded: int
    puts: int
    """Blobs this upload stored."""
    puts_skipped: int
    """Blobs the store already held."""
    total_bytes: int
    """Bytes of every distinct blob of these arguments, moved or not."""


# ---------------------------------------------------------------- encoding


class _Encoder:
    """Walks the tree once, collecting storages in first-seen order."""

    def __init__(self) -> None:
        self.storages: list[torch.UntypedStorage] = []
        self._index: dict[tuple[str, int, int], int] = {}
        self._open: set[int] = set()

    def node(self, value: object, path: str, depth: int = 1) -> JsonNode:
        kind = type(value)
        if value is None:
            return {"t": "none"}
        if kind is bool:
            return {"t": "bool", "v": value}
        if kind is int:
            return {"t": "int", "v": value}
        if kind is float:
            return {"t": "float", "v": _float_to_json(value)}  # type: ignore[arg-type]
        if kind is str:
            return {"t": "str", "v": value}
        if isinstance(value, torch.Tensor):
            return self.tensor(value, path)
        if kind in (tuple, list, dict):
            if id(value) in self._open:
                raise UnsupportedArgumentError(path, value, "it contains itself")
            if depth >= MAX_DEPTH:
                raise UnsupportedArgumentError(path, value, f"containers nest deeper than {MAX_DEPTH} levels")
            self._open.add(id(value))
            try:
                if kind is dict:
                    return {"t": "dict", "items": self.items(value, path, depth)}  # type: ignore[arg-type]
                items = [self.node(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]  # type: ignore[arg-type]
                return {"t": kind.__name__, "items": items}
            finally:
                self._open.discard(id(value))
        raise UnsupportedArgumentError(path, value)

    def items(self, value: dict[object, object], path: str, depth: int) -> list[list[JsonNode]]:
        out = []
        for key, item in value.items():
            if type(key) not in (str, int):
                raise UnsupportedArgumentError(f"{path} key {key!r}", key, "dict keys must be str or int")
            out.append([self.node(key, path, depth + 1), self.node(item, f"{path}[{key!r}]", depth + 1)])
        return out

    def tensor(self, t: torch.Tensor, path: str) -> JsonNode:
        if type(t) not in (torch.Tensor, torch.nn.Parameter):
            raise UnsupportedArgumentError(path, t, "tensor subclasses such as FakeTensor carry no shippable data")
        if t.layout != torch.strided or t.is_nested:
            raise UnsupportedArgumentError(path, t, f"layout {t.layout} is not dense strided")
        if t.is_quantized:
            raise UnsupportedArgumentError(path, t, "quantized tensors are not supported")
        if t.device.type == "meta":
            raise UnsupportedArgumentError(path, t, "meta tensors have no data")
        if t.is_neg():
            raise UnsupportedArgumentError(path, t, "negative-bit view; call .resolve_neg() first")
        try:
            storage = t.untyped_storage()
        except Exception as e:  # functional wrappers and other storage-less tensors
            raise UnsupportedArgumentError(path, t, f"no storage: {e}") from None
        node: JsonNode = {
            "t": "tensor",
            "dtype": str(t.dtype).removeprefix("torch."),
            "shape": list(t.shape),
            "stride": list(t.stride()),
            "offset": t.storage_offset(),
            "storage": self.storage_index(storage),
        }
        if t.is_conj():
            node["conj"] = True  # a lazy conjugate view: the storage holds the unconjugated values
        return node

    def storage_index(self, storage: torch.UntypedStorage) -> int:
        nbytes = storage.nbytes()
        if nbytes == 0:  # empty storages all report data_ptr 0; never alias them
            self.storages.append(storage)
            return len(self.storages) - 1
        key = (str(storage.device), storage.data_ptr(), nbytes)
        index = self._index.get(key)
        if index is None:
            index = self._index[key] = len(self.storages)
            self.storages.append(storage)
        return index


def _float_to_json(value: float) -> float | str:
    """JSON has no inf or nan; ``float(repr(x))`` reads these strings back."""
    return value if math.isfinite(value) else repr(value)


def _storage_bytes(storage: torch.UntypedStorage) -> memoryview:
    """The raw bytes of a whole storage, on the host, without a copy on CPU."""
    if storage.device.type != "cpu":
        storage = storage.cpu()
    if storage.nbytes() == 0:
        return memoryview(b"")
    flat = torch.empty(0, dtype=torch.uint8).set_(storage)
    return memoryview(flat.numpy())  # the array keeps ``flat`` (and the storage) alive


def _walk(args: Sequence[object]) -> tuple[list[JsonNode], list[torch.UntypedStorage]]:
    if isinstance(args, (str, bytes, Mapping)) or not isinstance(args, Sequence):
        raise TypeError(f"args must be a sequence of arguments, got {type(args).__name__}")
    enc = _Encoder()
    nodes = [enc.node(arg, f"args[{i}]") for i, arg in enumerate(args)]
    return nodes, enc.storages


def _manifest(nodes: list[JsonNode], storages: list[tuple[str, int]]) -> bytes:
    doc = {
        "format": FORMAT,
        "args": nodes,
        "storages": [{"digest": d, "nbytes": n} for d, n in storages],
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _iter_storage_blobs(storages: list[torch.UntypedStorage]) -> Iterator[tuple[str, memoryview]]:
    """One host view and digest at a time, so device args never all sit on the host."""
    for storage in storages:
        data = _storage_bytes(storage)
        yield hashlib.sha256(data).hexdigest(), data


def encode_args(args: Sequence[object]) -> EncodedArgs:
    """The manifest and storage blobs of ``args``; touches no store."""
    nodes, storages = _walk(args)
    refs: list[tuple[str, int]] = []
    blobs: dict[str, bytes] = {}
    for digest, data in _iter_storage_blobs(storages):
        refs.append((digest, data.nbytes))
        if digest not in blobs:
            blobs[digest] = data.tobytes()
    return EncodedArgs(_manifest(nodes, refs), blobs)


def upload_args(store: BlobStore, args: Sequence[object]) -> ArgsUpload:
    """Upload ``args`` to ``store``: storages first, then the manifest.

    A blob the store already holds is not sent at all (``contains`` first), so
    re-uploading the same arguments costs hashing, not bandwidth.  The
    manifest goes last so that a worker that can read it can read everything.
    """
    nodes, storages = _walk(args)
    refs: list[tuple[str, int]] = []
    seen: set[str] = set()
    stats = {"bytes_uploaded": 0, "puts": 0, "puts_skipped": 0, "total_bytes": 0}

    def ensure(digest: str, data: Buffer) -> None:
        nbytes = memoryview(data).nbytes
        stats["total_bytes"] += nbytes
        if store.contains(digest):
            stats["puts_skipped"] += 1
            return
        result: PutResult = store.put(data)  # type: ignore[arg-type]
        if result.digest != digest:
            raise RuntimeError(f"{store.describe()} stored a blob as {result.digest}, expected {digest}")
        if result.uploaded:
            stats["puts"] += 1
            stats["bytes_uploaded"] += result.nbytes
        else:
            stats["puts_skipped"] += 1

    for digest, data in _iter_storage_blobs(storages):
        refs.append((digest, data.nbytes))
        if digest not in seen:
            seen.add(digest)
            ensure(digest, data)
    manifest = _manifest(nodes, refs)
    digest = hashlib.sha256(manifest).hexdigest()
    ensure(digest, manifest)
    return ArgsUpload(digest=digest, **stats)


# ---------------------------------------------------------------- decoding


def _device_storage(data: bytes, device: torch.device) -> torch.UntypedStorage:
    """A storage holding ``data`` on ``device`` with one copy at most."""
    if len(data) == 0:
        return torch.empty(0, dtype=torch.uint8, device=device).untyped_storage()
    if device.type == "cpu":
        # The tensor must own writable memory: kernels may mutate their arguments.
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).untyped_storage()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # read-only buffer: fine, it is only copied from
        host = torch.frombuffer(data, dtype=torch.uint8)
    return host.to(device).untyped_storage()


class _Decoder:
    """Builds the argument tree from a manifest ``load_manifest`` already checked."""

    def __init__(self, storages: list[torch.UntypedStorage], device: torch.device) -> None:
        self.storages = storages
        self.device = device

    def node(self, node: JsonNode, path: str) -> object:
        t = node["t"]
        if t == "none":
            return None
        if t in ("bool", "int", "str"):
            return node["v"]
        if t == "float":
            return float(node["v"])
        if t == "tuple":
            return tuple(self.node(n, f"{path}.items[{i}]") for i, n in enumerate(node["items"]))
        if t == "list":
            return [self.node(n, f"{path}.items[{i}]") for i, n in enumerate(node["items"])]
        if t == "dict":
            return {self.node(k, path): self.node(v, f"{path}.items[{i}][1]") for i, (k, v) in enumerate(node["items"])}
        return self.tensor(node, path)

    def tensor(self, node: JsonNode, path: str) -> torch.Tensor:
        storage = self.storages[node["storage"]]
        try:
            out = torch.empty(0, dtype=dtype_named(node["dtype"]), device=self.device)
            out.set_(storage, node["offset"], node["shape"], node["stride"])
        except (RuntimeError, TypeError, ValueError, OverflowError) as e:
            raise ArgsFormatError(f"args manifest field {path}: torch cannot build this tensor: {e}") from None
        return out.conj() if node.get("conj") else out


def download_args(
    store: BlobStore, digest: str, device: str | torch.device = "cpu"
) -> list[object]:
    """Rebuild the arguments named ``digest`` with every tensor on ``device``.

    Each storage blob is fetched (and verified by the store) once; storages
    that were distinct stay distinct even when their bytes are equal.
    """
    doc = load_manifest(store.get(check_digest(digest)))
    dev = torch.device(device)
    fetched: dict[str, bytes] = {}
    storages: list[torch.UntypedStorage] = []
    for ref in doc["storages"]:
        blob_digest = ref["digest"]
        if blob_digest not in fetched:
            fetched[blob_digest] = store.get(blob_digest)
        data = fetched[blob_digest]
        if len(data) != ref["nbytes"]:
            raise ArgsFormatError(f"storage blob {blob_digest} has {len(data)} bytes, manifest says {ref['nbytes']}")
        storages.append(_device_storage(data, dev))
    fetched.clear()
    decoder = _Decoder(storages, dev)
    return [decoder.node(n, f"args[{i}]") for i, n in enumerate(doc["args"])]


def decode_args(encoded: EncodedArgs, device: str | torch.device = "cpu") -> list[object]:
    """``download_args`` for an ``EncodedArgs`` held in memory."""
    from helion_remote.blobs import MemoryBlobStore

    store = MemoryBlobStore()
    for data in (*encoded.storages.values(), encoded.manifest):
        store.put(data)
    return download_args(store, encoded.digest, device)


# ---------------------------------------------------------------- summary


def describe_args(manifest: bytes | str | Mapping[str, Any]) -> str:
    """One line for logs, e.g. ``2 tensors (float16[4096,4096] x2), 64.0 MiB``."""
    doc = load_manifest(manifest)
    groups: dict[str, int] = {}
    others = 0
    for node in _leaves(doc["args"]):
        if node["t"] == "tensor":
            label = f"{node['dtype']}[{','.join(map(str, node['shape']))}]"
            groups[label] = groups.get(label, 0) + 1
        else:
            others += 1
    n = sum(groups.values())
    shown = [f"{label} x{count}" if count > 1 else label for label, count in groups.items()]
    if len(shown) > 4:
        shown = [*shown[:4], f"... {len(shown) - 4} more"]
    text = f"{n} tensor{'' if n == 1 else 's'}"
    if shown:
        text += f" ({', '.join(shown)})"
    if others:
        text += f", {others} other value{'' if others == 1 else 's'}"
    return f"{text}, {_format_bytes(sum(ref['nbytes'] for ref in doc['storages']))}"


def _leaves(nodes: Sequence[JsonNode]) -> Iterator[JsonNode]:
    for node in nodes:
        if node["t"] in ("tuple", "list"):
            yield from _leaves(node["items"])
        elif node["t"] == "dict":
            yield from _leaves([v for _, v in node["items"]])
        else:
            yield node


def _format_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
