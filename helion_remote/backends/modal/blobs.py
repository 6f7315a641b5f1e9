"""Content-addressed blobs on a Modal Volume: uploaded once ever, verified on read.

Why a Volume: Modal Dict values are capped near 100 MiB and idle Dicts
expire; kernel arguments reach several GiB.  Layout inside the Volume::

    /chunks/<c[:2]>/<c>          raw bytes of one chunk, c = sha256(chunk)
    /blobs/<d[:2]>/<d>.json      index: {"digest", "nbytes", "chunks": [[c, n], ...]}

A blob is split into chunks of ``chunk_bytes`` (64 MiB default) so no single
file or request is huge and equal chunks of different blobs are stored once.
The index is written only after every chunk is committed, so "index
exists" means "blob complete": ``contains`` checks just the index, and an
interrupted upload resumes with the chunks that are missing.

The coordinator (:class:`VolumeBlobStore`) talks to the Volume through
Modal's client (``listdir``/``read_file``/``batch_upload``); the worker
(:class:`MountedBlobStore`) reads the mounted files and checks every chunk
and the whole blob against their sha256 before any byte becomes a tensor.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from helion_remote.blobs import BlobDigestMismatch, BlobNotFound, Buffer, PutResult, _Counters, check_digest, verify

INDEX_FORMAT = "helion-remote-volume-blob/1"
DEFAULT_CHUNK_BYTES = 64 << 20


def chunk_path(chunk: str) -> str:
    return f"/chunks/{chunk[:2]}/{chunk}"


def index_path(digest: str) -> str:
    check_digest(digest)
    return f"/blobs/{digest[:2]}/{digest}.json"


class VolumeLike(Protocol):
    """The part of ``modal.Volume`` the coordinator uses (checked against the real client in tests)."""

    def listdir(self, path: str, *, recursive: bool = False) -> list[Any]: ...

    def read_file(self, path: str) -> Iterator[bytes]: ...

    def batch_upload(self, force: bool = False) -> Any: ...


class _ViewReader(io.RawIOBase):
    """A seekable file over a memoryview: Modal re-reads uploads, and a BytesIO would copy GiBs."""

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        n = max(0, min(len(out), len(self._view) - self._pos))
        out[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else min(len(self._view), self._pos + size)
        data = self._view[self._pos : end].tobytes()
        self._pos = end
        return data


def _is_not_found(error: BaseException) -> bool:
    """``FileNotFoundError`` or Modal's ``NotFoundError`` (by name: no modal import needed here)."""
    return isinstance(error, FileNotFoundError) or type(error).__name__ == "NotFoundError"


class VolumeBlobStore(_Counters):
    """The coordinator's view of the blob Volume: existence checks first, uploads once."""

    def __init__(self, volume: VolumeLike, *, name: str = "", chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        super().__init__()
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be >= 1, got {chunk_bytes!r}")
        self.volume = volume
        self.name = name
        self.chunk_bytes = chunk_bytes
        self._present: set[str] = set()
        """Paths seen to exist (chunks with their size)."""
        self._verified: set[str] = set()
        """Index paths whose whole blob was seen complete."""
        self._present_lock = threading.Lock()
        self.exists_calls = 0
        self.files_uploaded = 0

    def describe(self) -> str:
        return f"VolumeBlobStore(volume={self.name or '?'!r})"

    def _exists(self, path: str, nbytes: int | None = None) -> bool:
        with self._present_lock:
            if path in self._present:
                return True
        self.exists_calls += 1
        try:
            entries = self.volume.listdir(path)
        except Exception as error:
            if _is_not_found(error):
                return False
            raise
        name = path.rsplit("/", 1)[-1]
        matches = [e for e in entries if _entry_path(e).rstrip("/").rsplit("/", 1)[-1] == name]
        found = bool(matches) and (nbytes is None or any(getattr(e, "size", nbytes) == nbytes for e in matches))
        if found:
            with self._present_lock:
                self._present.add(path)
        return found

    def contains(self, digest: str) -> bool:
        """An index that parses, and every chunk it names there with its size.

        Existence of the index alone is not enough: a chunk truncated or lost
        after the index was written would fail every worker's read, while an
        upload that trusted the index would never replace it.  (A chunk of the
        right size with wrong bytes is caught by the worker's hash check.)
        """
        path = index_path(digest)
        with self._present_lock:
            if path in self._verified:
                return True
        if not self._exists(path):
            return False
        try:
            index = _parse_index(b"".join(self.volume.read_file(path)), digest)
        except Exception as error:  # noqa: BLE001 - unreadable or damaged index: not contained
            if _is_not_found(error) or isinstance(error, ValueError):
                return False
            raise
        if not all(self._exists(chunk_path(c), n) for c, n in index["chunks"]):
            return False
        with self._present_lock:
            self._verified.add(path)
        return True

    def put(self, data: Buffer) -> PutResult:
        view = memoryview(data).cast("B")
        parts = [view[start : start + self.chunk_bytes] for start in range(0, view.nbytes, self.chunk_bytes)] or [view]
        digest, *chunk_digests = _sha256_all([view, *parts])
        if self.contains(digest):
            return self._count(PutResult(digest, view.nbytes, uploaded=False))
        with self._present_lock:  # whatever was seen of a damaged blob is not trusted again
            self._present.discard(index_path(digest))
        chunks = [(c, part.nbytes, part) for c, part in zip(chunk_digests, parts, strict=True)]
        missing: dict[str, memoryview] = {}
        for chunk, nbytes, part in chunks:
            if chunk not in missing and not self._exists(chunk_path(chunk), nbytes):
                missing[chunk] = part
        for chunk, part in missing.items():
            # One commit per chunk (a crash keeps the finished ones).  Forced: a chunk is named
            # by its bytes, so overwriting is harmless, and a damaged one (wrong size) must go.
            self._upload({chunk_path(chunk): part}, force=True)
        index = json.dumps(
            {"format": INDEX_FORMAT, "digest": digest, "nbytes": view.nbytes, "chunks": [[c, n] for c, n, _ in chunks]},
            sort_keys=True, separators=(",", ":"),
        ).encode()
        # Last: the index means "complete".  Forced, so a damaged index is replaced too.
        self._upload({index_path(digest): memoryview(index)}, force=True)
        with self._present_lock:
            self._verified.add(index_path(digest))
        return self._count(PutResult(digest, view.nbytes, uploaded=True))

    def _upload(self, files: dict[str, memoryview], *, force: bool = False) -> None:
        try:
            with self.volume.batch_upload(force=force) as batch:
                for path, view in files.items():
                    batch.put_file(_ViewReader(view), path)
        except FileExistsError:
            pass  # another coordinator committed the same content-addressed path first
        self.files_uploaded += len(files)
        with self._present_lock:
            self._present.update(files)

    def get(self, digest: str) -> bytes:
        index = self._read_index(digest)
        out = bytearray(index["nbytes"])
        offset = 0
        for chunk, nbytes in index["chunks"]:
            data = b"".join(self.volume.read_file(chunk_path(chunk)))
            verify(data, chunk, f"{self.describe()} {chunk_path(chunk)}")
            out[offset : offset + nbytes] = data
            offset += nbytes
        verify(out, digest, f"{self.describe()} {index_path(digest)}")
        return bytes(out)

    def _read_index(self, digest: str) -> dict[str, Any]:
        try:
            raw = b"".join(self.volume.read_file(index_path(digest)))
        except Exception as error:
            if _is_not_found(error):
                raise BlobNotFound(digest, self.describe()) from None
            raise
        return _parse_index(raw, digest)


def _sha256_all(buffers: Sequence[memoryview]) -> list[str]:
    """sha256 of each buffer; hashlib drops the GIL on large inputs, so threads use every core."""
    if sum(b.nbytes for b in buffers) < (64 << 20):
        return [hashlib.sha256(b).hexdigest() for b in buffers]
    with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda b: hashlib.sha256(b).hexdigest(), buffers))


def _entry_path(entry: Any) -> str:
    return str(getattr(entry, "path", entry))


def _parse_index(raw: bytes, digest: str) -> dict[str, Any]:
    """The index of ``digest``; ``ValueError`` for anything else (truncated, damaged, another blob's)."""
    try:
        index = json.loads(raw)
        ok = (isinstance(index, dict) and index.get("format") == INDEX_FORMAT and index.get("digest") == digest
              and type(index.get("nbytes")) is int and isinstance(index.get("chunks"), list))
        if ok:
            for entry in index["chunks"]:
                chunk, nbytes = entry
                check_digest(chunk)
                ok = ok and type(nbytes) is int and nbytes >= 0
    except (ValueError, TypeError) as error:
        raise ValueError(f"blob index for {digest} is damaged: {error}") from None
    if not ok:
        raise ValueError(f"blob index for {digest} is not a {INDEX_FORMAT} index of that digest")
    if sum(n for _, n in index["chunks"]) != index["nbytes"]:
        raise ValueError(f"blob index for {digest}: chunk sizes do not add up to {index['nbytes']}")
    return index


class MountedBlobStore:
    """The worker's view: the Volume mounted at ``root``, read-only, every byte verified.

    A blob committed after this container mounted the Volume is invisible
    until ``reload()``; a miss reloads once before giving up.
    """

    def __init__(self, root: str | os.PathLike[str], *, reload: Callable[[], None] | None = None) -> None:
        self.root = Path(root)
        self._reload = reload
        self.reloads = 0

    def describe(self) -> str:
        return f"MountedBlobStore({str(self.root)!r})"

    def _file(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def contains(self, digest: str) -> bool:
        return self._file(index_path(digest)).is_file()

    def put(self, data: bytes) -> PutResult:
        raise PermissionError("workers never write blobs; the coordinator uploads them")

    def get(self, digest: str) -> bytes:
        index_file = self._file(index_path(digest))
        if not index_file.is_file() and self._reload is not None:
            self.reloads += 1
            self._reload()
        try:
            index = _parse_index(index_file.read_bytes(), digest)
        except FileNotFoundError:
            raise BlobNotFound(digest, self.describe()) from None
        out = bytearray(index["nbytes"])
        view = memoryview(out)
        offset = 0
        targets = []
        for chunk, nbytes in index["chunks"]:
            target = view[offset : offset + nbytes]
            with open(self._file(chunk_path(chunk)), "rb") as f:
                got = f.readinto(target)
            if got != nbytes:
                raise ValueError(f"chunk {chunk} of blob {digest} has {got} bytes, index says {nbytes}")
            targets.append(target)
            offset += nbytes
        actual = _sha256_all([view, *targets])
        for (chunk, _), got in zip(index["chunks"], actual[1:], strict=True):
            if got != chunk:
                raise BlobDigestMismatch(chunk, got, str(self._file(chunk_path(chunk))))
        if actual[0] != digest:
            raise BlobDigestMismatch(digest, actual[0], str(index_file))
        return out  # type: ignore[return-value]  # a bytearray: a 2 GiB bytes() copy is not worth it
