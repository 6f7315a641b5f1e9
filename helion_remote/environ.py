"""Environment changes around process starts that never clobber another thread's.

Worker, forkserver and codegen-pool starts run in background threads while a
search sets its own variables; restoring the whole environment afterwards once
erased Helion's final-rebenchmark setting mid-search.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def patched_environ(values: dict[str, str]) -> Iterator[None]:
    """Set ``values`` in ``os.environ`` for the block, then restore exactly those keys.

    Only the keys set here are put back (never the whole environment), so a
    variable another thread sets meanwhile (``mock.patch.dict`` in a search) survives.
    """
    previous = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def adopt_environ(environ: dict[str, str]) -> None:
    """In a child: take the parent's environment as it was at start (a forkserver child
    would otherwise inherit the server's, frozen when the server started)."""
    os.environ.clear()
    os.environ.update(environ)
