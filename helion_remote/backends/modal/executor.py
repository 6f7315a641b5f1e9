"""The ``modal`` executor: connection, version handshake and sessions on Modal GPUs.

Sessions (dispatch, waits, re-timing, the budget) live in
:mod:`helion_remote.backends.modal.session`; this docstring describes both.

Connection (at construction, before any upload):

1. Credentials are checked offline; missing ones fail with how to set them.
2. ``mode="auto"|"deployed"``: ``Cls.from_name(app, "Worker")`` is lazy, so
   it is forced with ``hydrate()``.  Not deployed: ``auto`` says so and runs
   an ephemeral app (``app.run()`` held on an ``ExitStack`` until
   ``close()``); ``deployed`` refuses.  ``mode="ephemeral"`` skips the look-up.
3. The job pool is ``Worker.with_options(gpu=<pinned>, max_containers=N,
   volumes={mount: blob volume}, ...)(pool="jobs")`` and a ``ping`` is spawned
   at once, so a GPU container cold-starts while the arguments upload.  Its
   reply is the version handshake: a deployment built from another
   helion/torch/triton is refused (``deployed``) or replaced by an ephemeral
   app (``auto``).

Dispatch: ``submit()`` spawns one call per job (``run_job.spawn``) before it
returns; a waiter thread per call blocks on ``FunctionCall.get`` and feeds a
queue, so results stream in completion order, each with its job id.  A job
over its Modal ``timeout`` (compile + run + session load) is the kernel's
``timeout``; a lost or preempted container, an expired output, a job with no
reply within ``wait_timeout_s`` or a transport error is ``infra_error``,
which the coordinator retries.  Modal cannot place a retry on a chosen
container, so ``avoid_workers`` is advisory here; a poisoned container
(sticky CUDA error) stops taking inputs itself.

Re-timing is pinned to ONE container: a second parameterized instance,
``Worker.with_options(max_containers=1)(pool="retime-<executor id>")``, is
its own pool of at most one container, kept warm by the scale-down window
between calls, so every ``retime`` of a session (and of later sessions of
this executor) lands on the same GPU while it lives.  One pool per executor,
not per session, so sessions never stack idle re-timing containers.  With ``max_containers >= 2`` the job pool gets
``max_containers - 1``, so jobs plus re-timing never exceed the user's cap;
with ``max_containers == 1`` re-timing shares the single job container.

Cost: every reply's container stamp feeds a :class:`CostMeter`.  With
``max_cost_usd``, once the estimate (including committed idle tails) reaches
the budget, jobs not yet started are not started: they come back at once as
``status="error"``, ``error_class="BudgetExceeded"`` (never retried, never
fatal), re-timing keeps the earlier timings, and the search ends with the
best config measured so far.  Jobs already running finish.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import sys
import threading
import uuid
from collections.abc import Callable
from typing import Any

from helion_remote.backends.modal.blobs import DEFAULT_CHUNK_BYTES, VolumeBlobStore
from helion_remote.backends.modal.client import ModalClient, RealModalClient
from helion_remote.backends.modal.cost import CostMeter, CostReport
from helion_remote.backends.modal.session import BUDGET_EXCEEDED, ModalSession, _cancel_calls
from helion_remote.backends.modal.settings import BLOB_MOUNT, WORKER_CLS_NAME, ModalSettings
from helion_remote.backends.modal.wire import spec_to_dict
from helion_remote.errors import BackendUnavailableError, SessionOpenError
from helion_remote.executor import RemoteBenchmarkExecutor
from helion_remote.protocol import BenchmarkJob, JobResult, SessionSpec, WorkerInfo

MISSING_CREDENTIALS = (
    "Modal credentials are not set. Run `modal token new` (opens a browser), or set "
    "MODAL_TOKEN_ID and MODAL_TOKEN_SECRET (create a token at https://modal.com/settings/tokens); "
    "MODAL_PROFILE picks a profile from ~/.modal.toml."
)
COMPARED_VERSIONS = ("helion", "torch", "triton", "wire", "code")
DEFAULT_JOB_S = 60 + 30 + 30
"""Helion's default compile (60 s) and benchmark (30 s) timeouts plus a margin."""


class ModalSetupError(BackendUnavailableError):
    """The Modal backend cannot start: credentials, deployment or versions."""


class ModalNotDeployed(ModalSetupError):
    pass


class ModalVersionMismatch(ModalSetupError):
    pass


class ModalSessionError(SessionOpenError):
    """The session could not be opened on Modal (broken reference kernel, missing arguments)."""


def _local_versions() -> dict[str, str]:
    from helion_remote.backends.modal.versions import versions

    return versions()


class ModalExecutor(RemoteBenchmarkExecutor):
    """A ``RemoteBenchmarkExecutor`` over Modal GPU containers (see the module docstring)."""

    name = "modal"

    def __init__(
        self,
        *,
        gpu: str | None = None,
        max_containers: int | None = None,
        app_name: str | None = None,
        volume_name: str | None = None,
        environment: str | None = None,
        mode: str | None = None,
        max_cost_usd: float | None = None,
        scaledown_window_s: int | None = None,
        wait_timeout_s: float | None = None,
        settings: ModalSettings | None = None,
        price_usd_per_s: float | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        output: Callable[[str], None] | None = None,
        _client: ModalClient | None = None,
    ) -> None:
        super().__init__()
        overrides = dict(gpu=gpu, max_containers=max_containers, app_name=app_name, volume_name=volume_name,
                         environment=environment, mode=mode, max_cost_usd=max_cost_usd,
                         scaledown_window_s=scaledown_window_s, wait_timeout_s=wait_timeout_s)
        if settings is not None:
            self.settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
        else:
            self.settings = ModalSettings.from_env(**overrides)
        self._say = output or (lambda text: print(f"[helion-remote modal] {text}", file=sys.stderr))
        self._client = _client if _client is not None else RealModalClient()
        if not self._client.credentials_present():
            raise ModalSetupError(MISSING_CREDENTIALS)
        s = self.settings
        self.meter = CostMeter(
            gpu_type=s.gpu_type, gpu_count=s.gpu_count, cpu=s.cpu, memory_mib=s.memory_mib,
            scaledown_window_s=s.scaledown_window_s, cold_start_s=s.cold_start_s,
            max_cost_usd=s.max_cost_usd, price_usd_per_s=price_usd_per_s,
        )
        self._exit = contextlib.ExitStack()
        self._lock = threading.Lock()
        self._outstanding: set[Any] = set()
        """Calls spawned and not yet answered: close() cancels them."""
        self.deployment: str | None = None
        """``"deployed"`` or ``"ephemeral"`` once connected."""
        self._volume = self._client.Volume.from_name(
            s.volume_name, environment_name=s.environment, create_if_missing=True
        )
        self._hydrate(self._volume, f"blob volume {s.volume_name!r}")
        self._blob_store = VolumeBlobStore(self._volume, name=s.volume_name, chunk_bytes=chunk_bytes)
        self._spawner = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="modal-spawn")
        self._waiters = concurrent.futures.ThreadPoolExecutor(
            max(16, 4 * s.max_containers), thread_name_prefix="modal-wait"
        )
        self._worker_info: WorkerInfo | None = None
        self._target_profile: dict[str, object] | None = None
        self._ping_call: Any = None
        self._base_cls: Any = None
        self._jobs: Any = None
        self._function_timeout_s = 0
        self._retime_pool = f"retime-{uuid.uuid4().hex[:12]}"
        try:
            self._connect(s.mode)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ connection

    def _hydrate(self, obj: Any, what: str) -> None:
        exc = self._client.exception
        try:
            obj.hydrate()
        except exc.AuthError as error:
            raise ModalSetupError(f"Modal rejected the credentials while looking up {what}: {error}. "
                                  + MISSING_CREDENTIALS) from error

    def _connect(self, mode: str) -> None:
        s = self.settings
        exc = self._client.exception
        if mode in ("auto", "deployed"):
            cls = self._client.Cls.from_name(s.app_name, WORKER_CLS_NAME, environment_name=s.environment)
            try:
                self._hydrate(cls, f"app {s.app_name!r}")  # from_name is lazy: force the look-up now
            except exc.NotFoundError as error:
                where = f"app {s.app_name!r}" + (f" in environment {s.environment!r}" if s.environment else "")
                if mode == "deployed":
                    raise ModalNotDeployed(
                        f"Modal {where} is not deployed ({error}); deploy it with `helion-remote modal deploy` "
                        "(or `modal deploy -m helion_remote.backends.modal.app`), or use mode='auto'."
                    ) from error
                self._say(f"{where} is not deployed; running an ephemeral app instead "
                          "(the first run builds the image, which takes minutes; `helion-remote modal deploy` avoids it)")
                self._start_ephemeral()
            else:
                self._use(cls, "deployed")
        else:
            self._start_ephemeral()

    def _start_ephemeral(self) -> None:
        cls = self._exit.enter_context(self._client.ephemeral_worker(environment_name=self.settings.environment))
        self._use(cls, "ephemeral")

    def _variant(self, *, max_containers: int) -> Any:
        s = self.settings
        return self._base_cls.with_options(
            gpu=s.gpu,
            max_containers=max_containers,
            scaledown_window=s.scaledown_window_s,
            timeout=self._function_timeout_s,
            cpu=s.cpu,
            memory=s.memory_mib,
            volumes={BLOB_MOUNT: self._volume},
        )

    def _use(self, cls: Any, deployment: str) -> None:
        s = self.settings
        self._base_cls = cls
        self.deployment = deployment
        self._function_timeout_s = int(s.session_load_s + DEFAULT_JOB_S)
        self._jobs = self._variant(max_containers=s.job_containers)(pool="jobs")
        self._ping_call = self._jobs.ping.spawn()  # cold-start a container while the arguments upload
        self._worker_info = None

    def _handshake(self) -> WorkerInfo:
        """The warm-up ping's reply: versions must match, and it names the device."""
        with self._lock:
            if self._worker_info is not None:
                return self._worker_info
            call = self._ping_call
        s = self.settings
        try:
            reply = call.get(timeout=s.startup_timeout_s)
        except Exception as error:  # noqa: BLE001 - every failure here means "no worker"
            raise ModalSetupError(
                f"no Modal {s.gpu} worker answered within {s.startup_timeout_s}s ({type(error).__name__}: {error}); "
                "GPUs of this type may be scarce: try another HELION_REMOTE_MODAL_GPU"
            ) from error
        self.meter.observe(reply.get("container"), job=False)
        mine, theirs = _local_versions(), reply.get("versions", {})
        differ = {k: (mine.get(k), theirs.get(k)) for k in COMPARED_VERSIONS if mine.get(k) != theirs.get(k)}
        if differ:
            text = ", ".join(f"{k}: here {a}, worker {b}" for k, (a, b) in differ.items())
            if self.deployment == "deployed" and s.mode == "auto":
                self._say(f"deployed app {s.app_name!r} does not match this coordinator ({text}); "
                          "running an ephemeral app instead. Redeploy with `helion-remote modal deploy`.")
                self._start_ephemeral()
                return self._handshake()
            raise ModalVersionMismatch(
                f"Modal worker versions differ from the coordinator's ({text}); generated code must run under "
                "the Helion that generated it. Redeploy with `helion-remote modal deploy`."
            )
        w = reply["worker"]
        info = WorkerInfo(w["worker_id"], w["device_name"], w["device_uuid"], bool(w["interpreter"]))
        with self._lock:
            self._worker_info = info
            self._target_profile = reply.get("target_profile")
        return info

    # ------------------------------------------------------------------ protocol

    @property
    def blob_store(self) -> VolumeBlobStore:
        return self._blob_store

    def workers(self) -> list[WorkerInfo]:
        """The one container that answered the handshake (Modal scales the rest on demand)."""
        return [self._handshake()]

    def target_profile(self) -> dict[str, object] | None:
        """The workers' device as a TargetProfile dict, from the handshake (None under the interpreter)."""
        self._handshake()
        profile = self._target_profile
        if profile is not None and "error" in profile:
            raise RuntimeError(f"the Modal worker could not describe its device: {profile['error']}")
        return profile

    def _open_session(self, spec: SessionSpec) -> ModalSession:
        """Handshake, then open the session on one container: a broken reference fails here."""
        self._handshake()
        s = self.settings
        needed = int(s.session_load_s + spec.compile_timeout_s + spec.run_timeout_s + 30)
        if needed > self._function_timeout_s:
            self._function_timeout_s = needed
            self._jobs = self._variant(max_containers=s.job_containers)(pool="jobs")
        payload = {"spec": spec_to_dict(spec), "volume_name": s.volume_name, "environment": s.environment}
        try:
            reply = self._jobs.open_session.spawn(payload).get(timeout=s.startup_timeout_s + s.session_load_s)
        except Exception as error:  # noqa: BLE001
            raise ModalSessionError(f"could not open session {spec.session_id} on Modal: "
                                    f"{type(error).__name__}: {error}") from error
        self.meter.observe(reply.get("container"), job=False)
        if not reply.get("ok"):
            raise ModalSessionError(f"session {spec.session_id} failed on Modal ({reply.get('kind')}): "
                                    f"{reply.get('message')}")
        if s.dedicated_retime:
            retimer = self._variant(max_containers=1)(pool=self._retime_pool)
        else:
            retimer = self._jobs
        return ModalSession(self, spec, payload, self._jobs, retimer, reply.get("space_report"))

    def cost_report(self) -> CostReport:
        return self.meter.report()

    def budget_exceeded(self) -> bool:
        """True once the dollar budget is spent (a hook for the provider's budget check)."""
        return self.meter.exceeded()

    def _close(self) -> None:
        with self._lock:
            outstanding, self._outstanding = list(self._outstanding), set()
        for pool in (self._spawner, self._waiters):
            pool.shutdown(wait=False, cancel_futures=True)
        _cancel_calls(outstanding)  # stop paying for work nobody will read
        self._exit.close()
        if self.settings.print_cost and self.meter.report().containers:
            self._say(str(self.meter.report()))

    # ------------------------------------------------------------------ used by sessions

    def _classify(self, job: BenchmarkJob, error: BaseException) -> JobResult:
        """A failed call as a result: the kernel's ``timeout`` or the platform's ``infra_error``."""
        if isinstance(error, self._client.exception.FunctionTimeoutError):
            return JobResult.failed(job, "timeout", error)  # over compile + run + load: the kernel hung
        if isinstance(error, TimeoutError):  # FunctionCall.get(timeout=...) ran out: our deadline
            return JobResult.failed(job, "infra_error", f"no reply within {self.settings.wait_timeout_s}s "
                                    "(queue included)", error_class=type(error).__name__)
        # InternalFailure (preemption), RemoteError (container died), OutputExpiredError,
        # ConnectionError, ExecutionError ...: not the kernel's fault.  A container's own
        # exception arrives with its traceback, which the result keeps.
        return JobResult.failed(job, "infra_error", error)


__all__ = [
    "BUDGET_EXCEEDED",
    "MISSING_CREDENTIALS",
    "ModalExecutor",
    "ModalNotDeployed",
    "ModalSession",
    "ModalSessionError",
    "ModalSetupError",
    "ModalVersionMismatch",
]
