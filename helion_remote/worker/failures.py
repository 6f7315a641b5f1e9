"""How the worker names a candidate's failure: status, fatality, message and traceback.

Helion's policy decides what a failure means (``raise`` stops the search; a
sticky CUDA error poisons the process); this module applies it once, so a
job, a compile and a re-timing report the same failure the same way.
"""

from __future__ import annotations

import dataclasses

from helion_remote.protocol import Status, clip_message, format_traceback
from helion_remote.worker import _helion_worker_compat as hc


@dataclasses.dataclass
class KernelFailure(Exception):
    """A classified failure of the candidate itself (raised inside the runtime, returned as a value)."""

    status: Status
    message: str
    error_class: str
    fatal: bool = False
    compile_time_s: float | None = None
    traceback: str | None = None


def describe(error: BaseException, captured: str = "") -> str:
    """``Type: message`` plus what the kernel printed, cut to the one message limit."""
    text = f"{type(error).__qualname__}: {error}"
    if captured.strip():
        text += f"\n--- captured output ---\n{captured.strip()}"
    return clip_message(text)


def classify(error: BaseException, captured: str = "", *, interpreter: bool) -> tuple[KernelFailure, bool]:
    """The failure, and whether it left the device unusable (the process must be replaced).

    Under the Triton interpreter only code that cannot load (syntax or import
    errors) is fatal: the interpreter rejects some configs a GPU compiles (its
    own limitations), so a run failure there says nothing about the kernel
    and the config is only skipped.
    """
    sticky = bool(hc.match_unrecoverable_runtime_error(error))
    try:
        action = hc.classify_triton_exception(error)
    except Exception:  # pragma: no cover - classification must never lose a job
        action = "raise"
    fatal = action == "raise" and (not interpreter or isinstance(error, (SyntaxError, ImportError)))
    failure = KernelFailure("error", describe(error, captured), type(error).__qualname__, fatal=fatal,
                            traceback=format_traceback(error))
    return failure, sticky
