"""The ``modal`` backend: candidates compiled, checked and timed on Modal GPUs.

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
import logging
import math
import queue
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from helion_remote.errors import BackendUnavailableError, ExecutorClosedError, SessionOpenError
from helion_remote.protocol import BenchmarkJob, JobResult, KernelSource, RetimeResult, RetimeTiming, SessionSpec, WorkerInfo
from helion_remote.result_stream import ResultStream
from helion_remote.backends.modal.blobs import DEFAULT_CHUNK_BYTES, VolumeBlobStore
from helion_remote.backends.modal.client import ModalClient, RealModalClient
from helion_remote.backends.modal.cost import CostMeter, CostReport
from helion_remote.backends.modal.settings import BLOB_MOUNT, WORKER_CLS_NAME, ModalSettings
from helion_remote.spread import spread_groups, spread_retime
from helion_remote.backends.modal.wire import job_to_dict, kernel_to_dict, result_from_dict, retime_from_dict, spec_to_dict

log = logging.getLogger(__name__)

MISSING_CREDENTIALS = (
    "Modal credentials are not set. Run `modal token new` (opens a browser), or set "
    "MODAL_TOKEN_ID and MODAL_TOKEN_SECRET (create a token at https://modal.com/settings/tokens); "
    "MODAL_PROFILE picks a profile from ~/.modal.toml."
)
COMPARED_VERSIONS = ("helion", "torch", "triton", "wire", "code")
BUDGET_EXCEEDED = "BudgetExceeded"
BUDGET_POLL_S = 5.0
"""How often a job's wait re-checks the dollar budget: Modal runs every queued call it was
given, so once the estimate passes the budget the calls still out are cancelled."""
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
    from helion_remote.backends.modal.worker import versions

    return versions()


class ModalExecutor:
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
        self._closed = False
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

    def open_session(self, spec: SessionSpec) -> ModalSession:
        """Handshake, then open the session on one container: a broken reference fails here."""
        if self._closed:
            raise RuntimeError("ModalExecutor is closed")
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
        session = ModalSession(self, spec, payload, self._jobs, retimer)
        session.space_report = reply.get("space_report")
        return session

    def cost_report(self) -> CostReport:
        return self.meter.report()

    def budget_exceeded(self) -> bool:
        """True once the dollar budget is spent (a hook for the provider's budget check)."""
        return self.meter.exceeded()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            outstanding, self._outstanding = list(self._outstanding), set()
        for pool in (getattr(self, "_spawner", None), getattr(self, "_waiters", None)):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        _cancel_calls(outstanding)  # stop paying for work nobody will read
        self._exit.close()
        meter = getattr(self, "meter", None)
        if meter is not None and self.settings.print_cost and meter.report().containers:
            self._say(str(meter.report()))

    def __enter__(self) -> ModalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ used by sessions

    def _classify(self, job: BenchmarkJob, error: BaseException) -> JobResult:
        """A failed call as a result: the kernel's ``timeout`` or the platform's ``infra_error``."""
        exc = self._client.exception
        now = time.time()
        common = dict(job_id=job.job_id, started_at=now, finished_at=now, kernel_digest=job.kernel.digest,
                      error_class=type(error).__name__, error_message=str(error)[:4000] or type(error).__name__)
        if isinstance(error, exc.FunctionTimeoutError):
            return JobResult(status="timeout", **common)  # over compile + run + load: the kernel hung
        if isinstance(error, TimeoutError):  # FunctionCall.get(timeout=...) ran out: our deadline
            common["error_message"] = f"no reply within {self.settings.wait_timeout_s}s (queue included)"
        # InternalFailure (preemption), RemoteError (container died), OutputExpiredError,
        # ConnectionError, ExecutionError ...: not the kernel's fault.
        return JobResult(status="infra_error", **common)


class ModalSession:
    """One search on a :class:`ModalExecutor`."""

    def __init__(self, executor: ModalExecutor, spec: SessionSpec, payload: dict[str, Any], jobs: Any, retimer: Any) -> None:
        self.spec = spec
        self._executor = executor
        self._payload = payload
        self._jobs = jobs
        self._retimer = retimer
        self._in_flight = 0
        self._lock = threading.Lock()
        self._closed = False
        self.retime_containers: list[str] = []
        self.space_report: dict[str, object] | None = None
        """Helion's config space on the worker's real arguments (drift guard), when asked."""

    def _busy(self) -> tuple[bool, int]:
        with self._lock:
            n = self._in_flight
        return n > 0, min(n, self._executor.settings.job_containers)

    def _over_budget(self, extra: int = 1) -> bool:
        busy, _ = self._busy()
        with self._lock:
            expected = min(self._in_flight + extra, self._executor.settings.job_containers)
        return self._executor.meter.exceeded(busy=busy, expected_containers=expected)

    def submit(self, jobs: Sequence[BenchmarkJob]) -> ResultStream:
        """Spawn every job now (or answer it at once); the stream yields in completion order
        and ``close()`` before the end cancels the calls still running."""
        if self._closed:
            raise RuntimeError(f"session {self.spec.session_id} is closed")
        ex = self._executor
        results: queue.SimpleQueue[JobResult] = queue.SimpleQueue()
        calls: list[Any] = []
        spawns: list[tuple[BenchmarkJob, concurrent.futures.Future[Any]]] = []
        for job in jobs:
            if self._over_budget():
                results.put(_budget_result(job, ex.meter.max_cost_usd))
                continue
            with self._lock:
                self._in_flight += 1
            spawns.append((job, ex._spawner.submit(self._jobs.run_job.spawn, self._payload, job_to_dict(job))))
        deadline = time.monotonic() + ex.settings.wait_timeout_s
        for job, future in spawns:  # every spawn has returned before submit() does
            try:
                call = future.result()
            except Exception as error:  # noqa: BLE001 - a failed spawn is a transport failure
                self._finished()
                results.put(ex._classify(job, error))
                continue
            calls.append(call)
            with ex._lock:
                ex._outstanding.add(call)
            ex._waiters.submit(self._wait, job, call, deadline, results)
        return ResultStream([job.job_id for job in jobs], results, lambda: _cancel_calls(calls),
                            gone=lambda: ex._closed)

    def _finished(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _wait(self, job: BenchmarkJob, call: Any, deadline: float, results: queue.SimpleQueue[JobResult]) -> None:
        ex = self._executor
        try:
            reply = self._reply_within_budget(call, deadline)
            if reply is None:
                _cancel_calls([call])
                result = _budget_result(job, ex.meter.max_cost_usd, cancelled=True)
                return
            ex.meter.observe(reply.get("container"))
            result = result_from_dict(reply["result"])
            if result.job_id != job.job_id:
                result = JobResult(job.job_id, "infra_error", error_class="WrongJobId",
                                   error_message=f"worker answered job {result.job_id!r} for {job.job_id!r}")
        except BaseException as error:  # noqa: BLE001 - never lose a job
            result = ex._classify(job, error)
            if isinstance(error, TimeoutError):  # our deadline, not Modal's: stop the orphaned call
                _cancel_calls([call])
        finally:
            self._finished()
            with ex._lock:
                ex._outstanding.discard(call)
            results.put(result)

    def _reply_within_budget(self, call: Any, deadline: float) -> Any:
        """The call's reply, or None once the budget is spent first (TimeoutError at the deadline).

        Waits in slices of ``BUDGET_POLL_S``: between them it checks the budget and
        whether the executor was closed (a waiter blocked on a closed executor's
        call would keep the interpreter from exiting for up to ``wait_timeout_s``).
        """
        while True:
            left = deadline - time.monotonic()
            try:
                return call.get(timeout=max(0.0, min(left, BUDGET_POLL_S)))
            except TimeoutError:
                if left <= BUDGET_POLL_S:
                    raise
                if self._executor._closed:
                    raise ExecutorClosedError("the Modal executor was closed before this job answered") from None
                if self._executor.meter.max_cost_usd is not None and self._over_budget(extra=0):
                    return None

    def retime(
        self, kernels: Sequence[KernelSource], *, warmup_ms: float, rep_ms: float, timeout_s: float
    ) -> RetimeResult:
        """All finalists on this session's one re-timing container; failures keep earlier timings."""
        return self._retime_on(self._retimer, kernels, warmup_ms, rep_ms, timeout_s, pinned=True)

    def retime_spread(
        self, kernels: Sequence[KernelSource], *, warmup_ms: float, rep_ms: float, timeout_s: float
    ) -> RetimeResult:
        """The population re-benchmark over the re-timing container and the job containers,
        in the re-timing container's units (anchored; see :mod:`helion_remote.spread`)."""
        groups = None
        if self._retimer is not self._jobs:  # with no dedicated re-timing container, one call is as good
            groups = spread_groups(kernels, 1 + self._executor.settings.job_containers)
        if groups is None or self._over_budget(extra=len(groups) - 1):
            return self.retime(kernels, warmup_ms=warmup_ms, rep_ms=rep_ms, timeout_s=timeout_s)
        return spread_retime(
            kernels, groups,
            run=lambda i, group: self._retime_on(self._retimer if i == 0 else self._jobs, group, warmup_ms,
                                                 rep_ms, timeout_s, pinned=i == 0),
            redo=lambda group: self.retime(group, warmup_ms=warmup_ms, rep_ms=rep_ms, timeout_s=timeout_s),
        )

    def _retime_on(
        self, target: Any, kernels: Sequence[KernelSource], warmup_ms: float, rep_ms: float, timeout_s: float,
        *, pinned: bool,
    ) -> RetimeResult:
        """One ``retime`` call on ``target``'s containers; ``pinned`` tracks the session's re-timing container."""
        ex = self._executor
        digests = [k.digest for k in kernels]

        def failed(message: str) -> RetimeResult:
            return RetimeResult(tuple(RetimeTiming(d, "infra_error", error_message=message) for d in digests))

        if self._over_budget(extra=0):
            return failed(f"{BUDGET_EXCEEDED}: the ${ex.meter.max_cost_usd} Modal budget is spent")
        s = ex.settings
        # ``timeout_s`` already bounds the whole call (the provider sizes it to the kernels);
        # on top: a container's cold start and session load.
        wait = s.startup_timeout_s + s.session_load_s + max(timeout_s, 1.0)
        call = None
        try:
            call = target.retime.spawn(self._payload, [kernel_to_dict(k) for k in kernels], warmup_ms, rep_ms)
            reply = call.get(timeout=wait)
        except Exception as error:  # noqa: BLE001
            if call is not None:  # a re-timing left running would hold the re-timing container
                _cancel_calls([call])
            if isinstance(error, TimeoutError):
                return failed(f"no re-timing reply within {wait:.0f}s; the call was cancelled")
            return failed(f"{type(error).__name__}: {error}")
        stamp = reply.get("container") or {}
        ex.meter.observe(stamp, job=not pinned)
        if pinned and stamp.get("id"):
            if self.retime_containers and self.retime_containers[-1] != stamp["id"]:
                log.warning("re-timing container for session %s changed (%s -> %s): it was lost; timings of "
                            "different calls may not compare", self.spec.session_id, self.retime_containers[-1],
                            stamp["id"])
            self.retime_containers.append(stamp["id"])
        if "retime" not in reply:
            return failed(str(reply.get("error", "no retime result")))
        return retime_from_dict(reply["retime"])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        ex = self._executor
        if ex.settings.print_cost and ex.meter.report().containers:
            ex._say(str(ex.meter.report()))


def _cancel_calls(calls: Sequence[Any]) -> None:
    """Stop paying for calls nobody will read (best effort: a call may have finished)."""
    for call in calls:
        with contextlib.suppress(Exception):
            call.cancel(terminate_containers=False)


def _budget_result(job: BenchmarkJob, budget: float | None, *, cancelled: bool = False) -> JobResult:
    now = time.time()
    what = "cancelled while queued or running" if cancelled else "not run"
    return JobResult(
        job_id=job.job_id, status="error", error_class=BUDGET_EXCEEDED,
        error_message=f"{what}: the ${budget} Modal budget (max_cost_usd) is spent; the search keeps its best so far",
        started_at=now, finished_at=now, kernel_digest=job.kernel.digest, perf_ms=math.inf,
    )


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
