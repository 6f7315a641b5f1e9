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
means the process must be replaced.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import socket
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from helion_remote.errors import SessionOpenError
from helion_remote.argcodec import download_args
from helion_remote.protocol import (
    BenchmarkJob,
    JobResult,
    KernelSource,
    RetimeResult,
    RetimeTiming,
    SessionSpec,
    Status,
    WorkerInfo,
)
from helion_remote.worker import _helion_worker_compat as hc
from helion_remote.worker.interpreter import install_interpreter_num_sm, interpreter_mode
from helion_remote.worker.modules import JobLoadError, ModuleConflictError, register_source_module, write_once

if TYPE_CHECKING:
    from helion_remote.blobs import BlobStore

CPU_MAX_REPS_ENV = "HELION_REMOTE_CPU_MAX_REPS"
CPU_MAX_REPS_DEFAULT = 5
"""The interpreter is ~1000x slower than a GPU: cap timed calls so CI stays fast."""
RETIME_ROUNDS = 3
LOADED_CACHE_SIZE = 32
_MAX_MESSAGE = 4000


class BaselineError(SessionOpenError):
    """The reference kernel failed, so no candidate of the session can be checked."""


@dataclasses.dataclass(frozen=True)
class SessionSummary:
    session_id: str
    mutated_leaves: tuple[int, ...]
    baseline_time_s: float
    space_report: dict[str, object] | None = None
    """Helion's config space for the real arguments, when the spec asks (drift guard)."""


@dataclasses.dataclass(frozen=True)
class CompileOutcome:
    """Result of a compile-only run (GPU compile pool): warms the Triton cache."""

    status: Status
    compile_time_s: float
    error_class: str | None = None
    error_message: str | None = None
    fatal: bool = False


def _message(error: BaseException, captured: str = "") -> str:
    text = f"{type(error).__qualname__}: {error}"
    if captured.strip():
        text += f"\n--- captured output ---\n{captured.strip()}"
    return text[:_MAX_MESSAGE]


@dataclasses.dataclass
class _Session:
    spec: SessionSpec
    args: list[object]
    leaves: list[object]
    spec_tree: Any
    mutated: tuple[int, ...]
    baseline: object = None
    baseline_post: list[torch.Tensor] = dataclasses.field(default_factory=list)
    bitwise: bool = False


@dataclasses.dataclass
class _KernelFailure(Exception):
    """Internal: a classified failure of the candidate itself."""

    status: Status
    message: str
    error_class: str
    fatal: bool = False
    compile_time_s: float | None = None


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
        self.cpu_max_reps = cpu_max_reps or int(os.environ.get(CPU_MAX_REPS_ENV, CPU_MAX_REPS_DEFAULT))
        self.sticky = False
        """Set after an unrecoverable device error: the process must be replaced."""
        self._session: _Session | None = None
        self._loaded: collections.OrderedDict[str, Callable[..., object]] = collections.OrderedDict()

    # ------------------------------------------------------------------ identity

    def info(self) -> WorkerInfo:
        if self.device.startswith("cuda"):
            index = torch.device(self.device).index or 0
            props = torch.cuda.get_device_properties(index)
            return WorkerInfo(self.worker_id, props.name, str(props.uuid), interpreter=False)
        host = socket.gethostname()
        return WorkerInfo(self.worker_id, "cpu-interpreter", f"cpu-interpreter-{host}", interpreter=True)

    # ------------------------------------------------------------------ session

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
            raise JobLoadError(f"cannot fetch arguments {spec.args_digest}: {_message(error)}") from error
        leaves, tree = tree_flatten(args)
        session = _Session(spec, args, leaves, tree, mutated=())
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

    def _run_baseline(self, session: _Session) -> None:
        spec = session.spec
        try:
            fn = self._load(spec.reference)
        except _KernelFailure as failure:
            raise BaselineError(f"reference kernel failed to load: {failure.message}") from None
        clones = [_clone_leaf(leaf) for leaf in session.leaves]
        try:
            output = fn(*tree_unflatten(clones, session.spec_tree))
            hc.synchronize_device()
        except Exception as error:
            if hc.match_unrecoverable_runtime_error(error):
                self.sticky = True
            raise BaselineError(f"reference kernel failed: {_message(error)}") from error
        mutated = tuple(
            i for i, (before, after) in enumerate(zip(session.leaves, clones, strict=True)) if _changed(before, after)
        )
        session.mutated = mutated
        session.baseline = output
        session.baseline_post = [clones[i] for i in mutated]  # type: ignore[misc]
        dtypes = [t.dtype for t in _tensor_leaves((output, session.baseline_post))]
        session.bitwise = bool(dtypes) and all(hc.is_fp8_dtype(d) for d in dtypes)

    def _require_session(self, args_digest: str, baseline_digest: str | None = None) -> _Session:
        session = self._session
        if session is None or session.spec.args_digest != args_digest:
            raise JobLoadError(f"no open session for arguments {args_digest} on {self.worker_id}")
        if baseline_digest is not None and session.spec.baseline_digest != baseline_digest:
            raise JobLoadError(f"open session has baseline {session.spec.baseline_digest}, job wants {baseline_digest}")
        return session

    def _fresh_args(self, session: _Session) -> list[object]:
        """The pristine arguments with every mutated leaf replaced by a copy."""
        leaves = list(session.leaves)
        for i in session.mutated:
            leaves[i] = _clone_leaf(leaves[i])
        return tree_unflatten(leaves, session.spec_tree)

    # ------------------------------------------------------------------ jobs

    def run_job(self, job: BenchmarkJob, *, compile_time_s: float | None = None) -> JobResult:
        """Load, run once, check accuracy, time.  Never raises for the kernel's faults."""
        started = time.time()
        base = dict(
            job_id=job.job_id,
            worker_id=self.worker_id,
            kernel_digest=job.kernel.digest,
            started_at=started,
            **_device_fields(self.info()),
        )

        compiled_s: float | None = None
        stages: dict[str, float] = {}

        def result(status: Status, **fields: Any) -> JobResult:
            return JobResult(status=status, finished_at=time.time(), stages=stages, **base, **fields)  # type: ignore[arg-type]

        try:
            session = self._require_session(job.args_digest, job.baseline_digest)
            t0 = time.perf_counter()
            fn = self._load(job.kernel)
            t1 = time.perf_counter()
            stages["load"] = t1 - t0
            args = self._fresh_args(session)
            output = self._first_call(fn, args)
            t2 = time.perf_counter()
            stages["first_call"] = t2 - t1
            first_call_s = t2 - t0
            compiled_s = compile_time_s if compile_time_s is not None else first_call_s
            problem = self._accuracy_problem(session, output, args, job)
            t3 = time.perf_counter()
            stages["check"] = t3 - t2
            if problem is not None:
                return result("accuracy_error", error_message=problem[:_MAX_MESSAGE], compile_time_s=compiled_s,
                              error_class="AssertionError")
            perf = self._time(fn, self._fresh_args(session), job.warmup_ms, job.rep_ms)
            stages["time"] = time.perf_counter() - t3
        except ModuleConflictError:
            raise
        except JobLoadError as error:
            return result("infra_error", error_class="JobLoadError", error_message=str(error)[:_MAX_MESSAGE])
        except _KernelFailure as failure:
            return result(failure.status, error_class=failure.error_class, error_message=failure.message,
                          fatal=failure.fatal, compile_time_s=failure.compile_time_s)
        except Exception as error:  # raised while timing
            failure = self._classify(error)
            return result(failure.status, error_class=failure.error_class, error_message=failure.message,
                          fatal=failure.fatal, compile_time_s=compiled_s)
        if not math.isfinite(perf):
            return result("error", error_message=f"non-finite timing {perf}", compile_time_s=compiled_s)
        return result("ok", perf_ms=perf, compile_time_s=compiled_s)

    def compile_kernel(self, kernel: KernelSource, args_digest: str) -> CompileOutcome:
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
                    fn(*self._fresh_args(session), _launcher=_compile_only_launcher)
                except Exception as error:
                    raise self._classify(error, captured[0]) from error
        except JobLoadError as error:
            return CompileOutcome("infra_error", time.perf_counter() - start, "JobLoadError", str(error))
        except _KernelFailure as failure:
            return CompileOutcome(failure.status, time.perf_counter() - start, failure.error_class,
                                  failure.message, failure.fatal)
        return CompileOutcome("ok", time.perf_counter() - start)

    def retime(self, kernels: Sequence[KernelSource], warmup_ms: float, rep_ms: float) -> RetimeResult:
        """Re-time kernels together, interleaved over rounds, so their numbers compare."""
        session = self._session
        info = self.info()
        if session is None:
            timings = tuple(RetimeTiming(k.digest, "infra_error", error_message="no open session") for k in kernels)
            return RetimeResult(timings, self.worker_id, info.device_name, info.device_uuid)
        fns: dict[str, Callable[..., object]] = {}
        errors: dict[str, tuple[Status, str]] = {}
        for kernel in kernels:
            try:
                fns[kernel.digest] = self._load(kernel)
            except ModuleConflictError:
                raise
            except _KernelFailure as failure:
                errors[kernel.digest] = (failure.status, failure.message)
            except JobLoadError as error:
                errors[kernel.digest] = ("infra_error", str(error))
        samples: dict[str, list[float]] = {d: [] for d in fns}
        order = [k.digest for k in kernels if k.digest in fns]
        for round_index in range(RETIME_ROUNDS):
            for digest in order if round_index % 2 == 0 else reversed(order):
                if digest in errors:
                    continue
                try:
                    warmup = warmup_ms if round_index == 0 else min(warmup_ms, 1.0)
                    samples[digest].append(
                        self._time(fns[digest], self._fresh_args(session), warmup, rep_ms / RETIME_ROUNDS)
                    )
                except Exception as error:
                    failure = self._classify(error)
                    errors[digest] = (failure.status, failure.message)
                    if self.sticky:
                        self._abandon_after_poison(order, digest, errors)
                        break
            if self.sticky:
                break
        timings = []
        for kernel in kernels:
            if kernel.digest in errors:
                status, message = errors[kernel.digest]
                timings.append(RetimeTiming(kernel.digest, status, error_message=message))
            else:
                timings.append(RetimeTiming(kernel.digest, "ok", statistics.median(samples[kernel.digest])))
        return RetimeResult(tuple(timings), self.worker_id, info.device_name, info.device_uuid)

    @staticmethod
    def _abandon_after_poison(order: Sequence[str], culprit: str, errors: dict[str, tuple[Status, str]]) -> None:
        """After a kernel poisons the device, nothing else this call measures can be trusted.

        The culprit keeps its error; every other kernel is ``infra_error`` (not
        its fault), so the search keeps its earlier timing instead of losing
        the whole population to one bad kernel.
        """
        for digest in order:
            if digest not in errors:
                errors[digest] = (
                    "infra_error",
                    f"not re-timed: kernel {culprit[:12]} left this worker's device unusable; a fresh worker replaces it",
                )

    # ------------------------------------------------------------------ pieces

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

    def _classify(self, error: BaseException, captured: str = "") -> _KernelFailure:
        """Helion's policy: ``raise`` is fatal; unrecoverable device errors poison the process.

        Under the Triton interpreter only code that cannot load (syntax or
        import errors) is fatal: the interpreter rejects some configs a GPU
        compiles (its own limitations), so a run failure there says nothing
        about the kernel and the config is only skipped.
        """
        if hc.match_unrecoverable_runtime_error(error):
            self.sticky = True
        try:
            action = hc.classify_triton_exception(error)
        except Exception:  # pragma: no cover - classification must never lose a job
            action = "raise"
        return _KernelFailure("error", _message(error, captured), type(error).__qualname__,
                              fatal=action == "raise"
                              and (not self.interpreter or isinstance(error, (SyntaxError, ImportError))))

    def _accuracy_problem(
        self, session: _Session, output: object, args: list[object], job: BenchmarkJob
    ) -> str | None:
        leaves, _ = tree_flatten(args)
        actual = (output, [leaves[i] for i in session.mutated])
        expected = (session.baseline, session.baseline_post)
        atol, rtol = (0.0, 0.0) if session.bitwise else (job.tolerances.atol, job.tolerances.rtol)
        try:
            hc.assert_close(actual, expected, atol=atol, rtol=rtol,
                            scale_atol_by_expected_rms=job.tolerances.scale_atol and not session.bitwise)
        except AssertionError as error:
            return str(error)
        return None

    def _time(self, fn: Callable[..., object], args: list[object], warmup_ms: float, rep_ms: float) -> float:
        """Median ms: Helion's ``do_bench`` on a GPU, a capped perf_counter loop on CPU."""
        if self.device.startswith("cuda"):
            return float(hc.do_bench(lambda: fn(*args), warmup=warmup_ms, rep=rep_ms, return_mode="median"))
        return _cpu_median_ms(lambda: fn(*args), warmup_ms, rep_ms, self.cpu_max_reps)


# ---------------------------------------------------------------------- helpers


def _device_fields(info: WorkerInfo) -> dict[str, str]:
    return {"device_name": info.device_name, "device_uuid": info.device_uuid}


def _cpu_median_ms(call: Callable[[], object], warmup_ms: float, rep_ms: float, max_reps: int) -> float:
    t0 = time.perf_counter()
    call()
    estimate_ms = max((time.perf_counter() - t0) * 1000.0, 1e-6)
    for _ in range(min(max(0, int(warmup_ms / estimate_ms)), 2)):
        call()
    times = []
    for _ in range(min(max(1, int(rep_ms / estimate_ms)), max(1, max_reps))):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def _compile_only_launcher(triton_kernel: Any, grid: tuple[int, ...], *args: object, **kwargs: Any) -> None:
    """A ``_launcher`` that compiles exactly what ``default_launcher`` would run.

    The options must match ``default_launcher``'s (``launch_cooperative_grid``
    included), or the device worker misses the cache and compiles again.
    """
    kwargs.setdefault("launch_cooperative_grid", False)
    run_args, run_kwargs = hc.compile_only_launch_args(*args, **kwargs)
    run_kwargs.pop("_minimum_resident_programs", None)
    triton_kernel.run(*run_args, grid=grid, warmup=True, **run_kwargs)


def _clone_leaf(leaf: object) -> object:
    """A copy with the same sizes AND strides: generated code bakes strides in."""
    if not isinstance(leaf, torch.Tensor):
        return leaf
    out = torch.empty_strided(leaf.size(), leaf.stride(), dtype=leaf.dtype, device=leaf.device)
    out.copy_(leaf)
    return out


def _changed(before: object, after: object) -> bool:
    if not isinstance(before, torch.Tensor) or not isinstance(after, torch.Tensor):
        return False
    try:
        return not torch.equal(before, after)
    except RuntimeError:  # as Helion: an uncomparable leaf counts as not mutated
        return False


def _tensor_leaves(tree: object) -> list[torch.Tensor]:
    return [x for x in tree_flatten(tree)[0] if isinstance(x, torch.Tensor)]
