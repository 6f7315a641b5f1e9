"""One contract, every backend: the checks of ``helion_remote.executor`` run on each of them.

A backend is a :class:`Harness`: an open executor, a way to build a session
spec and jobs of a few *kinds* for a real small Helion kernel, and a record of
which jobs a worker started.  The kinds:

* ``ok``, ``ok2``: correct kernels (two configs, so two digests);
* ``raises``: the kernel raises -> ``error``;
* ``wrong``: the kernel computes the wrong answer -> ``accuracy_error``;
* ``slow``: a correct kernel that takes a while (the fake: 0.5 s; the others: 0.1 s per call);
* ``infra``: a job whose worker is lost mid-job -> ``infra_error``.

``fake`` selects faults with ``FaultRule`` on the job's config; ``local`` runs
edited Helion-generated source under the Triton interpreter and kills a worker
process mid-job; ``modal`` runs the real executor against the in-process
stand-in (``test_modal_standin``) whose containers each run the real
``ContainerWorker`` in a child process under the interpreter, and loses a
container for ``infra``.  A new backend is one more ``Harness`` in ``HARNESSES``.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import math
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

import pytest  # noqa: E402
import torch  # noqa: E402

import helion  # noqa: E402
import helion.language as hl  # noqa: E402
from helion_remote.argcodec import upload_args  # noqa: E402
from helion_remote.errors import ExecutorClosedError  # noqa: E402
from helion_remote.executor import RemoteBenchmarkExecutor, RemoteSession  # noqa: E402
from helion_remote.protocol import (  # noqa: E402
    BenchmarkJob,
    JobResult,
    KernelSource,
    RetimeResult,
    SessionSpec,
    Tolerances,
    WorkerInfo,
)
from helion_remote.result_stream import ResultStream  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:helion_remote local backend"), pytest.mark.timeout(300)]


@helion.kernel(static_shapes=True)
def contract_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(x)
    for tile in hl.tile(x.size()):
        out[tile] = x[tile] + y[tile]
    return out


ARGS = tuple(torch.randn(16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2))
HOST_LINE = "    out = torch.empty_like(x)\n"
BODY_LINE = "v_0 = load + load_1"
KINDS = ("ok", "ok2", "raises", "wrong", "slow", "infra")
JOB_TIMEOUT_S = 60.0


def generated(block_sizes: list[int] | None = None) -> KernelSource:
    bound = contract_add.bind(ARGS)
    config = bound.config_spec.default_config() if block_sizes is None else helion.Config(block_sizes=block_sizes)
    return KernelSource(bound.to_triton_code(config), bound.kernel.name)


def edited(kernel: KernelSource, old: str, new: str) -> KernelSource:
    assert old in kernel.module_source, old
    return KernelSource(kernel.module_source.replace(old, new, 1), kernel.entry_name)


def kernel_sources() -> dict[str, KernelSource]:
    """Real generated source per kind; ``raises``/``wrong``/``slow`` are edited copies."""
    ok, ok2 = generated([16, 16]), generated([8, 8])
    return {
        "ok": ok,
        "ok2": ok2,
        "raises": edited(ok, HOST_LINE, "    raise RuntimeError('contract: this kernel raises')\n"),
        "wrong": edited(ok, BODY_LINE, "v_0 = load - load_1"),
        "slow": edited(ok, HOST_LINE, "    import time; time.sleep(0.1)\n" + HOST_LINE),
        "infra": edited(ok, HOST_LINE, "    import time; time.sleep(1.0)\n" + HOST_LINE),
    }


# ---------------------------------------------------------------------- harnesses


class Harness(abc.ABC):
    """One backend under the contract: an open executor plus what the checks need."""

    name: ClassVar[str]
    parallel: ClassVar[int]
    """Jobs the executor runs at once."""
    cheap_sessions: ClassVar[bool] = True
    """``fresh_executor`` opens a session in well under a second (no worker process to start)."""

    def __init__(self) -> None:
        self.sources = kernel_sources()
        self.executor = self.make_executor()
        self._started: list[str] = []
        self._lock = threading.Lock()
        self._sessions = 0

    @abc.abstractmethod
    def make_executor(self) -> RemoteBenchmarkExecutor:
        """The module's executor (kept open for every check)."""

    @abc.abstractmethod
    def fresh_executor(self) -> RemoteBenchmarkExecutor:
        """A cheap executor of this backend, for the lifecycle checks (it is closed by them)."""

    def record_start(self, job_id: str) -> None:
        with self._lock:
            self._started.append(job_id)

    def started(self) -> set[str]:
        """Job ids a worker has started (cancelled jobs never appear)."""
        with self._lock:
            return set(self._started)

    def spec(self, executor: RemoteBenchmarkExecutor | None = None) -> SessionSpec:
        executor = executor or self.executor
        self._sessions += 1
        digest = upload_args(executor.blob_store, list(ARGS)).digest
        ref = generated()
        return SessionSpec(f"contract-{self.name}-{self._sessions}", ref.entry_name, digest, ref, Tolerances(),
                           compile_timeout_s=JOB_TIMEOUT_S / 2, run_timeout_s=JOB_TIMEOUT_S / 2)

    def job(self, spec: SessionSpec, kind: str, job_id: str) -> BenchmarkJob:
        assert kind in KINDS, kind
        return BenchmarkJob(job_id, self.sources[kind], spec.args_digest, spec.baseline_digest, spec.tolerances,
                            spec.compile_timeout_s, spec.run_timeout_s, warmup_ms=0.5, rep_ms=3.0,
                            config={"kind": kind, "block_sizes": [16, 16]})

    def lose_worker_running(self, job_id: str) -> None:
        """Make the worker that runs ``job_id`` (an ``infra`` job) fail; backends whose fault hook does it pass."""

    def close(self) -> None:
        self.executor.close()


class FakeHarness(Harness):
    name = "fake"
    parallel = 2

    def make_executor(self) -> RemoteBenchmarkExecutor:
        from helion_remote.backends.fake import FakeExecutor, FaultRule

        def kind(name: str) -> Callable[[dict[str, object]], bool]:
            return lambda config: config.get("kind") == name

        def record(config: dict[str, object]) -> bool:
            self.record_start(str(config["job"]))
            return False  # selects nothing: it only sees every job a worker starts

        return FakeExecutor(seed=0, workers=self.parallel, latency_s=0.02, faults=[
            FaultRule("straggler", when=record),
            FaultRule("runtime_error", when=kind("raises")),
            FaultRule("accuracy_error", when=kind("wrong")),
            FaultRule("worker_crash", when=kind("infra"), attempts="all"),
            FaultRule("straggler", when=kind("slow"), slow_factor=25),
        ])

    def fresh_executor(self) -> RemoteBenchmarkExecutor:
        from helion_remote.backends.fake import FakeExecutor

        return FakeExecutor()

    def job(self, spec: SessionSpec, kind: str, job_id: str) -> BenchmarkJob:
        job = super().job(spec, kind, job_id)
        return dataclasses.replace(job, config={**job.config, "job": job_id})


class LocalHarness(Harness):
    name = "local"
    parallel = 2
    cheap_sessions = False

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self._running: dict[str, Any] = {}
        super().__init__()

    def make_executor(self) -> RemoteBenchmarkExecutor:
        from helion_remote.backends.local import LocalExecutor

        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("TRITON_INTERPRET", "1")  # the interpreter pool, GPU or not
            executor = LocalExecutor(cpu_workers=self.parallel, work_dir=self.work_dir / "module", timeout_margin_s=5.0)
        for handle in executor._devices:  # see which worker starts which job
            original = handle.run_job

            def run_job(spec: SessionSpec, job: BenchmarkJob, compile_time_s: float | None = None, *,
                        _original: Any = original, _handle: Any = handle) -> JobResult:
                self._running[job.job_id] = _handle
                self.record_start(job.job_id)
                return _original(spec, job, compile_time_s)

            handle.run_job = run_job
        return executor

    def fresh_executor(self) -> RemoteBenchmarkExecutor:
        from helion_remote.backends.local import LocalExecutor

        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("TRITON_INTERPRET", "1")
            return LocalExecutor(cpu_workers=1, work_dir=self.work_dir / "fresh")

    def lose_worker_running(self, job_id: str) -> None:
        """Kill the worker process while it runs ``job_id`` (SIGKILL, as the OOM killer would)."""
        assert settles(lambda: job_id in self.started(), 120), f"{job_id} never started"
        time.sleep(0.5)  # inside the kernel's first call (it sleeps 1 s per call)
        process = self._running[job_id]._process
        assert process is not None
        process.kill()


class ProcessBody:
    """A stand-in Modal container's body: the real ``ContainerWorker`` in a child process.

    The child runs under ``TRITON_INTERPRET=1`` from its first import (Triton
    cannot switch to the interpreter later in a process that loaded it).
    """

    def __init__(self, pool: str, blob_root: Path) -> None:
        from helion_remote.backends.modal.worker import BLOB_ROOT_ENV

        env = {**os.environ, "TRITON_INTERPRET": "1", BLOB_ROOT_ENV: str(blob_root),
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "container", pool],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=str(ROOT))
        self._lock = threading.Lock()

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_"):
            raise AttributeError(method)

        def call(*args: Any) -> Any:
            import modal.exception

            with self._lock:
                try:
                    pickle.dump((method, args), self.process.stdin)  # type: ignore[arg-type]
                    self.process.stdin.flush()  # type: ignore[union-attr]
                    status, value = pickle.load(self.process.stdout)  # type: ignore[arg-type]
                except (EOFError, BrokenPipeError, pickle.UnpicklingError) as error:
                    raise modal.exception.RemoteError(f"container process exited ({error!r})") from None
            if status == "raised":
                raise RuntimeError(value)
            return value

        return call

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.process.kill()
            self.process.wait(10)


def _container_main(pool: str) -> None:  # pragma: no cover - runs in the child
    """Serve ``ContainerWorker`` calls as pickles on stdin/stdout (worker prints go to stderr)."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    from helion_remote.backends.modal.worker import ContainerWorker

    worker = ContainerWorker(pool)
    while True:
        try:
            method, args = pickle.load(sys.stdin.buffer)
        except EOFError:
            return
        try:
            reply: tuple[str, Any] = ("ok", getattr(worker, method)(*args))
        except BaseException as error:  # noqa: BLE001 - Modal re-raises a worker's exception on get()
            reply = ("raised", f"{type(error).__name__}: {error}")
        pickle.dump(reply, out)
        out.flush()


class ModalHarness(Harness):
    name = "modal"
    parallel = 1

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.bodies: list[ProcessBody] = []
        self.servers: list[Any] = []
        super().__init__()

    def make_executor(self) -> RemoteBenchmarkExecutor:
        from test_modal_standin import StandInModal

        from helion_remote.backends.modal import ModalExecutor
        from helion_remote.backends.modal.settings import ModalSettings

        volume = self.work_dir / "volume"
        volume.mkdir(parents=True, exist_ok=True)

        def body(pool: str, container_id: str) -> ProcessBody:
            self.bodies.append(ProcessBody(pool, volume))
            return self.bodies[-1]

        self.server = StandInModal(volume, body_factory=body, fault=self._fault)
        # One container: jobs and re-timing share it, so the suite starts one child process.
        return ModalExecutor(_client=self.server, settings=ModalSettings(max_containers=1, print_cost=False))

    def _cancelled(self, job_id: str) -> bool:
        return any(method == "run_job" and call._item.args[1]["job_id"] == job_id and call.cancelled
                   for method, call in list(self.server.spawned))

    def _fault(self, method: str, args: tuple[Any, ...]) -> str | None:
        if method != "run_job":
            return None
        job = args[1]
        if self._cancelled(job["job_id"]):
            return "hang"  # Modal drops an input cancelled before a container took it
        self.record_start(job["job_id"])
        return "lose" if job["config"].get("kind") == "infra" else None

    def fresh_executor(self) -> RemoteBenchmarkExecutor:
        from test_modal_standin import StandInModal

        from helion_remote.backends.modal import ModalExecutor
        from helion_remote.backends.modal.settings import ModalSettings

        server = StandInModal(self.work_dir / "fresh-volume")  # cost-model containers: nothing to start
        self.servers.append(server)
        return ModalExecutor(_client=server, settings=ModalSettings(max_containers=1, print_cost=False))

    def close(self) -> None:
        for server in [self.server, *self.servers]:
            server.stop()
        super().close()
        for body in self.bodies:
            body.kill()


HARNESSES: dict[str, Callable[[Path], Harness]] = {
    "fake": lambda tmp: FakeHarness(),
    "local": LocalHarness,
    "modal": ModalHarness,
}


@pytest.fixture(scope="module", params=sorted(HARNESSES))
def harness(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    h = HARNESSES[request.param](tmp_path_factory.mktemp(f"contract-{request.param}"))
    try:
        yield h
    finally:
        h.close()


def settles(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@contextlib.contextmanager
def opened(harness: Harness) -> Iterator[RemoteSession]:
    """A session of the module's executor, closed after the check (the context manager is checked apart)."""
    session = harness.executor.open_session(harness.spec())
    try:
        yield session
    finally:
        session.close()


# ---------------------------------------------------------------------- the contract


def test_an_open_executor_declares_every_capability(harness: Harness) -> None:
    ex = harness.executor
    assert isinstance(ex, RemoteBenchmarkExecutor) and ex.name == harness.name and not ex.closed
    infos = ex.workers()
    assert infos and all(isinstance(i, WorkerInfo) and i.worker_id for i in infos)
    profile = ex.target_profile()
    assert profile is None or isinstance(profile, dict)
    assert isinstance(ex.suggested_codegen_workers(), int) and ex.suggested_codegen_workers() >= 0
    cost = ex.cost_report()
    assert cost is None or str(cost)
    assert ex.budget_exceeded() is False
    with ex.open_session(harness.spec()) as session:
        assert isinstance(session, RemoteSession) and not session.closed
        assert session.space_report is None or isinstance(session.space_report, dict)
        assert isinstance(type(session).spread_covers_batch_workers, bool)
    assert session.closed


def test_submit_starts_every_job_before_the_stream_is_read(harness: Harness) -> None:
    with opened(harness) as session:
        jobs = [harness.job(session.spec, kind, f"start-{kind}") for kind in ("ok", "ok2")]
        stream = session.submit(jobs)
        assert isinstance(stream, ResultStream) and iter(stream) is stream
        ids = {j.job_id for j in jobs}
        assert settles(lambda: ids <= harness.started(), 120), harness.started()  # nobody read the stream
        results = list(stream)
        assert sorted(r.job_id for r in results) == sorted(ids)  # one result per job, its own id
        assert all(r.ok and math.isfinite(r.perf_ms) and r.perf_ms > 0 for r in results), results
        assert all(r.kernel_digest == next(j.kernel.digest for j in jobs if j.job_id == r.job_id) for r in results)
        with pytest.raises(StopIteration):
            next(stream)


def test_failures_come_back_as_statuses(harness: Harness) -> None:
    with opened(harness) as session:
        kinds = ("ok", "raises", "wrong")
        results = {r.job_id: r for r in session.submit([harness.job(session.spec, k, f"fail-{k}") for k in kinds])}
        assert set(results) == {f"fail-{k}" for k in kinds}
        assert results["fail-ok"].ok, results["fail-ok"]
        assert results["fail-raises"].status == "error", results["fail-raises"]
        assert results["fail-wrong"].status == "accuracy_error", results["fail-wrong"]


def test_a_lost_worker_is_an_infra_error_and_the_pool_goes_on(harness: Harness) -> None:
    with opened(harness) as session:
        stream = session.submit([harness.job(session.spec, "infra", "infra-lost")])
        harness.lose_worker_running("infra-lost")
        (lost,) = list(stream)
        assert lost.job_id == "infra-lost" and lost.status == "infra_error", lost
        (after,) = list(session.submit([harness.job(session.spec, "ok", "infra-after")]))
        assert after.ok, after


def test_closing_a_stream_midway_cancels_the_jobs_not_yet_started(harness: Harness) -> None:
    with opened(harness) as session:
        n = 4 * harness.parallel
        ids = {f"cancel-{i}" for i in range(n)}
        submitted = time.monotonic()
        stream = session.submit([harness.job(session.spec, "slow", job_id) for job_id in sorted(ids)])
        first = next(stream)
        one_job_s = time.monotonic() - submitted
        assert first.job_id in ids
        stream.close()
        with pytest.raises(StopIteration):
            next(stream)  # nothing more comes out of a closed stream
        # Long enough for two more rounds of jobs to start had the rest not been cancelled.
        time.sleep(2.5 * one_job_s)
        started = harness.started() & ids
        assert len(started) <= 1 + 2 * harness.parallel < n, sorted(started)
        (after,) = list(session.submit([harness.job(session.spec, "ok", "cancel-after")]))
        assert after.ok, after


def test_retime_uses_one_worker_for_every_call_of_a_session(harness: Harness) -> None:
    with opened(harness) as session:
        kernels = [harness.sources["ok"], harness.sources["ok2"]]
        measured = list(session.submit([harness.job(session.spec, k, f"retime-{k}") for k in ("ok", "ok2")]))
        assert all(r.ok for r in measured), measured
        first = session.retime(kernels, warmup_ms=0.5, rep_ms=3.0, timeout_s=JOB_TIMEOUT_S)
        second = session.retime(kernels[::-1], warmup_ms=0.5, rep_ms=3.0, timeout_s=JOB_TIMEOUT_S)
        assert isinstance(first, RetimeResult) and first.worker_id and first.worker_id == second.worker_id
        assert [t.kernel_digest for t in first.timings] == [k.digest for k in kernels]
        assert [t.kernel_digest for t in second.timings] == [k.digest for k in kernels[::-1]]
        assert all(t.status == "ok" and math.isfinite(t.perf_ms) for t in (*first.timings, *second.timings))
        spread = session.retime_spread(kernels, warmup_ms=0.5, rep_ms=3.0, timeout_s=JOB_TIMEOUT_S)
        assert isinstance(spread, RetimeResult) and [t.kernel_digest for t in spread.timings] == [k.digest for k in kernels]


def test_a_closed_session_refuses_submit(harness: Harness) -> None:
    session = harness.executor.open_session(harness.spec())
    session.close()
    session.close()  # idempotent
    assert session.closed
    with pytest.raises(ExecutorClosedError):
        session.submit([harness.job(session.spec, "ok", "closed-session")])
    assert "closed-session" not in harness.started()


def test_a_closed_executor_refuses_new_sessions_and_jobs(harness: Harness) -> None:
    with harness.fresh_executor() as executor:
        assert not executor.closed
        spec = harness.spec(executor)
        if harness.cheap_sessions:
            session = executor.open_session(spec)
    assert executor.closed  # the context manager closed it
    executor.close()  # idempotent
    with pytest.raises(ExecutorClosedError):
        executor.open_session(spec)
    if harness.cheap_sessions:  # a session outlives its executor only as a closed one
        assert session.closed
        with pytest.raises(ExecutorClosedError):
            session.submit([harness.job(spec, "ok", "closed-executor")])
    with pytest.raises(ExecutorClosedError):
        with executor:
            pass


if __name__ == "__main__" and sys.argv[1:2] == ["container"]:
    _container_main(sys.argv[2])
