"""Wire types shared by every backend (the executor contract is ``helion_remote.executor``).

Everything here is plain data (dataclasses of str/int/float/tuple/dict), so a
job or result crosses a process, a pipe or a Modal call unchanged.  The split
follows TVM MetaSchedule's Builder/Runner: the coordinator *generates* code, a
worker *compiles, checks and times* it, and failures come back as values.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import time
import traceback as _traceback
from typing import Literal

Status = Literal["ok", "error", "timeout", "accuracy_error", "infra_error"]
STATUSES: tuple[str, ...] = ("ok", "error", "timeout", "accuracy_error", "infra_error")
"""``infra_error`` is the only status that is not the kernel's fault: a lost
worker, a broken transport, a worker that could not load the job.  The
coordinator retries it on another worker and never shows it to the search."""


MESSAGE_LIMIT = 4000
"""Characters of a result's ``error_message`` kept: its head (the exception line comes first)."""
TRACEBACK_LIMIT = 12000
"""Characters of a result's ``traceback`` kept: mostly its tail (the innermost frames and the
exception are last), plus :data:`TRACEBACK_HEAD` characters of its head (the outer frames,
which a huge exception message would otherwise push out)."""
TRACEBACK_HEAD = 2000


def clip_message(text: str) -> str:
    """``text`` cut to :data:`MESSAGE_LIMIT` (the one place the limit applies)."""
    return text[:MESSAGE_LIMIT]


def clip_traceback(text: str | None) -> str | None:
    """``text`` cut to :data:`TRACEBACK_LIMIT` (head and tail kept); ``None`` for no text."""
    if not text:
        return None
    if len(text) <= TRACEBACK_LIMIT:
        return text
    tail = TRACEBACK_LIMIT - TRACEBACK_HEAD
    cut = len(text) - TRACEBACK_LIMIT
    return f"{text[:TRACEBACK_HEAD]}\n[... {cut} characters cut ...]\n{text[-tail:]}"


def format_traceback(error: BaseException) -> str | None:
    """``error``'s traceback as Python prints it (``None`` when it was never raised)."""
    if error.__traceback__ is None:
        return None
    return clip_traceback("".join(_traceback.format_exception(error)))


def sha256_hex(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return hashlib.sha256(data).hexdigest()


@dataclasses.dataclass(frozen=True)
class SourceModule:
    """A Python module the generated code imports (``import m as _source_module``),
    shipped by content because the worker cannot import the user's files."""

    name: str
    source: str

    @functools.cached_property
    def digest(self) -> str:
        return sha256_hex(self.name + "\0" + self.source)


@dataclasses.dataclass(frozen=True)
class KernelSource:
    """One generated kernel: a complete module plus the host entry point."""

    module_source: str
    entry_name: str
    source_modules: tuple[SourceModule, ...] = ()

    @functools.cached_property
    def digest(self) -> str:
        """Hashed once per object: read for every job, result and re-timing."""
        parts = [self.entry_name, self.module_source, *(m.digest for m in self.source_modules)]
        return sha256_hex("\0".join(parts))

    @functools.cached_property
    def modules_digest(self) -> str:
        """Identity of the shipped modules: workers need a fresh process per value."""
        return sha256_hex("\0".join(m.digest for m in self.source_modules))


@dataclasses.dataclass(frozen=True)
class Tolerances:
    """Accuracy tolerances, as Helion's ``autotune_baseline_atol/rtol``."""

    atol: float = 1e-2
    rtol: float = 1e-2
    scale_atol: bool = True
    """Helion scales the atol floor by each expected tensor's RMS unless the
    user pinned ``autotune_baseline_atol``; the worker does the same."""


@dataclasses.dataclass(frozen=True)
class SessionSpec:
    """Opened once per search: which arguments and which reference kernel.

    The worker fetches ``args_digest`` from the blob store once, runs
    ``reference`` to produce the baseline output and to learn which arguments
    the kernel mutates, and keeps both for every job of the session.
    """

    session_id: str
    kernel_name: str
    args_digest: str
    reference: KernelSource
    tolerances: Tolerances = Tolerances()
    compile_timeout_s: float = 60.0
    run_timeout_s: float = 30.0
    target_fingerprint: str | None = None
    kernel_definition: SourceModule | None = None
    """The module that defines the kernel: shipped when the coordinator emulates
    a target, so the worker can bind the real arguments and report Helion's
    config space for the drift guard."""
    kernel_attr: str | None = None
    settings: tuple[tuple[str, object], ...] = ()
    """Helion setting overrides the coordinator applied (they shape the space)."""

    @property
    def baseline_digest(self) -> str:
        return self.reference.digest


@dataclasses.dataclass(frozen=True)
class BenchmarkJob:
    """Compile, check and time one candidate.

    ``config`` is the Helion config as a JSON-able dict.  Workers that run real
    code ignore it (the source is authoritative); it is there for logs,
    journals and the fake backend's cost model.
    """

    job_id: str
    kernel: KernelSource
    args_digest: str
    baseline_digest: str
    tolerances: Tolerances
    compile_timeout_s: float
    run_timeout_s: float
    warmup_ms: float = 1.0
    rep_ms: float = 50.0
    config: dict[str, object] = dataclasses.field(default_factory=dict)
    attempt: int = 0
    avoid_workers: tuple[str, ...] = ()

    def retry(self, failed_worker: str) -> BenchmarkJob:
        """The same job for another worker after an infrastructure failure."""
        return dataclasses.replace(
            self,
            attempt=self.attempt + 1,
            avoid_workers=(*self.avoid_workers, failed_worker) if failed_worker else self.avoid_workers,
        )


@dataclasses.dataclass(frozen=True)
class JobResult:
    """What a worker says about one job.  Failures are values, never exceptions."""

    job_id: str
    status: Status
    perf_ms: float = math.inf
    compile_time_s: float | None = None
    error_class: str | None = None
    error_message: str | None = None
    fatal: bool = False
    """Helion classifies some compile errors as ``raise``: the search must stop."""
    worker_id: str = ""
    device_name: str = ""
    device_uuid: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    kernel_digest: str = ""
    stages: dict[str, float] = dataclasses.field(default_factory=dict)
    """Seconds per stage where the backend knows them (``queue``, ``compile_wall``,
    ``ready_wait``, ``load``, ``first_call``, ``check``, ``time``): the journal
    says where a job's time went."""
    traceback: str | None = None
    """The worker's formatted traceback of the failure (tail kept, :data:`TRACEBACK_LIMIT`),
    so a coordinator that has to raise can show where the worker failed."""

    @classmethod
    def failed(
        cls,
        job: BenchmarkJob | str,
        status: Status,
        error: BaseException | str,
        *,
        error_class: str | None = None,
        worker: WorkerInfo | None = None,
        kernel_digest: str = "",
        started_at: float | None = None,
        compile_time_s: float | None = None,
        fatal: bool = False,
        traceback: str | None = None,
        stages: dict[str, float] | None = None,
    ) -> JobResult:
        """The one way a failure becomes a result, on every side of every transport.

        ``error`` is the exception (its class names ``error_class`` and its
        traceback is kept unless ``traceback`` is given) or the message text.
        Messages are cut to :data:`MESSAGE_LIMIT`, tracebacks to :data:`TRACEBACK_LIMIT`.
        """
        if status == "ok":
            raise ValueError("JobResult.failed needs a failure status, not 'ok'")
        if isinstance(error, BaseException):
            message = str(error) or type(error).__qualname__
            error_class = error_class or type(error).__qualname__
            traceback = traceback if traceback is not None else format_traceback(error)
        else:
            message = error
        now = time.time()
        if isinstance(job, BenchmarkJob):
            job_id, kernel_digest = job.job_id, kernel_digest or job.kernel.digest
        else:
            job_id = job
        return cls(
            job_id=job_id,
            status=status,
            compile_time_s=compile_time_s,
            error_class=error_class,
            error_message=clip_message(message),
            fatal=fatal,
            worker_id=worker.worker_id if worker else "",
            device_name=worker.device_name if worker else "",
            device_uuid=worker.device_uuid if worker else "",
            started_at=now if started_at is None else started_at,
            finished_at=now,
            kernel_digest=kernel_digest,
            stages=dict(stages or {}),
            traceback=clip_traceback(traceback),
        )

    def with_stages(self, **stages: float) -> JobResult:
        """This result with more stage durations (the backend adds what the worker cannot see)."""
        return dataclasses.replace(self, stages={**self.stages, **stages})

    @property
    def ok(self) -> bool:
        return self.status == "ok" and math.isfinite(self.perf_ms)

    def to_dict(self) -> dict[str, object]:
        data = dataclasses.asdict(self)
        data["perf_ms"] = _float_to_json(self.perf_ms)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> JobResult:
        data = dict(data)
        data["perf_ms"] = _float_from_json(data.get("perf_ms", math.inf))
        return cls(**data)  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class RetimeTiming:
    """One kernel's re-timing: ``perf_ms`` when ``status == 'ok'``."""

    kernel_digest: str
    status: Status
    perf_ms: float = math.inf
    error_message: str | None = None
    traceback: str | None = None
    """The worker's traceback when timing failed (as ``JobResult.traceback``)."""


@dataclasses.dataclass(frozen=True)
class RetimeResult:
    """Finalists re-timed together on one worker, so their numbers compare."""

    timings: tuple[RetimeTiming, ...]
    worker_id: str = ""
    device_name: str = ""
    device_uuid: str = ""
    workers: tuple[str, ...] = ()
    """Every worker that timed a share (``retime_spread``); empty means ``worker_id`` alone."""
    scales: tuple[tuple[str, float], ...] = ()
    """``(worker, factor)``: what each other worker's timings were multiplied by (spread only)."""
    confirmed: int = 0
    """Kernels from other workers re-timed on worker 0 because they would have led (spread only)."""


@dataclasses.dataclass(frozen=True)
class WorkerInfo:
    worker_id: str
    device_name: str
    device_uuid: str = ""
    interpreter: bool = False


def usable_ms(perf_ms: float) -> bool:
    """A timing a search may rank: finite and positive (a zero would win every comparison)."""
    return math.isfinite(perf_ms) and perf_ms > 0


def _float_to_json(value: float) -> float | str:
    return value if math.isfinite(value) else repr(value)


def _float_from_json(value: object) -> float:
    return float(value)  # type: ignore[arg-type]  # float("inf") parses repr(inf)


def config_key(config: dict[str, object]) -> str:
    """Stable text of a config dict, for seeding and logs."""
    return json.dumps(config, sort_keys=True, default=str)
