"""Worker processes and their coordinator, with real processes and real signals:
workers die with a SIGKILLed coordinator, a stopped worker is lost (not a
timeout), and a worker that cannot start is one warning line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helion_remote.argcodec import upload_args
from helion_remote.backends.local import LocalExecutor
from helion_remote.protocol import BenchmarkJob, KernelSource, SessionSpec, Tolerances
from helion_remote.worker.lifeline import process_state

from kernels import add_inplace, add_inplace_args

pytestmark = pytest.mark.filterwarnings("ignore:helion_remote local backend")

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

COORDINATOR = r"""
import json, pathlib, sys, time
sys.path.insert(0, {tests!r})
from multiprocessing import forkserver
from helion_remote.argcodec import upload_args
from helion_remote.backends.local import LocalExecutor
from helion_remote.coordinator.codegen_pool import start_codegen_pool
from helion_remote.protocol import BenchmarkJob, KernelSource, SessionSpec, Tolerances
from kernels import add_inplace, add_inplace_args

args = add_inplace_args()
ex = LocalExecutor(cpu_workers=1, work_dir=sys.argv[1], timeout_margin_s=2.0)
bound = add_inplace.bind(args)
ref = KernelSource(bound.to_triton_code(bound.config_spec.default_config()), bound.kernel.name)
session = ex.open_session(SessionSpec("die", ref.entry_name, upload_args(ex.blob_store, list(args)).digest,
                                      ref, Tolerances()))
mark = pathlib.Path(sys.argv[1]) / "hanging"
# Hung in C with the GIL held (PyDLL keeps it): the watchdog thread cannot run, the parent-death signal must.
hang = KernelSource(f"import ctypes, pathlib\ndef add_inplace(x, y):\n    pathlib.Path({{str(mark)!r}}).touch()\n"
                    "    ctypes.PyDLL(None).sleep(600)\n", ref.entry_name)
jobs = [BenchmarkJob(job_id=f"hang{{i}}", kernel=hang, args_digest=session.spec.args_digest,
                     baseline_digest=session.spec.baseline_digest, tolerances=session.spec.tolerances,
                     compile_timeout_s=300.0, run_timeout_s=300.0, warmup_ms=0.5, rep_ms=3.0) for i in range(1)]
stream = session.submit(jobs)
pool = start_codegen_pool(add_inplace, bound, args, {{}}, None, 1)  # forks from the workers' forkserver
assert pool is not None and pool.wait_ready(120) and pool.size == 1
while not mark.exists():  # the worker is inside the hanging job
    time.sleep(0.05)
pids = {{h.worker_id: h._process.pid for h in ex._devices}}
pids["codegen"] = pool._members[0].process.pid
if forkserver._forkserver._forkserver_pid:
    pids["forkserver"] = forkserver._forkserver._forkserver_pid
print(json.dumps(pids), flush=True)
time.sleep(600)
"""


def dead(pid: int) -> bool:
    """Gone, or a zombie nobody has reaped yet (it holds nothing)."""
    return process_state(pid) in (None, "Z", "X")


def test_workers_and_codegen_processes_die_with_a_sigkilled_coordinator(tmp_path: Path) -> None:
    script = tmp_path / "coordinator.py"
    script.write_text(COORDINATOR.format(tests=str(TESTS)))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    env.pop("HELION_REMOTE_WORKER_START", None)
    coordinator = subprocess.Popen([sys.executable, str(script), str(tmp_path / "work")], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids: dict[str, int] = {}
    try:
        line = coordinator.stdout.readline()  # type: ignore[union-attr]
        assert line, coordinator.stderr.read()  # type: ignore[union-attr]
        pids = json.loads(line)
        assert any(w.startswith("local-") for w in pids) and "codegen" in pids and "forkserver" in pids
        assert all(not dead(pid) for pid in pids.values()), pids
        coordinator.send_signal(signal.SIGKILL)
        coordinator.wait(10)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and not all(dead(pid) for pid in pids.values()):
            time.sleep(0.1)
        alive = {name: pid for name, pid in pids.items() if not dead(pid)}
        assert not alive, f"outlived the SIGKILLed coordinator: {alive}"
    finally:
        coordinator.kill()
        coordinator.wait(10)
        for pid in pids.values():  # never leak a hung worker from a failed run
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------- stopped vs slow

ADD = "    x.add_(y)\n    return x\n"
"""A correct kernel body (``add_inplace``)."""
JOB_TIMEOUT_S = 8.0
"""compile + run limit of the jobs below; the margin is 2 s, so a job is cut off at 10 s."""


def reference() -> KernelSource:
    bound = add_inplace.bind(add_inplace_args())
    return KernelSource(bound.to_triton_code(bound.config_spec.default_config()), bound.kernel.name)


def open_session(ex: LocalExecutor, name: str) -> object:
    ref = reference()
    digest = upload_args(ex.blob_store, list(add_inplace_args())).digest
    return ex.open_session(SessionSpec(name, ref.entry_name, digest, ref, Tolerances()))


def job(session: object, body: str, job_id: str) -> BenchmarkJob:
    """A job whose kernel is ``body`` (Python, indented 4) under the reference's entry name."""
    spec = session.spec  # type: ignore[attr-defined]
    kernel = KernelSource(f"import ctypes, pathlib, time\ndef add_inplace(x, y):\n{body}", spec.reference.entry_name)
    return BenchmarkJob(job_id=job_id, kernel=kernel, args_digest=spec.args_digest,
                        baseline_digest=spec.baseline_digest, tolerances=spec.tolerances,
                        compile_timeout_s=JOB_TIMEOUT_S / 2, run_timeout_s=JOB_TIMEOUT_S / 2,
                        warmup_ms=0.5, rep_ms=3.0)


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalExecutor]:
    ex = LocalExecutor(cpu_workers=1, work_dir=tmp_path_factory.mktemp("lifecycle"), timeout_margin_s=2.0)
    yield ex
    ex.close()


def wait_for(path: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"the kernel never started ({path})"
        time.sleep(0.05)


def test_a_stopped_worker_is_lost_not_a_timeout_and_is_replaced(executor: LocalExecutor, tmp_path: Path) -> None:
    session = open_session(executor, "stopped")
    (handle,) = executor._devices
    restarts = handle.restarts
    mark = tmp_path / "started"
    hang = job(session, f"    pathlib.Path({str(mark)!r}).touch()\n    time.sleep(60)\n", "stop")
    stream = session.submit([hang])  # type: ignore[attr-defined]
    wait_for(mark)
    pid = handle._process.pid  # type: ignore[union-attr]
    stopped_at = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        (result,) = list(stream)
    finally:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGCONT)
    assert result.status == "infra_error", result  # retried elsewhere by the coordinator, not the kernel's fault
    assert "stopped" in (result.error_message or "")
    assert time.monotonic() - stopped_at < JOB_TIMEOUT_S  # before the job's deadline
    assert handle.restarts == restarts + 1 and dead(pid)
    (after,) = list(session.submit([job(session, ADD, "after")]))  # type: ignore[attr-defined]
    assert after.ok, after


def test_a_kernel_holding_the_gil_past_its_limit_is_still_a_timeout(executor: LocalExecutor) -> None:
    """No heartbeat either (the GIL is held in C), but the process runs: the kernel's fault."""
    session = open_session(executor, "gil")
    started = time.monotonic()
    body = "    ctypes.PyDLL(None).sleep(30)\n"  # PyDLL keeps the GIL through the C call
    (result,) = list(session.submit([job(session, body, "gil")]))  # type: ignore[attr-defined]
    assert result.status == "timeout", result
    assert time.monotonic() - started >= JOB_TIMEOUT_S


# ---------------------------------------------------------------------- a worker that cannot start


def test_a_worker_that_cannot_start_is_one_warning_and_the_others_carry_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    thread_errors: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", thread_errors.append)
    ex = LocalExecutor(cpu_workers=2, work_dir=tmp_path, timeout_margin_s=2.0)
    try:
        bad = ex._devices[1]
        bad.spec = dataclasses.replace(bad.spec, env=(("HELION_REMOTE_CPU_MAX_REPS", "not-a-number"),))
        with caplog.at_level(logging.WARNING):
            infos = ex.workers()
        assert [i.worker_id for i in infos] == [ex._devices[0].worker_id] != [bad.worker_id]
        session = open_session(ex, "survivors")
        results = list(session.submit([job(session, ADD, f"j{i}") for i in range(3)]))  # type: ignore[attr-defined]
        assert all(r.ok and r.worker_id == infos[0].worker_id for r in results), results
    finally:
        ex.close()
    assert thread_errors == [], [str(e.exc_value) for e in thread_errors]
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and bad.worker_id in r.getMessage()]
    assert len(lines) == 1 and "not-a-number" in lines[0], lines


def test_a_compile_worker_that_cannot_start_leaves_the_pipeline(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Else every job's compile would try to start it again (a spawn, up to ``start_timeout_s``, each)."""
    from helion_remote.worker.process import WorkerHandle

    ex = LocalExecutor(cpu_workers=1, work_dir=tmp_path, timeout_margin_s=2.0)
    try:
        (device,) = ex._devices
        broken = WorkerHandle(dataclasses.replace(device.spec, worker_id="local-compile-broken",
                                                  env=(("HELION_REMOTE_CPU_MAX_REPS", "not-a-number"),)))
        starts: list[float] = []
        real_start = broken.start

        def counted_start() -> object:  # the real start, counted
            starts.append(time.monotonic())
            return real_start()

        monkeypatch.setattr(broken, "start", counted_start)
        ex._pipeline.compilers.append(broken)
        ex._handles.append(broken)
        with caplog.at_level(logging.WARNING):
            session = open_session(ex, "no-compiler")
            for i in range(4):
                (result,) = list(session.submit([job(session, ADD, f"c{i}")]))  # type: ignore[attr-defined]
                assert result.ok and result.worker_id == device.worker_id, result
        assert ex._compilers == []
        assert len(starts) <= 3, f"a broken compile worker started {len(starts)} times"
    finally:
        ex.close()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and broken.worker_id in r.getMessage()]
    assert len(lines) == 1 and "not-a-number" in lines[0], lines


WATCHED_CHILD = r"""
import sys, time
from helion_remote.worker import lifeline
lifeline._set_parent_death_signal = lambda: False  # as on macOS: the watchdog thread alone
lifeline.die_with_parent(int(sys.argv[1]))
print("armed", flush=True)
time.sleep(60)
"""

PARENT = r"""
import subprocess, sys, os
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid())], stdout=subprocess.PIPE, text=True)
assert child.stdout.readline().strip() == "armed"
print(child.pid, flush=True)
child.wait()
"""


def test_without_prctl_the_watchdog_kills_a_child_whose_parent_died() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, WATCHED_CHILD], env=env, stdout=subprocess.PIPE, text=True)
    child = 0
    try:
        child = int(parent.stdout.readline())  # type: ignore[union-attr]
        assert not dead(child)
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and not dead(child):
            time.sleep(0.05)
        assert dead(child), "the watchdog did not notice its parent had gone"
    finally:
        parent.kill()
        parent.wait(10)
        if child:
            with contextlib.suppress(OSError):
                os.kill(child, signal.SIGKILL)


def test_a_compile_is_cut_at_the_jobs_compile_timeout_like_stock_helion(executor: LocalExecutor) -> None:
    """Stock Helion kills a precompile ``autotune_compile_timeout`` s after it starts; the margin
    (here 2 s, by default 10 s) is for the run, not the compile (a 30 s compile limit once took 40 s)."""
    (handle,) = executor._devices
    session = open_session(executor, "compile-limit")
    slow = dataclasses.replace(job(session, ADD, "slow-compile"), compile_timeout_s=1.0)
    slow = dataclasses.replace(slow, kernel=KernelSource("import time\ntime.sleep(30)\n" + slow.kernel.module_source,
                                                          slow.kernel.entry_name))
    started = time.monotonic()
    outcome = handle.compile(session.spec, slow)  # type: ignore[attr-defined]
    took = time.monotonic() - started
    assert outcome.status == "timeout", outcome
    assert took < 1.0 + 1.5, f"the compile was cut after {took:.1f}s, not at its 1 s limit"
