"""A throttled one-line progress report for long batches on remote workers."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressLine:
    """Prints ``[helion-remote] <desc>: done/total`` at most every ``interval_s``.

    On a terminal the line is rewritten in place; in logs it prints a line
    per report, so CI logs show progress without flooding.
    """

    def __init__(self, stream: TextIO | None = None, interval_s: float = 2.0) -> None:
        self.stream = stream or sys.stderr
        self.interval_s = interval_s
        self._last = 0.0

    def __call__(self, message: str, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < self.interval_s:
            return
        self._last = now
        tty = getattr(self.stream, "isatty", lambda: False)()
        end = ("\n" if final else "\r") if tty else "\n"
        self.stream.write(f"[helion-remote] {message}{end}")
        self.stream.flush()
