"""The worker runtime every code-running backend shares (local processes, Modal).

One ``WorkerRuntime`` lives in one worker process, bound to one device.  Per
session it fetches the arguments once, runs the reference kernel for the
baseline and learns which arguments the kernel mutates; per job it loads the
generated module, runs it on fresh copies of the mutated arguments, checks it
against the baseline and times it with Helion's semantics.  Failures come back
as ``JobResult`` values, classified the way Helion classifies them, because a
worker that raises would lose the job.

The runtime knows nothing about processes: the caller decides when a sticky
CUDA error (``runtime.sticky``) or a module conflict (``ModuleConflictError``)
means the process must be replaced.  It implements
:class:`~helion_remote.worker.service.WorkerService`; accuracy checks live in
:mod:`~helion_remote.worker.checking`, timing in :mod:`~helion_remote.worker.timing`
and failure naming in :mod:`~helion_remote.worker.failures`.
"""

from __future__ import annotations

import collections
import math
import os
import socket
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils._pytree import tree_unflatten

from helion_remote.argcodec import download_args
from helion_remote.errors import SessionOpenError
from helion_remote.protocol import (
    BenchmarkJob,
    JobResult,
    KernelSource,
    RetimeResult,
    RetimeTiming,
    SessionSpec,
    Status,
    WorkerInfo,
    clip_message,
    format_traceback,
)
from helion_remote.worker import _helion_worker_compat as hc
from helion_remote.worker.checking import Session, clone_leaves, open_session_args
from helion_remote.worker.failures import KernelFailure, classify, describe
from helion_remote.worker.interpreter import install_interpreter_num_sm, interpreter_mode
from helion_remote.worker.modules import JobLoadError, ModuleConflictError, register_source_module, write_once
from helion_remote.worker.service import CompileOutcome, SessionSummary
from helion_remote.worker.timing import CPU_MAX_REPS_ENV, compile_only_launcher, median_ms
from helion_remote.worker.timing import cpu_max_reps as cpu_max_reps_

if TYPE_CHECKING:
    from helion_remote.blobs import BlobStore

__all__ = ["CPU_MAX_REPS_ENV", "BaselineError", "CompileOutcome", "JobLoadError", "ModuleConflictError",
           "SessionSummary", "UncheckableReferenceError", "WorkerRuntime"]

RETIME_ROUNDS = 3
LOADED_CACHE_SIZE = 32


class BaselineError(SessionOpenError):
    """The reference kernel failed, so no candidate of the session can be checked."""


class UncheckableReferenceError(BaselineError):
    """The reference ran, but its results cannot tell a right candidate from a wrong one.

    Raised at session open, before any candidate runs: otherwise every
    candidate (the reference config too) fails accuracy and the search ends
    in a misleading ``NoConfigFound``.
    """

    def __init__(self, cause: str) -> None:
        super().__init__(
            f"the reference config's results cannot check candidates: {cause}. "
            "Fix: autotune on finite inputs (e.g. torch.randn, or torch.nan_to_num(x)); "
            "the best config does not depend on the values"
        )


class WorkerRuntime:
    """Compile, check and time generated kernels on one device."""

    def __init__(
        self,
        worker_id: str,
        blob_store: BlobStore,
        work_dir: str | os.PathLike[str],
        *,
        device: str | None = None,
        cpu_max_reps: int | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.blob_store = blob_store
        self.work_dir = Path(work_dir)
        self.interpreter = interpreter_mode()
        if self.interpreter:
            # Must run before any generated module is imported (libdevice calls).
            from helion_remote.worker.interpreter_libdevice import install_interpreter_libdevice

            install_interpreter_libdevice()
            install_interpreter_num_sm()
        self.device = device or ("cpu" if self.interpreter or not torch.cuda.is_available() else "cuda:0")
        self.cpu_max_reps = cpu_max_reps_(cpu_max_reps)
        self.sticky = False
        """Set after an unrecoverable device error: the process must be replaced."""
        self._session: Session | None = None
        self._loaded: collections.OrderedDict[str, Callable[..., object]] = collections.OrderedDict()

    def info(self) -> WorkerInfo:
        if self.device.startswith("cuda"):
            index = torch.device(self.device).index or 0
            props = torch.cuda.get_device_properties(index)
            return WorkerInfo(self.worker_id, props.name, str(props.uuid), interpreter=False)
        host = socket.gethostname()
        return WorkerInfo(self.worker_id, "cpu-interpreter", f"cpu-interpreter-{host}", interpreter=True)

    @property
    def session_id(self) -> str | None:
        return self._session.spec.session_id if self._session else None

    def open_session(self, spec: SessionSpec, *, baseline: bool = True) -> SessionSummary:
        """Fetch the arguments once; run the reference for the baseline and mutations.

        ``baseline=False`` is for compile-only workers, which never check accuracy.
        Raises ``JobLoadError`` when the arguments cannot be fetched and
        ``BaselineError`` when the reference kernel fails.
        """
        self._session = None
        self._loaded.clear()
        self._set_triton_cache(spec)
        try:
            args = download_args(self.blob_store, spec.args_digest, device=self.device)
        except Exception as error:
            raise JobLoadError(f"cannot fetch arguments {spec.args_digest}: {describe(error)}") from error
        session = open_session_args(spec, args)
        start = time.perf_counter()
        if baseline:
            self._run_baseline(session)
        self._session = session
        report = self._space_report(spec, args) if baseline else None
        return SessionSummary(spec.session_id, session.mutated, time.perf_counter() - start, report)

    def _space_report(self, spec: SessionSpec, args: list[object]) -> dict[str, object] | None:
        """Bind the user's kernel on the real arguments and report its config space."""
        if spec.kernel_definition is None or spec.kernel_attr is None:
            return None
        from helion_remote.target.space import config_space_report

        try:
            return config_space_report(spec.kernel_definition, spec.kernel_attr, args,
                                       settings=dict(spec.settings), work_dir=self.work_dir)
        except Exception as error:  # noqa: BLE001 - the coordinator turns it into a clear error
            return {"error": f"{type(error).__qualname__}: {error}"}

    def target_profile(self) -> dict[str, object] | None:
        """This worker's device as a TargetProfile dict (None under the interpreter)."""
        if self.interpreter:
            return None
        from helion_remote.target.capture import capture_profile

        return capture_profile(self.device).to_dict()

    def _set_triton_cache(self, spec: SessionSpec) -> None:
        """Compile pool and device workers share one Triton cache per session."""
        if self.interpreter:
            return
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in spec.session_id)[:80]
        cache = self.work_dir / "triton" / safe
        cache.mkdir(parents=True, exist_ok=True)
        os.environ["TRITON_CACHE_DIR"] = str(cache)

    def _run_baseline(self, session: Session) -> None:
        spec = session.spec
        try:
            fn = self._load(spec.reference)
        except KernelFailure as failure:
            raise BaselineError(f"reference kernel failed to load: {failure.message}") from failure
        clones = clone_leaves(session.leaves)
        try:
            output = fn(*tree_unflatten(clones, session.spec_tree))
            hc.synchronize_device()
        except Exception as error:
            if hc.match_unrecoverable_runtime_error(error):
                self.sticky = True
            raise BaselineError(f"reference kernel failed: {describe(error)}") from error
        session.record_baseline(output, clones)
        problem = session.reference_problem()
        if problem is None and session.nan_masks:
            problem = self._reference_disagrees(fn, session)
        if problem is not None:
            raise UncheckableReferenceError(problem)

    def _reference_disagrees(self, fn: Callable[..., object], session: Session) -> str | None:
        """Run the reference again: NaNs that move between runs would fail every candidate."""
        args = session.fresh_args()
        try:
            output = fn(*args)
            hc.synchronize_device()
        except Exception as error:
            if hc.match_unrecoverable_runtime_error(error):
                self.sticky = True
            raise BaselineError(f"reference kernel failed on its second run: {describe(error)}") from error
        problem = session.accuracy_problem(output, args, session.spec.tolerances)
        if problem is None:
            return None
        return f"its results contain NaN and two runs on the same inputs disagree ({problem.splitlines()[0]})"

    def _require_session(self, args_digest: str, baseline_digest: str | None = None) -> Session:
        session = self._session
        if session is None or session.spec.args_digest != args_digest:
            raise JobLoadError(f"no open session for arguments {args_digest} on {self.worker_id}")
        if baseline_digest is not None and session.spec.baseline_digest != baseline_digest:
            raise JobLoadError(f"open session has baseline {session.spec.baseline_digest}, job wants {baseline_digest}")
        return session

    def run_job(self, job: BenchmarkJob, *, compile_time_s: float | None = None) -> JobResult:
        """Load, run once, check accuracy, time.  Never raises for the kernel's faults."""
        started = time.time()
        compiled_s: float | None = None
        stages: dict[str, float] = {}

        def failed(status: Status, error: BaseException | str, **fields: Any) -> JobResult:
            return JobResult.failed(job, status, error, worker=self.info(), started_at=started, stages=stages,
                                    **{"compile_time_s": compiled_s, **fields})

        try:
            session = self._require_session(job.args_digest, job.baseline_digest)
            t0 = time.perf_counter()
            fn = self._load(job.kernel)
            t1 = time.perf_counter()
            stages["load"] = t1 - t0
            args = session.fresh_args()
            output = self._first_call(fn, args)
            t2 = time.perf_counter()
            stages["first_call"] = t2 - t1
            compiled_s = compile_time_s if compile_time_s is not None else t2 - t0
            problem = session.accuracy_problem(output, args, job.tolerances)
            t3 = time.perf_counter()
            stages["check"] = t3 - t2
            if problem is not None:
                return failed("accuracy_error", problem, error_class="AssertionError")
            perf = self._time(fn, session.fresh_args(), job.warmup_ms, job.rep_ms)
            stages["time"] = time.perf_counter() - t3
        except ModuleConflictError:
            raise
        except JobLoadError as error:
            return failed("infra_error", error, compile_time_s=None)
        except KernelFailure as failure:
            return self._failure_result(job, failure, started, stages, failure.compile_time_s)
        except Exception as error:  # raised while timing
            return self._failure_result(job, self._classify(error), started, stages, compiled_s)
        if not math.isfinite(perf):
            return failed("error", f"non-finite timing {perf}")
        return JobResult(job.job_id, "ok", perf_ms=perf, compile_time_s=compiled_s, worker_id=self.worker_id,
                         started_at=started, finished_at=time.time(), kernel_digest=job.kernel.digest,
                         stages=stages, **_device_fields(self.info()))

    def _failure_result(self, job: BenchmarkJob, failure: KernelFailure, started: float,
                        stages: dict[str, float], compile_time_s: float | None) -> JobResult:
        return JobResult.failed(job, failure.status, failure.message, error_class=failure.error_class,
                                fatal=failure.fatal, traceback=failure.traceback, worker=self.info(),
                                started_at=started, stages=stages, compile_time_s=compile_time_s)

    def compile(self, kernel: KernelSource, args_digest: str) -> CompileOutcome:
        """Compile without launching, to warm the shared Triton cache (GPU only).

        The host wrapper runs with a ``_launcher`` that calls Triton with
        ``warmup=True``: Triton compiles and writes its cache, nothing runs on
        the device.  Mirrors Helion's fork-mode precompile, minus the BoundKernel.
        """
        start = time.perf_counter()
        try:
            session = self._require_session(args_digest)
            fn = self._load(kernel)
            with hc.capture_output() as captured:
                try:
                    fn(*session.fresh_args(), _launcher=compile_only_launcher)
                except Exception as error:
                    raise self._classify(error, captured[0]) from error
        except JobLoadError as error:
            return CompileOutcome("infra_error", time.perf_counter() - start, "JobLoadError",
                                  clip_message(str(error)), traceback=format_traceback(error))
        except KernelFailure as failure:
            return CompileOutcome(failure.status, time.perf_counter() - start, failure.error_class,
                                  failure.message, failure.fatal, failure.traceback)
        return CompileOutcome("ok", time.perf_counter() - start)

    def retime(self, kernels: Sequence[KernelSource], warmup_ms: float, rep_ms: float) -> RetimeResult:
        """Re-time kernels together, interleaved over rounds, so their numbers compare."""
        session = self._session
        info = self.info()
        if session is None:
            timings = tuple(RetimeTiming(k.digest, "infra_error", error_message="no open session") for k in kernels)
            return RetimeResult(timings, self.worker_id, info.device_name, info.device_uuid)
        fns: dict[str, Callable[..., object]] = {}
        errors: dict[str, RetimeTiming] = {}
        for kernel in kernels:
            try:
                fns[kernel.digest] = self._load(kernel)
            except ModuleConflictError:
                raise
            except KernelFailure as failure:
                errors[kernel.digest] = _failed_timing(kernel.digest, failure)
            except JobLoadError as error:
                errors[kernel.digest] = RetimeTiming(kernel.digest, "infra_error", error_message=str(error),
                                                     traceback=format_traceback(error))
        samples: dict[str, list[float]] = {d: [] for d in fns}
        order = [k.digest for k in kernels if k.digest in fns]
        for round_index in range(RETIME_ROUNDS):
            for digest in order if round_index % 2 == 0 else reversed(order):
                if digest in errors:
                    continue
                try:
                    warmup = warmup_ms if round_index == 0 else min(warmup_ms, 1.0)
                    samples[digest].append(
                        self._time(fns[digest], session.fresh_args(), warmup, rep_ms / RETIME_ROUNDS)
                    )
                except Exception as error:
                    errors[digest] = _failed_timing(digest, self._classify(error))
                    if self.sticky:
                        self._abandon_after_poison(order, digest, errors)
                        break
            if self.sticky:
                break
        timings = [
            errors.get(k.digest) or RetimeTiming(k.digest, "ok", statistics.median(samples[k.digest])) for k in kernels
        ]
        return RetimeResult(tuple(timings), self.worker_id, info.device_name, info.device_uuid)

    @staticmethod
    def _abandon_after_poison(order: Sequence[str], culprit: str, errors: dict[str, RetimeTiming]) -> None:
        """After a kernel poisons the device, nothing else this call measures can be trusted.

        The culprit keeps its error; every other kernel is ``infra_error`` (not
        its fault), so the search keeps its earlier timing instead of losing
        the whole population to one bad kernel.
        """
        for digest in order:
            if digest not in errors:
                errors[digest] = RetimeTiming(
                    digest, "infra_error",
                    error_message=f"not re-timed: kernel {culprit[:12]} left this worker's device unusable; "
                    "a fresh worker replaces it",
                )

    def _load(self, kernel: KernelSource) -> Callable[..., object]:
        """Materialize and import a generated module (cached by digest)."""
        digest = kernel.digest
        fn = self._loaded.get(digest)
        if fn is not None:
            self._loaded.move_to_end(digest)
            return fn
        try:
            path = write_once(self.work_dir / "src" / f"{digest}.py", kernel.module_source)
            module_files = [
                (m, write_once(self.work_dir / "modules" / m.digest / f"{m.name}.py", m.source))
                for m in kernel.source_modules
            ]
        except OSError as error:
            raise JobLoadError(f"cannot materialize kernel {digest}: {error}") from error
        for module, file in module_files:
            try:
                register_source_module(module, file)
            except (ModuleConflictError, JobLoadError):
                raise  # the process must be replaced / the worker could not stage it
            except Exception as error:  # the user's module failed at import
                raise self._classify(error) from error
        spec = hc.SerializedCompiledFunction(
            function_name=kernel.entry_name,
            source_code=kernel.module_source,
            filename=str(path),
            module_name=None,
            source_modules=[],
        )
        with hc.capture_output() as captured:
            try:
                fn = hc._load_compiled_fn(spec)
            except Exception as error:
                raise self._classify(error, captured[0]) from error
        self._loaded[digest] = fn
        while len(self._loaded) > LOADED_CACHE_SIZE:
            _, old = self._loaded.popitem(last=False)
            hc._unload_compiled_fn(old)
        return fn

    def _first_call(self, fn: Callable[..., object], args: list[object]) -> object:
        """First launch: Triton compiles (or loads its cache) here."""
        t0 = time.perf_counter()
        with hc.capture_output() as captured:
            try:
                output = fn(*args)
                hc.synchronize_device()
                return output
            except Exception as error:
                failure = self._classify(error, captured[0])
                failure.compile_time_s = time.perf_counter() - t0
                raise failure from error

    def _classify(self, error: BaseException, captured: str = "") -> KernelFailure:
        """Helion's policy (see :func:`~helion_remote.worker.failures.classify`); a sticky error poisons us."""
        failure, sticky = classify(error, captured, interpreter=self.interpreter)
        self.sticky = self.sticky or sticky
        return failure

    def _time(self, fn: Callable[..., object], args: list[object], warmup_ms: float, rep_ms: float) -> float:
        """Median ms: Helion's ``do_bench`` on a GPU, a capped perf_counter loop on CPU."""
        return median_ms(self.device, lambda: fn(*args), warmup_ms, rep_ms, self.cpu_max_reps)


def _device_fields(info: WorkerInfo) -> dict[str, str]:
    return {"device_name": info.device_name, "device_uuid": info.device_uuid}


def _failed_timing(digest: str, failure: KernelFailure) -> RetimeTiming:
    return RetimeTiming(digest, failure.status, error_message=failure.message, traceback=failure.traceback)
