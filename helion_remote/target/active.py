"""Which target profile, if any, this process is emulating.

Kept apart from :mod:`.emulate` (coordinator side) so the worker-safe space
report can label what it measured without importing the emulation machinery:
on a worker the stack is always empty.
"""

from __future__ import annotations

from helion_remote.target.profile import TargetProfile

ACTIVE: list[TargetProfile] = []
"""Entered emulations, innermost last; only :mod:`.emulate` pushes and pops."""


def active_profile() -> TargetProfile | None:
    """The profile being emulated in this process, if any."""
    return ACTIVE[-1] if ACTIVE else None


__all__ = ["ACTIVE", "active_profile"]
