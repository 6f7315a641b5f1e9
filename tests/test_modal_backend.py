"""The Modal backend without Modal's servers (none are reachable here).

What runs for real: the installed ``modal`` client package (every call the
backend makes is bound to its signatures; ``modal_app`` is imported and its
decorators validated by the real client), the worker body through Modal's
local execution path (``Worker().run_job.local(...)``, ``@modal.enter``
included) on a Helion-generated kernel under the Triton interpreter, and
real Helion searches driven through an in-process stand-in for the server
side (``test_modal_standin.py``).  One child process (started at import, so
it overlaps the in-process tests) holds everything that needs
``TRITON_INTERPRET=1`` set before triton loads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
_CHILD_OUT = Path(tempfile.mkdtemp(prefix="modal-child-")) / "out.json"


def _start_child() -> subprocess.Popen[str] | None:
    if os.environ.get("_HELION_REMOTE_MODAL_CHILD"):
        return None
    env = {**os.environ, "TRITON_INTERPRET": "1", "_HELION_REMOTE_MODAL_CHILD": "1",
           "HELION_AUTOTUNE_PROGRESS_BAR": "0", "HELION_AUTOTUNE_LOG_LEVEL": "WARNING"}
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(_CHILD_OUT)], env=env, cwd=str(ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


_CHILD = _start_child() if __name__ != "__main__" else None
_IMPORT_CHECK = (
    subprocess.Popen(
        [sys.executable, "-c",
         "import sys, helion_remote, helion_remote.coordinator.api, helion_remote.backends, helion_remote.backends.modal, "
         "helion_remote.backends.modal.blobs, helion_remote.backends.modal.cost; "
         "print('MODAL_IMPORTED' if 'modal' in sys.modules else 'MODAL_NOT_IMPORTED')"],
        cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    if __name__ != "__main__" and not os.environ.get("_HELION_REMOTE_MODAL_CHILD") else None
)

import pytest  # noqa: E402
import torch  # noqa: E402

import modal  # noqa: E402
import modal.exception  # noqa: E402

import helion_remote  # noqa: E402
from helion_remote.argcodec import download_args, upload_args  # noqa: E402
from helion_remote.backends import create_executor  # noqa: E402
from helion_remote.backends.modal import (  # noqa: E402
    MISSING_CREDENTIALS,
    ModalExecutor,
    ModalNotDeployed,
    ModalSetupError,
    ModalVersionMismatch,
)
from helion_remote.backends.modal.blobs import MountedBlobStore, VolumeBlobStore, chunk_path, index_path  # noqa: E402
from helion_remote.backends.modal.cost import PRICE_SOURCE, CostMeter  # noqa: E402
from helion_remote.backends.modal.settings import ModalSettings, ModalSettingsError, pin_gpu  # noqa: E402
from helion_remote.backends.modal.wire import WIRE_OPS  # noqa: E402
from helion_remote.blobs import BlobDigestMismatch, BlobNotFound  # noqa: E402
from helion_remote.protocol import BenchmarkJob, KernelSource, SessionSpec, Tolerances  # noqa: E402

sys.path.insert(0, str(HERE))
import kernels  # noqa: E402
from test_modal_standin import CostModelBody, StandInModal  # noqa: E402

pytestmark = pytest.mark.timeout(120)


# ---------------------------------------------------------------------- helpers


def make_executor(tmp_path: Path, server: StandInModal | None = None, **kw: Any) -> tuple[ModalExecutor, StandInModal]:
    server = server or StandInModal(tmp_path / "volume")
    kw.setdefault("print_cost", False)
    settings = ModalSettings(**{k: kw.pop(k) for k in list(kw) if k in {f.name for f in dataclasses.fields(ModalSettings)}})
    messages: list[str] = []
    executor = ModalExecutor(settings=settings, _client=server, output=messages.append, **kw)
    executor.messages = messages  # type: ignore[attr-defined]
    return executor, server


def tiny_spec(executor: ModalExecutor) -> SessionSpec:
    digest = upload_args(executor.blob_store, [torch.ones(4)]).digest
    return SessionSpec("s1", "k", digest, KernelSource("def k():\n    pass\n", "k"))


def tiny_jobs(spec: SessionSpec, n: int, prefix: str = "j") -> list[BenchmarkJob]:
    return [
        BenchmarkJob(f"{prefix}{i}", KernelSource(f"# {i}\n", "k"), spec.args_digest, spec.baseline_digest,
                     Tolerances(), 60, 30, config={"block_sizes": [2 ** (i % 7)], "num_warps": 4})
        for i in range(n)
    ]


REAL_API: dict[str, Any] = {
    "Cls.from_name": modal.Cls.from_name,
    "Cls.hydrate": modal.Cls.hydrate,
    "Cls.with_options": modal.Cls.with_options,
    "Cls.__call__": modal.Cls.__call__,
    "Function.spawn": modal.Function.spawn,
    "FunctionCall.get": modal.FunctionCall.get,
    "FunctionCall.cancel": modal.FunctionCall.cancel,
    "Volume.from_name": modal.Volume.from_name,
    "Volume.hydrate": modal.Volume.hydrate,
    "Volume.listdir": modal.Volume.listdir,
    "Volume.read_file": modal.Volume.read_file,
    "Volume.batch_upload": modal.Volume.batch_upload,
    "VolumeUpload.put_file": modal.volume.AbstractVolumeUploadContextManager.put_file,
    "App.run": modal.App.run,
}
SEAM_ONLY = {"credentials_present"}
"""Not a modal call: RealModalClient reads modal.config offline (tested below)."""


def bind_real(api: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    fn = REAL_API[api]
    sig = inspect.signature(fn)
    first = next(iter(sig.parameters), None)
    if first in ("self", "cls"):
        sig.bind(object(), *args, **kwargs)
    else:
        sig.bind(*args, **kwargs)


def check_calls_against_real_client(server: StandInModal) -> set[str]:
    """Bind every recorded call to the installed client's signature; method names to modal_app.Worker."""
    from helion_remote.backends.modal import app as modal_app

    user_cls = modal_app.Worker._get_user_cls()
    for api, args, kwargs in server.calls:
        if api in SEAM_ONLY:
            continue
        assert api in REAL_API, f"the backend made a Modal call the test does not know: {api}"
        bind_real(api, args, kwargs)
        if api == "Cls.with_options":
            assert kwargs["gpu"].endswith("!") or not kwargs["gpu"].upper().startswith("H100"), kwargs
            assert isinstance(kwargs["max_containers"], int) and kwargs["max_containers"] >= 1
    for api, args, kwargs in server.calls:
        if api == "Cls.__call__":  # modal.parameter fields of the deployed class
            assert not args and set(kwargs) <= set(user_cls.__annotations__), kwargs
    for method in set(server.methods_called):
        assert method in modal_app.Worker._get_method_names(), method
    # Arguments of each remote call bind to the real method of the deployed class.
    spawns = [c for c in server.calls if c[0] == "Function.spawn"]
    assert spawns and len(spawns) == len(server.spawned)
    for (method, _call), (_api, args, kwargs) in zip(server.spawned, spawns, strict=True):
        raw = user_cls.__dict__[method]._get_raw_f()
        inspect.signature(raw).bind(object(), *args, **kwargs)
    return server.api_names()


# ---------------------------------------------------------------------- settings


def test_settings_defaults_env_and_overrides() -> None:
    s = ModalSettings.from_env({})
    assert (s.gpu, s.max_containers, s.app_name, s.volume_name, s.mode) == (
        "H100!", 10, "helion-remote", "helion-remote-blobs", "auto")
    env = {"HELION_REMOTE_MODAL_GPU": "A100-80GB", "HELION_REMOTE_MODAL_MAX_CONTAINERS": "3",
           "HELION_REMOTE_MODAL_MAX_COST_USD": "2.5", "HELION_REMOTE_MODAL_APP_NAME": "mine"}
    s = ModalSettings.from_env(env)
    assert (s.gpu, s.max_containers, s.max_cost_usd, s.app_name) == ("A100-80GB", 3, 2.5, "mine")
    s = ModalSettings.from_env(env, max_containers=5, gpu="H100")
    assert (s.gpu, s.max_containers, s.job_containers, s.dedicated_retime) == ("H100!", 5, 4, True)
    assert ModalSettings(max_containers=1).job_containers == 1 and not ModalSettings(max_containers=1).dedicated_retime
    assert pin_gpu("h100:2") == "h100!:2"
    for bad in ("H100,A100", ""):
        with pytest.raises(ModalSettingsError, match="ONE Modal GPU"):
            pin_gpu(bad)
    with pytest.raises(ModalSettingsError, match="MAX_CONTAINERS"):
        ModalSettings.from_env({"HELION_REMOTE_MODAL_MAX_CONTAINERS": "many"})
    with pytest.raises(ModalSettingsError, match="mode"):
        ModalSettings(mode="sometimes")  # type: ignore[arg-type]


def test_registry_builds_the_modal_executor_from_kwargs(tmp_path: Path) -> None:
    server = StandInModal(tmp_path)
    executor = create_executor("modal", _client=server, gpu="L4", max_containers=2)
    try:
        assert executor.settings.gpu == "L4" and executor.settings.max_containers == 2  # type: ignore[attr-defined]
    finally:
        executor.close()


def test_wire_round_trips_every_protocol_field() -> None:
    from helion_remote.backends.modal.wire import job_from_dict, job_to_dict, spec_from_dict, spec_to_dict
    from helion_remote.protocol import SourceModule

    for field in dataclasses.fields(SessionSpec):  # a new field must be carried (or this test updated)
        assert field.name in spec_to_dict(SessionSpec("s", "k", "0" * 64, KernelSource("x", "k"))), field.name
    spec = SessionSpec("s", "k", "0" * 64, KernelSource("src", "k", (SourceModule("m", "y = 1"),)),
                       Tolerances(1e-3, 2e-3), 61.0, 31.0, "fp", SourceModule("defs", "z = 2"), "kern",
                       (("autotune_effort", "quick"), ("static_shapes", True)))
    assert spec_from_dict(json.loads(json.dumps(spec_to_dict(spec)))) == spec
    job = tiny_jobs(spec, 1)[0]
    assert job_from_dict(json.loads(json.dumps(job_to_dict(job)))) == dataclasses.replace(job, avoid_workers=())


# ---------------------------------------------------------------------- cost


def test_cost_meter_counts_cold_start_active_and_idle_tail() -> None:
    clock = [1000.0]
    meter = CostMeter(gpu_type="H100", cpu=2.0, memory_mib=8192, scaledown_window_s=120, cold_start_s=20,
                      clock=lambda: clock[0], max_cost_usd=1.0)
    rate = 0.001097 + 2 * 0.0000131 + 8 * 0.00000222
    assert meter.rate == pytest.approx(rate)
    meter.observe({"id": "a", "boot": 500.0, "now": 560.0})  # worker clock 440 s behind: offset applied
    clock[0] = 1030.0
    meter.observe({"id": "a", "boot": 500.0, "now": 590.0})
    meter.observe({"id": "b", "boot": 585.0, "now": 590.0})
    report = meter.report()
    assert report.containers == 2 and report.jobs == 3
    assert report.active_s == pytest.approx(90 + 5)
    assert report.container_s == pytest.approx(95 + 2 * 20 + 2 * 120)
    assert report.estimated_usd == pytest.approx(report.container_s * rate)
    assert PRICE_SOURCE in str(report) and "2026-07-01" in str(report)
    # Committed: 3 unseen containers of in-flight jobs cost a cold start and a tail each.
    assert meter.estimate_usd(expected_containers=5) == pytest.approx((report.container_s + 3 * 140) * rate)
    assert not meter.exceeded()
    meter.max_cost_usd = 0.3
    assert meter.exceeded()


def test_a_busy_estimate_bills_only_the_containers_still_running() -> None:
    """Three hours in, one job container busy: a re-timing container idle since minute one is not billed until now."""
    clock = [0.0]
    meter = CostMeter(gpu_type="H100", scaledown_window_s=120, cold_start_s=20, clock=lambda: clock[0])
    meter.observe({"id": "retime", "boot": 0.0, "now": 0.0}, job=False)
    clock[0] = 60.0
    meter.observe({"id": "job1", "boot": 0.0, "now": 60.0})
    clock[0] = 3 * 3600.0
    expected_s = (20 + 0 + 120) + (20 + 3 * 3600 + 120)  # the idle one: its 60 s were before its boot stamp
    assert meter.estimate_usd(busy=True, expected_containers=1) == pytest.approx(expected_s * meter.rate, rel=0.01)
    # Two containers busy: both run until now.
    assert meter.estimate_usd(busy=True, expected_containers=2) == pytest.approx(2 * (140 + 3 * 3600) * meter.rate, rel=0.01)


# ---------------------------------------------------------------------- blobs


def test_volume_blobs_chunk_upload_once_and_verify_on_worker(tmp_path: Path) -> None:
    server = StandInModal(tmp_path)
    store = VolumeBlobStore(server.Volume.from_name("v"), name="v", chunk_bytes=1000)
    args = [torch.arange(1000, dtype=torch.float32), {"n": 3, "t": torch.ones(7, dtype=torch.int64)}]
    first = upload_args(store, args)
    assert first.puts == 3 and first.bytes_uploaded == first.total_bytes
    index = json.loads((tmp_path / index_path(first.digest).lstrip("/")).read_text())
    assert index["digest"] == first.digest
    chunks = [c for c in index["chunks"]]
    assert len(chunks) == 1 and not (tmp_path / "chunks").joinpath("x").exists()
    big = [c for c in tmp_path.glob("blobs/*/*.json") if json.loads(c.read_text())["nbytes"] == 4000]
    assert len(json.loads(big[0].read_text())["chunks"]) == 4  # 4000 bytes in 1000-byte chunks
    uploaded = server.bytes_uploaded
    again = upload_args(VolumeBlobStore(server.Volume.from_name("v"), chunk_bytes=1000), args)  # fresh process
    assert again.digest == first.digest and again.puts == 0 and again.bytes_uploaded == 0
    assert server.bytes_uploaded == uploaded and "Volume.batch_upload" in server.api_names()
    reloads: list[int] = []
    worker = MountedBlobStore(tmp_path, reload=lambda: reloads.append(1))
    back = download_args(worker, first.digest)
    assert torch.equal(back[0], args[0]) and torch.equal(back[1]["t"], args[1]["t"])  # type: ignore[index]
    assert store.get(first.digest) == worker.get(first.digest)
    with pytest.raises(BlobNotFound):
        worker.get("0" * 64)
    assert reloads == [1]  # a miss reloads the Volume once before giving up
    victim = tmp_path / chunk_path(chunks[0][0]).lstrip("/")
    victim.write_bytes(b"\0" * victim.stat().st_size)
    with pytest.raises(BlobDigestMismatch):
        worker.get(index["digest"])


def test_a_damaged_chunk_left_on_the_volume_is_replaced_by_the_next_upload(tmp_path: Path) -> None:
    import hashlib

    server = StandInModal(tmp_path)
    data = b"A" * 100
    truncated = tmp_path / chunk_path(hashlib.sha256(data).hexdigest()).lstrip("/")
    truncated.parent.mkdir(parents=True)
    truncated.write_bytes(data[:10])  # an earlier upload died half way
    put = VolumeBlobStore(server.Volume.from_name("v"), chunk_bytes=1 << 20).put(data)
    assert put.uploaded and MountedBlobStore(tmp_path).get(put.digest) == data


def test_two_gib_argument_tree_round_trips_through_the_volume(tmp_path: Path) -> None:
    server = StandInModal(tmp_path)
    store = VolumeBlobStore(server.Volume.from_name("v"))
    big = torch.arange((2 << 30) // 8, dtype=torch.int64)  # 2 GiB, every 64 MiB chunk distinct
    up = upload_args(store, [big, 3])
    assert up.total_bytes >= 2 << 30 and up.bytes_uploaded == up.total_bytes
    files = [f for f in (tmp_path / "chunks").rglob("*") if f.is_file()]
    assert max(f.stat().st_size for f in files) == 64 << 20  # no file over one chunk
    assert len([f for f in files if f.stat().st_size == 64 << 20]) == 32  # + the manifest's one small chunk
    assert VolumeBlobStore(server.Volume.from_name("v")).contains(up.digest)  # what a re-run checks first
    back = download_args(MountedBlobStore(tmp_path), up.digest)
    assert back[1] == 3 and torch.equal(back[0], big)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- connection


def test_missing_credentials_fail_before_any_modal_call(tmp_path: Path) -> None:
    server = StandInModal(tmp_path, credentials=False)
    with pytest.raises(ModalSetupError) as info:
        make_executor(tmp_path, server)
    assert "modal token new" in str(info.value) and "MODAL_TOKEN_ID" in str(info.value)
    assert server.api_names() == {"credentials_present"}
    assert MISSING_CREDENTIALS in str(info.value)


def test_real_client_credentials_check_is_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from helion_remote.backends.modal.client import RealModalClient

    client = RealModalClient()
    monkeypatch.setattr(modal.config, "config", {"token_id": None, "token_secret": None})
    assert not client.credentials_present()
    monkeypatch.setattr(modal.config, "config", {"token_id": "ak-1", "token_secret": "as-1"})
    assert client.credentials_present()


def test_invalid_token_is_a_setup_error_with_instructions(tmp_path: Path) -> None:
    with pytest.raises(ModalSetupError, match="modal token new"):
        make_executor(tmp_path, StandInModal(tmp_path, auth_valid=False))


def test_deployed_app_is_hydrated_and_used(tmp_path: Path) -> None:
    executor, server = make_executor(tmp_path)
    try:
        assert executor.deployment == "deployed" and server.ephemeral_runs == 0
        names = [api for api, _, _ in server.calls]
        assert names.index("Cls.hydrate") < names.index("Cls.with_options")  # forced before any use
        assert not server.unhydrated_use
        assert executor.workers()[0].device_name == "StandIn H100"
        assert executor.target_profile() is None  # the stand-in's device has no profile to report
    finally:
        executor.close()


def test_not_deployed_auto_says_so_and_runs_ephemeral(tmp_path: Path) -> None:
    executor, server = make_executor(tmp_path, StandInModal(tmp_path, deployed=False))
    try:
        assert executor.deployment == "ephemeral" and server.ephemeral_runs == 1 and server.ephemeral_active
        assert any("not deployed" in m and "ephemeral" in m for m in executor.messages)  # type: ignore[attr-defined]
    finally:
        executor.close()
    assert not server.ephemeral_active  # app.run() exited on close


def test_not_deployed_refused_in_deployed_mode(tmp_path: Path) -> None:
    server = StandInModal(tmp_path, deployed=False)
    with pytest.raises(ModalNotDeployed, match="helion-remote modal deploy"):
        make_executor(tmp_path, server, mode="deployed")
    assert server.ephemeral_runs == 0


class OldWorkerBody(CostModelBody):
    def ping(self) -> dict[str, Any]:
        reply = super().ping()
        reply["versions"] = {**reply["versions"], "helion": "0.0.1"}
        return reply


def test_version_mismatch_refused_or_replaced_by_ephemeral(tmp_path: Path) -> None:
    executor, _ = make_executor(tmp_path, StandInModal(tmp_path, body_factory=OldWorkerBody), mode="deployed")
    with pytest.raises(ModalVersionMismatch, match="helion: here"):
        executor.workers()
    executor.close()
    executor, server = make_executor(tmp_path, StandInModal(tmp_path, body_factory=OldWorkerBody))
    try:
        with pytest.raises(ModalVersionMismatch):  # the ephemeral app runs OldWorkerBody too in the stand-in
            executor.workers()
        assert server.ephemeral_runs == 1 and any("does not match" in m for m in executor.messages)  # type: ignore[attr-defined]
    finally:
        executor.close()


# ---------------------------------------------------------------------- dispatch


def test_submit_starts_jobs_streams_out_of_order_and_keeps_job_ids(tmp_path: Path) -> None:
    slow = {"j0", "j1"}
    server = StandInModal(tmp_path, slow_s=0.5,
                          fault=lambda m, a: "slow" if m == "run_job" and a[1]["job_id"] in slow else None)
    executor, _ = make_executor(tmp_path, server, max_containers=5)
    try:
        spec = tiny_spec(executor)
        session = executor.open_session(spec)
        before = len([m for m in server.methods_called if m == "run_job"])
        stream = session.submit(tiny_jobs(spec, 8))
        assert len([m for m in server.methods_called if m == "run_job"]) - before == 8  # started, not lazily
        order = [r.job_id for r in stream]
        assert sorted(order) == sorted(f"j{i}" for i in range(8))
        assert set(order[-2:]) == slow  # the slow ones arrive last: completion order, not submission order
        jobs_pool = [p for p in server.pools.values() if p.pool_param == "jobs"]
        assert max(p.peak_containers for p in jobs_pool) <= 4  # max_containers - 1 for jobs
    finally:
        executor.close()


@contextlib.contextmanager
def slow_jobs_session(tmp_path: Path, slow_s: float, **kw: Any) -> Iterator[tuple[StandInModal, ModalExecutor, Any]]:
    """A stand-in whose every job takes ``slow_s``, an executor on it, and an open session."""
    server = StandInModal(tmp_path, slow_s=slow_s, fault=lambda m, a: "slow" if m == "run_job" else None)
    executor, _ = make_executor(tmp_path, server, **kw)
    try:
        yield server, executor, executor.open_session(tiny_spec(executor))
    finally:
        server.stop()
        executor.close()


def test_a_stream_closed_unread_cancels_its_calls(tmp_path: Path) -> None:
    """The coordinator gave up before reading this chunk: stop paying for it."""
    with slow_jobs_session(tmp_path, 2.0, max_containers=3) as (server, _, session):
        stream = session.submit(tiny_jobs(session.spec, 3))
        stream.close()  # never read
        assert sum(api == "FunctionCall.cancel" for api, _, _ in server.calls) == 3


def test_closing_the_executor_answers_a_waiting_reader_and_cancels_its_calls(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import helion_remote.backends.modal.session as modal_backend

    monkeypatch.setattr(modal_backend, "BUDGET_POLL_S", 0.05)
    with slow_jobs_session(tmp_path, 30.0, max_containers=2) as (server, executor, session):
        spec = session.spec
        got: list[Any] = []
        reader = threading.Thread(target=lambda: got.extend(session.submit(tiny_jobs(spec, 4))), daemon=True)
        reader.start()
        time.sleep(0.3)
        executor.close()
        reader.join(10)
        assert not reader.is_alive(), "the reader still waits for replies nobody will collect"
        assert len(got) == 4 and all(r.status == "infra_error" for r in got)
        assert sum(api == "FunctionCall.cancel" for api, _, _ in server.calls) == 4
        # The waiting threads end too (they would keep the interpreter from exiting).
        deadline = time.monotonic() + 5
        while any(t.is_alive() for t in executor._waiters._threads) and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.05)
        assert not any(t.is_alive() for t in executor._waiters._threads)  # type: ignore[attr-defined]


def test_calls_still_queued_when_the_budget_is_spent_are_cancelled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Modal runs every call it was given: the budget must cancel the ones still out, not only refuse new ones."""
    import helion_remote.backends.modal.session as modal_backend

    monkeypatch.setattr(modal_backend, "BUDGET_POLL_S", 0.02)
    server = StandInModal(tmp_path, slow_s=0.05, fault=lambda m, a: "slow" if m == "run_job" else None)
    executor, _ = make_executor(tmp_path, server, max_containers=2, max_cost_usd=100.0)
    try:
        start = time.time()
        executor.meter._clock = lambda: start + (time.time() - start) * 2000  # 0.05 s of real time = 100 s billed
        spec = tiny_spec(executor)
        session = executor.open_session(spec)
        executor.meter.max_cost_usd = 6 * executor.meter.estimate_usd(busy=True, expected_containers=1)
        results = list(session.submit(tiny_jobs(spec, 40)))  # one job container: 40 x 100 s billed
        ran = sum(r.ok for r in results)
        cancelled = [r for r in results if r.error_class == modal_backend.BUDGET_EXCEEDED]
        assert ran > 0 and len(cancelled) == 40 - ran
        assert "cancelled while queued or running" in (cancelled[-1].error_message or "")
        assert executor.meter.estimate_usd() <= 1.25 * executor.meter.max_cost_usd
    finally:
        server.stop()
        executor.close()


def test_container_loss_preemption_timeouts_become_results(tmp_path: Path) -> None:
    plan = {"j0": "lose", "j1": "preempt", "j2": "function_timeout", "j3": "hang"}
    server = StandInModal(tmp_path, fault=lambda m, a: plan.get(a[1]["job_id"]) if m == "run_job" else None)
    executor, _ = make_executor(tmp_path, server, max_containers=3, wait_timeout_s=1.5)
    try:
        spec = tiny_spec(executor)
        session = executor.open_session(spec)
        results = {r.job_id: r for r in session.submit(tiny_jobs(spec, 6))}
        assert results["j0"].status == "infra_error" and results["j0"].error_class == "RemoteError"
        assert results["j1"].status == "infra_error" and results["j1"].error_class == "InternalFailure"
        assert results["j2"].status == "timeout"  # over Modal's per-input timeout: the kernel hung
        assert results["j3"].status == "infra_error" and "no reply within" in (results["j3"].error_message or "")
        assert results["j4"].ok and results["j5"].ok
        assert any(api == "FunctionCall.cancel" for api, _, _ in server.calls)  # the lost call is cancelled
    finally:
        server.stop()
        executor.close()


class BrokenReferenceBody(CostModelBody):
    def open_session(self, session: dict[str, Any]) -> dict[str, Any]:
        return {"ok": False, "kind": "baseline", "message": "reference kernel failed: boom", "container": self.stamp()}


def test_broken_reference_fails_open_session(tmp_path: Path) -> None:
    from helion_remote.backends.modal import ModalSessionError

    executor, _ = make_executor(tmp_path, StandInModal(tmp_path, body_factory=BrokenReferenceBody))
    try:
        with pytest.raises(ModalSessionError, match="boom"):
            executor.open_session(tiny_spec(executor))
    finally:
        executor.close()


def test_spawn_failure_is_infra_error(tmp_path: Path) -> None:
    executor, server = make_executor(tmp_path)
    try:
        spec = tiny_spec(executor)
        session = executor.open_session(spec)
        server.spawn_error = modal.exception.ConnectionError("Could not connect to the Modal server (stand-in)")
        results = list(session.submit(tiny_jobs(spec, 2)))
        assert {r.status for r in results} == {"infra_error"} and {r.job_id for r in results} == {"j0", "j1"}
    finally:
        executor.close()


def test_retime_is_pinned_to_one_container_per_session(tmp_path: Path) -> None:
    executor, server = make_executor(tmp_path, max_containers=3)
    try:
        spec = tiny_spec(executor)
        session = executor.open_session(spec)
        list(session.submit(tiny_jobs(spec, 6)))
        k = [KernelSource("# a\n", "k"), KernelSource("# b\n", "k")]
        for _ in range(3):
            result = session.retime(k, warmup_ms=1, rep_ms=5, timeout_s=5)
            assert [t.status for t in result.timings] == ["ok", "ok"]
        assert len(set(session.retime_containers)) == 1 and len(session.retime_containers) == 3  # type: ignore[attr-defined]
        second = executor.open_session(dataclasses.replace(spec, session_id="s2"))
        second.retime(k, warmup_ms=1, rep_ms=5, timeout_s=5)
        assert second.retime_containers == session.retime_containers[:1]  # type: ignore[attr-defined]
        retime_pools = [p for p in server.pools.values() if p.pool_param.startswith("retime-")]
        assert len(retime_pools) == 1 and retime_pools[0].max_containers == 1 and retime_pools[0].peak_containers == 1
        assert retime_pools[0].container_ids[0] not in {cid for p in server.pools.values()
                                                         if p.pool_param == "jobs" for cid in p.container_ids}
    finally:
        executor.close()


class SlowJobContainersBody(CostModelBody):
    """Job containers time every kernel 2x slower than the re-timing container (a slower clock)."""

    def retime(self, session: dict[str, Any], kernels: list[dict[str, Any]], warmup_ms: float, rep_ms: float) -> dict[str, Any]:
        reply = super().retime(session, kernels, warmup_ms, rep_ms)
        factor = 2.0 if self.pool == "jobs" else 1.0
        reply["retime"]["timings"] = [[d, st, base_ms(d) * factor, m] for d, st, _, m in reply["retime"]["timings"]]
        return reply


def base_ms(digest: str) -> float:
    return 0.1 + int(digest[:4], 16) / 65536


def test_population_retime_spreads_over_job_containers_in_the_retimers_units(tmp_path: Path) -> None:
    server = StandInModal(tmp_path / "volume")
    server.body_factory = SlowJobContainersBody
    executor, _ = make_executor(tmp_path, server, max_containers=4)
    try:
        spec = tiny_spec(executor)
        session = executor.open_session(spec)
        kernels = [KernelSource(f"# kernel {i}\n", "k") for i in range(12)]
        result = session.retime_spread(kernels, warmup_ms=1, rep_ms=5, timeout_s=5)  # type: ignore[attr-defined]
        assert [t.kernel_digest for t in result.timings] == [k.digest for k in kernels]
        for timing in result.timings:  # job containers' 2x is scaled away by the anchors
            assert timing.status == "ok" and timing.perf_ms == pytest.approx(base_ms(timing.kernel_digest))
        assert len(result.workers) >= 2 and result.worker_id == result.workers[0]
        assert [factor for _, factor in result.scales] == [pytest.approx(0.5)] * (len(result.workers) - 1)
        assert set(session.retime_containers) == {result.worker_id.removeprefix("modal:")}  # type: ignore[attr-defined]
        few = session.retime_spread(kernels[:4], warmup_ms=1, rep_ms=5, timeout_s=5)  # type: ignore[attr-defined]
        assert few.workers == () and len(few.timings) == 4
    finally:
        executor.close()


# ---------------------------------------------------------------------- real Helion searches, cost-model containers


def test_real_helion_search_through_standin_with_faults(tmp_path: Path) -> None:
    seen: dict[str, int] = {}

    def fault(method: str, args: tuple[Any, ...]) -> str | None:
        if method != "run_job":
            return None
        job = args[1]
        n = seen[job["job_id"]] = seen.get(job["job_id"], 0) + 1
        if n > 1:
            return None  # retries succeed
        index = int(job["job_id"].split("-")[-1])
        return {1: "lose", 4: "preempt", 6: "hang"}.get(index) or ("slow" if index % 5 == 0 else None)

    server = StandInModal(tmp_path, fault=fault, slow_s=0.05)
    executor, _ = make_executor(tmp_path, server, max_containers=4, wait_timeout_s=2.0, print_cost=True,
                                mode="deployed")
    try:
        result = helion_remote.autotune(kernels.matmul, kernels.matmul_args(32), backend=executor,
                                        algorithm="PatternSearch", effort="quick", autotune_max_generations=1,
                                        print_result=False)
        assert result.stats["configs_measured"] >= 5 and math.isfinite(result.best_ms)
        assert result.stats["infra_retries"] >= 3
        assert result.stats["devices_used"] == ["StandIn H100"]
        report = executor.cost_report()
        assert report.containers >= 1 and report.estimated_usd > 0 and report.jobs >= result.stats["configs_measured"]
        api = check_calls_against_real_client(server)
        assert {"Cls.from_name", "Cls.hydrate", "Cls.with_options", "Function.spawn", "FunctionCall.get",
                "Volume.from_name", "Volume.listdir", "Volume.batch_upload", "VolumeUpload.put_file"} <= api
        assert max(p.peak_containers for p in server.pools.values()) <= 3
    finally:
        server.stop()
        executor.close()
    assert any("estimated Modal cost $" in m for m in executor.messages)  # type: ignore[attr-defined]


class ExpensiveBody(CostModelBody):
    """Each reply claims the container started 60 s earlier than the last: the budget drains fast."""

    replies = 0

    def stamp(self) -> dict[str, Any]:
        ExpensiveBody.replies += 1
        return {**super().stamp(), "boot": time.time() - 60.0 * ExpensiveBody.replies}


def test_dollar_budget_stops_new_jobs_and_search_ends_with_best_so_far(tmp_path: Path) -> None:
    ExpensiveBody.replies = 0
    server = StandInModal(tmp_path, body_factory=ExpensiveBody)
    rate = 0.001097 + 2 * 0.0000131 + 8 * 0.00000222
    executor, _ = make_executor(tmp_path, server, max_containers=2, cold_start_s=0, scaledown_window_s=0,
                                max_cost_usd=150 * rate)
    try:
        result = helion_remote.autotune(kernels.matmul, kernels.matmul_args(32), backend=executor,
                                        algorithm="PatternSearch", effort="quick", autotune_max_generations=1,
                                        print_result=False)
        assert math.isfinite(result.best_ms) and result.config is not None
        assert executor.budget_exceeded()
        # Once the budget is spent the coordinator stops dispatching (budget_skipped); jobs already
        # submitted but not started come back as BudgetExceeded errors.
        skipped = result.stats["budget_skipped"] + result.stats["failures"].get("error", 0)
        assert skipped >= 1
        ran = len([m for m in server.methods_called if m == "run_job"])
        assert ran < result.stats["configs_measured"] + result.stats["budget_skipped"]
    finally:
        executor.close()


# ---------------------------------------------------------------------- app definition, real client


def test_app_definition_matches_the_installed_client() -> None:
    from helion_remote.backends.modal import app as modal_app
    from helion_remote.backends.modal.versions import versions

    inspect.signature(modal.App.cls).bind(modal_app.app, **modal_app.worker_options(modal_app.SETTINGS))
    assert modal_app.worker_options(ModalSettings(max_containers=7))["max_containers"] == 6
    inspect.signature(modal.App.deploy).bind(modal_app.app, name="x", environment_name=None, strategy="recreate")
    assert isinstance(modal_app.Worker, modal.Cls)
    from helion_remote.worker.service import OPERATIONS

    # ping (the handshake) plus one generated method per worker operation, each the wire's arguments.
    assert set(modal_app.Worker._get_method_names()) == {"ping", *OPERATIONS}
    user_cls = modal_app.Worker._get_user_cls()
    for name in OPERATIONS:
        params = list(inspect.signature(user_cls.__dict__[name]._get_raw_f()).parameters)
        assert params == ["self", "session", *WIRE_OPS[name].wire_params], (name, params)
    pins = modal_app.image_pins()
    v = versions()
    assert f"helion=={v['helion']}" in pins and f"torch=={v['torch']}" in pins and "+" not in "".join(pins)
    assert modal_app.python_version() == f"{sys.version_info.major}.{sys.version_info.minor}"


def test_cli_help_and_check_without_credentials(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from helion_remote import cli

    assert cli.main(["modal", "settings"]) == 0
    out = capsys.readouterr().out
    assert "HELION_REMOTE_MODAL_GPU" in out and "H100!" in out
    monkeypatch.setattr(modal.config, "config", {"token_id": None, "token_secret": None})
    assert cli.main(["modal", "deploy"]) == 2
    assert "modal token new" in capsys.readouterr().err


# ---------------------------------------------------------------------- the interpreter child


@pytest.fixture(scope="module")
def child() -> dict[str, Any]:
    assert _CHILD is not None
    out, _ = _CHILD.communicate(timeout=240)
    assert _CHILD.returncode == 0, out[-6000:]
    return json.loads(_CHILD_OUT.read_text())


def test_core_never_imports_modal() -> None:
    assert _IMPORT_CHECK is not None
    out, _ = _IMPORT_CHECK.communicate(timeout=120)
    assert "MODAL_NOT_IMPORTED" in out, out


def test_worker_body_runs_through_modal_local_execution(child: dict[str, Any]) -> None:
    local = child["local"]
    assert local["ping"]["worker"]["interpreter"] is True
    assert local["open"]["ok"] is True
    assert local["good"]["status"] == "ok" and local["good"]["job_id"] == "good-1"
    assert math.isfinite(float(local["good"]["perf_ms"]))
    assert local["wrong"]["status"] == "accuracy_error" and local["wrong"]["job_id"] == "wrong-1"
    assert local["retime"][0][1] == "ok"
    assert [t[1] for t in local["poisoned_retime"]] == ["infra_error", "error"]
    assert "PoisonedContainer" in local["after_poison"]["error"]  # no more work on a broken device
    assert local["enter_calls"] == 1  # @modal.enter ran once for the instance, args loaded once


def test_a_failing_kernels_result_carries_the_containers_traceback(child: dict[str, Any]) -> None:
    from helion_remote.backends.modal.wire import result_from_dict

    result = result_from_dict(child["local"]["raising"])
    assert result.status == "error" and result.error_class == "ValueError" and not result.fatal
    assert result.error_message.startswith("ValueError: raised inside the kernel")  # type: ignore[union-attr]
    text = result.traceback or ""
    assert text.startswith("Traceback (most recent call last)") and "raise ValueError('raised inside the kernel')" in text
    assert text.rstrip().endswith("ValueError: raised inside the kernel")


def test_every_worker_operation_is_served_through_modal_local_execution(child: dict[str, Any]) -> None:
    local = child["local"]
    assert local["info"]["interpreter"] is True and local["target_profile"] is None
    assert local["compile"]["status"] in ("ok", "error") and local["compile"]["compile_time_s"] >= 0


def test_real_helion_search_with_real_worker_runtime_in_standin(child: dict[str, Any]) -> None:
    e2e = child["e2e"]
    assert e2e["configs_measured"] >= 5 and e2e["devices_used"] == ["cpu-interpreter"]
    assert math.isfinite(e2e["best_ms"])
    assert e2e["peak_containers"] <= 1 and e2e["retime_pool_peak"] <= 1
    assert e2e["cost_containers"] >= 1


# ---------------------------------------------------------------------- child process body


def _child_main(out_path: str) -> None:  # pragma: no cover - runs in the subprocess
    assert os.environ.get("TRITON_INTERPRET") == "1"
    import helion
    from helion_remote.backends.modal import app as modal_app
    from helion_remote.backends.modal.wire import job_to_dict, kernel_to_dict, spec_to_dict
    from helion_remote.backends.modal.worker import BLOB_ROOT_ENV, ContainerWorker
    from helion_remote.coordinator.codegen import kernel_source

    tmp = Path(tempfile.mkdtemp(prefix="modal-local-"))
    os.environ[BLOB_ROOT_ENV] = str(tmp)
    server = StandInModal(tmp)
    store = VolumeBlobStore(server.Volume.from_name("v"), chunk_bytes=512)
    args = kernels.matmul_args(16)
    digest = upload_args(store, args).digest
    bound = kernels.matmul.bind(args)
    reference = kernel_source(bound, bound.config_spec.default_config())
    good = kernel_source(bound, helion.Config(block_sizes=[8, 8, 8]))
    wrong = KernelSource(good.module_source.replace("\n    return out", "\n    return out * 2", 1),
                         good.entry_name, good.source_modules)
    spec = SessionSpec("sess-local", "matmul", digest, reference)
    payload = {"spec": spec_to_dict(spec), "volume_name": "", "environment": None}

    def job(kernel: KernelSource, job_id: str) -> dict[str, Any]:
        return job_to_dict(BenchmarkJob(job_id, kernel, digest, spec.baseline_digest, spec.tolerances, 60, 30,
                                        warmup_ms=1, rep_ms=5))

    enter_calls = []
    original = ContainerWorker.__init__

    def counting_init(self: ContainerWorker, *a: Any, **k: Any) -> None:
        enter_calls.append(1)
        original(self, *a, **k)

    ContainerWorker.__init__ = counting_init  # type: ignore[method-assign]
    worker = modal_app.Worker(pool="jobs")
    local = {
        "ping": worker.ping.local(),
        "open": worker.open_session.local(payload),
        "good": worker.run_job.local(payload, job(good, "good-1"))["result"],
        "wrong": worker.run_job.local(payload, job(wrong, "wrong-1"))["result"],
        "retime": worker.retime.local(payload, [kernel_to_dict(good)], 1.0, 5.0)["retime"]["timings"],
    }
    # A kernel that raises: its result carries the container's traceback (where in the kernel it failed).
    raising = KernelSource(good.module_source.replace(
        "\n    return out", "\n    raise ValueError('raised inside the kernel')\n    return out", 1),
        good.entry_name, good.source_modules)
    local["raising"] = worker.run_job.local(payload, job(raising, "raising-1"))["result"]
    # Every worker operation of the table is a method of the deployed class.
    local["info"] = worker.info.local()["worker"]
    local["target_profile"] = worker.target_profile.local()["target_profile"]
    local["compile"] = worker.compile.local(payload, kernel_to_dict(good), digest)["compile"]
    # A kernel that breaks the device while re-timing: it fails alone, the container leaves service.
    poison = KernelSource(good.module_source.replace(
        "\n    return out", "\n    raise RuntimeError('CUDA error: an illegal memory access was encountered')\n    return out", 1),
        good.entry_name, good.source_modules)
    local["poisoned_retime"] = worker.retime.local(
        payload, [kernel_to_dict(good), kernel_to_dict(poison)], 1.0, 5.0)["retime"]["timings"]
    local["after_poison"] = worker.retime.local(payload, [kernel_to_dict(good)], 1.0, 5.0)
    local["enter_calls"] = len(enter_calls)
    ContainerWorker.__init__ = original  # type: ignore[method-assign]

    # A real Helion search; each stand-in container runs the real worker body (real WorkerRuntime).
    tmp2 = Path(tempfile.mkdtemp(prefix="modal-e2e-"))
    os.environ[BLOB_ROOT_ENV] = str(tmp2)
    server2 = StandInModal(tmp2, body_factory=lambda pool, cid: ContainerWorker(pool))
    executor = ModalExecutor(_client=server2, settings=ModalSettings(max_containers=1, print_cost=False))
    result = helion_remote.autotune(kernels.add_inplace, kernels.add_inplace_args(), backend=executor,
                                    algorithm="PatternSearch", effort="quick", autotune_max_generations=1,
                                    print_result=False)
    pools = list(server2.pools.values())
    e2e = {
        "configs_measured": result.stats["configs_measured"],
        "devices_used": result.stats["devices_used"],
        "best_ms": result.best_ms,
        "peak_containers": max(p.peak_containers for p in pools if p.pool_param == "jobs"),
        "retime_pool_peak": max([p.peak_containers for p in pools if p.pool_param != "jobs"] or [0]),
        "cost_containers": executor.cost_report().containers,
    }
    check_calls_against_real_client(server2)
    server2.stop()
    executor.close()
    Path(out_path).write_text(json.dumps({"local": local, "e2e": e2e}, default=str))


if __name__ == "__main__":
    _child_main(sys.argv[1])
