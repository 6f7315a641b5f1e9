"""Deploy path kept from earlier releases: ``modal deploy -m helion_remote.backends.modal_app``.

The app lives in :mod:`helion_remote.backends.modal.app`; ``helion-remote modal deploy``
is the documented command.
"""

from helion_remote.backends.modal.app import Worker, app

__all__ = ["Worker", "app"]
