"""How worker processes start: forkserver for GPU workers, spawn for the
interpreter, and a fallback to spawn when a forkserver child cannot start."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from helion_remote.blobs import DirectoryBlobStore
from helion_remote.errors import RemoteTraceback
from helion_remote.worker import launch, process


def spec(tmp_path, device: int | None) -> launch.WorkerSpec:  # type: ignore[no-untyped-def]
    return process.WorkerSpec("w", DirectoryBlobStore(tmp_path / "blobs"), str(tmp_path / "work"), device)


def test_gpu_workers_fork_from_a_preloaded_server_interpreter_workers_spawn(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(launch, "_FORKSERVER_USABLE", True)
    monkeypatch.delenv("HELION_REMOTE_WORKER_START", raising=False)
    assert launch.start_context(spec(tmp_path, 0)).get_start_method() == "forkserver"
    assert launch.start_context(spec(tmp_path, None)).get_start_method() == "spawn"
    monkeypatch.setenv("HELION_REMOTE_WORKER_START", "spawn")
    assert launch.start_context(spec(tmp_path, 0)).get_start_method() == "spawn"
    assert process.child_environment(spec(tmp_path, 1))["CUDA_VISIBLE_DEVICES"] == "1"


def test_a_forkserver_child_that_cannot_start_falls_back_to_spawn(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The runtime fails to start in both (a bad setting), so the handle raises after trying spawn."""
    monkeypatch.setattr(launch, "_FORKSERVER_USABLE", True)
    monkeypatch.setenv("HELION_REMOTE_CPU_MAX_REPS", "not-a-number")
    handle = process.WorkerHandle(spec(tmp_path, None))
    handle._ctx = multiprocessing.get_context("forkserver")
    try:
        with pytest.raises(RuntimeError, match="failed to start.*not-a-number") as info:
            handle.start()
        remote = info.value.__cause__.__cause__  # the child's own traceback, not just "Type: message"
        assert isinstance(remote, RemoteTraceback) and "WorkerRuntime(" in remote.text and "int(" in remote.text
        assert handle._ctx.get_start_method() == "spawn"
        assert launch._FORKSERVER_USABLE is False
    finally:
        handle.close()


def test_the_worker_server_can_be_started_ahead_or_switched_off(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(launch, "_FORKSERVER_USABLE", True)
    monkeypatch.setenv("HELION_REMOTE_WORKER_START", "spawn")
    assert process.start_worker_server(wait=True) is False
    monkeypatch.delenv("HELION_REMOTE_WORKER_START")
    assert process.start_worker_server(wait=True) is True


def test_the_worker_server_imports_with_nvml_only_cuda_checks(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """torch refuses CUDA in children forked from a process that initialized it:
    the server must start with torch's NVML-based availability check."""
    from multiprocessing import forkserver

    seen: dict[str, str] = {}
    monkeypatch.setattr(launch, "_FORKSERVER_USABLE", True)
    monkeypatch.delenv("HELION_REMOTE_WORKER_START", raising=False)
    monkeypatch.delenv("PYTORCH_NVML_BASED_CUDA_CHECK", raising=False)
    monkeypatch.setattr(forkserver, "ensure_running", lambda: seen.update(os.environ))
    assert process.start_worker_server() is True
    assert seen["PYTORCH_NVML_BASED_CUDA_CHECK"] == "1" and seen["TRITON_INTERPRET"] == "0"
    assert "PYTORCH_NVML_BASED_CUDA_CHECK" not in os.environ  # restored


def test_environment_patches_restore_only_their_own_keys(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Worker start-up runs in threads while a search sets its own variables: a
    whole-environment restore would erase them (it once erased Helion's
    final-rebenchmark setting mid-search)."""
    monkeypatch.setenv("HR_TEST_KEPT", "before")
    monkeypatch.delenv("HR_TEST_NEW", raising=False)
    monkeypatch.delenv("HR_TEST_OTHER", raising=False)
    with process.patched_environ({"HR_TEST_KEPT": "during", "HR_TEST_NEW": "during"}):
        assert os.environ["HR_TEST_KEPT"] == os.environ["HR_TEST_NEW"] == "during"
        os.environ["HR_TEST_OTHER"] = "set by another thread"
    assert os.environ["HR_TEST_KEPT"] == "before" and "HR_TEST_NEW" not in os.environ
    assert os.environ.pop("HR_TEST_OTHER") == "set by another thread"
