"""An in-process stand-in for Modal's servers, behind the real client's API shape.

``ModalExecutor(_client=StandInModal(...))`` swaps only what would cross the
network: look-ups (lazy until ``hydrate()``, like the real client), the
Volume (a directory), and function calls (a pool of simulated containers
per ``with_options`` variant and parameter set, capped by ``max_containers``
and FIFO-fed, like Modal's autoscaler).  Each simulated container runs a
*container body*: the real :class:`ContainerWorker` (real WorkerRuntime, for
interpreter runs) or :class:`CostModelBody` (the fake backend's cost model,
fast).  Every call is recorded as ``(api, args, kwargs)`` so tests can bind
it to the installed ``modal`` package's signatures.

Faults (``fault(method, payload) -> str | None``): ``"lose"`` (container dies:
``RemoteError``, container replaced), ``"preempt"`` (``InternalFailure``),
``"function_timeout"`` (``FunctionTimeoutError``), ``"hang"`` (no reply ever),
``"slow"`` (reply later: out-of-order completion).

Also collected by pytest for a few tests of the stand-in itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import queue
import threading
import time
import types
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import modal
import modal.exception

from helion_remote.backends.fake import default_cost_model
from helion_remote.protocol import JobResult

Call = tuple[str, tuple[Any, ...], dict[str, Any]]
Fault = Callable[[str, tuple[Any, ...]], "str | None"]


class CostModelBody:
    """A container body with the fake backend's cost model: fast, deterministic, no kernels run."""

    def __init__(self, pool: str, container_id: str) -> None:
        self.pool = pool
        self.container_id = container_id
        self.boot = time.time()

    def stamp(self) -> dict[str, Any]:
        return {"id": self.container_id, "boot": self.boot, "now": time.time(), "pool": self.pool}

    def _worker(self) -> dict[str, Any]:
        return {"worker_id": f"modal:{self.container_id}", "device_name": "StandIn H100",
                "device_uuid": f"GPU-{self.container_id}", "interpreter": False}

    def ping(self) -> dict[str, Any]:
        from helion_remote.backends.modal.worker import versions

        return {"versions": versions(), "worker": self._worker(), "container": self.stamp()}

    def open_session(self, session: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "worker": self._worker(), "container": self.stamp()}

    def run_job(self, session: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        result = JobResult(job_id=job["job_id"], status="ok", perf_ms=default_cost_model(job["config"]),
                           compile_time_s=0.01, worker_id=f"modal:{self.container_id}",
                           device_name="StandIn H100", device_uuid=f"GPU-{self.container_id}",
                           started_at=now, finished_at=now)
        return {"result": result.to_dict(), "container": self.stamp()}

    def retime(self, session: dict[str, Any], kernels: list[dict[str, Any]], warmup_ms: float, rep_ms: float) -> dict[str, Any]:
        from helion_remote.protocol import KernelSource, SourceModule

        timings = []
        for k in kernels:
            digest = KernelSource(k["module_source"], k["entry_name"],
                                  tuple(SourceModule(n, s) for n, s in k["source_modules"])).digest
            timings.append([digest, "ok", 1.0, None])
        return {"retime": {"timings": timings, "worker_id": f"modal:{self.container_id}",
                           "device_name": "StandIn H100", "device_uuid": f"GPU-{self.container_id}"},
                "container": self.stamp()}


def _serve(body: Any, method: str, args: tuple[Any, ...]) -> Any:
    """As ``modal_app.Worker``: a real ContainerWorker serves worker operations through ``call``."""
    from helion_remote.worker.service import OPERATIONS

    if method in OPERATIONS and hasattr(body, "call"):
        return body.call(method, *args)
    return getattr(body, method)(*args)


class _Input:
    def __init__(self, method: str, args: tuple[Any, ...]) -> None:
        self.method = method
        self.args = args
        self.future: Future[Any] = Future()


class _Pool:
    """One variant's containers: at most ``max_containers``, each one input at a time."""

    def __init__(self, server: StandInModal, key: str, pool_param: str, max_containers: int | None) -> None:
        self.server = server
        self.key = key
        self.pool_param = pool_param
        self.max_containers = max_containers or 10_000
        self.inputs: queue.SimpleQueue[_Input | None] = queue.SimpleQueue()
        self.containers = 0
        self.busy = 0
        self.pending = 0
        self.peak_containers = 0
        self.lock = threading.Lock()
        self.container_ids: list[str] = []

    def submit(self, item: _Input) -> None:
        self.inputs.put(item)
        with self.lock:
            self.pending += 1
            if self.pending + self.busy > self.containers and self.containers < self.max_containers:
                self.containers += 1
                self.peak_containers = max(self.peak_containers, self.containers)
                threading.Thread(target=self._container, daemon=True).start()

    def _container(self) -> None:
        server = self.server
        cid = f"ta-{next(server._ids)}"
        body = server.body_factory(self.pool_param, cid)
        with self.lock:
            self.container_ids.append(cid)
        died = False
        while not server._stopped.is_set():
            try:
                item = self.inputs.get(timeout=0.2)
            except queue.Empty:
                continue
            if item is None:
                break
            with self.lock:
                self.busy += 1
                self.pending -= 1
            died = False
            try:
                fault = server.fault(item.method, item.args) if server.fault else None
                server.faults_seen.append((item.method, fault))
                if fault == "hang":
                    continue  # never answers; the coordinator's wait deadline must catch it
                if fault == "lose":
                    died = True
                    item.future.set_exception(modal.exception.RemoteError("Container exited unexpectedly (stand-in)"))
                    continue
                if fault == "preempt":
                    died = True
                    item.future.set_exception(modal.exception.InternalFailure("worker preempted (stand-in)"))
                    continue
                if fault == "function_timeout":
                    died = True
                    item.future.set_exception(modal.exception.FunctionTimeoutError("Function timed out (stand-in)"))
                    continue
                if fault == "slow":
                    time.sleep(server.slow_s)
                try:
                    item.future.set_result(_serve(body, item.method, item.args))
                except BaseException as error:  # a worker that raises: Modal re-raises it on get()
                    item.future.set_exception(error)
            finally:
                with self.lock:
                    self.busy -= 1
            if died:
                break  # Modal replaces a dead container with a fresh one
        with self.lock:
            self.containers -= 1
            restart = died and not server._stopped.is_set()
        if restart:
            with self.lock:
                self.containers += 1
                self.peak_containers = max(self.peak_containers, self.containers)
            threading.Thread(target=self._container, daemon=True).start()


class StandInCall:
    def __init__(self, server: StandInModal, item: _Input) -> None:
        self._server = server
        self._item = item
        self.cancelled = False

    def get(self, timeout: float | None = None) -> Any:
        self._server._record("FunctionCall.get", (), {"timeout": timeout})
        try:
            return self._item.future.result(timeout=timeout)
        except TimeoutError:
            raise TimeoutError() from None  # the real client raises a bare TimeoutError too

    def cancel(self, terminate_containers: bool = False) -> None:
        self._server._record("FunctionCall.cancel", (), {"terminate_containers": terminate_containers})
        self.cancelled = True


class _Method:
    def __init__(self, obj: StandInObj, name: str) -> None:
        self._obj = obj
        self._name = name

    def spawn(self, *args: Any, **kwargs: Any) -> StandInCall:
        server = self._obj._cls._server
        server._record("Function.spawn", args, kwargs, method=self._name)
        if server.spawn_error is not None:
            raise server.spawn_error
        item = _Input(self._name, args)
        self._obj._pool.submit(item)
        call = StandInCall(server, item)
        server.spawned.append((self._name, call))
        return call


class StandInObj:
    def __init__(self, cls: StandInCls, params: dict[str, Any]) -> None:
        self._cls = cls
        self._params = params
        server = cls._server
        key = json.dumps({"options": cls._options_key(), "params": params}, sort_keys=True, default=str)
        with server._lock:
            pool = server.pools.get(key)
            if pool is None:
                pool = server.pools[key] = _Pool(server, key, params.get("pool", "jobs"),
                                                 cls._options.get("max_containers"))
        self._pool = pool

    def __getattr__(self, name: str) -> _Method:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Method(self, name)


class StandInCls:
    def __init__(self, server: StandInModal, app_name: str, deployed: bool, options: dict[str, Any] | None = None) -> None:
        self._server = server
        self._app_name = app_name
        self._deployed = deployed
        self._options = options or {}
        self._hydrated = False

    def _options_key(self) -> dict[str, Any]:
        return {k: (sorted(v) if isinstance(v, dict) else v) for k, v in self._options.items()}

    def hydrate(self, client: Any = None) -> StandInCls:
        self._server._record("Cls.hydrate", (), {} if client is None else {"client": client})
        if not self._server.auth_valid:
            raise modal.exception.AuthError("Invalid token (stand-in)")
        if not self._deployed:
            raise modal.exception.NotFoundError(f"Lookup failed for Cls 'Worker' from the '{self._app_name}' app (stand-in)")
        self._hydrated = True
        return self

    def with_options(self, **options: Any) -> StandInCls:
        self._server._record("Cls.with_options", (), options)
        if not self._hydrated:
            # The real client would hydrate lazily here and fail late: the executor must hydrate first.
            self._server.unhydrated_use = True
        return StandInCls(self._server, self._app_name, self._deployed, {**self._options, **options})._mark()

    def _mark(self) -> StandInCls:
        self._hydrated = True
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> StandInObj:
        self._server._record("Cls.__call__", args, kwargs)
        return StandInObj(self, kwargs)


class StandInVolume:
    """A Volume as a directory, with the client's error behaviour (NotFoundError, FileExistsError)."""

    def __init__(self, server: StandInModal, root: Path) -> None:
        self._server = server
        self.root = root

    def hydrate(self, client: Any = None) -> StandInVolume:
        self._server._record("Volume.hydrate", (), {} if client is None else {"client": client})
        if not self._server.auth_valid:
            raise modal.exception.AuthError("Invalid token (stand-in)")
        return self

    def _path(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def listdir(self, path: str, *, recursive: bool = False) -> list[Any]:
        self._server._record("Volume.listdir", (path,), {"recursive": recursive} if recursive else {})
        p = self._path(path)
        if p.is_file():
            return [types.SimpleNamespace(path=path.lstrip("/"), size=p.stat().st_size)]
        if p.is_dir():
            return [types.SimpleNamespace(path=str(c.relative_to(self.root)), size=c.stat().st_size) for c in p.iterdir()]
        raise modal.exception.NotFoundError(f"No such file or directory: {path} (stand-in)")

    def read_file(self, path: str) -> Iterator[bytes]:
        self._server._record("Volume.read_file", (path,), {})
        p = self._path(path)
        if not p.is_file():
            raise FileNotFoundError(path)
        data = p.read_bytes()
        return iter([data[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20)] or [b""])

    @contextlib.contextmanager
    def batch_upload(self, force: bool = False) -> Iterator[Any]:
        self._server._record("Volume.batch_upload", (), {"force": force} if force else {})
        batch = _Batch(self._server)
        yield batch
        existing = [path for path, _ in batch.files if self._path(path).exists()]
        if existing and not force:
            raise FileExistsError(f"{existing[0]} already exists (stand-in)")
        for path, fileobj in batch.files:
            target = self._path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            fileobj.seek(0, os.SEEK_END)
            size = fileobj.tell()  # the real client sizes and hashes the file object like this
            fileobj.seek(0)
            data = fileobj.read()
            assert len(data) == size
            target.write_bytes(data)
            self._server.bytes_uploaded += size


class _Batch:
    def __init__(self, server: StandInModal) -> None:
        self._server = server
        self.files: list[tuple[str, Any]] = []

    def put_file(self, local_file: Any, remote_path: str, mode: int | None = None) -> None:
        self._server._record("VolumeUpload.put_file", (local_file, remote_path), {} if mode is None else {"mode": mode})
        self.files.append((str(remote_path), local_file))


class _ClsAPI:
    def __init__(self, server: StandInModal) -> None:
        self._server = server

    def from_name(self, app_name: str, name: str, *, environment_name: str | None = None, **kw: Any) -> StandInCls:
        self._server._record("Cls.from_name", (app_name, name), {"environment_name": environment_name, **kw})
        return StandInCls(self._server, app_name, self._server.deployed)  # lazy, like modal


class _VolumeAPI:
    def __init__(self, server: StandInModal) -> None:
        self._server = server

    def from_name(self, name: str, *, environment_name: str | None = None, create_if_missing: bool = False, **kw: Any) -> StandInVolume:
        self._server._record("Volume.from_name", (name,),
                             {"environment_name": environment_name, "create_if_missing": create_if_missing, **kw})
        return StandInVolume(self._server, self._server.volume_dir)


@dataclasses.dataclass
class StandInModal:
    """The stand-in; see the module docstring."""

    volume_dir: Path
    deployed: bool = True
    credentials: bool = True
    auth_valid: bool = True
    body_factory: Callable[[str, str], Any] = CostModelBody
    fault: Fault | None = None
    slow_s: float = 0.2
    spawn_error: BaseException | None = None

    def __post_init__(self) -> None:
        self.exception = modal.exception
        self.Cls = _ClsAPI(self)
        self.Volume = _VolumeAPI(self)
        self.calls: list[Call] = []
        self.methods_called: list[str] = []
        self.pools: dict[str, _Pool] = {}
        self.spawned: list[tuple[str, StandInCall]] = []
        self.faults_seen: list[tuple[str, str | None]] = []
        self.bytes_uploaded = 0
        self.ephemeral_runs = 0
        self.ephemeral_active = False
        self.unhydrated_use = False
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def _record(self, api: str, args: tuple[Any, ...], kwargs: dict[str, Any], *, method: str | None = None) -> None:
        with self._lock:
            self.calls.append((api, args, dict(kwargs)))
            if method is not None:
                self.methods_called.append(method)

    def credentials_present(self) -> bool:
        self._record("credentials_present", (), {})
        return self.credentials

    @contextlib.contextmanager
    def ephemeral_worker(self, *, environment_name: str | None) -> Iterator[StandInCls]:
        self._record("App.run", (), {"environment_name": environment_name})
        self.ephemeral_runs += 1
        self.ephemeral_active = True
        try:
            yield StandInCls(self, "ephemeral", True)._mark()
        finally:
            self.ephemeral_active = False

    def stop(self) -> None:
        self._stopped.set()

    def api_names(self) -> set[str]:
        return {api for api, _, _ in self.calls}


# ---------------------------------------------------------------------- tests of the stand-in


def test_standin_lookup_is_lazy_like_the_real_client(tmp_path: Path) -> None:
    server = StandInModal(tmp_path, deployed=False)
    cls = server.Cls.from_name("helion-remote", "Worker")  # no error yet: lazy
    try:
        cls.hydrate()
    except modal.exception.NotFoundError:
        pass
    else:
        raise AssertionError("hydrate() must raise NotFoundError for an app that is not deployed")


def test_standin_volume_refuses_overwrite_like_the_real_client(tmp_path: Path) -> None:
    import io

    server = StandInModal(tmp_path)
    vol = server.Volume.from_name("v")
    with vol.batch_upload() as batch:
        batch.put_file(io.BytesIO(b"x"), "/a/b")
    try:
        with vol.batch_upload() as batch:
            batch.put_file(io.BytesIO(b"x"), "/a/b")
    except FileExistsError:
        pass
    else:
        raise AssertionError("re-uploading a path must raise FileExistsError")
