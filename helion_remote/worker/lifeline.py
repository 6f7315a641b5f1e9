"""The lifeline between a worker process and the coordinator, both ways.

Child side, :func:`die_with_parent`: a worker hung in a job (or a codegen
process) must not outlive a coordinator that was SIGKILLed; on a GPU it would
hold the device.  Two mechanisms, because neither covers everything:

- Linux ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the kernel kills the child when
  its parent goes, even while the child's Python is stuck in C code holding
  the GIL.  The "parent" is the *thread* that created the child, so children
  are started from one long-lived thread (:func:`~helion_remote.worker.launch.start_process`);
  a forkserver child's parent is the forkserver, which exits when the
  coordinator does.
- A daemon watchdog thread (every platform, macOS included): polls
  ``os.getppid()`` against the parent seen at start and whether the
  coordinator pid still exists, and SIGKILLs the child's process group when
  either changed.  It needs the GIL, so a kernel holding it delays the
  watchdog; prctl does not.

Parent side, :func:`process_state`: the one-letter state of a process, so the
parent can tell a stopped worker (``T``: SIGSTOP, a debugger) from one that is
merely busy (see :mod:`~helion_remote.worker.pipe`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1
WATCH_INTERVAL_S = 0.5
"""How often the watchdog looks at the parent (it matters only where prctl is missing)."""


def die_with_parent(coordinator_pid: int) -> bool:
    """Arrange for this process to die when the coordinator dies; call first thing in a child.

    Returns whether the kernel will deliver the signal (prctl present).  If the
    coordinator is already gone (it died before prctl took effect), exits now.
    """
    parent = os.getppid()
    armed = _set_parent_death_signal()
    if not _parent_alive(parent, coordinator_pid):  # the race: the parent died before prctl
        _die()
    threading.Thread(target=_watch, args=(parent, coordinator_pid), daemon=True,
                     name="helion-remote-lifeline").start()
    return armed


def _set_parent_death_signal() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _parent_alive(parent: int, coordinator_pid: int) -> bool:
    """The parent seen at start is still our parent, and the coordinator exists."""
    if os.getppid() != parent:
        return False
    try:
        os.kill(coordinator_pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else (pid reused): treat as gone
        return False
    return True


def _watch(parent: int, coordinator_pid: int) -> None:
    while _parent_alive(parent, coordinator_pid):
        time.sleep(WATCH_INTERVAL_S)
    _die()


def _die() -> None:
    """SIGKILL our process group if we lead one (workers call setsid: compilers go too), else ourselves."""
    if os.getpgrp() == os.getpid():
        with contextlib.suppress(OSError):
            os.killpg(os.getpid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------- parent side


def process_state(pid: int) -> str | None:
    """The process's state letter (``R``, ``S``, ``D``, ``T`` stopped, ``t`` traced, ``Z``), None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
        return stat[stat.rindex(")") + 2]  # the name in parentheses may contain spaces
    except FileNotFoundError:
        return None if os.path.isdir("/proc/self") else _ps_state(pid)
    except (OSError, ValueError, IndexError):
        return None


def _ps_state(pid: int) -> str | None:
    """Where there is no /proc (macOS): ``ps`` reports the same letters."""
    try:
        out = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    state = out.stdout.strip()
    return state[0] if state else None


def stopped(pid: int) -> bool:
    """The process is stopped (SIGSTOP/SIGTSTP) or stopped by a tracer: it cannot answer."""
    return process_state(pid) in ("T", "t")
