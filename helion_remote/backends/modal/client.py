"""The seam between the Modal backend and Modal's servers.

Like an HTTP client's transport: :class:`ModalExecutor` talks to an object
with the *shape of the ``modal`` module* (``Cls.from_name``,
``Volume.from_name``, ``exception``), plus two helpers that are not plain
attribute look-ups (the credential check and the ephemeral app).  In
production that object is :class:`RealModalClient`, a thin pass-through to
the installed ``modal`` package; tests pass an in-process stand-in that
records every call, so each call can be checked against the real client's
signatures.  Nothing else in the backend touches ``modal``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol


class ModalClient(Protocol):
    """What the executor uses; every attribute mirrors the ``modal`` package."""

    Cls: Any
    """``modal.Cls``: ``from_name(app, name, environment_name=)`` -> lazy Cls (``hydrate()``, ``with_options()``)."""
    Volume: Any
    """``modal.Volume``: ``from_name(name, environment_name=, create_if_missing=)``."""
    exception: Any
    """``modal.exception``: the error classes the executor maps."""

    def credentials_present(self) -> bool:
        """True when a Modal token (or OAuth credentials) is configured: no network."""
        ...

    def ephemeral_worker(self, *, environment_name: str | None) -> contextlib.AbstractContextManager[Any]:
        """Run ``modal_app.app`` for the duration of the context; yields its ``Worker`` Cls."""
        ...


CREDENTIAL_KEYS = ("token_id", "token_secret")
OAUTH_KEYS = ("oauth_refresh_token", "oauth_client_id")


class RealModalClient:
    """The installed ``modal`` package, imported on first use."""

    def __init__(self) -> None:
        try:
            import modal
        except ImportError as error:
            raise ImportError(
                "the Modal backend needs the Modal client: pip install 'helion-remote[modal]' (or pip install modal)"
            ) from error
        self._modal = modal
        self.Cls = modal.Cls
        self.Volume = modal.Volume
        self.exception = modal.exception

    def credentials_present(self) -> bool:
        """Modal's own config resolution (env vars > profile), read offline."""
        config = self._modal.config.config
        if all(config.get(key) for key in CREDENTIAL_KEYS):
            return True
        return all(config.get(key) for key in OAUTH_KEYS)

    @contextlib.contextmanager
    def ephemeral_worker(self, *, environment_name: str | None) -> Iterator[Any]:
        from helion_remote.backends.modal import app as modal_app

        with modal_app.app.run(environment_name=environment_name):
            yield modal_app.Worker
