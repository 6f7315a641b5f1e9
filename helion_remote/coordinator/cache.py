"""``RemoteAutotuneCache``: Helion's cache layer, so its best-of-K trial loop measures remotely."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from helion.autotuner.base_cache import AutotuneCacheBase, CacheKeyBase

from helion_remote.coordinator import _helion_compat
from helion_remote.coordinator.adapter import remote_mode
from helion_remote.coordinator.run_context import RemoteContext
from helion_remote.coordinator.seam import bind_provider


@dataclasses.dataclass(frozen=True)
class _RemoteCacheKey(CacheKeyBase):
    kernel_name: str
    args_digest: str
    target_fingerprint: str | None


class RemoteAutotuneCache(AutotuneCacheBase):
    """Helion's cache layer with remote benchmarking switched on.

    Running Helion's own best-of-K trial loop (``autotune_best_of_k``) inside
    :func:`remote_mode` means every trial and the rebench round measure
    remotely.  It reads nothing (``get`` is a miss): a result store keyed by
    target lives outside Helion's per-host cache.
    """

    def __init__(self, autotuner: Any, *, autotuner_factory: Any = None, context: RemoteContext) -> None:
        super().__init__(autotuner, autotuner_factory=autotuner_factory)
        self.context = context
        self.provider_cls = bind_provider(context)
        _helion_compat.use_benchmark_provider(autotuner, self.provider_cls)
        self.selected: Any = None

    def autotune(self, *, skip_cache: bool = False) -> Any:
        with remote_mode(self.provider_cls, str(self.kernel.settings.autotune_effort)):
            return super().autotune(skip_cache=True)

    def get(self) -> Any:
        return None

    def put(self, config: Any) -> None:
        self.selected = config

    def _get_cache_key(self) -> CacheKeyBase:
        target = self.context.target
        return _RemoteCacheKey(self.kernel.kernel.name, self.context.args_digest,
                               None if target is None else target.fingerprint)

    def _list_cache_entries(self) -> Sequence[tuple[str, CacheKeyBase]]:
        return []
