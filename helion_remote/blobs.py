"""Content-addressed blob stores: the coordinator uploads, workers download.

A blob's key is the sha256 of its full bytes, so an upload is idempotent (the
same bytes never move twice) and a reader can check that what it got is what
was meant.  Every ``get`` verifies: a truncated or bit-flipped blob must fail
loudly rather than turn into wrong benchmark inputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import stat
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from helion_remote import errors

Buffer = bytes | bytearray | memoryview
"""What ``put`` accepts: bytes-likes let callers hand over views without a copy."""

CACHE_DIR_ENV = "HELION_REMOTE_CACHE_DIR"

_DIGEST_RE = re.compile(r"[0-9a-f]{64}")


class BlobStoreError(errors.BlobStoreError):
    """Base class for blob store failures."""


class BlobNotFound(BlobStoreError, KeyError):
    """The digest is not in the store (a ``KeyError``, as for a mapping)."""

    def __init__(self, digest: str, store: str) -> None:
        self.digest = digest
        self.store = store
        super().__init__(
            f"blob {digest} not found in {store}; the coordinator must upload it "
            f"(put) before a worker asks for it"
        )

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message, quotes and all.
        return str(self.args[0])


class BlobDigestMismatch(BlobStoreError):
    """What was read does not hash to the key it was stored under."""

    def __init__(self, expected: str, actual: str, location: str) -> None:
        self.expected = expected
        self.actual = actual
        self.location = location
        super().__init__(
            f"blob read from {location} has sha256 {actual}, expected {expected}; "
            f"the stored blob is corrupt: re-upload it (put replaces a damaged copy)"
        )


@dataclasses.dataclass(frozen=True)
class PutResult:
    digest: str
    nbytes: int
    uploaded: bool
    """False when the store already held the digest and nothing moved."""


@runtime_checkable
class BlobStore(Protocol):
    """Where argument blobs live between the coordinator and the workers."""

    def put(self, data: bytes) -> PutResult:
        """Store ``data`` under its sha256 hex digest; a no-op if an intact copy is there.

        A damaged copy (truncated, bit-flipped) is replaced: a store repairs
        itself, or one bad file would break those arguments for good.
        """
        ...

    def get(self, digest: str) -> bytes:
        """The verified bytes of ``digest``; ``BlobNotFound`` / ``BlobDigestMismatch``."""
        ...

    def contains(self, digest: str) -> bool:
        """Whether an intact copy of ``digest`` is there (a damaged one is not: re-``put`` it)."""
        ...

    def describe(self) -> str:
        """Where this store is, for error messages."""
        ...


def check_digest(digest: object) -> str:
    """``digest`` if it is 64 lowercase hex characters, else ``ValueError``.

    Keys become file names, so a bad one must not reach the file system.
    """
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise ValueError(f"invalid blob digest {digest!r}: expected 64 lowercase hex characters (sha256)")
    return digest


def verify(data: Buffer, digest: str, location: str) -> None:
    """Raise ``BlobDigestMismatch`` unless ``data`` hashes to ``digest``."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise BlobDigestMismatch(digest, actual, location)


def _file_sha256(f: BinaryIO) -> str:
    """sha256 of an open file, read in 4 MiB pieces (a multi-GiB blob never sits in memory twice)."""
    h = hashlib.sha256()
    while piece := f.read(4 << 20):
        h.update(piece)
    return h.hexdigest()


def default_cache_dir() -> Path:
    """``$HELION_REMOTE_CACHE_DIR``, else ``~/.cache/helion-remote``."""
    env = os.environ.get(CACHE_DIR_ENV)
    return Path(env) if env else Path.home() / ".cache" / "helion-remote"


class _Counters:
    """Upload statistics shared by the stores; updated under ``self._lock``."""

    bytes_uploaded: int
    puts: int
    """Puts that stored new bytes."""
    puts_skipped: int
    """Puts that found the digest already present."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes_uploaded = 0
        self.puts = 0
        self.puts_skipped = 0

    def __getstate__(self) -> dict[str, object]:
        # Stores travel to worker processes; a lock cannot, and need not.
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _count(self, result: PutResult) -> PutResult:
        with self._lock:
            if result.uploaded:
                self.puts += 1
                self.bytes_uploaded += result.nbytes
            else:
                self.puts_skipped += 1
        return result


class MemoryBlobStore(_Counters):
    """A dict in this process: for tests and single-process executors."""

    def __init__(self) -> None:
        super().__init__()
        self._blobs: dict[str, bytes] = {}

    def put(self, data: Buffer) -> PutResult:
        digest = hashlib.sha256(data).hexdigest()
        nbytes = memoryview(data).nbytes
        with self._lock:
            held = self._blobs.get(digest)
            present = held is not None and held == data
            if not present:
                self._blobs[digest] = bytes(data)
        return self._count(PutResult(digest, nbytes, uploaded=not present))

    def get(self, digest: str) -> bytes:
        check_digest(digest)
        with self._lock:
            data = self._blobs.get(digest)
        if data is None:
            raise BlobNotFound(digest, self.describe())
        verify(data, digest, f"{self.describe()} key {digest}")
        return data

    def contains(self, digest: str) -> bool:
        check_digest(digest)
        with self._lock:
            data = self._blobs.get(digest)
        return data is not None and hashlib.sha256(data).hexdigest() == digest

    def describe(self) -> str:
        return f"MemoryBlobStore(id=0x{id(self):x}, {len(self._blobs)} blobs)"


class DirectoryBlobStore(_Counters):
    """Blobs as files ``root/<digest[:2]>/<digest>``, shared by processes.

    Writers fill a temporary file in the target directory and ``os.replace``
    it into place, so a reader in any process sees either no file or a whole
    one.  Two writers racing on one digest both write the same bytes, and the
    last rename wins harmlessly.  An existing file is trusted only once it
    hashed to its name: ``put`` and ``contains`` verify it (remembering the
    file's inode, size and mtime, so this process hashes each file once), and
    ``put`` atomically replaces a damaged one.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        super().__init__()
        self.root = Path(root)
        self._verified: dict[str, tuple[int, int, int]] = {}

    def path(self, digest: str) -> Path:
        check_digest(digest)
        return self.root / digest[:2] / digest

    def put(self, data: Buffer) -> PutResult:
        digest = hashlib.sha256(data).hexdigest()
        nbytes = memoryview(data).nbytes
        if self._intact(digest, nbytes):
            return self._count(PutResult(digest, nbytes, uploaded=False))
        target = self.path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{digest[:16]}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)  # atomic: over a damaged copy too
            st = target.stat()
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        with self._lock:  # these bytes were just hashed: no need to read them back
            self._verified[digest] = (st.st_ino, st.st_size, st.st_mtime_ns)
        return self._count(PutResult(digest, nbytes, uploaded=True))

    def get(self, digest: str) -> bytes:
        target = self.path(digest)
        try:
            data = target.read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(digest, self.describe()) from None
        verify(data, digest, str(target))
        return data

    def contains(self, digest: str) -> bool:
        return self._intact(digest)

    def _intact(self, digest: str, nbytes: int | None = None) -> bool:
        """The file at ``digest`` exists and hashes to it (cheap when this process already checked it)."""
        target = self.path(digest)
        try:
            st = target.stat()
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(st.st_mode) or (nbytes is not None and st.st_size != nbytes):
            return False
        seen = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            if self._verified.get(digest) == seen:
                return True
        try:
            with open(target, "rb") as f:
                actual = _file_sha256(f)
        except FileNotFoundError:
            return False
        if actual != digest:
            return False
        with self._lock:
            self._verified[digest] = seen
        return True

    def describe(self) -> str:
        return f"DirectoryBlobStore({str(self.root)!r})"
