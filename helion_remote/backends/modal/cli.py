"""``helion-remote modal ...``: deploy, check and inspect the Modal backend.

``deploy`` deploys the worker app (built from this machine's
helion/torch/triton), ``check`` looks the deployment up the way the executor
does, ``settings`` prints the effective settings and their environment
variables.  The ``modal`` SDK is imported only inside these commands, so
building the parser (``helion-remote --help``) never needs it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

HELP = "the Modal backend"


def _modal_settings(args: argparse.Namespace) -> object:
    from helion_remote.backends.modal.settings import ModalSettings

    return ModalSettings.from_env(
        gpu=args.gpu, max_containers=args.max_containers, app_name=args.app_name,
        volume_name=args.volume_name, environment=args.environment,
    )


def _export(settings: object) -> None:
    """``modal_app`` reads its settings from the environment at import: pass ours on."""
    from helion_remote.backends.modal.settings import ENV_VARS

    for name, var in ENV_VARS.items():
        value = getattr(settings, name)
        if value is not None:
            os.environ[var] = str(value)


def _credentials_or_exit() -> bool:
    from helion_remote.backends.modal.executor import MISSING_CREDENTIALS
    from helion_remote.backends.modal.client import RealModalClient

    if not RealModalClient().credentials_present():
        print(f"error: {MISSING_CREDENTIALS}", file=sys.stderr)
        return False
    return True


def modal_deploy(args: argparse.Namespace) -> int:
    settings = _modal_settings(args)
    if not _credentials_or_exit():
        return 2
    _export(settings)
    import modal

    from helion_remote.backends.modal import app as modal_app

    print(f"deploying {settings.app_name!r} (helion {modal_app.VERSIONS['helion']}, torch "  # type: ignore[attr-defined]
          f"{modal_app.VERSIONS['torch']}, triton {modal_app.VERSIONS['triton']}, default gpu {settings.gpu})")  # type: ignore[attr-defined]
    with modal.enable_output():
        modal_app.app.deploy(name=settings.app_name, environment_name=settings.environment,  # type: ignore[attr-defined]
                             strategy="recreate")
    print(f"deployed. The executor finds it as app {settings.app_name!r}.")  # type: ignore[attr-defined]
    return 0


def modal_check(args: argparse.Namespace) -> int:
    settings = _modal_settings(args)
    if not _credentials_or_exit():
        return 2
    import modal

    from helion_remote.backends.modal.settings import WORKER_CLS_NAME

    cls = modal.Cls.from_name(settings.app_name, WORKER_CLS_NAME, environment_name=settings.environment)  # type: ignore[attr-defined]
    try:
        cls.hydrate()
    except modal.exception.NotFoundError as error:
        print(f"not deployed: {error}\nrun `helion-remote modal deploy`", file=sys.stderr)
        return 1
    except modal.exception.AuthError as error:
        print(f"Modal rejected the credentials: {error}", file=sys.stderr)
        return 2
    print(f"app {settings.app_name!r} is deployed")  # type: ignore[attr-defined]
    return 0


def modal_settings(args: argparse.Namespace) -> int:
    from helion_remote.backends.modal.cost import PRICE_SOURCE
    from helion_remote.backends.modal.settings import ENV_VARS

    settings = _modal_settings(args)
    for field in dataclasses.fields(settings):  # type: ignore[arg-type]
        print(f"{ENV_VARS[field.name]:<42} {getattr(settings, field.name)!r}")
    print(f"prices: {PRICE_SOURCE}")
    return 0


COMMANDS = (
    ("deploy", modal_deploy, "deploy the worker app (recreate strategy: no stale containers)"),
    ("check", modal_check, "check credentials and whether the app is deployed"),
    ("settings", modal_settings, "print the effective settings"),
)


def add_commands(parser: argparse.ArgumentParser) -> None:
    """Register ``deploy``/``check``/``settings`` (each with the settings flags) under ``parser``."""
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, text in COMMANDS:
        p = sub.add_parser(name, help=text)
        p.add_argument("--gpu", help="GPU type, pinned (default $HELION_REMOTE_MODAL_GPU or H100!)")
        p.add_argument("--max-containers", type=int, help="container cap (default 10)")
        p.add_argument("--app-name", help="app name (default helion-remote)")
        p.add_argument("--volume-name", help="blob volume (default helion-remote-blobs)")
        p.add_argument("--environment", help="Modal environment (default: Modal's)")
        p.set_defaults(fn=fn)


__all__ = ["COMMANDS", "HELP", "add_commands", "modal_check", "modal_deploy", "modal_settings"]
