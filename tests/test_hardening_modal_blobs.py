"""The Modal blob Volume repairs itself: a blob whose index survived but whose chunk or index
was damaged is re-uploaded by the next ``put`` instead of being trusted for good."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helion_remote.backends.modal.blobs import MountedBlobStore, VolumeBlobStore, chunk_path, index_path
from helion_remote.blobs import BlobDigestMismatch

from test_modal_standin import StandInModal

DATA = bytes(range(256)) * 20  # 5120 bytes: 6 chunks of 1000


def _store(server: StandInModal) -> VolumeBlobStore:
    return VolumeBlobStore(server.Volume.from_name("v"), name="v", chunk_bytes=1000)


def _chunk_file(root: Path, digest: str, i: int) -> Path:
    index = json.loads((root / index_path(digest).lstrip("/")).read_text())
    return root / chunk_path(index["chunks"][i][0]).lstrip("/")


@pytest.mark.parametrize("damage", ["truncated chunk", "lost chunk", "damaged index"])
def test_the_next_put_repairs_a_damaged_blob(tmp_path: Path, damage: str) -> None:
    server = StandInModal(tmp_path)
    digest = _store(server).put(DATA).digest
    if damage == "truncated chunk":
        victim = _chunk_file(tmp_path, digest, 2)
        victim.write_bytes(victim.read_bytes()[:10])
    elif damage == "lost chunk":
        _chunk_file(tmp_path, digest, 2).unlink()
    else:
        (tmp_path / index_path(digest).lstrip("/")).write_text('{"format": "helion-remote-volume-blob/1", "dig')
    with pytest.raises((BlobDigestMismatch, ValueError, FileNotFoundError)):
        MountedBlobStore(tmp_path).get(digest)
    fresh = _store(server)  # the next autotune run: a new process
    assert not fresh.contains(digest)
    again = fresh.put(DATA)
    assert again.uploaded and again.digest == digest
    assert MountedBlobStore(tmp_path).get(digest) == DATA
    assert _store(server).contains(digest) and not _store(server).put(DATA).uploaded


def test_an_intact_blob_is_not_uploaded_again(tmp_path: Path) -> None:
    server = StandInModal(tmp_path)
    _store(server).put(DATA)
    uploaded = server.bytes_uploaded
    assert not _store(server).put(DATA).uploaded
    assert server.bytes_uploaded == uploaded
