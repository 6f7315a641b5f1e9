from __future__ import annotations

import hashlib
import pickle
import threading
from pathlib import Path

import pytest

from helion_remote.blobs import (
    BlobDigestMismatch,
    BlobNotFound,
    BlobStore,
    DirectoryBlobStore,
    MemoryBlobStore,
    default_cache_dir,
)

@pytest.fixture(params=["memory", "directory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> MemoryBlobStore | DirectoryBlobStore:
    if request.param == "memory":
        return MemoryBlobStore()
    return DirectoryBlobStore(tmp_path / "blobs")


def corrupt(store: MemoryBlobStore | DirectoryBlobStore, digest: str, data: bytes) -> None:
    if isinstance(store, MemoryBlobStore):
        store._blobs[digest] = data
    else:
        store.path(digest).write_bytes(data)


def test_stores_satisfy_protocol(store: BlobStore) -> None:
    assert isinstance(store, BlobStore)
    assert not isinstance(object(), BlobStore)


def test_put_is_idempotent_and_counts(store: MemoryBlobStore | DirectoryBlobStore) -> None:
    data = b"hello blobs" * 100
    first = store.put(data)
    assert first.digest == hashlib.sha256(data).hexdigest()
    assert first.nbytes == len(data)
    assert first.uploaded is True
    second = store.put(data)
    assert second.digest == first.digest
    assert second.uploaded is False
    store.put(b"other")
    assert (store.puts, store.puts_skipped) == (2, 1)
    assert store.bytes_uploaded == len(data) + len(b"other")


def test_put_copies_from_a_view(store: MemoryBlobStore | DirectoryBlobStore) -> None:
    data = bytearray(b"abcdef")
    result = store.put(memoryview(data)[1:4])
    assert result.digest == hashlib.sha256(b"bcd").hexdigest()
    data[1:4] = b"XYZ"  # the store must have taken its own copy
    assert store.get(result.digest) == b"bcd"


def test_get_and_contains_round_trip(store: MemoryBlobStore | DirectoryBlobStore) -> None:
    data = bytes(range(256))
    digest = hashlib.sha256(data).hexdigest()
    assert not store.contains(digest)
    store.put(data)
    assert store.contains(digest)
    assert store.get(digest) == data
    empty = store.put(b"")
    assert store.get(empty.digest) == b""


def test_get_verifies_content(store: MemoryBlobStore | DirectoryBlobStore) -> None:
    digest = store.put(b"the real bytes").digest
    corrupt(store, digest, b"the evil bytes")
    with pytest.raises(BlobDigestMismatch) as info:
        store.get(digest)
    message = str(info.value)
    assert digest in message
    assert hashlib.sha256(b"the evil bytes").hexdigest() in message
    assert "corrupt" in message and "re-upload" in message
    if isinstance(store, DirectoryBlobStore):
        assert str(store.path(digest)) in message


def test_truncated_file_is_detected(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path)
    digest = store.put(b"0123456789" * 1000).digest
    path = store.path(digest)
    path.write_bytes(path.read_bytes()[:4096])
    with pytest.raises(BlobDigestMismatch):
        store.get(digest)


def test_missing_blob_raises_not_found(store: MemoryBlobStore | DirectoryBlobStore) -> None:
    digest = hashlib.sha256(b"never stored").hexdigest()
    with pytest.raises(BlobNotFound) as info:
        store.get(digest)
    assert isinstance(info.value, KeyError)
    message = str(info.value)
    assert digest in message
    assert store.describe() in message
    assert "upload" in message
    assert not message.startswith("'")  # not KeyError's repr'd message


@pytest.mark.parametrize(
    "bad",
    ["abc", "A" * 64, "g" * 64, "../" + "a" * 61, "a" * 63, "a" * 65, 12345, None],
)
def test_bad_digest_is_value_error(store: MemoryBlobStore | DirectoryBlobStore, bad: object) -> None:
    for method in (store.get, store.contains):
        with pytest.raises(ValueError, match="invalid blob digest") as info:
            method(bad)  # type: ignore[arg-type]
        assert repr(bad) in str(info.value)


def test_directory_layout_and_no_temp_files(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path)
    digest = store.put(b"layout").digest
    assert (tmp_path / digest[:2] / digest).read_bytes() == b"layout"
    assert [p.name for p in (tmp_path / digest[:2]).iterdir()] == [digest]


def test_directory_stores_share_a_root(tmp_path: Path) -> None:
    writer, reader = DirectoryBlobStore(tmp_path), DirectoryBlobStore(str(tmp_path))
    digest = writer.put(b"shared").digest
    assert reader.contains(digest)
    assert reader.get(digest) == b"shared"
    assert reader.put(b"shared").uploaded is False


def test_concurrent_puts(store: MemoryBlobStore | DirectoryBlobStore) -> None:
    threads_n, per_thread = 8, 20
    shared = [f"shared-{i}".encode() * 1000 for i in range(per_thread)]
    barrier = threading.Barrier(threads_n)
    errors: list[BaseException] = []

    def work(tid: int) -> None:
        try:
            barrier.wait()
            for i, blob in enumerate(shared):
                store.put(blob)
                store.put(f"own-{tid}-{i}".encode())
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    distinct = per_thread + threads_n * per_thread
    calls = 2 * threads_n * per_thread
    assert store.puts + store.puts_skipped == calls
    if isinstance(store, MemoryBlobStore):
        assert store.puts == distinct  # the lock makes check-and-insert atomic
    else:
        # Racing writers of one digest may both write; they never leave debris.
        assert store.puts >= distinct
        files = [p for p in store.root.rglob("*") if p.is_file()]
        assert len(files) == distinct
    for blob in shared:
        assert store.get(hashlib.sha256(blob).hexdigest()) == blob


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HELION_REMOTE_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("HELION_REMOTE_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "helion-remote"


def test_stores_pickle_for_worker_processes(store: MemoryBlobStore | DirectoryBlobStore) -> None:
    digest = store.put(b"travels").digest
    copy = pickle.loads(pickle.dumps(store))
    assert copy.get(digest) == b"travels"
    assert copy.puts == 1
    copy.put(b"after unpickling")  # the lock was rebuilt
    assert copy.puts == 2


# ---------------------------------------------------------------- a store repairs itself


@pytest.mark.parametrize("damage", ["truncated", "bit-flipped", "emptied"])
def test_put_replaces_a_damaged_copy(store: MemoryBlobStore | DirectoryBlobStore, damage: str) -> None:
    data = bytes(range(256)) * 40
    digest = store.put(data).digest
    bad = {"truncated": data[:100], "bit-flipped": bytes([data[0] ^ 1]) + data[1:], "emptied": b""}[damage]
    corrupt(store, digest, bad)
    with pytest.raises(BlobDigestMismatch):
        store.get(digest)
    assert not store.contains(digest), "a damaged copy is not contained: upload_args must re-send it"
    again = store.put(data)
    assert again.uploaded and again.digest == digest
    assert store.get(digest) == data and store.contains(digest)
    assert store.put(data).uploaded is False


def test_upload_args_repairs_a_damaged_storage_blob(store: MemoryBlobStore | DirectoryBlobStore) -> None:
    import torch

    from helion_remote.argcodec import download_args, upload_args

    args = [torch.arange(64, dtype=torch.float32)]
    up = upload_args(store, args)
    storage_digest = hashlib.sha256(args[0].numpy().tobytes()).hexdigest()
    corrupt(store, storage_digest, b"\0" * 10)
    with pytest.raises(BlobDigestMismatch):
        download_args(store, up.digest)
    again = upload_args(store, args)  # what the next autotune run does
    assert again.puts == 1 and again.puts_skipped == 1
    assert torch.equal(download_args(store, up.digest)[0], args[0])  # type: ignore[arg-type]


def test_directory_store_replaces_atomically_and_checks_each_file_once(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path)
    data = b"x" * 1000
    digest = store.put(data).digest
    before = store.path(digest).stat().st_ino
    store.path(digest).write_bytes(b"y" * 1000)  # same size, wrong bytes, written in place
    assert store.put(data).uploaded
    assert store.path(digest).stat().st_ino != before, "replaced by rename, never rewritten in place"
    assert not list(store.path(digest).parent.glob("*.tmp"))
    reads: list[str] = []
    real_open = open

    def counting_open(path, *a, **kw):  # type: ignore[no-untyped-def]
        reads.append(str(path))
        return real_open(path, *a, **kw)

    import builtins

    builtins.open = counting_open  # type: ignore[assignment]
    try:
        assert store.contains(digest) and store.contains(digest) and not store.put(data).uploaded
    finally:
        builtins.open = real_open  # type: ignore[assignment]
    assert reads == [], "this process verified the file when it wrote it"
