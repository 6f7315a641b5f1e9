"""The Modal app: image, GPU worker class, deploy target.

``modal deploy -m helion_remote.backends.modal.app`` or
``helion-remote modal deploy``.  The image pins the helion, torch and triton
versions of the machine that builds it (generated code must run under the
Helion that generated it) and carries helion_remote's own code as a mounted
Python source.  GPU type, container cap, timeouts and the blob Volume are
applied per run by the coordinator with ``Cls.with_options``, so one
deployment serves any settings; the decorator values below are defaults.

The worker class's methods are ``ping`` (the version handshake) plus one
method per worker operation, generated from
:data:`~helion_remote.worker.service.OPERATIONS` (with the argument names of
:data:`~helion_remote.backends.modal.wire.WIRE_OPS`), each forwarding to
:meth:`ContainerWorker.call`: the list of operations exists once.

Imported only by the Modal backend and the CLI: the core never imports
``modal``.
"""

# No ``from __future__ import annotations`` here: Modal reads the class's
# ``modal.parameter`` annotations as real types, not strings.

import inspect
import platform
from collections.abc import Callable
from typing import Any

import modal

from helion_remote.backends.modal.settings import WORKER_CLS_NAME, ModalSettings
from helion_remote.backends.modal.wire import WIRE_OPS
from helion_remote.backends.modal.versions import versions
from helion_remote.backends.modal.worker import ContainerWorker
from helion_remote.worker.service import OPERATIONS

SETTINGS = ModalSettings.from_env()
VERSIONS = versions()


def image_pins(found: dict[str, str] | None = None) -> list[str]:
    """``torch==X``, ``triton==Y``, ``helion==Z`` from this machine (local tags like ``+cpu`` dropped)."""
    found = found or VERSIONS
    pins = []
    for package in ("torch", "triton", "helion"):
        if found.get(package, "missing") != "missing":
            pins.append(f"{package}=={found[package]}")
    if not any(p.startswith("helion==") for p in pins):
        raise RuntimeError("helion is not installed here; the worker image must pin the coordinator's helion")
    return pins


def python_version() -> str:
    return ".".join(platform.python_version_tuple()[:2])


def build_image() -> modal.Image:
    return (
        modal.Image.debian_slim(python_version=python_version())
        .uv_pip_install(*image_pins())
        .env({"HELION_AUTOTUNE_PROGRESS_BAR": "0"})
        .add_local_python_source("helion_remote", ignore=["**/__pycache__/**", "**/*.pyc"])  # + profiles/*.json
    )


def worker_options(settings: ModalSettings) -> dict[str, Any]:
    """``@app.cls`` keyword arguments (checked against ``modal.App.cls`` in tests)."""
    return {
        "gpu": settings.gpu,
        "max_containers": settings.job_containers,
        "scaledown_window": settings.scaledown_window_s,
        "startup_timeout": settings.startup_timeout_s,
        "timeout": settings.session_load_s + 120,
        "cpu": settings.cpu,
        "memory": settings.memory_mib,
    }


app = modal.App(SETTINGS.app_name, image=build_image())


def _reload_volume(name: str, environment: str | None) -> None:
    if name:
        modal.Volume.from_name(name, environment_name=environment).reload()


def _stop_container() -> None:
    if not modal.is_local():
        modal.experimental.stop_fetching_inputs()


def _forwarder(name: str) -> Callable[..., dict[str, Any]]:
    """The Modal method for worker operation ``name``: ``(self, session, *wire args)``."""

    def method(self: Any, session: dict[str, Any] | None = None, *args: Any) -> dict[str, Any]:
        return self.core.call(name, session, *args)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"Worker operation {name!r} (helion_remote.worker.service.OPERATIONS)."
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    wire_params = WIRE_OPS[name].wire_params
    params = [inspect.Parameter("self", positional),
              inspect.Parameter("session", positional, **({} if wire_params else {"default": None}))]
    params += [inspect.Parameter(p, positional) for p in wire_params]
    method.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return method


class Worker:
    """One GPU container.  ``pool`` separates the job pool from a session's re-timing container."""

    pool: str = modal.parameter(default="jobs")

    @modal.enter()
    def start(self) -> None:
        self.core = ContainerWorker(self.pool, reload_volume=_reload_volume, stop_container=_stop_container)

    @modal.method()
    def ping(self) -> dict[str, Any]:
        return self.core.ping()


for _name in OPERATIONS:
    setattr(Worker, _name, modal.method()(_forwarder(_name)))
Worker = app.cls(**worker_options(SETTINGS))(Worker)  # type: ignore[misc]  # methods first: Modal reads them here


assert Worker.__name__ == WORKER_CLS_NAME
