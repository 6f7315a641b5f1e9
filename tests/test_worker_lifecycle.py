"""Worker processes and their coordinator, with real processes and real signals:
workers die with a SIGKILLed coordinator, a stopped worker is lost (not a
timeout), and a worker that cannot start is one warning line.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helion_remote.worker.lifeline import process_state

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

COORDINATOR = r"""
import json, sys, time
sys.path.insert(0, {tests!r})
from multiprocessing import forkserver
from helion_remote.argcodec import upload_args
from helion_remote.backends.local import LocalExecutor
from helion_remote.coordinator.codegen_pool import start_codegen_pool
from helion_remote.protocol import BenchmarkJob, KernelSource, SessionSpec, Tolerances
from kernels import add_inplace, add_inplace_args

args = add_inplace_args()
ex = LocalExecutor(cpu_workers=2, work_dir=sys.argv[1], timeout_margin_s=2.0)
bound = add_inplace.bind(args)
ref = KernelSource(bound.to_triton_code(bound.config_spec.default_config()), bound.kernel.name)
session = ex.open_session(SessionSpec("die", ref.entry_name, upload_args(ex.blob_store, list(args)).digest,
                                      ref, Tolerances()))
hang = KernelSource("import time\ndef add_inplace(x, y):\n    time.sleep(600)\n", ref.entry_name)
jobs = [BenchmarkJob(job_id=f"hang{{i}}", kernel=hang, args_digest=session.spec.args_digest,
                     baseline_digest=session.spec.baseline_digest, tolerances=session.spec.tolerances,
                     compile_timeout_s=300.0, run_timeout_s=300.0, warmup_ms=0.5, rep_ms=3.0) for i in range(2)]
stream = session.submit(jobs)
pool = start_codegen_pool(add_inplace, bound, args, {{}}, None, 1)  # forks from the workers' forkserver
assert pool is not None and pool.wait_ready(120) and pool.size == 1
time.sleep(2.0)  # both workers are inside the hanging job by now
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
        assert {"local-" in w for w in pids} >= {True} and "codegen" in pids
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
