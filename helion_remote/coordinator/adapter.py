"""Plugging the remote provider into Helion's searches, whichever builds them.

``remote_mode`` patches the default of ``BaseSearch.__init__``'s
``benchmark_provider_cls`` for the duration of a run, so every search built
inside it uses the remote provider: the one the user picked, best-of-K
trials, the best-of-K rebench round and nested stages.  It also asks for
isolated final re-timing wherever Helion would otherwise time finalists in
the coordinator process.  The patch is process-global: run one remote
autotune at a time per process (a lock enforces it).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from unittest import mock

from helion_remote.coordinator import _helion_compat as compat
from helion_remote.coordinator.seam import RemoteBenchmarkProvider
from helion_remote.environ import patched_environ
from helion_remote.errors import ConfigurationError

_RUN_LOCK = threading.RLock()
LLM_ALGORITHMS = ("LLMGuidedSearch", "LLMSeededSearch", "LLMSeededLFBOTreeSearch")


class UnknownAlgorithmError(ConfigurationError):
    pass


def algorithm_names() -> list[str]:
    from helion.autotuner import search_algorithms

    return list(search_algorithms)


def resolve_algorithm(name: str | None) -> type:
    """``name``, else ``$HELION_AUTOTUNER``, else Helion's default (LFBOTreeSearch)."""
    from helion.autotuner import LFBOTreeSearch, search_algorithms

    chosen = name or os.environ.get("HELION_AUTOTUNER") or None
    if chosen is None:
        return LFBOTreeSearch
    cls = search_algorithms.get(chosen)
    if cls is None:
        source = "algorithm" if name else "$HELION_AUTOTUNER"
        raise UnknownAlgorithmError(
            f"unknown {source} {chosen!r}; valid algorithms: {', '.join(search_algorithms)}"
        )
    return cls


@contextlib.contextmanager
def remote_mode(provider_cls: type[RemoteBenchmarkProvider], effort: str = "full") -> Iterator[None]:
    """Route every Helion search built inside this block to ``provider_cls``."""
    with _RUN_LOCK, contextlib.ExitStack() as stack:
        target, attribute = compat.provider_default_patch_target()
        stack.enter_context(mock.patch.object(target, attribute, (provider_cls,)))
        if not (effort == "full" and compat.HAS_FINAL_SELECTION):
            # Single-pass final verification would time finalists in-process;
            # ask for isolated re-timing, which the provider sends to one worker.
            # Only this key is restored afterwards: worker start-up threads set others meanwhile.
            stack.enter_context(patched_environ({compat.FINAL_REBENCHMARK_ISOLATED_ENV: "1"}))
        yield


def search_factory(bound: Any, args: Sequence[object], algorithm: type, **kwargs: object) -> Callable[[], Any]:
    """Build searches the way Helion's ``default_autotuner_fn`` does (profile kwargs)."""
    from helion.autotuner.effort_profile import get_effort_profile

    profile = get_effort_profile(bound.settings.autotune_effort)
    parameters = inspect.signature(algorithm.__init__).parameters
    valid = [name for name in parameters if name not in ("self", "kernel", "args")]
    for key in kwargs:
        if key not in parameters:
            raise TypeError(
                f"{algorithm.__name__} has no option {key!r}; valid options: {', '.join(valid)}"
            )
    merged = dict(kwargs)
    for key, value in algorithm.get_kwargs_from_profile(profile, bound.settings).items():
        if key not in merged and key in parameters:
            merged[key] = value

    def factory() -> Any:
        return algorithm(bound, args, **merged)

    return factory
